package tcpproxy_test

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/proxy/stats"
	"meshd.dev/meshd/proxy/tcpproxy"
	"meshd.dev/meshd/proxy/upstream"
)

// testTimeout bounds every blocking step of a test.
const testTimeout = 10 * time.Second

// harness runs a tcp_proxy filter behind a plain accept loop on 127.0.0.1.
type harness struct {
	addr  string
	store *stats.Store
	proxy *tcpproxy.Proxy
}

// start serves cfg with the given clusters (name → endpoint addresses) and
// tears everything down, connections included, when the test ends.
func start(t *testing.T, cfg *tcpproxy.Config, clusters map[string][]string) *harness {
	t.Helper()
	store := stats.NewStore()
	logger := slog.New(slog.DiscardHandler)
	mgr := upstream.NewManager(store, logger)
	var specs []*upstream.Spec
	for name, eps := range clusters {
		specs = append(specs, clusterSpec(t, name, eps))
	}
	mgr.Apply(specs)
	p := tcpproxy.New(cfg, mgr, store, logger)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []stream.ServerConn
		wg    sync.WaitGroup
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			sc := p.NewConn(c, stream.ConnInfo{LocalAddr: c.LocalAddr(), RemoteAddr: c.RemoteAddr(), Proto: "TCP"})
			mu.Lock()
			conns = append(conns, sc)
			mu.Unlock()
			wg.Go(func() { _ = sc.Serve() })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, sc := range conns {
			sc.Close()
		}
		mu.Unlock()
		wg.Wait()
		mgr.Close()
	})
	return &harness{addr: ln.Addr().String(), store: store, proxy: p}
}

func clusterSpec(t *testing.T, name string, eps []string) *upstream.Spec {
	t.Helper()
	var lbs []*endpointv3.LbEndpoint
	for _, ep := range eps {
		host, port, err := net.SplitHostPort(ep)
		if err != nil {
			t.Fatal(err)
		}
		p, _ := strconv.Atoi(port)
		lbs = append(lbs, &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(p)},
			}}},
		}}})
	}
	spec, err := upstream.CompileCluster(&clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(time.Second),
		LbPolicy:             clusterv3.Cluster_ROUND_ROBIN,
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: name,
			Endpoints:   []*endpointv3.LocalityLbEndpoints{{LbEndpoints: lbs}},
		},
	})
	if err != nil {
		t.Fatalf("cluster %s: %v", name, err)
	}
	return spec
}

// config compiles a tcp_proxy with stat_prefix "test" to cluster
// "backend", changed by mutate.
func config(t *testing.T, mutate func(*tcpproxyv3.TcpProxy)) *tcpproxy.Config {
	t.Helper()
	tp := &tcpproxyv3.TcpProxy{StatPrefix: "test", ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: "backend"}}
	if mutate != nil {
		mutate(tp)
	}
	c, err := tcpproxy.Compile(tp)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return c
}

// serveTCP runs handle for each connection to a fresh 127.0.0.1 listener
// until the test ends.
func serveTCP(t *testing.T, handle func(c *net.TCPConn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				handle(c.(*net.TCPConn))
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// echo copies what it reads back and half-closes after the peer's FIN.
func echo(c *net.TCPConn) {
	if _, err := io.Copy(c, c); err == nil {
		_ = c.CloseWrite()
	}
}

// deadAddr returns a 127.0.0.1 address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func dial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.SetDeadline(time.Now().Add(testTimeout)); err != nil {
		t.Fatal(err)
	}
	return c.(*net.TCPConn)
}

// counter returns the value of the counter or gauge with flat name, 0
// when it does not exist.
func counter(h *harness, flat string) int64 {
	var v int64
	h.store.Visit(func(c *stats.Counter) {
		if c.FlatName() == flat {
			v = int64(c.Value())
		}
	}, func(g *stats.Gauge) {
		if g.FlatName() == flat {
			v = g.Value()
		}
	}, nil)
	return v
}

