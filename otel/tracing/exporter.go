package tracing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
)

// exportMethod is the OTLP/gRPC trace export method.
const exportMethod = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"

// Exporter defaults, the OpenTelemetry batch span processor's except the
// flush interval (the SDK's is 5 s; a mesh operator watching a trace wants
// it sooner).
const (
	DefaultQueueSize     = 2048
	DefaultBatchSize     = 512
	DefaultFlushInterval = time.Second
	DefaultExportTimeout = 5 * time.Second
)

// Counter is the part of a stats counter the exporter uses.
type Counter interface{ Add(uint64) }

// ExporterStats are the exporter's counters; nil fields are not counted.
// The sidecar names them as Envoy's OpenTelemetry tracer does
// ("tracing.opentelemetry.spans_sent", "timer_flushed") plus meshd's
// "spans_dropped".
type ExporterStats struct {
	// SpansSent counts spans the collector accepted.
	SpansSent Counter
	// SpansDropped counts spans lost: the queue was full, an export
	// failed, or the collector rejected them (partial success).
	SpansDropped Counter
	// TimerFlushed counts batches sent because the flush interval elapsed
	// rather than because the batch was full.
	TimerFlushed Counter
}

// ExporterConfig configures an Exporter. Zero values take the defaults.
type ExporterConfig struct {
	// Target is the collector's gRPC target; with Dial set it only names
	// the collector in logs and errors.
	Target string
	// Dial, when set, opens every connection to the collector (the sidecar
	// dials an endpoint of the tracing provider's cluster).
	Dial func(ctx context.Context) (net.Conn, error)
	// ServiceName is the resource's service.name.
	ServiceName string
	// ResourceAttrs are added to the resource after service.name.
	ResourceAttrs []Attr
	// QueueSize bounds the spans waiting for export; beyond it spans are
	// dropped and counted, never waited for.
	QueueSize int
	// BatchSize is the most spans per export request (at most QueueSize);
	// a full batch is sent at once.
	BatchSize int
	// FlushInterval is the longest a span waits in a partial batch.
	FlushInterval time.Duration
	// ExportTimeout bounds one export request.
	ExportTimeout time.Duration
	Stats         ExporterStats
	Logger        *slog.Logger
}

// Exporter sends spans to an OTLP/gRPC collector in batches from one
// goroutine. Export never blocks: a full queue drops the span. A failed
// export drops its batch (counted) and the next batch is tried on a
// connection gRPC re-establishes with its own back-off, so export resumes
// by itself when the collector returns.
//
// Export encodes the span into the batch being filled and recycles it at
// once, while the span is still in the caller's cache: the queue holds
// OTLP bytes, not spans, and sending a batch is one gRPC call on bytes
// that need no further work. The queue is guarded by a mutex rather than
// fed through a channel: a request appends its span and goes on, and only
// the span that completes a batch wakes the export goroutine (a channel
// receive would wake it, and often an idle P with it, for every span).
// Partial batches go out on the flush interval's tick.
type Exporter struct {
	cfg  ExporterConfig
	conn *grpc.ClientConn
	res  resource
	// headroom is the room a batch keeps in front of its spans for the
	// request's header (resource and scope), written when it is sent.
	headroom int

	qmu    sync.Mutex    // guards cur, full, free, n and closed
	cur    *batch        // the batch being filled; nil when none
	full   []*batch      // complete batches waiting for the goroutine, oldest first
	free   []*batch      // sent batches kept for reuse
	n      int           // spans in cur and full, at most QueueSize
	closed bool          // the export goroutine has drained the queue for good
	wake   chan struct{} // cap 1: a complete batch is waiting

	closeOnce sync.Once
	quit      chan struct{}
	done      chan struct{}

	mu      sync.Mutex // guards failing
	failing bool       // the last export failed (logged once per outage)
}

// batch is one export request being built: headroom bytes, then the
// encoded ScopeSpans.spans fields of spans spans.
type batch struct {
	b     []byte
	spans int
}

// maxBatchBytes ends a batch early when its spans reach this size (long
// custom tags, many events), keeping each request well below the 4 MiB
// gRPC servers (the OpenTelemetry collector among them) accept by
// default. A batch that grew beyond maxKeptBatch is not reused.
const (
	maxBatchBytes = 1 << 20
	maxKeptBatch  = 2 * maxBatchBytes
)

