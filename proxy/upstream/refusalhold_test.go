package upstream

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/proxy/http/stream"
)

// protoName names a protocol in subtest names.
var protoName = map[Protocol]string{HTTP2: "h2", HTTP3: "h3"}

// startRefusingPool starts a refusingPeer for proto (a raw HTTP/2 server
// or quic-go's HTTP/3 one, both advertising 100 streams) and a pool to it
// whose local max_concurrent_streams of 2 is the pool's view of each
// connection; maxConns > 0 sets max_connections. connect_timeout is the
// test's timeout.
func startRefusingPool(t *testing.T, proto Protocol, maxConns int) (refusingPeer, *h2Pool) {
	t.Helper()
	spec := testSpec(func(s *Spec) {
		// A QUIC handshake under -race on a loaded machine can take over
		// testSpec's second; the dial is not what is tested.
		s.ConnectTimeout = testTimeout
		if maxConns > 0 {
			s.Thresholds.MaxConnections = maxConns
		}
	})
	var peer refusingPeer
	if proto == HTTP3 {
		hp := startH3Peer(t)
		peer = hp
		spec.Protocol, spec.TLS = HTTP3, hp.tls
		spec.HTTP3.MaxConcurrentStreams = 2
	} else {
		peer = rawPeer{startRawServer(t, 100)}
		spec.HTTP2.MaxConcurrentStreams = 2
	}
	return peer, newTestPool(t, peer.addr(), spec)
}

// openHeldStreams opens the streams setup on p in order, each held by
// peer and received there before the next, then answers those in
// release and waits until the pool saw them end (setup's third stream,
// if any, is on connection 1). Each held stream's round trip error, once
// released, arrives on errs; releaseAll answers every held stream (again:
// releasing is idempotent).
func openHeldStreams(ctx context.Context, t *testing.T, peer refusingPeer, p *h2Pool, setup, release []string) (releaseAll func(), errs <-chan error) {
	t.Helper()
	releases := map[string]func(){}
	releaseAll = func() {
		for _, release := range releases {
			release()
		}
	}
	setupErrs := make(chan error, len(setup))
	for _, path := range setup {
		releases[path] = peer.holdPath(path)
		go func() { setupErrs <- roundTrip(ctx, p, path) }()
		waitFor(t, testTimeout, path+" to reach the peer", func() bool {
			select {
			case err := <-setupErrs:
				t.Fatalf("%s ended before the test released it: %v", path, err)
			default:
			}
			return servedOn(peer, path) >= 0
		})
	}
	for _, path := range release {
		releases[path]()
	}
	if len(release) > 0 {
		waitFor(t, testTimeout, "the pool to see the released streams end", func() bool {
			p.mu.Lock()
			defer p.mu.Unlock()
			return p.conns[0].active == len(setup)-len(release)-1 // "/c" is on connection 1
		})
	}
	return releaseAll, setupErrs
}

// learned reports whether p learned from n refusals of its first
// connection (the codec's report, or a retry's, arrived).
func learned(p *h2Pool, n uint64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns) > 0 && p.conns[0].refusals == n
}

