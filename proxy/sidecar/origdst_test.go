package sidecar

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
)

// origDstBootstrap has an HTTP listener routing to an ORIGINAL_DST cluster
// that honours x-envoy-original-dst-host, and a tcp_proxy listener whose
// ORIGINAL_DST cluster overrides the port of the connection's destination
// with tcpPort (without netfilter the destination is the listener's own
// address: the override turns it into the backend's).
func origDstBootstrap(tcpPort int) string {
	return fmt.Sprintf(`
static_resources:
  listeners:
  - name: http
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: http
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: by_header }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  - name: tcp
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    use_original_dst: true
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: tcp, cluster: passthrough}
  clusters:
  - name: by_header
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 1s
    original_dst_lb_config: { use_http_header: true }
  - name: passthrough
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 1s
    original_dst_lb_config: { upstream_port_override: %d }
`, tcpPort)
}

// TestOriginalDstCluster sends HTTP requests through an ORIGINAL_DST
// cluster chosen by header, and TCP connections through one chosen by the
// connection's destination (port overridden), and checks the hosts are
// created once per destination and reused.
func TestOriginalDstCluster(t *testing.T) {
	testutil.CheckGoroutines(t)
	backend := testutil.StartEchoBackend(t)
	tcpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcpLn.Close()
	go func() {
		for {
			c, err := tcpLn.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				line, _ := bufio.NewReader(c).ReadString('\n')
				_, _ = io.WriteString(c, "tcp:"+line)
			}()
		}
	}()

	s := start(t, compile(t, origDstBootstrap(tcpLn.Addr().(*net.TCPAddr).Port)))
	httpAddr, tcpAddr := listenerAddr(t, s, "http"), listenerAddr(t, s, "tcp")
	client := &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()

	tests := []struct {
		name       string
		header     string // x-envoy-original-dst-host; "" = none
		wantStatus int
	}{
		{name: "header to backend", header: backend.Addr, wantStatus: 200},
		{name: "same destination again", header: backend.Addr, wantStatus: 200},
		{name: "header not an IP:port", header: "backend.local:80", wantStatus: 503},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest("GET", "http://"+httpAddr+"/echo", nil)
			if err != nil {
				t.Fatal(err)
			}
			if tt.header != "" {
				req.Header.Set("x-envoy-original-dst-host", tt.header)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatalf("GET: %v", err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status %d, want %d", resp.StatusCode, tt.wantStatus)
			}
		})
	}
	if hs := s.clusters.Get("by_header").Hosts(); len(hs) != 1 || hs[0].Addr != backend.Addr {
		t.Errorf("by_header hosts = %v, want one host %s (created once, reused)", hs, backend.Addr)
	}

	for i := range 3 {
		c, err := net.DialTimeout("tcp", tcpAddr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := fmt.Fprintf(c, "hello %d\n", i); err != nil {
			t.Fatal(err)
		}
		got, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if want := fmt.Sprintf("tcp:hello %d\n", i); err != nil || got != want {
			t.Fatalf("tcp_proxy through ORIGINAL_DST: got %q, %v; want %q", got, err, want)
		}
	}
	hs := s.clusters.Get("passthrough").Hosts()
	if len(hs) != 1 || !strings.HasSuffix(hs[0].Addr, fmt.Sprintf(":%d", tcpLn.Addr().(*net.TCPAddr).Port)) {
		t.Errorf("passthrough hosts = %v, want one host on the override port", hs)
	}
}
