package accesslog

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"

	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/open_telemetry/v3"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/proxy/stats"
)

// otlpAccessLog is an AccessLog with envoy.access_loggers.open_telemetry
// whose typed_config members are extra.
func otlpAccessLog(t *testing.T, extra string) *accesslogv3.AccessLog {
	t.Helper()
	var al accesslogv3.AccessLog
	src := `{"name":"envoy.access_loggers.open_telemetry","typed_config":{"@type":"` + OpenTelemetryType + `"` + extra + `}}`
	if err := protojson.Unmarshal([]byte(src), &al); err != nil {
		t.Fatalf("AccessLog JSON: %v\n%s", err, src)
	}
	return &al
}

func TestCompileOTLP(t *testing.T) {
	for _, tc := range []struct {
		name, extra, wantErr string
	}{
		{"common config", `,"common_config":{"log_name":"mesh","grpc_service":{"envoy_grpc":{"cluster_name":"otel"}},"buffer_flush_interval":"0.5s"},"body":{"string_value":"%REQ(:METHOD)%"}`, ""},
		{"top-level grpc_service", `,"grpc_service":{"envoy_grpc":{"cluster_name":"otel"}}`, ""},
		{"no collector", `,"log_name":"x"`, "access_log[0].typed_config.grpc_service: required"},
		{"no cluster", `,"grpc_service":{"envoy_grpc":{}}`, "access_log[0].typed_config.grpc_service.envoy_grpc.cluster_name: required"},
		{"bad body operator", `,"grpc_service":{"envoy_grpc":{"cluster_name":"otel"}},"body":{"string_value":"%NOPE%"}`, "access_log[0].typed_config.body.string_value:"},
		{"non-string body", `,"grpc_service":{"envoy_grpc":{"cluster_name":"otel"}},"body":{"int_value":"3"}`, "access_log[0].typed_config.body: only a string_value"},
		{"non-string attribute", `,"grpc_service":{"envoy_grpc":{"cluster_name":"otel"}},"attributes":{"values":[{"key":"k","value":{"bool_value":true}}]}`, "access_log[0].typed_config.attributes.values[0]:"},
		{"http", `,"http_service":{}`, "access_log[0].typed_config.http_service: OTLP over HTTP is not supported"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ls, err := Compile([]*accesslogv3.AccessLog{otlpAccessLog(t, tc.extra)})
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("Compile: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("Compile error %v, want one containing %q", err, tc.wantErr)
			case tc.wantErr == "" && (ls[0].OTLP == nil || ls[0].OTLP.Cluster != "otel"):
				t.Fatalf("compiled %+v, want an OTLP logger to cluster otel", ls[0])
			}
		})
	}
}

// logsReceiver is an OTLP/gRPC LogsService keeping what it receives.
type logsReceiver struct {
	collogspb.UnimplementedLogsServiceServer
	mu   sync.Mutex
	reqs []*collogspb.ExportLogsServiceRequest
}

func (r *logsReceiver) Export(_ context.Context, req *collogspb.ExportLogsServiceRequest) (*collogspb.ExportLogsServiceResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reqs = append(r.reqs, req)
	return &collogspb.ExportLogsServiceResponse{}, nil
}

func (r *logsReceiver) records() (res []*logspb.ResourceLogs, recs []*logspb.LogRecord) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, req := range r.reqs {
		for _, rl := range req.GetResourceLogs() {
			res = append(res, rl)
			for _, sl := range rl.GetScopeLogs() {
				recs = append(recs, sl.GetLogRecords()...)
			}
		}
	}
	return res, recs
}

func startLogsReceiver(t *testing.T) (*logsReceiver, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &logsReceiver{}
	srv := grpc.NewServer()
	collogspb.RegisterLogsServiceServer(srv, r)
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Stop(); <-done })
	return r, ln.Addr().String()
}

