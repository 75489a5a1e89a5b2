package upstream

import (
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
)

// TestCxDestroyLocalRemote checks that each closed connection of an
// HTTP/2 and HTTP/3 pool is counted once in upstream_cx_destroy and once
// in upstream_cx_destroy_local or upstream_cx_destroy_remote, by who
// closed it, as Envoy counts them: the peer closing the connection is
// remote; the pool closing it, draining it at its idle timeout, or the
// peer's silence to a keepalive PING is local.
func TestCxDestroyLocalRemote(t *testing.T) {
	type peer interface{ addr() string }
	cases := []struct {
		name  string
		proto Protocol
		// mod adjusts the spec.
		mod func(*Spec)
		// setup prepares the peer before the pool dials; close ends the
		// pool's one connection once it is established (nil: it ends by
		// itself).
		setup      func(pr peer)
		close      func(t *testing.T, pr peer, p *h2Pool)
		wantRemote bool
	}{
		{name: "h2 peer closes", proto: HTTP2, wantRemote: true,
			close: func(t *testing.T, pr peer, p *h2Pool) { pr.(*rawServer).conn(0).nc.Close() }},
		{name: "h2 pool closes", proto: HTTP2,
			close: func(t *testing.T, pr peer, p *h2Pool) { p.Close() }},
		{name: "h2 idle timeout", proto: HTTP2,
			mod: func(s *Spec) { s.Lifetimes.IdleTimeout = 50 * time.Millisecond }},
		{name: "h2 keepalive timeout", proto: HTTP2,
			mod: func(s *Spec) {
				s.HTTP2.Keepalive.Interval = 50 * time.Millisecond
				s.HTTP2.Keepalive.Timeout = 50 * time.Millisecond
			},
			setup: func(pr peer) { pr.(*rawServer).onPing = func(*rawConn, int) bool { return false } }},
		{name: "h3 peer closes", proto: HTTP3, wantRemote: true,
			close: func(t *testing.T, pr peer, p *h2Pool) {
				// The client counts the connection before the
				// peer's Accept may return it.
				hp := pr.(*closingH3Peer)
				waitFor(t, testTimeout, "the peer's accept", func() bool { return hp.accepted() > 0 })
				hp.closeAll(false)
			}},
		{name: "h3 pool closes", proto: HTTP3,
			close: func(t *testing.T, pr peer, p *h2Pool) { p.Close() }},
		{name: "h3 idle timeout", proto: HTTP3,
			mod: func(s *Spec) { s.Lifetimes.IdleTimeout = 50 * time.Millisecond }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			spec := testSpec(func(s *Spec) {
				// One connection before any stream (the HTTP/3 peer
				// answers none); a QUIC handshake under -race on a
				// loaded machine can take over testSpec's second.
				s.PreconnectRatio = 2
				s.ConnectTimeout = testTimeout
				if tc.mod != nil {
					tc.mod(s)
				}
			})
			var pr peer
			if tc.proto == HTTP3 {
				hp := startClosingH3Peer(t)
				spec.Protocol, spec.TLS = HTTP3, hp.tls
				pr = hp
			} else {
				srv := startRawServer(t, 100)
				pr = srv
			}
			if tc.setup != nil {
				tc.setup(pr)
			}
			p := newTestPool(t, pr.addr(), spec)
			st := p.stats
			waitFor(t, testTimeout, "the preconnected connection", func() bool { return st.CxTotal.Value() == 1 })
			if tc.close != nil {
				tc.close(t, pr, p)
			}
			waitFor(t, testTimeout, "the connection's close", func() bool { return st.CxDestroy.Value() >= 1 })
			// A preconnecting pool may dial again once its connection
			// closed; let such a dial settle before the pool is closed.
			p.Close()
			waitFor(t, testTimeout, "every connection closed and no dial in flight", func() bool {
				p.mu.Lock()
				dialing := p.connecting
				p.mu.Unlock()
				return dialing == 0 && st.CxActive.Value() == 0 && p.ActiveConns() == 0
			})
			local, remote := st.CxDestroyLocal.Value(), st.CxDestroyRemote.Value()
			if local+remote != st.CxDestroy.Value() {
				t.Errorf("upstream_cx_destroy_local %d + upstream_cx_destroy_remote %d != upstream_cx_destroy %d", local, remote, st.CxDestroy.Value())
			}
			// The first connection's close decides. A later connection
			// (the pool preconnects again) is closed by the pool, or by
			// a peer that closes every connection.
			switch {
			case tc.wantRemote && remote == 0:
				t.Errorf("upstream_cx_destroy_remote = 0, want at least 1 (local %d)", local)
			case !tc.wantRemote && remote != 0:
				t.Errorf("upstream_cx_destroy_remote = %d, want 0 (local %d)", remote, local)
			}
			if tc.wantRemote && p.sh.stats.cxDestroyLocalRq.Value()+p.sh.stats.cxDestroyRemoteRq.Value() != 0 {
				t.Errorf("a connection without streams counted in upstream_cx_destroy_*_with_active_rq")
			}
		})
	}
}