// TestPoolHoldsAfterRefusal: the pool learns from every stream its peer
// refuses unprocessed (REFUSED_STREAM, H3_REQUEST_REJECTED), whether or
// not the stream is retried. The peer's connection 0 takes one stream at
// a time while the pool's view (a local max_concurrent_streams of 2) says
// two. After a refusal on it with a stream of ours in flight there, the
// connection is held at capacity (one upstream_cx_refused_stream_hold,
// also when the refused stream is retried), so the next new request goes
// to another connection with room, to a new connection within
// max_connections, or waits in the queue until a stream open at the
// refusal completes, instead of being refused in turn. A refusal with
// nothing in flight holds nothing. Over HTTP/2 and HTTP/3.
func TestPoolHoldsAfterRefusal(t *testing.T) {
	conn0Busy := func(conn, inFlight int) bool { return conn == 0 && inFlight > 0 }
	tests := []struct {
		name     string
		maxConns int
		// setup are held streams opened in order, each received by the
		// peer before the next; release are those of them answered
		// before the request under test.
		setup, release []string
		refuse         func() func(conn, inFlight int) bool
		// retry: the refused request is retried as the router does
		// (retryRoundTrip); otherwise it fails with the refusal.
		retry bool
		// queued: the new request waits for a slot; the held streams are
		// released once it does.
		queued    bool
		wantConn  int    // the connection that serves the new request
		wantConns uint64 // connections the pool opened
		wantHolds uint64
	}{
		{
			name:  "not retried: another connection has room",
			setup: []string{"/a", "/b", "/c"}, release: []string{"/b"},
			refuse:   func() func(int, int) bool { return conn0Busy },
			wantConn: 1, wantConns: 2, wantHolds: 1,
		},
		{
			name:     "not retried: one connection, room to open another",
			setup:    []string{"/a"},
			refuse:   func() func(int, int) bool { return conn0Busy },
			wantConn: 1, wantConns: 2, wantHolds: 1,
		},
		{
			name:     "not retried: no capacity anywhere, queued until a stream completes",
			maxConns: 1, setup: []string{"/a"},
			refuse: func() func(int, int) bool { return conn0Busy },
			queued: true, wantConn: 0, wantConns: 1, wantHolds: 1,
		},
		{
			name: "not retried: nothing in flight, not held",
			refuse: func() func(int, int) bool {
				n := 0 // the peers call refuse under their lock
				return func(conn, _ int) bool { n++; return conn == 0 && n == 1 }
			},
			wantConn: 0, wantConns: 1, wantHolds: 0,
		},
		{
			name:  "retried: another connection has room, one hold",
			setup: []string{"/a", "/b", "/c"}, release: []string{"/b"},
			refuse: func() func(int, int) bool { return conn0Busy },
			retry:  true, wantConn: 1, wantConns: 2, wantHolds: 1,
		},
		{
			name:   "retried: one connection, room to open another, one hold",
			setup:  []string{"/a"},
			refuse: func() func(int, int) bool { return conn0Busy },
			retry:  true, wantConn: 1, wantConns: 2, wantHolds: 1,
		},
	}
	for _, proto := range []Protocol{HTTP2, HTTP3} {
		for _, tc := range tests {
			t.Run(protoName[proto]+"/"+tc.name, func(t *testing.T) {
				testutil.CheckGoroutines(t)
				peer, p := startRefusingPool(t, proto, tc.maxConns)
				ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
				defer cancel()

				releaseAll, setupErrs := openHeldStreams(ctx, t, peer, p, tc.setup, tc.release)
				defer releaseAll()
				peer.setRefuse(tc.refuse())

				maxTries := 1
				if tc.retry {
					maxTries = 10
				}
				tries, err := retryRoundTrip(ctx, p, "/r", maxTries)
				switch {
				case tc.retry && (err != nil || tries != 2):
					t.Fatalf("retried request: %d attempts, %v; want served by the second", tries, err)
				case !tc.retry && !stream.Unprocessed(err):
					t.Fatalf("request: %v, want the peer's unprocessed refusal", err)
				}
				waitFor(t, testTimeout, "the pool to learn from the refusal", func() bool { return learned(p, 1) })
				if got := p.sh.stats.cxRefusedHold.Value(); got != tc.wantHolds {
					t.Errorf("upstream_cx_refused_stream_hold = %d, want %d", got, tc.wantHolds)
				}

				// The next new request, not a retry.
				res := make(chan error, 1)
				go func() { res <- roundTrip(ctx, p, "/new") }()
				if tc.queued {
					waitFor(t, testTimeout, "the new request to queue", func() bool {
						p.mu.Lock()
						defer p.mu.Unlock()
						return len(p.waiters) == 1
					})
					releaseAll()
				}
				if err := <-res; err != nil {
					t.Fatalf("new request: %v (requests: %+v)", err, peer.requests())
				}
				if got := servedOn(peer, "/new"); got != tc.wantConn {
					t.Errorf("new request served on connection %d, want %d (requests: %+v)", got, tc.wantConn, peer.requests())
				}
				if got := p.stats.CxTotal.Value(); got != tc.wantConns {
					t.Errorf("upstream_cx_total = %d, want %d", got, tc.wantConns)
				}

				releaseAll()
				for range tc.setup {
					if err := <-setupErrs; err != nil {
						t.Errorf("held stream: %v", err)
					}
				}
				waitFor(t, testTimeout, "the hold to end and every stream to be accounted", func() bool {
					p.mu.Lock()
					defer p.mu.Unlock()
					return p.conns[0].heldAt == 0 && p.sh.breaker.requests.Load() == 0
				})
				// Counted once per refusal: nothing more once all ended.
				if got := p.sh.stats.cxRefusedHold.Value(); got != tc.wantHolds {
					t.Errorf("upstream_cx_refused_stream_hold = %d at the end, want %d", got, tc.wantHolds)
				}
				if !learned(p, 1) {
					t.Errorf("the pool learned from other than the one refusal")
				}
				if got := p.sh.stats.rqPendingActive.Value(); got != 0 {
					t.Errorf("upstream_rq_pending_active = %d after the streams ended, want 0", got)
				}
			})
		}
	}
}