// NewExporter validates cfg and starts an exporter. It does not wait for
// the collector: connecting happens in the background.
func NewExporter(cfg ExporterConfig) (*Exporter, error) {
	if cfg.Target == "" {
		return nil, errors.New("tracing exporter: target: required")
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = DefaultQueueSize
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = DefaultBatchSize
	}
	// A batch larger than the queue would never fill: the queue is full
	// first.
	cfg.BatchSize = min(cfg.BatchSize, cfg.QueueSize)
	if cfg.FlushInterval <= 0 {
		cfg.FlushInterval = DefaultFlushInterval
	}
	if cfg.ExportTimeout <= 0 {
		cfg.ExportTimeout = DefaultExportTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ServiceName == "" {
		cfg.ServiceName = "meshd"
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
	}
	target := cfg.Target
	if cfg.Dial != nil {
		dial := cfg.Dial
		opts = append(opts, grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return dial(ctx) }))
		target = "passthrough:///" + cfg.Target
	}
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, fmt.Errorf("tracing exporter: target %q: %w", cfg.Target, err)
	}
	attrs := append([]Attr{{Key: "service.name", Str: cfg.ServiceName}}, cfg.ResourceAttrs...)
	e := &Exporter{
		cfg:  cfg,
		conn: conn,
		res:  newResource(attrs, "meshd", ""),
		wake: make(chan struct{}, 1),
		quit: make(chan struct{}),
		done: make(chan struct{}),
	}
	e.headroom = e.res.maxRequestHeader()
	go e.run()
	return e, nil
}

// Export encodes an ended span into the queue and takes ownership of it.
// It never blocks: when the queue is full, or the exporter has closed,
// the span is dropped and counted.
func (e *Exporter) Export(s *Span) {
	e.qmu.Lock()
	if e.n == e.cfg.QueueSize || e.closed {
		e.qmu.Unlock()
		release(s)
		add(e.cfg.Stats.SpansDropped, 1)
		return
	}
	b := e.cur
	if b == nil {
		b = e.newBatch()
		e.cur = b
	}
	b.b = appendSpanField(b.b, s)
	b.spans++
	e.n++
	complete := b.spans == e.cfg.BatchSize || len(b.b)-e.headroom >= maxBatchBytes
	if complete {
		e.full = append(e.full, b)
		e.cur = nil
	}
	e.qmu.Unlock()
	release(s)
	if complete {
		select {
		case e.wake <- struct{}{}:
		default: // already signalled
		}
	}
}

// newBatch returns an empty batch, reused when one is free. Called with
// qmu held.
func (e *Exporter) newBatch() *batch {
	if k := len(e.free); k > 0 {
		b := e.free[k-1]
		e.free[k-1] = nil
		e.free = e.free[:k-1]
		return b
	}
	return &batch{b: make([]byte, e.headroom, e.headroom+64<<10)}
}

// take moves the complete batches into out, oldest first, and with
// partial set the batch being filled too, reporting whether there was
// one. last marks the queue closed, so no span is queued after the final
// drain.
func (e *Exporter) take(out []*batch, partial, last bool) (_ []*batch, tookPartial bool) {
	e.qmu.Lock()
	defer e.qmu.Unlock()
	out = append(out, e.full...)
	clear(e.full)
	e.full = e.full[:0]
	if partial && e.cur != nil {
		out = append(out, e.cur)
		e.cur = nil
		tookPartial = true
	}
	for _, b := range out {
		e.n -= b.spans
	}
	if last {
		e.closed = true
	}
	return out, tookPartial
}

// recycle keeps sent batches for reuse, as many as the queue could fill
// at once.
func (e *Exporter) recycle(sent []*batch) {
	keep := e.cfg.QueueSize/e.cfg.BatchSize + 1
	e.qmu.Lock()
	defer e.qmu.Unlock()
	for _, b := range sent {
		if len(e.free) < keep && cap(b.b) <= maxKeptBatch {
			b.b, b.spans = b.b[:e.headroom], 0
			e.free = append(e.free, b)
		}
	}
}