// eventually polls cond until it holds or testTimeout passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestEcho(t *testing.T) {
	testutil.CheckGoroutines(t)
	backend := serveTCP(t, echo)
	h := start(t, config(t, nil), map[string][]string{"backend": {backend}})

	c := dial(t, h.addr)
	msg := []byte("hello through tcp_proxy")
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo = %q, want %q", got, msg)
	}
	n := int64(len(msg))
	for name, want := range map[string]int64{
		"tcp.test.downstream_cx_total":               1,
		"tcp.test.downstream_cx_rx_bytes_total":      n,
		"tcp.test.downstream_cx_tx_bytes_total":      n,
		"cluster.backend.upstream_cx_total":          1,
		"cluster.backend.upstream_cx_tx_bytes_total": n,
		"cluster.backend.upstream_cx_rx_bytes_total": n,
		"cluster.backend.upstream_cx_destroy":        1,
	} {
		eventually(t, fmt.Sprintf("%s == %d", name, want), func() bool { return counter(h, name) == want })
	}
	eventually(t, "upstream_cx_active 0", func() bool { return counter(h, "cluster.backend.upstream_cx_active") == 0 })
}

func TestHalfClose(t *testing.T) {
	tests := []struct {
		name string
		// server runs on the upstream side; client on the downstream side.
		// Each returns what it read from its peer.
		server, client func(c *net.TCPConn) ([]byte, error)
		wantServer     string
		wantClient     string
	}{
		{
			// Downstream finishes first: the request's FIN reaches the
			// server, whose reply still reaches the client.
			name: "downstream FIN first",
			client: func(c *net.TCPConn) ([]byte, error) {
				if _, err := c.Write([]byte("request")); err != nil {
					return nil, err
				}
				if err := c.CloseWrite(); err != nil {
					return nil, err
				}
				return io.ReadAll(c)
			},
			server: func(c *net.TCPConn) ([]byte, error) {
				got, err := io.ReadAll(c)
				if err != nil {
					return got, err
				}
				if _, err := c.Write([]byte("reply after FIN")); err != nil {
					return got, err
				}
				return got, c.CloseWrite()
			},
			wantServer: "request",
			wantClient: "reply after FIN",
		},
		{
			// Upstream finishes first: its banner and FIN reach the
			// client, which can still send afterwards.
			name: "upstream FIN first",
			client: func(c *net.TCPConn) ([]byte, error) {
				got, err := io.ReadAll(c)
				if err != nil {
					return got, err
				}
				if _, err := c.Write([]byte("sent after server FIN")); err != nil {
					return got, err
				}
				return got, c.CloseWrite()
			},
			server: func(c *net.TCPConn) ([]byte, error) {
				if _, err := c.Write([]byte("banner")); err != nil {
					return nil, err
				}
				if err := c.CloseWrite(); err != nil {
					return nil, err
				}
				return io.ReadAll(c)
			},
			wantServer: "sent after server FIN",
			wantClient: "banner",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			type result struct {
				got []byte
				err error
			}
			serverDone := make(chan result, 1)
			backend := serveTCP(t, func(c *net.TCPConn) {
				_ = c.SetDeadline(time.Now().Add(testTimeout))
				got, err := tt.server(c)
				serverDone <- result{got, err}
			})
			h := start(t, config(t, nil), map[string][]string{"backend": {backend}})
			got, err := tt.client(dial(t, h.addr))
			if err != nil {
				t.Fatalf("client: %v", err)
			}
			if string(got) != tt.wantClient {
				t.Errorf("client read %q, want %q", got, tt.wantClient)
			}
			select {
			case r := <-serverDone:
				if r.err != nil {
					t.Fatalf("server: %v", r.err)
				}
				if string(r.got) != tt.wantServer {
					t.Errorf("server read %q, want %q", r.got, tt.wantServer)
				}
			case <-time.After(testTimeout):
				t.Fatal("server did not finish")
			}
		})
	}
}