// goAwayPeer is an upstream whose connection 0 takes two requests, then
// sends GOAWAY with the first one's stream as the last processed: the
// second was not processed. Other connections answer every request.
type goAwayPeer interface {
	addr() string
	// received is how many requests arrived on connection conn.
	received(conn int) int
	// goAway sends connection 0's GOAWAY.
	goAway()
	// release answers connection 0's first request.
	release()
}

// rawGoAwayPeer is the HTTP/2 goAwayPeer: a rawServer holding "/a" and
// dropping "/b" on connection 0.
type rawGoAwayPeer struct {
	*rawServer
	releaseA func()
}

func startRawGoAwayPeer(t *testing.T) *rawGoAwayPeer {
	srv := startRawServer(t, 100)
	srv.ignore = func(rc *rawConn, path string) bool { return rc.idx == 0 && path == "/b" }
	return &rawGoAwayPeer{rawServer: srv, releaseA: srv.holdPath("/a")}
}

func (p *rawGoAwayPeer) received(conn int) int {
	n := 0
	for _, r := range p.requests() {
		if r.conn == conn {
			n++
		}
	}
	return n
}

func (p *rawGoAwayPeer) goAway() {
	if err := p.conn(0).goAwayAt(1); err != nil { // "/a" is stream 1
		p.t.Errorf("GOAWAY: %v", err)
	}
}

func (p *rawGoAwayPeer) release() { p.releaseA() }

// h3GoAwayPeer is the HTTP/3 goAwayPeer: a QUIC server writing HTTP/3
// frames itself (quic-go's server chooses its GOAWAY's stream ID alone).
type h3GoAwayPeer struct {
	udp      *net.UDPConn
	tls      *tls.Config // a client config trusting the server
	goAwayC  chan struct{}
	releaseC chan struct{}
	once     sync.Once

	mu    sync.Mutex
	conns int
	reqs  map[int]int
}

// h3Status200 is a HEADERS frame of ":status: 200": QPACK's static
// table entry 25, with no dynamic table (RFC 9204 appendix A).
var h3Status200 = []byte{0x01, 0x03, 0x00, 0x00, 0xc0 | 25}

func startH3GoAwayPeer(t *testing.T) *h3GoAwayPeer {
	t.Helper()
	udp, serverTLS, clientTLS := h3TestEndpoint(t)
	p := &h3GoAwayPeer{
		udp:      udp,
		tls:      clientTLS,
		goAwayC:  make(chan struct{}),
		releaseC: make(chan struct{}),
		reqs:     map[int]int{},
	}
	tr := &quic.Transport{Conn: udp}
	serverTLS.NextProtos = []string{http3.NextProtoH3}
	ln, err := tr.Listen(serverTLS, &quic.Config{MaxIncomingStreams: 100})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept(context.Background())
			if err != nil {
				return
			}
			p.mu.Lock()
			idx := p.conns
			p.conns++
			p.mu.Unlock()
			wg.Go(func() { p.serve(c, idx) })
		}
	})
	t.Cleanup(func() {
		p.release()
		_ = ln.Close()
		_ = tr.Close()
		_ = udp.Close()
		wg.Wait()
	})
	return p
}

