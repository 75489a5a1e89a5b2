package hcm

import (
	"testing"

	"meshd.dev/meshd/proxy/http/h2"
	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// BenchmarkProxyUnary measures the connection manager's cost per proxied
// bodiless request to an HTTP/2 upstream on loopback (routing, watchdog,
// retry bookkeeping, one upstream stream), with a retry policy configured.
func BenchmarkProxyUnary(b *testing.B) {
	up := startH2Upstream(b, h2.ServerConfig{}, func(s stream.ServerStream) { respond(s, 200, "ok", header.Header{}) })
	routes := `{"match":{"prefix":"/"},"route":{"cluster":"backend","retry_policy":{"retry_on":"5xx","num_retries":2}}}`
	e := newEnv(b, hcmJSON(routes, ""), clusterJSON([]string{up.addr}, ""))
	b.ReportAllocs()
	for b.Loop() {
		fs := newFakeStream("GET", "/", header.Make(0), nil)
		e.h.ServeStream(fs)
		fs.cancel()
		if r := fs.result(); r.status != 200 {
			b.Fatalf("status %d", r.status)
		}
	}
}
