package hcm

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/otel/metrics"
	"meshd.dev/meshd/proxy/accesslog"
	"meshd.dev/meshd/proxy/http/h2"
	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// accessLogJSON renders an HCM access_log list writing path with a text
// format.
func accessLogJSON(path, format string) string {
	return `"access_log":[{"name":"envoy.access_loggers.file","typed_config":{
 "@type":"type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
 "path":` + jsonString(path) + `,"log_format":{"text_format":` + jsonString(format) + `}}}]`
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func TestAccessLogThroughHCM(t *testing.T) {
	testutil.CheckGoroutines(t)
	up := startH2Upstream(t, h2.ServerConfig{}, func(s stream.ServerStream) {
		tr := header.Make(1)
		tr.Add("grpc-status", "0")
		respond(s, 200, "hello", tr)
	})
	// A port with nothing listening: connect failures.
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()

	format := `%REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% ` +
		`%BYTES_RECEIVED% %BYTES_SENT% %UPSTREAM_CLUSTER% %UPSTREAM_HOST% %ROUTE_NAME% ` +
		`%UPSTREAM_REQUEST_ATTEMPT_COUNT% %GRPC_STATUS% %DURATION% %REQUEST_DURATION% %RESPONSE_DURATION%` + "\n"
	for _, tc := range []struct {
		name    string
		routes  string
		cluster []string
		path    string
		body    string
		want    string // the line up to %DURATION%
	}{
		{"proxied", `{"name":"all","match":{"prefix":"/"},"route":{"cluster":"backend"}}`, []string{up.addr}, "/svc/Call", "ping",
			"POST /svc/Call HTTP/2 200 - via_upstream 4 5 backend " + up.addr + " all 1 OK"},
		{"no route", `{"match":{"prefix":"/only"},"route":{"cluster":"backend"}}`, []string{up.addr}, "/x", "",
			"POST /x HTTP/2 200 NR route_not_found 0 0 - - - 0 Unimplemented"},
		{"connect failure", `{"name":"r","match":{"prefix":"/"},"route":{"cluster":"backend"}}`, []string{deadAddr}, "/y", "",
			"POST /y HTTP/2 200 UF upstream_reset_before_response_started{connection_failure} 0 0 backend " + deadAddr + " r 1 Unavailable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "access.log")
			e := newEnv(t, hcmJSON(tc.routes, accessLogJSON(path, format)), clusterJSON(tc.cluster, ""))
			m := accesslog.NewManager(accesslog.ManagerOptions{Stats: e.store, FlushInterval: time.Hour})
			defer m.Close()
			d := metrics.NewHTTPDurations()
			e.h.SetObservers(Observers{AccessLogs: m, Durations: d})
			var body *strings.Reader
			fs := newFakeStream("POST", tc.path, grpcHeaders(), nil)
			if tc.body != "" {
				body = strings.NewReader(tc.body)
				fs = newFakeStream("POST", tc.path, grpcHeaders(), body)
			}
			e.serve(t, fs)
			m.Flush()
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			line := strings.TrimSuffix(string(b), "\n")
			if !strings.HasPrefix(line, tc.want+" ") {
				t.Fatalf("line\n %q\nwant prefix\n %q", line, tc.want)
			}
			fields := strings.Fields(line)
			durs := fields[len(fields)-3:]
			if durs[0] == "-" || durs[1] == "-" {
				t.Errorf("DURATION/REQUEST_DURATION missing in %q", line)
			}
			if (durs[2] == "-") != (tc.name != "proxied") {
				t.Errorf("RESPONSE_DURATION %q for %s", durs[2], tc.name)
			}
			var server int
			d.VisitServer(func(k metrics.ServerKey, s metrics.HistSnapshot) {
				server++
				if k.Method != "POST" || k.Status != 200 || k.ProtocolVersion != "2" || s.Count != 1 {
					t.Errorf("server series %+v count %d", k, s.Count)
				}
			})
			var client int
			d.VisitClient(func(k metrics.ClientKey, s metrics.HistSnapshot) { client += int(s.Count) })
			wantClient := map[string]int{"proxied": 1, "no route": 0, "connect failure": 1}[tc.name]
			if server != 1 || client != wantClient {
				t.Errorf("%d server series, %d client attempts; want 1, %d", server, client, wantClient)
			}
		})
	}
}