// Close stops the exporter: spans already queued are sent within ctx's
// deadline, then the connection closes. Past the deadline the connection
// closes at once, failing the export in flight (its spans are counted as
// dropped), and Close returns ctx's error once the exporter stopped.
// Spans exported once the queue is drained are dropped and counted.
func (e *Exporter) Close(ctx context.Context) error {
	e.closeOnce.Do(func() { close(e.quit) })
	var err error
	select {
	case <-e.done:
	case <-ctx.Done():
		err = ctx.Err()
	}
	cerr := e.conn.Close()
	<-e.done
	if err != nil {
		return err
	}
	return cerr
}

func add(c Counter, n uint64) {
	if c != nil && n > 0 {
		c.Add(n)
	}
}

func (e *Exporter) run() {
	defer close(e.done)
	t := time.NewTicker(e.cfg.FlushInterval)
	defer t.Stop()
	var (
		batches []*batch
		hdr     []byte
	)
	sendAll := func() {
		for _, b := range batches {
			hdr = e.send(context.Background(), hdr[:0], b)
		}
		e.recycle(batches)
		clear(batches)
		batches = batches[:0]
	}
	for {
		select {
		case <-e.wake:
			// Complete batches only: a partial one waits for the tick.
			batches, _ = e.take(batches, false, false)
			sendAll()
		case <-t.C:
			// The spans queued at the tick, and only those: spans that
			// arrive while they are sent wait for a complete batch or
			// the next tick. Draining until the queue is empty would,
			// with a collector whose round trip outlasts the gap between
			// spans, never stop, sending a small batch per round trip
			// (one request per ~30 spans instead of ~500, measured with
			// BenchmarkProxyUnaryTracing).
			var partial bool
			if batches, partial = e.take(batches, true, false); partial {
				add(e.cfg.Stats.TimerFlushed, 1)
			}
			sendAll()
		case <-e.quit:
			batches, _ = e.take(batches, true, true)
			sendAll()
			return
		}
	}
}

// send exports one batch, writing the request's header into the batch's
// headroom; hdr is scratch space, returned for reuse.
func (e *Exporter) send(ctx context.Context, hdr []byte, b *batch) []byte {
	hdr = appendRequestHeader(hdr, &e.res, len(b.b)-e.headroom)
	off := e.headroom - len(hdr)
	copy(b.b[off:], hdr)
	n := uint64(b.spans)
	ctx, cancel := context.WithTimeout(ctx, e.cfg.ExportTimeout)
	defer cancel()
	var resp coltracepb.ExportTraceServiceResponse
	err := e.conn.Invoke(ctx, exportMethod, rawMessage(b.b[off:]), &resp, grpc.ForceCodec(rawCodec{}))
	if err != nil {
		add(e.cfg.Stats.SpansDropped, n)
		e.setFailing(true, err)
		return hdr
	}
	e.setFailing(false, nil)
	rejected := uint64(max(resp.GetPartialSuccess().GetRejectedSpans(), 0))
	rejected = min(rejected, n)
	add(e.cfg.Stats.SpansDropped, rejected)
	add(e.cfg.Stats.SpansSent, n-rejected)
	if rejected > 0 {
		e.cfg.Logger.Warn("tracing: collector rejected spans", "collector", e.cfg.Target,
			"rejected", rejected, "message", resp.GetPartialSuccess().GetErrorMessage())
	}
	return hdr
}

// setFailing logs the start and the end of an export outage once each.
func (e *Exporter) setFailing(failing bool, err error) {
	e.mu.Lock()
	changed := e.failing != failing
	e.failing = failing
	e.mu.Unlock()
	switch {
	case changed && failing:
		e.cfg.Logger.Warn("tracing: export to the collector failing; spans are dropped until it recovers",
			"collector", e.cfg.Target, "err", err)
	case changed:
		e.cfg.Logger.Info("tracing: export to the collector recovered", "collector", e.cfg.Target)
	}
}

// rawMessage is an already encoded request.
type rawMessage []byte

// rawCodec sends rawMessage as is and decodes responses as protobuf. Its
// name is "proto", so the request's content-type is application/grpc+proto
// as collectors expect.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) {
	if m, ok := v.(rawMessage); ok {
		return m, nil
	}
	return nil, fmt.Errorf("tracing exporter: cannot marshal %T", v)
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("tracing exporter: cannot unmarshal into %T", v)
	}
	return proto.Unmarshal(data, m)
}

func (rawCodec) Name() string { return "proto" }

var _ encoding.Codec = rawCodec{}
