package upstream

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/proxy/http/h3"
)

// closingH3Peer is a QUIC listener speaking h3 that answers no request
// and closes its connections on demand (closeAll), and then, when asked,
// every connection it accepts later at once: a peer that goes away right
// after the handshake.
type closingH3Peer struct {
	udp *net.UDPConn
	tls *tls.Config // a client config trusting the server

	mu      sync.Mutex
	conns   []*quic.Conn
	closing bool
}

func startClosingH3Peer(t *testing.T) *closingH3Peer {
	t.Helper()
	udp, serverTLS, clientTLS := h3TestEndpoint(t)
	p := &closingH3Peer{udp: udp, tls: clientTLS}
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
			p.conns = append(p.conns, c)
			closing := p.closing
			p.mu.Unlock()
			if closing {
				_ = c.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeInternalError), "going away")
			}
		}
	})
	t.Cleanup(func() {
		p.closeAll(true)
		_ = ln.Close()
		_ = tr.Close()
		_ = udp.Close()
		wg.Wait()
	})
	return p
}

func (p *closingH3Peer) addr() string { return p.udp.LocalAddr().String() }

// accepted is how many connections the peer has accepted.
func (p *closingH3Peer) accepted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// closeAll closes every connection with H3_INTERNAL_ERROR and, with
// later, every later one as soon as it is accepted.
func (p *closingH3Peer) closeAll(later bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closing = p.closing || later
	for _, c := range p.conns {
		_ = c.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeInternalError), "going away")
	}
}

// TestH3CloseBeforeCounted closes an HTTP/3 connection after its
// handshake but before the pool counted it established: h3.Dial already
// watches for the close, so its OnClose can run before the dial returns
// to the pool. upstream_cx_active must never dip (below zero, for the
// pool's first connection), and each destroyed connection still records
// its length. Before the fix, the hook saw upstream_cx_active at -1 and
// the connection's upstream_cx_length_ms was lost.
func TestH3CloseBeforeCounted(t *testing.T) {
	testutil.CheckGoroutines(t)
	peer := startClosingH3Peer(t)
	spec := testSpec(func(s *Spec) {
		// A QUIC handshake under -race on a loaded machine can take over
		// testSpec's second; the dial is not what is tested.
		s.ConnectTimeout = testTimeout
		s.Protocol, s.TLS = HTTP3, peer.tls
	})
	p := newTestPool(t, peer.addr(), spec)
	var (
		once     sync.Once
		hookDone = make(chan struct{})
		minSeen  int64 // written by the hook before hookDone
		hookErr  string
	)
	p.h3Dialed = func(cc *h3.ClientConn) {
		once.Do(func() {
			defer close(hookDone)
			peer.closeAll(true)
			// The client sees the close once the connection takes no
			// more streams (the peer granted 100).
			deadline := time.Now().Add(testTimeout)
			for cc.Capacity() > 0 {
				if time.Now().After(deadline) {
					hookErr = "the client never saw the peer's close"
					return
				}
				time.Sleep(time.Millisecond)
			}
			// Give h3's close goroutine its chance to account the
			// close ahead of the dial (it did, before the fix, within
			// microseconds of the close).
			for end := time.Now().Add(100 * time.Millisecond); time.Now().Before(end); time.Sleep(time.Millisecond) {
				minSeen = min(minSeen, p.stats.CxActive.Value())
			}
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	// The stream fails: every connection closes. How it fails is not
	// what is tested.
	_ = roundTrip(ctx, p, "/")
	select {
	case <-hookDone:
	case <-ctx.Done():
		t.Fatal("no HTTP/3 dial succeeded")
	}
	if hookErr != "" {
		t.Fatal(hookErr)
	}
	if minSeen < 0 {
		t.Errorf("upstream_cx_active went to %d while a closed connection's dial was returning", minSeen)
	}
	// Wait for the closes to be accounted. onClose updates
	// upstream_cx_active, upstream_cx_destroy, upstream_cx_length_ms and
	// the pool's connection list one after the other, so wait until all
	// four agree rather than judge the last two on the first two.
	accounted := func() (ok bool, why string) {
		active, destroyed, total := p.stats.CxActive.Value(), p.stats.CxDestroy.Value(), p.stats.CxTotal.Value()
		lengths, conns := p.stats.CxLengthMs.Snapshot().Count, p.ActiveConns()
		return active == 0 && destroyed == total && lengths == destroyed && conns == 0,
			fmt.Sprintf("upstream_cx_active = %d, upstream_cx_destroy = %d, upstream_cx_total = %d, upstream_cx_length_ms samples = %d, pool connections = %d",
				active, destroyed, total, lengths, conns)
	}
	deadline := time.Now().Add(testTimeout)
	for {
		ok, why := accounted()
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after every connection closed: %s; want 0 active, one destroy and one length sample per connection, no connection left", why)
		}
		time.Sleep(time.Millisecond)
	}
	if total := p.stats.CxTotal.Value(); total == 0 {
		t.Fatal("no connection was established: the close did not race the dial")
	}
}