// BenchmarkProxyUnaryAccessLog is BenchmarkProxyUnary with Envoy's default
// access-log format written to a file and the duration histograms on; the
// difference is the cost of observing a stream.
func BenchmarkProxyUnaryAccessLog(b *testing.B) {
	for _, mode := range []string{"off", "on"} {
		b.Run(mode, func(b *testing.B) {
			up := startH2Upstream(b, h2.ServerConfig{}, func(s stream.ServerStream) { respond(s, 200, "ok", header.Header{}) })
			routes := `{"match":{"prefix":"/"},"route":{"cluster":"backend","retry_policy":{"retry_on":"5xx","num_retries":2}}}`
			extra := ""
			path := filepath.Join(b.TempDir(), "access.log")
			if mode == "on" {
				extra = strings.TrimSuffix(accessLogJSON(path, accesslog.DefaultFormat), "")
			}
			e := newEnv(b, hcmJSON(routes, extra), clusterJSON([]string{up.addr}, ""))
			if mode == "on" {
				m := accesslog.NewManager(accesslog.ManagerOptions{Stats: e.store})
				b.Cleanup(func() { m.Close() })
				e.h.SetObservers(Observers{AccessLogs: m, Durations: metrics.NewHTTPDurations()})
			}
			b.ReportAllocs()
			defer reportCPU(b)()
			for b.Loop() {
				fs := newFakeStream("GET", "/", header.Make(0), nil)
				e.h.ServeStream(fs)
				fs.cancel()
				if r := fs.result(); r.status != 200 {
					b.Fatalf("status %d", r.status)
				}
			}
		})
	}
}

// BenchmarkObserveStream is the CPU an observed stream adds to a request,
// isolated from the proxying around it: wrapping the stream, recording its
// response and, at the end, the duration histogram and one access-log line
// in Envoy's default format queued on a file sink.
func BenchmarkObserveStream(b *testing.B) {
	for _, mode := range []string{"durations", "durations+accesslog"} {
		b.Run(mode, func(b *testing.B) {
			path := filepath.Join(b.TempDir(), "access.log")
			e := newEnv(b, hcmJSON(`{"match":{"prefix":"/"},"direct_response":{"status":200}}`, accessLogJSON(path, accesslog.DefaultFormat)), "")
			obs := Observers{Durations: metrics.NewHTTPDurations()}
			if mode != "durations" {
				m := accesslog.NewManager(accesslog.ManagerOptions{Stats: e.store})
				b.Cleanup(func() { m.Close() })
				obs.AccessLogs = m
			}
			e.h.SetObservers(obs)
			cfg := e.h.Config()
			resp := &stream.Response{Status: 200, Header: header.Make(0)}
			fs := newFakeStream("GET", "/", header.Make(0), nil)
			b.ReportAllocs()
			defer reportCPU(b)()
			for b.Loop() {
				o := newObservedStream(fs, time.Now(), cfg)
				_ = o.WriteHeader(resp, true)
				e.h.finish(cfg, o)
			}
		})
	}
}

// reportCPU reports the process's CPU time (user + system, every
// goroutine) per iteration as cpu-ns/op: on a shared machine wall time per
// op mostly measures the neighbours. Call the returned function after the
// loop.
func reportCPU(b *testing.B) func() {
	before := cpuTime(b)
	return func() {
		if b.N > 0 {
			b.ReportMetric(float64((cpuTime(b)-before).Nanoseconds())/float64(b.N), "cpu-ns/op")
		}
	}
}
