package accesslog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	otelalsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/open_telemetry/v3"
	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// OpenTelemetryType is envoy.access_loggers.open_telemetry.
const OpenTelemetryType = "type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig"

// Defaults of the OpenTelemetry access logger (Envoy's for the gRPC access
// loggers' buffer_flush_interval and buffer_size_bytes).
const (
	DefaultOTLPFlushInterval = time.Second
	DefaultOTLPBufferBytes   = 16384
	// OTLPQueueRecords bounds the records waiting for export per
	// collector; beyond it records are dropped and counted.
	OTLPQueueRecords  = 4096
	otlpExportTimeout = 5 * time.Second
	otlpCloseTime     = 2 * time.Second
)

// OTLPConfig is a compiled envoy.access_loggers.open_telemetry: the
// collector (a cluster reached over gRPC) and the log record's body and
// attributes, each a substitution format.
type OTLPConfig struct {
	// Cluster is grpc_service.envoy_grpc.cluster_name (the top-level
	// grpc_service, else common_config's).
	Cluster string
	// LogName is log_name (else common_config.log_name); it is the
	// resource's log_name attribute unless DisableBuiltinLabels.
	LogName string
	// Body formats the record's string body; nil: no body.
	Body *Formatter
	// Attributes format the record's string attributes, in order.
	Attributes []OTLPAttr
	// ResourceAttrs are resource_attributes' string values.
	ResourceAttrs        []*commonpb.KeyValue
	DisableBuiltinLabels bool
	// FlushInterval and BufferBytes: a batch is sent when it holds
	// BufferBytes of formatted text or FlushInterval has passed.
	FlushInterval time.Duration
	BufferBytes   int
}

// OTLPAttr is one formatted attribute of an OTLP log record.
type OTLPAttr struct {
	Key    string
	Format *Formatter
}

// key identifies the exporter the config's records go to.
func (c *OTLPConfig) key() otlpKey { return otlpKey{cluster: c.Cluster, logName: c.LogName} }

type otlpKey struct{ cluster, logName string }

// compileOTLP compiles OpenTelemetryAccessLogConfig; errors name the field
// relative to typed_config.
func compileOTLP(m *otelalsv3.OpenTelemetryAccessLogConfig) (*OTLPConfig, error) {
	if m.GetHttpService() != nil {
		return nil, fmt.Errorf("http_service: OTLP over HTTP is not supported (use grpc_service)")
	}
	if len(m.GetFormatters()) > 0 {
		return nil, fmt.Errorf("formatters: formatter extensions are not supported")
	}
	c := &OTLPConfig{
		LogName:              m.GetLogName(),
		DisableBuiltinLabels: m.GetDisableBuiltinLabels(),
		FlushInterval:        DefaultOTLPFlushInterval,
		BufferBytes:          DefaultOTLPBufferBytes,
	}
	gs, gpath := m.GetGrpcService(), "grpc_service"
	//lint:ignore SA1019 deprecated in Envoy's API but still honoured by Envoy; the sidecar honours it for control planes that send it
	if cc := m.GetCommonConfig(); cc != nil {
		if gs == nil {
			gs, gpath = cc.GetGrpcService(), "common_config.grpc_service"
		}
		if c.LogName == "" {
			c.LogName = cc.GetLogName()
		}
		if d := cc.GetBufferFlushInterval(); d != nil {
			if d.AsDuration() <= 0 {
				return nil, fmt.Errorf("common_config.buffer_flush_interval: %v is not positive", d.AsDuration())
			}
			c.FlushInterval = d.AsDuration()
		}
		if b := cc.GetBufferSizeBytes(); b != nil {
			c.BufferBytes = int(b.GetValue())
		}
	}
	if gs == nil {
		return nil, fmt.Errorf("grpc_service: required (or common_config.grpc_service)")
	}
	if c.Cluster = gs.GetEnvoyGrpc().GetClusterName(); c.Cluster == "" {
		return nil, fmt.Errorf("%s.envoy_grpc.cluster_name: required", gpath)
	}
	if b := m.GetBody(); b != nil {
		sv, ok := b.GetValue().(*commonpb.AnyValue_StringValue)
		if !ok {
			return nil, fmt.Errorf("body: only a string_value format is supported")
		}
		f, err := CompileText(sv.StringValue)
		if err != nil {
			return nil, fmt.Errorf("body.string_value: %w", err)
		}
		c.Body = f
	}
	for k, kv := range m.GetAttributes().GetValues() {
		sv, ok := kv.GetValue().GetValue().(*commonpb.AnyValue_StringValue)
		if !ok || kv.GetKey() == "" {
			return nil, fmt.Errorf("attributes.values[%d]: a key and a string_value format are required", k)
		}
		f, err := CompileText(sv.StringValue)
		if err != nil {
			return nil, fmt.Errorf("attributes.values[%d].value.string_value: %w", k, err)
		}
		c.Attributes = append(c.Attributes, OTLPAttr{Key: kv.GetKey(), Format: f})
	}
	for k, kv := range m.GetResourceAttributes().GetValues() {
		if _, ok := kv.GetValue().GetValue().(*commonpb.AnyValue_StringValue); !ok || kv.GetKey() == "" {
			return nil, fmt.Errorf("resource_attributes.values[%d]: a key and a string_value are required", k)
		}
		c.ResourceAttrs = append(c.ResourceAttrs, kv)
	}
	return c, nil
}

