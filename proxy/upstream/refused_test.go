package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/mtls/mtlstest"
	"meshd.dev/meshd/proxy/http/stream"
)

// refusingPeer is an upstream that refuses requests by a rule (HTTP/2
// RST_STREAM REFUSED_STREAM, HTTP/3 H3_REQUEST_REJECTED), holds chosen
// responses, and records on which connection each request arrived.
type refusingPeer interface {
	addr() string
	// holdPath delays the response to path's request until release.
	holdPath(path string) (release func())
	// setRefuse sets the rule: a request arriving on connection conn (in
	// accept order) with inFlight other requests unanswered there is
	// refused when refuse says so.
	setRefuse(refuse func(conn, inFlight int) bool)
	// requests returns every request received, in order.
	requests() []rawReq
}

// rawPeer is the HTTP/2 refusingPeer: a rawServer.
type rawPeer struct{ *rawServer }

func (p rawPeer) setRefuse(refuse func(conn, inFlight int) bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refuse = func(rc *rawConn, inFlight int) bool { return refuse(rc.idx, inFlight) }
}

// h3Peer is the HTTP/3 refusingPeer: quic-go's HTTP/3 server. A
// connection is told apart by its client address (each h3.Dial uses a
// UDP socket of its own).
type h3Peer struct {
	udp *net.UDPConn
	tls *tls.Config // a client config trusting the server

	mu       sync.Mutex
	connIdx  map[string]int
	inFlight map[int]int
	holds    map[string]chan struct{}
	refuse   func(conn, inFlight int) bool
	reqs     []rawReq
}

// h3TestEndpoint is what every HTTP/3 test peer here starts from: a UDP
// socket on 127.0.0.1, a server TLS config with a SPIFFE certificate from
// a fresh CA, and a client TLS config trusting that CA (the pool checks
// SPIFFE IDs, not host names).
func h3TestEndpoint(t *testing.T) (udp *net.UDPConn, server, client *tls.Config) {
	t.Helper()
	ca := mtlstest.NewCA(t, "test.example")
	cert := mtlstest.TLSCertificate(ca.Issue(t, "spiffe://test.example/ns/a/sa/server"))
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Bundle().X509Authorities()[0])
	return udp, &tls.Config{Certificates: []tls.Certificate{cert}},
		&tls.Config{RootCAs: roots, ServerName: "localhost", InsecureSkipVerify: true}
}

func startH3Peer(t *testing.T) *h3Peer {
	t.Helper()
	udp, serverTLS, clientTLS := h3TestEndpoint(t)
	p := &h3Peer{
		udp:      udp,
		tls:      clientTLS,
		connIdx:  map[string]int{},
		inFlight: map[int]int{},
		holds:    map[string]chan struct{}{},
	}
	srv := &http3.Server{
		Handler:    p,
		TLSConfig:  http3.ConfigureTLSConfig(serverTLS),
		QUICConfig: &quic.Config{MaxIncomingStreams: 100},
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(udp) }()
	t.Cleanup(func() { _ = srv.Close(); _ = udp.Close(); <-done })
	return p
}

func (p *h3Peer) addr() string { return p.udp.LocalAddr().String() }

func (p *h3Peer) holdPath(path string) func() {
	ch := make(chan struct{})
	p.mu.Lock()
	p.holds[path] = ch
	p.mu.Unlock()
	var once sync.Once
	return func() { once.Do(func() { close(ch) }) }
}

func (p *h3Peer) setRefuse(refuse func(conn, inFlight int) bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refuse = refuse
}

func (p *h3Peer) requests() []rawReq {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]rawReq(nil), p.reqs...)
}

