package sidecar

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/proxy/config"
)

// bootstrap returns a bootstrap with one listener named "ingress" on
// 127.0.0.1:port answering every request with body from a direct response,
// and a static cluster so the config has one.
func bootstrap(port int, body string) string {
	return bootstrapOn("127.0.0.1", port, body)
}

// bootstrapOn is bootstrap with the listener on ip.
func bootstrapOn(ip string, port int, body string) string {
	return fmt.Sprintf(`
static_resources:
  listeners:
  - name: ingress
    address: { socket_address: { address: %s, port_value: %d } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                direct_response: { status: 200, body: { inline_string: %q } }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: backend
    type: STATIC
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 9 } } }
`, ip, port, body)
}

func compile(t testing.TB, yaml string) *config.Snapshot {
	t.Helper()
	b, err := config.ParseBootstrap([]byte(yaml), "test.yaml")
	if err != nil {
		t.Fatalf("ParseBootstrap: %v", err)
	}
	snap, err := config.Compile(b)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return snap
}

func start(t testing.TB, snap *config.Snapshot) *Sidecar {
	t.Helper()
	s := New(Options{DrainTime: 2 * time.Second, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := s.Start(snap); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return s
}

func listenerAddr(t testing.TB, s *Sidecar, name string) string {
	t.Helper()
	for _, l := range s.Listeners() {
		if l.Name == name {
			return l.Address.String()
		}
	}
	t.Fatalf("no listener %q", name)
	return ""
}

func get(t *testing.T, c *http.Client, addr string) string {
	t.Helper()
	resp, err := c.Get("http://" + addr + "/")
	if err != nil {
		t.Fatalf("GET %s: %v", addr, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading body: %v", err)
	}
	return string(b)
}

// TestApplySwapsRoutesInPlace shows a config swap that changes only routes
// keeps the listener's socket and its open keep-alive connection, and that
// requests after the swap see the new routes.
func TestApplySwapsRoutesInPlace(t *testing.T) {
	testutil.CheckGoroutines(t)
	s := start(t, compile(t, bootstrap(0, "v1")))
	addr := listenerAddr(t, s, "ingress")

	var conns int
	tr := &http.Transport{DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
		conns++
		return (&net.Dialer{}).DialContext(ctx, network, a)
	}}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	if got := get(t, c, addr); got != "v1" {
		t.Fatalf("before swap: body %q, want v1", got)
	}

	// Same listener address (port 0 as before), new route: swapped in
	// place, still on the port bound the first time.
	if err := s.Apply(compile(t, bootstrap(0, "v2"))); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if got := listenerAddr(t, s, "ingress"); got != addr {
		t.Fatalf("listener moved from %s to %s", addr, got)
	}
	if got := get(t, c, addr); got != "v2" {
		t.Fatalf("after swap: body %q, want v2", got)
	}
	if conns != 1 {
		t.Fatalf("client dialled %d connections, want 1 (the swap must keep connections)", conns)
	}
}

// TestApplyBindFailureKeepsOldConfig shows that a snapshot whose listener
// cannot bind changes nothing: the old listener keeps serving the old
// routes.
func TestApplyBindFailureKeepsOldConfig(t *testing.T) {
	testutil.CheckGoroutines(t)
	s := start(t, compile(t, bootstrap(0, "old")))
	addr := listenerAddr(t, s, "ingress")

	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	_, busyPort, _ := net.SplitHostPort(busy.Addr().String())
	var p int
	fmt.Sscan(busyPort, &p)

	err = s.Apply(compile(t, bootstrap(p, "new")))
	if err == nil {
		t.Fatal("Apply on a busy port succeeded")
	}
	// The operator reads this at start-up and in NACKs: the listener, the
	// address and the reason each once.
	msg := err.Error()
	for _, want := range []string{`listener "ingress"`, busy.Addr().String(), "address already in use"} {
		if n := strings.Count(msg, want); n != 1 {
			t.Errorf("Apply on a busy port: error %q has %q %d times, want once", msg, want, n)
		}
	}
	c := &http.Client{Timeout: 5 * time.Second}
	if got := get(t, c, addr); got != "old" {
		t.Fatalf("after failed apply: body %q, want old", got)
	}
}

// TestStartAdminAddressBusy: a sidecar whose admin.address is taken fails
// to start with an error naming admin.address, the address and the reason,
// each once.
func TestStartAdminAddressBusy(t *testing.T) {
	testutil.CheckGoroutines(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	snap := compile(t, bootstrap(0, "x"))
	snap.Admin = busy.Addr().String()
	s := New(Options{DrainTime: time.Second, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	err = s.Start(snap)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = s.Shutdown(ctx)
	if err == nil {
		t.Fatal("Start with a busy admin.address succeeded")
	}
	msg := err.Error()
	for _, want := range []string{"admin.address", busy.Addr().String(), "address already in use"} {
		if n := strings.Count(msg, want); n != 1 {
			t.Errorf("Start with a busy admin.address: error %q has %q %d times, want once", msg, want, n)
		}
	}
}

// TestApplyMovesListener shows a listener whose address changed is rebound
// and the old socket stops accepting.
func TestApplyMovesListener(t *testing.T) {
	testutil.CheckGoroutines(t)
	s := start(t, compile(t, bootstrap(0, "a")))
	oldAddr := listenerAddr(t, s, "ingress")
	if err := s.Apply(compile(t, bootstrapOn("127.0.0.2", 0, "b"))); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	newAddr := listenerAddr(t, s, "ingress")
	if newAddr == oldAddr {
		t.Fatalf("listener still on %s after its address changed", oldAddr)
	}
	c := &http.Client{Timeout: 5 * time.Second}
	if got := get(t, c, newAddr); got != "b" {
		t.Fatalf("new listener: body %q, want b", got)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", oldAddr, time.Second)
		if err != nil {
			break
		}
		conn.Close()
		if time.Now().After(deadline) {
			t.Fatalf("old listener %s still accepts connections", oldAddr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestReadyAndQuit covers the admin.Backend view: ready after Start, Quit
// closes Done once.
func TestReadyAndQuit(t *testing.T) {
	testutil.CheckGoroutines(t)
	s := start(t, compile(t, bootstrap(0, "x")))
	if !s.Ready() {
		t.Fatal("not ready after Start")
	}
	s.Quit()
	s.Quit()
	select {
	case <-s.Done():
	case <-time.After(time.Second):
		t.Fatal("Done not closed after Quit")
	}
	if s.Draining() {
		t.Fatal("draining before Shutdown")
	}
}

// TestReadyLogged: "sidecar ready" is logged once, when /ready turns LIVE
// (for a static bootstrap without identities: during Start).
func TestReadyLogged(t *testing.T) {
	testutil.CheckGoroutines(t)
	var logs testutil.SyncBuffer
	s := New(Options{DrainTime: time.Second, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err := s.Start(compile(t, bootstrap(0, "x"))); err != nil {
		t.Fatalf("Start: %v", err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	}()
	if !s.Ready() {
		t.Fatal("not ready after Start")
	}
	s.markReady() // a second mark logs nothing
	if n := strings.Count(logs.String(), `msg="sidecar ready"`); n != 1 {
		t.Errorf("%d \"sidecar ready\" lines, want 1:\n%s", n, logs.String())
	}
}