// record formats i into a log record: time is the stream's start, the
// body and attributes are c's formats.
func (c *OTLPConfig) record(b *lineBuf, i *Info) (*logspb.LogRecord, int) {
	r := &logspb.LogRecord{TimeUnixNano: uint64(i.Start.UnixNano()), ObservedTimeUnixNano: uint64(time.Now().UnixNano())}
	size := 0
	format := func(f *Formatter) string {
		b.line, b.scratch = f.Append(b.line[:0], b.scratch[:0], i)
		size += len(b.line)
		return string(bytes.TrimSuffix(b.line, []byte{'\n'}))
	}
	if c.Body != nil {
		r.Body = &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: format(c.Body)}}
	}
	for _, a := range c.Attributes {
		r.Attributes = append(r.Attributes, &commonpb.KeyValue{Key: a.Key,
			Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: format(a.Format)}}})
	}
	return r, size
}

// otlpExporter sends one collector's log records in batches from one
// goroutine. Log never blocks: a full queue drops the record (counted).
// A failed export drops its batch (counted); gRPC reconnects by itself.
type otlpExporter struct {
	m        *Manager
	cfg      *OTLPConfig
	conn     *grpc.ClientConn
	client   collogspb.LogsServiceClient
	resource *resourcepb.Resource
	q        chan otlpItem
	quit     chan struct{}
	done     chan struct{}
	stop     sync.Once
}

type otlpItem struct {
	r    *logspb.LogRecord
	size int
}

func newOTLPExporter(m *Manager, cfg *OTLPConfig) (*otlpExporter, error) {
	if m.opts.DialCluster == nil {
		return nil, fmt.Errorf("access log to cluster %q: this process cannot dial clusters for OpenTelemetry access logs", cfg.Cluster)
	}
	dial, cluster := m.opts.DialCluster, cfg.Cluster
	conn, err := grpc.NewClient("passthrough:///"+cluster,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return dial(ctx, cluster) }))
	if err != nil {
		return nil, fmt.Errorf("access log to cluster %q: %w", cluster, err)
	}
	res := &resourcepb.Resource{Attributes: cfg.ResourceAttrs}
	if !cfg.DisableBuiltinLabels && cfg.LogName != "" {
		res.Attributes = append([]*commonpb.KeyValue{{Key: "log_name",
			Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: cfg.LogName}}}}, res.Attributes...)
	}
	e := &otlpExporter{
		m: m, cfg: cfg, conn: conn, client: collogspb.NewLogsServiceClient(conn), resource: res,
		q: make(chan otlpItem, OTLPQueueRecords), quit: make(chan struct{}), done: make(chan struct{}),
	}
	go e.run()
	return e, nil
}

// log queues r; a full queue drops it and counts access_logs.dropped.
func (e *otlpExporter) log(r *logspb.LogRecord, size int) {
	select {
	case e.q <- otlpItem{r, size}:
	default:
		e.m.dropped.Inc()
	}
}

func (e *otlpExporter) run() {
	defer close(e.done)
	t := time.NewTicker(e.cfg.FlushInterval)
	defer t.Stop()
	var batch []*logspb.LogRecord
	size := 0
	flush := func() {
		if len(batch) > 0 {
			e.send(batch)
		}
		batch, size = nil, 0
	}
	for {
		select {
		case it := <-e.q:
			batch, size = append(batch, it.r), size+it.size
			if size >= e.cfg.BufferBytes {
				flush()
			}
		case <-t.C:
			flush()
		case <-e.quit:
		drain:
			for {
				select {
				case it := <-e.q:
					batch = append(batch, it.r)
				default:
					break drain
				}
			}
			flush()
			return
		}
	}
}

func (e *otlpExporter) send(batch []*logspb.LogRecord) {
	ctx, cancel := context.WithTimeout(context.Background(), otlpExportTimeout)
	defer cancel()
	req := &collogspb.ExportLogsServiceRequest{ResourceLogs: []*logspb.ResourceLogs{{
		Resource:  e.resource,
		ScopeLogs: []*logspb.ScopeLogs{{Scope: &commonpb.InstrumentationScope{Name: "meshd"}, LogRecords: batch}},
	}}}
	resp, err := e.client.Export(ctx, req)
	if err != nil {
		e.m.dropped.Add(uint64(len(batch)))
		e.m.logger.Warn("access log: OTLP export failed; records dropped", "cluster", e.cfg.Cluster, "records", len(batch), "err", err)
		return
	}
	rejected := min(uint64(max(resp.GetPartialSuccess().GetRejectedLogRecords(), 0)), uint64(len(batch)))
	e.m.dropped.Add(rejected)
	e.m.written.Add(uint64(len(batch)) - rejected)
}

// otlpExporter returns the exporter of c's collector and log name,
// created on first use (the first config's flush settings apply to all
// loggers sharing it).
func (m *Manager) otlpExporter(c *OTLPConfig) (*otlpExporter, error) {
	k := c.key()
	if e, ok := m.byOTLP.Load(k); ok {
		return e.(*otlpExporter), nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, errors.New("access log manager closed")
	}
	if e, ok := m.byOTLP.Load(k); ok {
		return e.(*otlpExporter), nil
	}
	e, err := newOTLPExporter(m, c)
	if err != nil {
		return nil, err
	}
	m.byOTLP.Store(k, e)
	return e, nil
}

// closeOTLP flushes and stops every OTLP exporter within otlpCloseTime.
func (m *Manager) closeOTLP() {
	ctx, cancel := context.WithTimeout(context.Background(), otlpCloseTime)
	defer cancel()
	m.byOTLP.Range(func(k, v any) bool {
		v.(*otlpExporter).close(ctx)
		m.byOTLP.Delete(k)
		return true
	})
}

// close sends what is queued and stops, within ctx.
func (e *otlpExporter) close(ctx context.Context) {
	e.stop.Do(func() { close(e.quit) })
	select {
	case <-e.done:
	case <-ctx.Done():
	}
	_ = e.conn.Close()
	<-e.done
}