func (p *h3Peer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	idx, ok := p.connIdx[r.RemoteAddr]
	if !ok {
		idx = len(p.connIdx)
		p.connIdx[r.RemoteAddr] = idx
	}
	refuse := p.refuse != nil && p.refuse(idx, p.inFlight[idx])
	p.reqs = append(p.reqs, rawReq{path: r.URL.Path, conn: idx, refused: refuse})
	hold := p.holds[r.URL.Path]
	if !refuse {
		p.inFlight[idx]++
	}
	p.mu.Unlock()
	if refuse {
		if str, err := w.(http3.HTTPStreamer).HTTPStream(); err == nil {
			str.CancelRead(quic.StreamErrorCode(http3.ErrCodeRequestRejected))
			str.CancelWrite(quic.StreamErrorCode(http3.ErrCodeRequestRejected))
		}
		return
	}
	if hold != nil {
		select {
		case <-hold:
		case <-r.Context().Done():
		}
	}
	// Forgotten before the response goes out, as rawServer does.
	p.mu.Lock()
	p.inFlight[idx]--
	p.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

// retryRoundTrip sends path through p as the router's transparent retry
// does: a stream refused unprocessed is sent again, avoiding the
// connection that refused it (stream.ConnOf), up to maxTries attempts. It
// returns the attempts made.
func retryRoundTrip(ctx context.Context, p connPool, path string, maxTries int) (int, error) {
	var refusedBy stream.ClientConn
	for try := 1; ; try++ {
		s, err := p.newStreamAvoiding(ctx, request(path), true, refusedBy)
		if err != nil {
			return try, err
		}
		resp, err := s.Response(ctx)
		if err == nil {
			if resp.Status != 200 {
				return try, fmt.Errorf("status %d", resp.Status)
			}
			_, err = io.Copy(io.Discard, s)
			return try, err
		}
		if !stream.Unprocessed(err) || try >= maxTries {
			return try, err
		}
		refusedBy = stream.ConnOf(s)
	}
}

// servedOn is the connection that accepted path's request, or -1.
func servedOn(peer refusingPeer, path string) int {
	for _, r := range peer.requests() {
		if r.path == path && !r.refused {
			return r.conn
		}
	}
	return -1
}

// TestPoolRetryAvoidsRefusingConnection: a stream refused unprocessed is
// retried on another connection of the pool when one has a free slot, on
// a new connection when none has and max_connections allows, and waits
// in the queue when neither, until a stream of the refusing connection
// completes; over HTTP/2 and HTTP/3. Each takes exactly two attempts (the
// retry never spins on the refusing connection). The refusing connection
// (0) takes one stream at a time while the pool's view, from the local
// max_concurrent_streams of 2, says two: the refusal holds it at capacity
// (upstream_cx_refused_stream_hold), for new streams too, until one of
// its streams completes. A connection that refuses with
// nothing in flight is not held, and the retry goes back to it rather
// than open a connection.
func TestPoolRetryAvoidsRefusingConnection(t *testing.T) {
	conn0Busy := func(conn, inFlight int) bool { return conn == 0 && inFlight > 0 }
	tests := []struct {
		name     string
		maxConns int
		// setup are held streams opened in order, each received by the
		// peer before the next; release are those of them answered
		// before the request under test.
		setup, release []string
		refuse         func() func(conn, inFlight int) bool
		// queued: the retry waits for a slot; the held streams are
		// released once it does.
		queued    bool
		wantConn  int    // the connection that serves the request
		wantConns uint64 // connections the pool opened
		wantHolds uint64
	}{
		{
			name:  "another connection has room",
			setup: []string{"/a", "/b", "/c"}, release: []string{"/b"},
			refuse:   func() func(int, int) bool { return conn0Busy },
			wantConn: 1, wantConns: 2, wantHolds: 1,
		},
		{
			name:     "one connection, room to open another",
			setup:    []string{"/a"},
			refuse:   func() func(int, int) bool { return conn0Busy },
			wantConn: 1, wantConns: 2, wantHolds: 1,
		},
		{
			name:     "no capacity anywhere: queued until a stream completes",
			maxConns: 1, setup: []string{"/a"},
			refuse: func() func(int, int) bool { return conn0Busy },
			queued: true, wantConn: 0, wantConns: 1, wantHolds: 1,
		},
		{
			name: "nothing in flight: back to the same connection",
			refuse: func() func(int, int) bool {
				n := 0 // the peers call refuse under their lock
				return func(conn, _ int) bool { n++; return conn == 0 && n == 1 }
			},
			wantConn: 0, wantConns: 1, wantHolds: 0,
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

				type result struct {
					tries int
					err   error
				}
				res := make(chan result, 1)
				go func() {
					n, err := retryRoundTrip(ctx, p, "/r", 10)
					res <- result{n, err}
				}()
				if tc.queued {
					waitFor(t, testTimeout, "the retry to queue", func() bool {
						p.mu.Lock()
						defer p.mu.Unlock()
						return len(p.waiters) == 1
					})
					releaseAll()
				}
				r := <-res
				if r.err != nil {
					t.Fatalf("request: %v (after %d attempts)", r.err, r.tries)
				}
				if r.tries != 2 {
					t.Errorf("attempts = %d, want 2 (refused once, then served)", r.tries)
				}
				if got := servedOn(peer, "/r"); got != tc.wantConn {
					t.Errorf("served on connection %d, want %d (requests: %+v)", got, tc.wantConn, peer.requests())
				}
				if got := p.stats.CxTotal.Value(); got != tc.wantConns {
					t.Errorf("upstream_cx_total = %d, want %d", got, tc.wantConns)
				}
				if got := p.sh.stats.cxRefusedHold.Value(); got != tc.wantHolds {
					t.Errorf("upstream_cx_refused_stream_hold = %d, want %d", got, tc.wantHolds)
				}
				if !tc.queued {
					// New streams avoid a held connection too.
					if err := roundTrip(ctx, p, "/new"); err != nil {
						t.Fatalf("new request: %v", err)
					}
					if got := servedOn(peer, "/new"); got != tc.wantConn {
						t.Errorf("new request served on connection %d, want %d", got, tc.wantConn)
					}
				}
				releaseAll()
				waitFor(t, testTimeout, "the hold to end with a completed stream", func() bool {
					p.mu.Lock()
					defer p.mu.Unlock()
					return len(p.conns) > 0 && p.conns[0].heldAt == 0
				})
				for range tc.setup {
					if err := <-setupErrs; err != nil {
						t.Errorf("held stream: %v", err)
					}
				}
				if got := p.sh.stats.rqPendingActive.Value(); got != 0 {
					t.Errorf("upstream_rq_pending_active = %d after the streams ended, want 0", got)
				}
			})
		}
	}
}
