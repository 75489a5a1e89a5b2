package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/proxy/stats"
)

const testTimeout = 10 * time.Second

// testSpec is an HTTP/2 cluster spec with Envoy's defaults, changed by mod.
func testSpec(mod func(*Spec)) *Spec {
	s := &Spec{
		Name:           "backend",
		LBPolicy:       "ROUND_ROBIN",
		ConnectTimeout: time.Second,
		Protocol:       HTTP2,
		Thresholds: Thresholds{
			MaxConnections: 1024, MaxPendingRequests: 1024, MaxRequests: 1024, MaxRetries: 3,
		},
		PreconnectRatio: 1,
	}
	if mod != nil {
		mod(s)
	}
	return s
}

// newTestPool returns a pool for addr with its own stats store.
func newTestPool(t *testing.T, addr string, spec *Spec) *h2Pool {
	t.Helper()
	st := NewStats(stats.NewStore(), spec.Name)
	p := newH2Pool(addr, spec, st, newPoolShared(spec, st), slog.New(slog.DiscardHandler))
	t.Cleanup(func() { p.Close() })
	return p
}

func request(path string) *stream.Request {
	return &stream.Request{Method: "GET", Scheme: "http", Authority: "backend", Path: path, Header: header.Make(0), EndStream: true}
}

// roundTrip opens a stream on p and reads its response to the end.
func roundTrip(ctx context.Context, p *h2Pool, path string) error {
	s, err := p.NewStream(ctx, request(path), true)
	if err != nil {
		return err
	}
	resp, err := s.Response(ctx)
	if err != nil {
		return err
	}
	if resp.Status != 200 {
		return fmt.Errorf("status %d", resp.Status)
	}
	_, err = io.Copy(io.Discard, s)
	return err
}

// TestH2PoolCapacity: 9 concurrent streams to a peer advertising
// MAX_CONCURRENT_STREAMS=3 use exactly ceil(9/3)=3 connections, and a local
// max_concurrent_streams of 2 below the peer's 3 makes it ceil(9/2)=5.
func TestH2PoolCapacity(t *testing.T) {
	tests := []struct {
		name      string
		peerMCS   uint32
		localMCS  uint32
		streams   int
		wantConns int64
	}{
		{"peer limit", 3, 0, 9, 3},
		{"local limit below peer", 3, 2, 9, 5},
		{"cold burst", 10, 0, 100, 10},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			srv := startRawServer(t, tc.peerMCS)
			hold := make(chan struct{})
			srv.hold = hold
			var once sync.Once
			release := func() { once.Do(func() { close(hold) }) }
			t.Cleanup(release)
			p := newTestPool(t, srv.addr(), testSpec(func(s *Spec) { s.HTTP2.MaxConcurrentStreams = tc.localMCS }))
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			errs := make(chan error, tc.streams)
			for i := range tc.streams {
				go func() { errs <- roundTrip(ctx, p, fmt.Sprintf("/%d", i)) }()
			}
			waitFor(t, testTimeout, "every stream to reach the server", func() bool { return len(srv.requestPaths()) == tc.streams })
			if got := srv.accepted.Load(); got != tc.wantConns {
				t.Errorf("connections accepted = %d, want %d", got, tc.wantConns)
			}
			release()
			for range tc.streams {
				if err := <-errs; err != nil {
					t.Errorf("stream: %v", err)
				}
			}
			if got := p.sh.stats.rqPendingActive.Value(); got != 0 {
				t.Errorf("upstream_rq_pending_active = %d after the streams ended, want 0", got)
			}
		})
	}
}