// dialTo dials addr for cluster "otel" and fails for any other.
func dialTo(addr string) func(context.Context, string) (net.Conn, error) {
	return func(ctx context.Context, cluster string) (net.Conn, error) {
		if cluster != "otel" {
			return nil, &net.AddrError{Err: "unknown cluster", Addr: cluster}
		}
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
}

const otlpTestConfig = `,"common_config":{"log_name":"mesh-access","grpc_service":{"envoy_grpc":{"cluster_name":"otel"}},"buffer_flush_interval":"0.02s"},
  "body":{"string_value":"%REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE%\n"},
  "attributes":{"values":[{"key":"upstream","value":{"string_value":"%UPSTREAM_HOST%"}},{"key":"peer","value":{"string_value":"%DOWNSTREAM_PEER_URI_SAN%"}}]},
  "resource_attributes":{"values":[{"key":"service.name","value":{"string_value":"sidecar-a"}}]}`

// TestOTLPAccessLog: a stream's record reaches an OTLP logs receiver with
// its formatted body and attributes and the resource's labels.
func TestOTLPAccessLog(t *testing.T) {
	testutil.CheckGoroutines(t)
	recv, addr := startLogsReceiver(t)
	ls, err := Compile([]*accesslogv3.AccessLog{otlpAccessLog(t, otlpTestConfig)})
	if err != nil {
		t.Fatal(err)
	}
	store := stats.NewStore()
	m := NewManager(ManagerOptions{Stats: store, DialCluster: dialTo(addr)})
	defer m.Close()
	if err := m.Open(ls); err != nil {
		t.Fatalf("Open: %v", err)
	}
	m.Log(ls, testInfo())
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, recs := recv.records(); len(recs) > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	res, recs := recv.records()
	if len(recs) != 1 {
		t.Fatalf("received %d records, want 1", len(recs))
	}
	r := recs[0]
	if got, want := r.GetBody().GetStringValue(), "POST /helloworld.Greeter/SayHello 200"; got != want {
		t.Errorf("body %q, want %q", got, want)
	}
	if got := r.GetTimeUnixNano(); got != uint64(t0.UnixNano()) {
		t.Errorf("time %d, want the stream's start %d", got, t0.UnixNano())
	}
	attrs := map[string]string{}
	for _, kv := range r.GetAttributes() {
		attrs[kv.GetKey()] = kv.GetValue().GetStringValue()
	}
	for k, want := range map[string]string{"upstream": "127.0.0.1:50051", "peer": "spiffe://cluster.local/ns/demo/sa/client"} {
		if attrs[k] != want {
			t.Errorf("attribute %s = %q, want %q", k, attrs[k], want)
		}
	}
	resAttrs := map[string]string{}
	for _, kv := range res[0].GetResource().GetAttributes() {
		resAttrs[kv.GetKey()] = kv.GetValue().GetStringValue()
	}
	if resAttrs["log_name"] != "mesh-access" || resAttrs["service.name"] != "sidecar-a" {
		t.Errorf("resource attributes %v, want log_name mesh-access and service.name sidecar-a", resAttrs)
	}
	// The receiver has the record before the exporter has its answer.
	for m.written.Value() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if w, d := m.written.Value(), m.Dropped().Value(); w != 1 || d != 0 {
		t.Errorf("access_logs.written %d, dropped %d; want 1 and 0", w, d)
	}
}

// TestOTLPAccessLogCollectorDown: records to a collector that is not
// there are dropped and counted, and logging never blocks.
func TestOTLPAccessLogCollectorDown(t *testing.T) {
	testutil.CheckGoroutines(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	ls, err := Compile([]*accesslogv3.AccessLog{otlpAccessLog(t, otlpTestConfig)})
	if err != nil {
		t.Fatal(err)
	}
	m := NewManager(ManagerOptions{DialCluster: dialTo(addr)})
	defer m.Close()
	const n = 5
	start := time.Now()
	for range n {
		m.Log(ls, testInfo())
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("logging %d records took %v with the collector down", n, d)
	}
	deadline := time.Now().Add(15 * time.Second)
	for m.Dropped().Value() < n && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := m.Dropped().Value(); got != n {
		t.Errorf("access_logs.dropped %d, want %d", got, n)
	}
}

// TestOTLPAccessLogNeedsDialer: a manager that cannot dial clusters fails
// Open for an OpenTelemetry logger, naming the cluster.
func TestOTLPAccessLogNeedsDialer(t *testing.T) {
	ls, err := Compile([]*accesslogv3.AccessLog{otlpAccessLog(t, otlpTestConfig)})
	if err != nil {
		t.Fatal(err)
	}
	m := NewManager(ManagerOptions{})
	defer m.Close()
	if err := m.Open(ls); err == nil || !strings.Contains(err.Error(), `"otel"`) {
		t.Errorf("Open error %v, want one naming cluster \"otel\"", err)
	}
}