func (p *h3GoAwayPeer) addr() string { return p.udp.LocalAddr().String() }

func (p *h3GoAwayPeer) received(conn int) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.reqs[conn]
}

func (p *h3GoAwayPeer) goAway()  { close(p.goAwayC) }
func (p *h3GoAwayPeer) release() { p.once.Do(func() { close(p.releaseC) }) }

// serve runs connection idx: its control stream with empty SETTINGS,
// then the requests.
func (p *h3GoAwayPeer) serve(c *quic.Conn, idx int) {
	control, err := c.OpenUniStream()
	if err != nil {
		return
	}
	b := quicvarint.Append(nil, 0x00) // control stream
	b = append(b, 0x04, 0x00)         // SETTINGS, empty
	if _, err := control.Write(b); err != nil {
		return
	}
	ctx := c.Context()
	accept := func() *quic.Stream {
		s, err := c.AcceptStream(ctx)
		if err != nil {
			return nil
		}
		// The request's HEADERS frame.
		r := quicvarint.NewReader(s)
		if _, err := quicvarint.Read(r); err != nil {
			return nil
		}
		n, err := quicvarint.Read(r)
		if err != nil {
			return nil
		}
		if _, err := io.CopyN(io.Discard, r, int64(n)); err != nil {
			return nil
		}
		p.mu.Lock()
		p.reqs[idx]++
		p.mu.Unlock()
		return s
	}
	respond := func(s *quic.Stream) {
		_, _ = s.Write(h3Status200)
		_ = s.Close()
	}
	if idx > 0 {
		for s := accept(); s != nil; s = accept() {
			respond(s)
		}
		return
	}
	first := accept()
	second := accept()
	if first == nil || second == nil {
		return
	}
	select {
	case <-p.goAwayC:
	case <-ctx.Done():
		return
	}
	ga := quicvarint.Append(nil, uint64(second.StreamID()))
	if _, err := control.Write(append([]byte{0x07, byte(len(ga))}, ga...)); err != nil {
		return
	}
	select {
	case <-p.releaseC:
		respond(first)
	case <-ctx.Done():
		return
	}
	<-ctx.Done()
}

// TestPoolGoAwayUnprocessedNoHold: a stream above a GOAWAY's last stream
// is unprocessed like a refused one, but the GOAWAY already stops new
// streams on the connection: its retry goes to a new connection, no
// refusal hold is counted (neither from the codec nor from the retry),
// and every stream is accounted once: when the held stream completes,
// the connection closes and the pool's request count returns to zero.
// Over HTTP/2 and HTTP/3.
func TestPoolGoAwayUnprocessedNoHold(t *testing.T) {
	for _, proto := range []Protocol{HTTP2, HTTP3} {
		t.Run(protoName[proto], func(t *testing.T) {
			testutil.CheckGoroutines(t)
			spec := testSpec(func(s *Spec) { s.ConnectTimeout = testTimeout })
			var peer goAwayPeer
			if proto == HTTP3 {
				hp := startH3GoAwayPeer(t)
				peer = hp
				spec.Protocol, spec.TLS = HTTP3, hp.tls
			} else {
				peer = startRawGoAwayPeer(t)
			}
			p := newTestPool(t, peer.addr(), spec)
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()

			errA := make(chan error, 1)
			go func() { errA <- roundTrip(ctx, p, "/a") }()
			waitFor(t, testTimeout, "/a to reach the peer", func() bool { return peer.received(0) == 1 })
			type result struct {
				tries int
				err   error
			}
			resB := make(chan result, 1)
			go func() {
				n, err := retryRoundTrip(ctx, p, "/b", 10)
				resB <- result{n, err}
			}()
			waitFor(t, testTimeout, "/b to reach the peer", func() bool { return peer.received(0) == 2 })
			peer.goAway()
			r := <-resB
			if r.err != nil || r.tries != 2 {
				t.Fatalf("/b: %d attempts, %v; want served by the second", r.tries, r.err)
			}
			if got := peer.received(1); got != 1 {
				t.Errorf("connection 1 received %d requests, want /b's retry", got)
			}
			p.mu.Lock()
			pc0 := p.conns[0]
			draining, refused, learnt := pc0.draining, pc0.cc.RefusedStreams(), pc0.refusals
			p.mu.Unlock()
			if !draining {
				t.Errorf("connection 0 is not draining after GOAWAY")
			}
			if refused != 0 || learnt != 0 {
				t.Errorf("connection 0: %d refusals counted, %d learned; want none (GOAWAY is not a refusal)", refused, learnt)
			}
			if got := p.sh.stats.cxRefusedHold.Value(); got != 0 {
				t.Errorf("upstream_cx_refused_stream_hold = %d, want 0", got)
			}

			peer.release()
			if err := <-errA; err != nil {
				t.Fatalf("/a: %v", err)
			}
			waitFor(t, testTimeout, "connection 0 to close and every stream to be accounted", func() bool {
				p.mu.Lock()
				defer p.mu.Unlock()
				return len(p.conns) == 1 && p.conns[0].active == 0 && p.sh.breaker.requests.Load() == 0
			})
			if got := p.stats.CxTotal.Value(); got != 2 {
				t.Errorf("upstream_cx_total = %d, want 2", got)
			}
			if got := p.sh.stats.cxRefusedHold.Value(); got != 0 {
				t.Errorf("upstream_cx_refused_stream_hold = %d at the end, want 0", got)
			}
			if got := p.sh.stats.rqPendingActive.Value(); got != 0 {
				t.Errorf("upstream_rq_pending_active = %d, want 0", got)
			}
		})
	}
}