// TestH2PoolQueueFIFO: with one connection of one stream, queued streams
// get the slot in arrival order, and one whose deadline passes while
// queued fails with a CANCEL error, leaving the queue.
func TestH2PoolQueueFIFO(t *testing.T) {
	testutil.CheckGoroutines(t)
	srv := startRawServer(t, 1)
	p := newTestPool(t, srv.addr(), testSpec(func(s *Spec) { s.Thresholds.MaxConnections = 1 }))
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()

	// The first stream holds the only slot until its response is read;
	// the raw server answers at once, so hold the slot on our side by
	// not ending the request.
	first, err := p.NewStream(ctx, request("/first"), false)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = roundTrip(ctx, p, fmt.Sprintf("/q%d", i))
		}()
		waitFor(t, testTimeout, "the stream to queue", func() bool { return p.sh.stats.rqPendingActive.Value() == int64(i+1) })
	}
	// A fourth with a short deadline gives up while queued.
	short, cancelShort := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancelShort()
	_, err = p.NewStream(short, request("/short"), true)
	if !errors.Is(err, context.DeadlineExceeded) || stream.CodeOf(err) != stream.ErrCodeCancel {
		t.Errorf("queued stream past its deadline: err = %v, want CANCEL wrapping context.DeadlineExceeded", err)
	}
	if got := p.sh.stats.rqPendingActive.Value(); got != 3 {
		t.Errorf("upstream_rq_pending_active = %d after the deadline, want 3", got)
	}
	if err := first.CloseWrite(header.Header{}); err != nil {
		t.Fatal(err)
	}
	if _, err := first.Response(ctx); err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, first)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("queued stream %d: %v", i, err)
		}
	}
	want := []string{"/first", "/q0", "/q1", "/q2"}
	if got := srv.requestPaths(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("server saw %v, want FIFO order %v", got, want)
	}
	if got := p.sh.stats.rqPendingTotal.Value(); got != 5 {
		t.Errorf("upstream_rq_pending_total = %d, want 5 (the first waited for the connection, 3 served, 1 expired)", got)
	}
	if got := p.sh.stats.streamWait.Snapshot().Count; got != 4 {
		t.Errorf("upstream_rq_stream_wait_ms samples = %d, want 4 (one per opened stream)", got)
	}
}

// TestH2PoolOverflow: beyond max_pending_requests (streams queued) or
// max_requests (streams active), NewStream fails at once with ErrOverflow
// and counts upstream_rq_pending_overflow.
func TestH2PoolOverflow(t *testing.T) {
	tests := []struct {
		name       string
		th         Thresholds
		openFirst  int // streams opened and kept open
		queueFirst int // streams left waiting
	}{
		{"max_pending_requests", Thresholds{MaxConnections: 1, MaxPendingRequests: 1, MaxRequests: 1024}, 1, 1},
		{"max_requests", Thresholds{MaxConnections: 4, MaxPendingRequests: 1024, MaxRequests: 2}, 2, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			srv := startRawServer(t, 1)
			p := newTestPool(t, srv.addr(), testSpec(func(s *Spec) { s.Thresholds = tc.th }))
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			var open []stream.ClientStream
			for i := range tc.openFirst {
				s, err := p.NewStream(ctx, request(fmt.Sprint("/open", i)), false)
				if err != nil {
					t.Fatal(err)
				}
				open = append(open, s)
			}
			qctx, qcancel := context.WithCancel(ctx)
			var wg sync.WaitGroup
			for range tc.queueFirst {
				wg.Add(1)
				go func() { defer wg.Done(); _, _ = p.NewStream(qctx, request("/queued"), true) }()
			}
			waitFor(t, testTimeout, "streams to queue", func() bool { return p.sh.stats.rqPendingActive.Value() == int64(tc.queueFirst) })
			start := time.Now()
			_, err := p.NewStream(ctx, request("/over"), true)
			if !errors.Is(err, ErrOverflow) {
				t.Fatalf("err = %v, want ErrOverflow", err)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("overflow took %v; it must fail fast", d)
			}
			if got := p.sh.stats.rqPendingOverflow.Value(); got != 1 {
				t.Errorf("upstream_rq_pending_overflow = %d, want 1", got)
			}
			qcancel()
			wg.Wait()
			for _, s := range open {
				s.Reset(stream.ErrCodeCancel)
			}
		})
	}
}