func TestIdleTimeout(t *testing.T) {
	testutil.CheckGoroutines(t)
	backend := serveTCP(t, echo)
	// Exchanges every pace keep the connection open for rounds*pace, 2.5
	// idle periods. idle is ten paces, so only a stall of the test or the
	// proxy longer than 450 ms closes an active connection: a loaded
	// 2-core machine running -race stalls them past the 100 ms an idle of
	// three paces left.
	const (
		pace   = 50 * time.Millisecond
		idle   = 10 * pace
		rounds = 25
	)
	h := start(t, config(t, func(tp *tcpproxyv3.TcpProxy) { tp.IdleTimeout = durationpb.New(idle) }),
		map[string][]string{"backend": {backend}})

	c := dial(t, h.addr)
	buf := make([]byte, 1)
	last := time.Now()
	for i := range rounds {
		if _, err := c.Write([]byte{byte(i)}); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatalf("read %d (closed while active, %v after the previous exchange): %v", i, time.Since(last), err)
		}
		last = time.Now()
		time.Sleep(pace)
	}
	if n := counter(h, "tcp.test.idle_timeout"); n != 0 {
		t.Fatalf("idle_timeout = %d while active", n)
	}
	// Then silence: the proxy closes the connection.
	start := time.Now()
	if n, err := c.Read(buf); err == nil {
		t.Fatalf("read %d bytes, want the connection closed", n)
	}
	if d := time.Since(start); d > testTimeout/2 {
		t.Fatalf("closed after %v, want about %v", d, idle)
	}
	eventually(t, "idle_timeout counted", func() bool { return counter(h, "tcp.test.idle_timeout") == 1 })
}

func TestConnectAttempts(t *testing.T) {
	tests := []struct {
		name     string
		attempts uint32
		hosts    func(live, dead string) []string
		conns    int
		wantOK   bool
		// upstream_cx_connect_fail is in [minFailures, maxFailures]: round
		// robin decides how often the dead host comes first.
		minFailures, maxFailures int64
	}{
		{"dead host then live host", 2, func(live, dead string) []string { return []string{dead, live} }, 4, true, 1, 4},
		{"one attempt on a dead host", 1, func(_, dead string) []string { return []string{dead} }, 1, false, 1, 1},
		{"retries exhausted on one dead host", 3, func(_, dead string) []string { return []string{dead} }, 1, false, 3, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			live := serveTCP(t, echo)
			h := start(t, config(t, func(tp *tcpproxyv3.TcpProxy) { tp.MaxConnectAttempts = wrapperspb.UInt32(tt.attempts) }),
				map[string][]string{"backend": tt.hosts(live, deadAddr(t))})
			for i := range tt.conns {
				c := dial(t, h.addr)
				msg := fmt.Appendf(nil, "conn %d", i)
				_, _ = c.Write(msg)
				_ = c.CloseWrite()
				got, err := io.ReadAll(c)
				if tt.wantOK && (err != nil || !bytes.Equal(got, msg)) {
					t.Fatalf("conn %d: got %q, %v; want %q", i, got, err, msg)
				}
				if !tt.wantOK && len(got) != 0 {
					t.Fatalf("conn %d: got %q from a cluster with no live host", i, got)
				}
			}
			eventually(t, "connect failures counted", func() bool {
				return counter(h, "cluster.backend.upstream_cx_connect_fail") >= tt.minFailures
			})
			if n := counter(h, "cluster.backend.upstream_cx_connect_fail"); n > tt.maxFailures {
				t.Errorf("upstream_cx_connect_fail = %d, want at most %d", n, tt.maxFailures)
			}
			if !tt.wantOK && counter(h, "cluster.backend.upstream_cx_total") != 0 {
				t.Errorf("upstream_cx_total = %d with no live host", counter(h, "cluster.backend.upstream_cx_total"))
			}
		})
	}
}

func TestLargeTransferBothWays(t *testing.T) {
	testutil.CheckGoroutines(t)
	backend := serveTCP(t, echo)
	h := start(t, config(t, nil), map[string][]string{"backend": {backend}})
	payload := make([]byte, 10<<20)
	if _, err := rand.Read(payload); err != nil {
		t.Fatal(err)
	}
	c := dial(t, h.addr)
	writeErr := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.CloseWrite()
		}
		writeErr <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if err := <-writeErr; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("echoed %d bytes, not the %d sent", len(got), len(payload))
	}
	eventually(t, "byte counters", func() bool {
		return counter(h, "tcp.test.downstream_cx_rx_bytes_total") == int64(len(payload)) &&
			counter(h, "tcp.test.downstream_cx_tx_bytes_total") == int64(len(payload))
	})
}