// TestPoolRefusalHammer: 8 callers send 40 requests each, retried as the
// router does, to a peer refusing every third request; the codec's
// reports and the retries race to learn each refusal. Every request is
// served, the pool learns every refusal exactly once (its count equals
// the codec's and the peer's), a hold never outnumbers the refusals, and
// once the load is over no connection is held and no stream is left
// accounted. Over HTTP/2 and HTTP/3.
func TestPoolRefusalHammer(t *testing.T) {
	const callers, perCaller = 8, 40
	for _, proto := range []Protocol{HTTP2, HTTP3} {
		t.Run(protoName[proto], func(t *testing.T) {
			testutil.CheckGoroutines(t)
			peer, p := startRefusingPool(t, proto, 4)
			n := 0 // the peers call refuse under their lock
			peer.setRefuse(func(int, int) bool { n++; return n%3 == 0 })
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			var wg sync.WaitGroup
			errs := make(chan error, callers)
			for c := range callers {
				wg.Go(func() {
					for i := range perCaller {
						if _, err := retryRoundTrip(ctx, p, fmt.Sprintf("/%d/%d", c, i), 100); err != nil {
							errs <- fmt.Errorf("/%d/%d: %w", c, i, err)
							return
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			refused := 0
			for _, r := range peer.requests() {
				if r.refused {
					refused++
				}
			}
			waitFor(t, testTimeout, "every stream to be accounted", func() bool {
				p.mu.Lock()
				defer p.mu.Unlock()
				return p.sh.breaker.requests.Load() == 0
			})
			p.mu.Lock()
			var learnt, counted uint64
			for i, pc := range p.conns {
				learnt += pc.refusals
				counted += pc.cc.RefusedStreams()
				if pc.heldAt != 0 || pc.active != 0 || pc.reserved != 0 {
					t.Errorf("connection %d after the load: held at %d, %d active, %d reserved; want none", i, pc.heldAt, pc.active, pc.reserved)
				}
			}
			p.mu.Unlock()
			if counted != uint64(refused) || learnt != counted {
				t.Errorf("refusals: peer %d, codec %d, learned %d; want all equal", refused, counted, learnt)
			}
			if holds := p.sh.stats.cxRefusedHold.Value(); holds > uint64(refused) {
				t.Errorf("upstream_cx_refused_stream_hold = %d, more than the %d refusals", holds, refused)
			}
			t.Logf("%d requests, %d refused, %d holds, %d connections", callers*perCaller, refused, p.sh.stats.cxRefusedHold.Value(), p.stats.CxTotal.Value())
		})
	}
}