// TestH2PoolMaxConnectionsClusterWide: max_connections counts the
// connections of every host of the cluster. With a limit of 2 and two
// streams held on host A (peer limit 1 stream per connection), a stream to
// host B finds no connection allowed: it queues, counting
// upstream_cx_pool_overflow, and gets a connection when A's are gone.
func TestH2PoolMaxConnectionsClusterWide(t *testing.T) {
	testutil.CheckGoroutines(t)
	a, b := startRawServer(t, 1), startRawServer(t, 1)
	spec := testSpec(func(s *Spec) {
		s.Thresholds.MaxConnections = 2
		for _, srv := range []*rawServer{a, b} {
			host, port, _ := net.SplitHostPort(srv.addr())
			var n int
			fmt.Sscan(port, &n)
			s.Endpoints = append(s.Endpoints, Endpoint{Host: host, Port: n, Weight: 1})
		}
	})
	c := newCluster(spec, stats.NewStore(), slog.New(slog.DiscardHandler))
	t.Cleanup(c.drain)
	hosts := c.Hosts()
	pa, pb := hosts[0].pool.(*h2Pool), hosts[1].pool.(*h2Pool)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	var held []stream.ClientStream
	for i := range 2 {
		s, err := pa.NewStream(ctx, request(fmt.Sprint("/a", i)), false)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, s)
	}
	done := make(chan error, 1)
	go func() { done <- roundTrip(ctx, pb, "/b") }()
	waitFor(t, testTimeout, "the stream to host B to queue", func() bool { return c.pools.stats.rqPendingActive.Value() == 1 })
	if got := b.accepted.Load(); got != 0 {
		t.Errorf("host B accepted %d connections while the cluster was at max_connections", got)
	}
	if c.pools.stats.cxPoolOverflow.Value() == 0 {
		t.Error("upstream_cx_pool_overflow = 0, want > 0")
	}
	for _, s := range held {
		s.Reset(stream.ErrCodeCancel)
	}
	pa.Close() // frees the cluster's connection slots, which wakes host B's pool
	if err := <-done; err != nil {
		t.Fatalf("stream to host B: %v", err)
	}
	if got := b.accepted.Load(); got != 1 {
		t.Errorf("host B accepted %d connections, want 1", got)
	}
}

// TestH2PoolLoweredMaxConcurrentStreams: a peer that lowers
// MAX_CONCURRENT_STREAMS from 4 to 1 mid-connection with one stream open
// leaves no free slot, so the next stream opens a second connection
// instead of being refused.
func TestH2PoolLoweredMaxConcurrentStreams(t *testing.T) {
	testutil.CheckGoroutines(t)
	srv := startRawServer(t, 4)
	p := newTestPool(t, srv.addr(), testSpec(nil))
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	s1, err := p.NewStream(ctx, request("/1"), false)
	if err != nil {
		t.Fatal(err)
	}
	defer s1.Reset(stream.ErrCodeCancel)
	waitFor(t, testTimeout, "the peer's SETTINGS", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.limitHint == 4
	})
	if err := srv.conn(0).setMCS(1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, testTimeout, "the lowered limit", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.limitHint == 1
	})
	if err := roundTrip(ctx, p, "/2"); err != nil {
		t.Fatal(err)
	}
	if got := srv.accepted.Load(); got != 2 {
		t.Errorf("connections = %d, want 2 (the first is full at the lowered limit)", got)
	}
}