func TestWeightedClusters(t *testing.T) {
	testutil.CheckGoroutines(t)
	reply := func(s string) func(c *net.TCPConn) {
		return func(c *net.TCPConn) { _, _ = c.Write([]byte(s)) }
	}
	a, b := serveTCP(t, reply("a")), serveTCP(t, reply("b"))
	h := start(t, config(t, func(tp *tcpproxyv3.TcpProxy) {
		tp.ClusterSpecifier = &tcpproxyv3.TcpProxy_WeightedClusters{WeightedClusters: &tcpproxyv3.TcpProxy_WeightedCluster{
			Clusters: []*tcpproxyv3.TcpProxy_WeightedCluster_ClusterWeight{{Name: "a", Weight: 1}, {Name: "b", Weight: 1}},
		}}
	}), map[string][]string{"a": {a}, "b": {b}})
	seen := map[string]int{}
	// With equal weights, 40 connections all going to one cluster has
	// probability 2^-39.
	for range 40 {
		got, err := io.ReadAll(dial(t, h.addr))
		if err != nil {
			t.Fatal(err)
		}
		seen[string(got)]++
	}
	if seen["a"] == 0 || seen["b"] == 0 || seen["a"]+seen["b"] != 40 {
		t.Fatalf("connections per cluster = %v, want both a and b and 40 in all", seen)
	}
}

func TestNoRoute(t *testing.T) {
	testutil.CheckGoroutines(t)
	h := start(t, config(t, nil), map[string][]string{"other": {deadAddr(t)}})
	if got, err := io.ReadAll(dial(t, h.addr)); err != nil || len(got) != 0 {
		t.Fatalf("read %q, %v; want a clean close", got, err)
	}
	eventually(t, "downstream_cx_no_route", func() bool { return counter(h, "tcp.test.downstream_cx_no_route") == 1 })
}

// TestUpstreamFlush: downstream resets while its bytes are still being
// written to an upstream that is not reading. When the proxy then fails to
// write upstream's next bytes to downstream, it counts a flush, keeps the
// upstream connection until the pending write completes, then closes it.
func TestUpstreamFlush(t *testing.T) {
	testutil.CheckGoroutines(t)
	downClosed := make(chan struct{})
	release := make(chan struct{})
	received := make(chan int64, 1)
	backend := serveTCP(t, func(c *net.TCPConn) {
		_ = c.SetDeadline(time.Now().Add(testTimeout))
		_, _ = c.Write([]byte("x"))
		<-downClosed
		// Keep talking to the gone downstream until the proxy notices.
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-release:
				n, _ := io.Copy(io.Discard, c)
				received <- n
				return
			case <-tick.C:
				if _, err := c.Write([]byte("y")); err != nil {
					received <- -1
					return
				}
			}
		}
	})
	h := start(t, config(t, nil), map[string][]string{"backend": {backend}})
	c := dial(t, h.addr)
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	// Fill the path until the proxy's upstream write blocks.
	sent := 0
	for {
		_ = c.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
		n, err := c.Write(make([]byte, 64<<10))
		sent += n
		if err != nil {
			break
		}
		if sent > 256<<20 {
			t.Fatal("upstream never pushed back")
		}
	}
	_ = c.SetLinger(0) // close with RST
	c.Close()
	close(downClosed)
	eventually(t, "upstream_flush_total 1", func() bool { return counter(h, "tcp.test.upstream_flush_total") == 1 })
	if n := counter(h, "tcp.test.upstream_flush_active"); n != 1 {
		t.Fatalf("upstream_flush_active = %d during the flush, want 1", n)
	}
	close(release)
	select {
	case n := <-received:
		if n <= 0 {
			t.Fatalf("upstream read %d bytes after release, want the flushed data", n)
		}
	case <-time.After(testTimeout):
		t.Fatal("upstream connection was not closed after the flush")
	}
	eventually(t, "upstream_flush_active 0", func() bool { return counter(h, "tcp.test.upstream_flush_active") == 0 })
}
