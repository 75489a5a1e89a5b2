package e2e

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
)

// tcpBootstrap is a static bootstrap with one tcp_proxy listener in front
// of cluster "backend" (endpoints dead, then live), retrying a failed
// connect on the other host.
const tcpBootstrap = `
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
static_resources:
  listeners:
  - name: tcp_in
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp_in
          cluster: backend
          idle_timeout: 30s
          max_connect_attempts: 2
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 1s
    lb_policy: ROUND_ROBIN
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: %d } } }
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: %d } } }
`

// startTCPEcho serves, on 127.0.0.1, a byte echo that half-closes after
// the client's FIN, until the test ends.
func startTCPEcho(t *testing.T) *net.TCPAddr {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(time.Minute))
				if _, err := io.Copy(c, c); err == nil {
					_ = c.(*net.TCPConn).CloseWrite()
				}
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().(*net.TCPAddr)
}

// TestTCPProxy runs a real `meshd sidecar` with a tcp_proxy listener: a
// connect failure on the first host is retried on the second, 10 MiB go
// both ways with the client's half-close passed on, and the tcp_proxy and
// cluster stats count it.
func TestTCPProxy(t *testing.T) {
	testutil.CheckGoroutines(t)
	echo := startTCPEcho(t)
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadPort := dead.Addr().(*net.TCPAddr).Port
	dead.Close()

	sc := testutil.StartSidecar(t, fmt.Sprintf(tcpBootstrap, deadPort, echo.Port))
	addr := sc.ListenerAddr(t, "tcp_in")

	payload := make([]byte, bigBodySize)
	if _, err := rand.Read(payload); err != nil {
		t.Fatal(err)
	}
	const conns = 3
	for i := range conns {
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		writeErr := make(chan error, 1)
		go func() {
			_, err := c.Write(payload)
			if err == nil {
				err = c.(*net.TCPConn).CloseWrite()
			}
			writeErr <- err
		}()
		got, err := io.ReadAll(c)
		c.Close()
		if err != nil {
			t.Fatalf("conn %d: read: %v", i, err)
		}
		if err := <-writeErr; err != nil {
			t.Fatalf("conn %d: write: %v", i, err)
		}
		if !bytes.Equal(got, payload) {
			t.Fatalf("conn %d: echoed %d bytes, not the %d sent", i, len(got), len(payload))
		}
	}

	// Stats settle once the proxy has seen both sides close.
	want := map[string]int64{
		"tcp.tcp_in.downstream_cx_total":          conns,
		"tcp.tcp_in.downstream_cx_rx_bytes_total": conns * bigBodySize,
		"tcp.tcp_in.downstream_cx_tx_bytes_total": conns * bigBodySize,
		"cluster.backend.upstream_cx_total":       conns,
		"cluster.backend.upstream_cx_active":      0,
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := sc.Stats(t)
		var diff []string
		for name, v := range want {
			if st[name] != v {
				diff = append(diff, fmt.Sprintf("%s = %d, want %d", name, st[name], v))
			}
		}
		fails := st["cluster.backend.upstream_cx_connect_fail"]
		if fails < 1 || fails > conns {
			diff = append(diff, fmt.Sprintf("upstream_cx_connect_fail = %d, want 1..%d (round robin meets the dead host first on some connections)", fails, conns))
		}
		if len(diff) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats: %v", diff)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