// TestH2PoolDialBackoff: streams to a dead port (one that never accepted)
// fail fast with a connect failure, and over 600 ms of callers retrying every 5 ms (about 120 calls)
// the pool dials at most 12 times (backoff 25 ms doubling to 1 s, full
// jitter: even with no jitter at all the delays 25+50+100+200+400 ms
// allow 5 dials in 600 ms; 12 leaves room for scheduling).
func TestH2PoolDialBackoff(t *testing.T) {
	testutil.CheckGoroutines(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	p := newTestPool(t, addr, testSpec(nil))
	calls := 0
	for end := time.Now().Add(600 * time.Millisecond); time.Now().Before(end); calls++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		start := time.Now()
		_, err := p.NewStream(ctx, request("/"), true)
		cancel()
		var se *stream.Error
		if !errors.As(err, &se) || se.Reason != "connect failure" || !se.Unprocessed {
			t.Fatalf("err = %v, want an unprocessed connect failure", err)
		}
		if d := time.Since(start); d > 500*time.Millisecond {
			t.Fatalf("a stream to a dead endpoint took %v to fail", d)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := p.stats.CxConnectFail.Value(); got == 0 || got > 12 {
		t.Errorf("upstream_cx_connect_fail = %d after %d calls, want 1..12", got, calls)
	}
}

// TestH2PoolRestartGap: once the endpoint has served and its connection
// is gone (GOAWAY, close), refused dials (a server restarting in place:
// nothing listens for a moment) hold the queued streams for the next
// attempts, within restartHold, instead of failing them, so they all
// succeed on the replacement over one new connection; refusals past the
// hold, or timed-out dials (a dead or hung host), fail them with a connect
// failure. The failing dials are injected in front of the pool's real
// connect; the server is up throughout.
func TestH2PoolRestartGap(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	timedOut := fmt.Errorf("connect: %w", context.DeadlineExceeded)
	tests := []struct {
		name     string
		failures int32 // how many dials fail before the real connect (-1: all)
		err      error // how they fail
		wantOK   bool
	}{
		{"refused once", 1, refused, true},
		// Backoffs of at most 50 and 100 ms: well within restartHold.
		{"refused twice", 2, refused, true},
		{"refused past the hold", -1, refused, false},
		{"timed out", -1, timedOut, false},
	}
	const streams = 8
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			srv := startRawServer(t, 100)
			p := newTestPool(t, srv.addr(), testSpec(nil))
			var failing atomic.Bool
			var dials atomic.Int32 // while failing
			connect := p.connect
			p.connect = func(pc *pconn) error {
				if !failing.Load() {
					return connect(pc)
				}
				if n := dials.Add(1); tc.failures < 0 || n <= tc.failures {
					return tc.err
				}
				return connect(pc)
			}
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			if err := roundTrip(ctx, p, "/before"); err != nil {
				t.Fatal(err)
			}
			failing.Store(true)
			srv.conn(0).goAway(http2.ErrCodeNo, "restart")
			waitFor(t, testTimeout, "the connection to go away", func() bool {
				p.mu.Lock()
				defer p.mu.Unlock()
				return !p.hasUsableLocked()
			})
			errs := make(chan error, streams)
			for i := range streams {
				go func() { errs <- roundTrip(ctx, p, fmt.Sprintf("/%d", i)) }()
			}
			for range streams {
				err := <-errs
				var se *stream.Error
				switch {
				case tc.wantOK && err != nil:
					t.Errorf("stream failed across the restart gap: %v", err)
				case !tc.wantOK && (!errors.As(err, &se) || se.Reason != "connect failure" || !se.Unprocessed):
					t.Errorf("err = %v, want an unprocessed connect failure", err)
				}
			}
			if tc.wantOK {
				if got, want := dials.Load(), tc.failures+1; got != want {
					t.Errorf("dials after the GOAWAY = %d, want %d (the refused ones, then the one that served)", got, want)
				}
				if got := srv.accepted.Load(); got != 2 {
					t.Errorf("connections accepted = %d, want 2 (before and after the restart)", got)
				}
			}
		})
	}
}

// TestH2PoolKeepaliveBackoff: a peer answering the second PING of a
// connection with GOAWAY ENHANCE_YOUR_CALM "too_many_pings" makes the
// pool double the endpoint's interval (40 ms, then 80 ms on the next
// connection, then 160 ms), count http2.keepalive_backoff, and never
// reconnect on its own: only a new stream opens the next connection.
func TestH2PoolKeepaliveBackoff(t *testing.T) {
	testutil.CheckGoroutines(t)
	srv := startRawServer(t, 100)
	srv.onPing = func(rc *rawConn, n int) bool {
		if n >= 2 {
			rc.goAway(http2.ErrCodeEnhanceYourCalm, "too_many_pings")
			return false
		}
		return true
	}
	p := newTestPool(t, srv.addr(), testSpec(func(s *Spec) {
		s.HTTP2.Keepalive = Keepalive{Interval: 40 * time.Millisecond, Timeout: time.Second}
	}))
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	for i, want := range []time.Duration{80 * time.Millisecond, 160 * time.Millisecond} {
		if err := roundTrip(ctx, p, "/"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, testTimeout, "the GOAWAY and the connection close", func() bool { return srv.open.Load() == 0 && p.ActiveConns() == 0 })
		p.mu.Lock()
		got := p.kaInterval
		p.mu.Unlock()
		if got != want {
			t.Errorf("after GOAWAY %d: interval = %v, want %v", i+1, got, want)
		}
		if g := p.kaGauge.Value(); g != want.Milliseconds() {
			t.Errorf("after GOAWAY %d: interval gauge = %d, want %d", i+1, g, want.Milliseconds())
		}
		if got := p.sh.stats.keepaliveBackoff.Value(); got != uint64(i+1) {
			t.Errorf("http2.keepalive_backoff = %d, want %d", got, i+1)
		}
	}
	time.Sleep(200 * time.Millisecond)
	if got := srv.accepted.Load(); got != 2 {
		t.Errorf("connections = %d, want 2: the pool must not reconnect without demand", got)
	}
}

