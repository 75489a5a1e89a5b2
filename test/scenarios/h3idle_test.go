package scenarios

import (
	"io"
	"net/http"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
)

// TestH3IdleTimeoutAndKeepalive: the QUIC idle timeout and keepalive of a
// cluster's http3_protocol_options.quic_protocol_options reach quic-go. With
// idle_network_timeout 1s and keepalive off, the connection left idle after
// one request closes after about 1 s (never before), counted in
// http3.idle_timeout; with max_interval 1s as well, PINGs keep it open for
// several idle timeouts and the next request reuses it.
func TestH3IdleTimeoutAndKeepalive(t *testing.T) {
	const idle = time.Second
	for _, tc := range []struct {
		name      string
		keepalive time.Duration
	}{
		{"keepalive off", 0},
		{"keepalive every 1s", time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			be := startH3Backend(t, 100, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.WriteString(w, "ok")
			}))
			sc := testutil.StartSidecar(t, testutil.MustH3UpstreamBootstrap(t, testutil.H3UpstreamParams{
				ListenerName: "ingress", Cluster: "h3up", UpstreamAddr: be.Addr, TrustedCA: be.BundleFile, PeerSAN: h3ServerID,
				IdleTimeout: idle, Keepalive: &tc.keepalive, RouteTimeout: 10 * time.Second, ConnectTimeout: 2 * time.Second,
			}))
			c := h2cClient(t)
			url := "http://" + sc.ListenerAddr(t, "ingress") + "/"
			if err := get(c, url, "ok"); err != nil {
				t.Fatal(err)
			}
			opened := time.Now()
			const (
				active   = "cluster.h3up.upstream_cx_active"
				timeouts = "cluster.h3up.http3.idle_timeout"
			)
			if tc.keepalive == 0 {
				var st map[string]int64
				for deadline := opened.Add(idle + 10*time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
					if st = sc.Stats(t); st[active] == 0 {
						break
					}
				}
				closedAfter := time.Since(opened)
				if st[active] != 0 || st[timeouts] != 1 {
					t.Fatalf("after %v: %s = %d, %s = %d; want the connection closed by the %v idle timeout", closedAfter, active, st[active], timeouts, st[timeouts], idle)
				}
				// The last packet was received before opened, so the
				// timeout cannot have fired before idle had passed.
				if closedAfter < idle-100*time.Millisecond {
					t.Fatalf("the connection closed %v after its last request, before the %v idle timeout", closedAfter, idle)
				}
				t.Logf("idle connection closed %v after its last request (idle_network_timeout %v)", closedAfter, idle)
				return
			}
			time.Sleep(4 * idle)
			st := sc.Stats(t)
			if st[active] != 1 || st[timeouts] != 0 {
				t.Fatalf("after %v idle: %s = %d, %s = %d; want the connection kept open by keepalive PINGs", time.Since(opened), active, st[active], timeouts, st[timeouts])
			}
			if err := get(c, url, "ok"); err != nil {
				t.Fatal(err)
			}
			if st := sc.Stats(t); st["cluster.h3up.upstream_cx_http3_total"] != 1 || be.conns.Load() != 1 {
				t.Fatalf("%d HTTP/3 connections opened, backend accepted %d; want the one kept alive reused", st["cluster.h3up.upstream_cx_http3_total"], be.conns.Load())
			}
		})
	}
}
