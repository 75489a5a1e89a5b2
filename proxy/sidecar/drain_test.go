package sidecar

import (
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
)

// egressListener is a second listener, "egress", marked OUTBOUND.
const egressListener = `  - name: egress
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    traffic_direction: OUTBOUND
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: egress
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                direct_response: { status: 200, body: { inline_string: "out" } }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
`

// TestDrainListeners: POST /drain_listeners (Sidecar.DrainListeners), with
// or without ?graceful, stops every listener accepting, so a new
// connection is refused, while the sidecar keeps running until Shutdown;
// with ?inboundonly a listener whose traffic_direction is OUTBOUND keeps
// serving, as in Envoy, so a pod shutting down can still call out.
func TestDrainListeners(t *testing.T) {
	for _, tt := range []struct {
		name                  string
		graceful, inboundOnly bool
		wantEgressServing     bool
	}{
		{name: "immediate"},
		{name: "graceful", graceful: true},
		{name: "inbound only", graceful: true, inboundOnly: true, wantEgressServing: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			boot := strings.Replace(bootstrap(0, "x"), "  clusters:\n", egressListener, 1)
			s := start(t, compile(t, boot))
			in, out := listenerAddr(t, s, "ingress"), listenerAddr(t, s, "egress")
			tr := &http.Transport{}
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
			if got := get(t, c, in); got != "x" {
				t.Fatalf("before the drain: body %q, want x", got)
			}
			s.DrainListeners(tt.graceful, tt.inboundOnly)
			waitRefused(t, in)
			if tt.wantEgressServing {
				tr.CloseIdleConnections() // a new connection, not one accepted before the drain
				if got := get(t, c, out); got != "out" {
					t.Fatalf("OUTBOUND listener after the drain: body %q, want out", got)
				}
			} else {
				waitRefused(t, out)
			}
			select {
			case <-s.Done():
				t.Fatal("draining the listeners quit the sidecar")
			default:
			}
		})
	}
}

// waitRefused waits (up to 5 s) until addr refuses new connections.
func waitRefused(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatalf("listener %s still accepts connections 5s after the drain", addr)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