// TestH2PoolKeepaliveTimeoutTiming: a peer that never answers PINGs is
// detected, counted in http2.keepalive_timeout, within interval (50 ms,
// +15% jitter) + timeout (100 ms) + 500 ms of scheduling tolerance; that
// bound is asserted only without -race (.ci/run's non-race timing step).
func TestH2PoolKeepaliveTimeoutTiming(t *testing.T) {
	testutil.CheckGoroutines(t)
	srv := startRawServer(t, 100)
	srv.onPing = func(*rawConn, int) bool { return false }
	p := newTestPool(t, srv.addr(), testSpec(func(s *Spec) {
		s.HTTP2.Keepalive = Keepalive{Interval: 50 * time.Millisecond, Timeout: 100 * time.Millisecond, JitterPercent: 15}
		s.Lifetimes.IdleTimeout = 0
	}))
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := roundTrip(ctx, p, "/"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	waitFor(t, testTimeout, "the keepalive timeout", func() bool { return p.ActiveConns() == 0 })
	testutil.TimingAtMost(t, "time to detect the dead peer", time.Since(start), 650*time.Millisecond)
	if got := p.stats.HTTP2.KeepaliveTimeout.Value(); got != 1 {
		t.Errorf("http2.keepalive_timeout = %d, want 1", got)
	}
}

// TestH2PoolLifetimes: idle_timeout closes an idle connection, and
// max_requests_per_connection and max_connection_duration rotate
// connections gracefully, each counted in its Envoy stat.
func TestH2PoolLifetimes(t *testing.T) {
	tests := []struct {
		name      string
		lt        Lifetimes
		streams   int
		pause     time.Duration // between streams
		wantConns int64
		stat      func(*poolStats) uint64
		wantStat  uint64
	}{
		{"idle_timeout", Lifetimes{IdleTimeout: 50 * time.Millisecond}, 2, 300 * time.Millisecond, 2,
			func(ps *poolStats) uint64 { return ps.cxIdleTimeout.Value() }, 2},
		{"max_requests_per_connection", Lifetimes{MaxRequestsPerConnection: 2}, 5, 0, 3,
			func(ps *poolStats) uint64 { return ps.cxMaxRequests.Value() }, 2},
		{"max_connection_duration", Lifetimes{MaxConnectionDuration: 100 * time.Millisecond}, 3, 150 * time.Millisecond, 3,
			func(ps *poolStats) uint64 { return ps.cxMaxDuration.Value() }, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			srv := startRawServer(t, 100)
			p := newTestPool(t, srv.addr(), testSpec(func(s *Spec) { s.Lifetimes = tc.lt }))
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			for range tc.streams {
				if err := roundTrip(ctx, p, "/"); err != nil {
					t.Fatal(err)
				}
				time.Sleep(tc.pause)
			}
			if got := srv.accepted.Load(); got != tc.wantConns {
				t.Errorf("connections = %d, want %d", got, tc.wantConns)
			}
			waitFor(t, testTimeout, tc.name+" stat", func() bool { return tc.stat(p.sh.stats) == tc.wantStat })
			waitFor(t, testTimeout, "rotated connections to close", func() bool { return p.stats.CxActive.Value() <= 1 })
		})
	}
}

// TestH2PoolPreconnect: with per_upstream_preconnect_ratio 2 the pool
// opens a connection before the first stream, and keeps capacity for
// twice the streams in use: with the peer's limit of 2 streams per
// connection, 2 held streams make it open a second connection.
func TestH2PoolPreconnect(t *testing.T) {
	testutil.CheckGoroutines(t)
	srv := startRawServer(t, 2)
	p := newTestPool(t, srv.addr(), testSpec(func(s *Spec) { s.PreconnectRatio = 2 }))
	waitFor(t, testTimeout, "the preconnected connection", func() bool { return p.ActiveConns() == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	var held []stream.ClientStream
	for i := range 2 {
		s, err := p.NewStream(ctx, request(fmt.Sprint("/", i)), false)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, s)
	}
	waitFor(t, 2*time.Second, "a second preconnected connection", func() bool { return p.ActiveConns() == 2 })
	if got := srv.accepted.Load(); got != 2 {
		t.Errorf("connections = %d, want 2", got)
	}
	for _, s := range held {
		s.Reset(stream.ErrCodeCancel)
	}
}

// TestDialUpstreamSocketOptions: every upstream TCP socket has TCP_NODELAY,
// and SO_KEEPALIVE exactly when upstream_connection_options.tcp_keepalive
// is set.
func TestDialUpstreamSocketOptions(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	tests := []struct {
		name string
		ka   *net.KeepAliveConfig
		want int
	}{
		{"no tcp_keepalive", nil, 0},
		{"tcp_keepalive", &net.KeepAliveConfig{Enable: true, Idle: 30 * time.Second, Interval: 5 * time.Second, Count: 3}, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			st := NewStats(stats.NewStore(), "backend")
			conn, err := dialUpstream(ctx, ln.Addr().String(), nil, tc.ka, st)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			raw, err := conn.(*net.TCPConn).SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			var keepalive, nodelay int
			var serr error
			if err := raw.Control(func(fd uintptr) {
				keepalive, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE)
				if serr == nil {
					nodelay, serr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_NODELAY)
				}
			}); err != nil || serr != nil {
				t.Fatal(err, serr)
			}
			if (keepalive != 0) != (tc.want != 0) {
				t.Errorf("SO_KEEPALIVE = %d, want %d", keepalive, tc.want)
			}
			if nodelay == 0 {
				t.Error("TCP_NODELAY is off")
			}
		})
	}
}

// TestH2PoolConnectionIdleIntervalTiming: with connection_idle_interval
// 250 ms (and no periodic PINGs), the first stream on a connection idle
// for longer sends a PING along; a peer that does not answer it loses the
// connection, counted in http2.keepalive_timeout, within the keepalive
// timeout (100 ms) plus 500 ms of scheduling tolerance; that bound is
// asserted only without -race (.ci/run's non-race timing step). A busy
// connection sends no such PING. The interval is long enough that the
// back-to-back streams stay under it on a loaded machine under -race.
func TestH2PoolConnectionIdleIntervalTiming(t *testing.T) {
	testutil.CheckGoroutines(t)
	srv := startRawServer(t, 100)
	srv.onPing = func(*rawConn, int) bool { return false }
	p := newTestPool(t, srv.addr(), testSpec(func(s *Spec) {
		s.HTTP2.Keepalive = Keepalive{Timeout: 100 * time.Millisecond, ConnectionIdleInterval: 250 * time.Millisecond}
	}))
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	for range 3 { // back to back: never idle for 250 ms
		if err := roundTrip(ctx, p, "/"); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(150 * time.Millisecond) // a PING sent by now would have timed out
	if got := p.ActiveConns(); got != 1 {
		t.Fatalf("connections = %d before the idle interval passed, want 1 (no PING sent yet)", got)
	}
	time.Sleep(250 * time.Millisecond) // idle well past 250 ms
	if err := roundTrip(ctx, p, "/after-idle"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	waitFor(t, testTimeout, "the unanswered idle PING to close the connection", func() bool { return p.ActiveConns() == 0 })
	testutil.TimingAtMost(t, "time from the stream to the connection's close", time.Since(start), 600*time.Millisecond)
	if got := p.stats.HTTP2.KeepaliveTimeout.Value(); got != 1 {
		t.Errorf("http2.keepalive_timeout = %d, want 1", got)
	}
}
