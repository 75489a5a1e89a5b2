package upstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"meshd.dev/meshd/proxy/http/h3"
	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/proxy/stats"
)

// HTTP/3 pools are h2Pools with the HTTP/3 connector below: the same
// placement, queueing, max_connections, dial backoff, GOAWAY draining,
// idle timeout and lifetimes, with QUIC's stream credit as the capacity.

// H3Stats are a cluster's HTTP/3 stats beyond the shared ones.
type H3Stats struct {
	// CxHTTP3Total is upstream_cx_http3_total: HTTP/3 connections opened.
	CxHTTP3Total *stats.Counter
	// HTTP3Broken is upstream_http3_broken: an endpoint's HTTP/3 was marked
	// broken (QUIC handshake failed) and HTTP/2 over TCP used instead.
	HTTP3Broken *stats.Counter
	// Codec is the http3.* scope.
	Codec *h3.Stats
}

func newH3Stats(sc *stats.Scope) *H3Stats {
	return &H3Stats{
		CxHTTP3Total: sc.Counter("upstream_cx_http3_total"),
		HTTP3Broken:  sc.Counter("upstream_http3_broken"),
		Codec:        h3.NewStats(sc.Scope("http3")),
	}
}

// connectH3 dials the endpoint over QUIC and starts an HTTP/3 connection
// for pc. connect_timeout bounds the QUIC handshake.
//
// The connection's close is accounted (onClose: upstream_cx_active down,
// upstream_cx_destroy, upstream_cx_length_ms, the circuit breaker's
// connection slot) only after the connection was counted as established:
// h3.Dial watches for the close from before it returns, so a peer that
// closes at once would otherwise take upstream_cx_active below its true
// value (below zero for a pool's first connection) until the dial's
// accounting caught up, and the connection's length would be lost.
func (p *h2Pool) connectH3(pc *pconn) error {
	ctx, cancel := context.WithTimeout(context.Background(), p.spec.ConnectTimeout)
	defer cancel()
	o := p.spec.HTTP3
	if o.HandshakeTimeout <= 0 || o.HandshakeTimeout > p.spec.ConnectTimeout {
		o.HandshakeTimeout = p.spec.ConnectTimeout
	}
	st := p.stats.H3
	// counted is closed once the connection is counted; OnClose runs on
	// h3's close goroutine, never on this one, so waiting there is safe.
	counted := make(chan struct{})
	start := time.Now()
	cc, err := h3.Dial(ctx, p.addr, p.spec.TLS, &h3.ClientConfig{
		QUIC:            o,
		Stats:           st.Codec,
		Logger:          p.logger,
		OnStreamLimit:   func(limit uint32) { p.onSettings(pc, limit) },
		OnCredit:        p.wake,
		OnGoAway:        func() { p.onGoAway(pc, stream.ErrCodeNo, "") },
		OnStreamDone:    func() { p.streamDone(pc) },
		OnStreamRefused: func() { p.refusalReported(pc) },
		OnClose: func(err error) {
			<-counted
			p.onClose(pc, err)
		},
	})
	if err != nil {
		p.stats.CxConnectFail.Inc()
		if errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
			p.stats.CxConnectTimeout.Inc()
		}
		return err
	}
	if p.h3Dialed != nil {
		p.h3Dialed(cc)
	}
	p.established(pc, start)
	st.CxHTTP3Total.Inc()
	pc.cc = cc
	close(counted)
	return nil
}

// HTTP/3 broken-marking of h3FallbackPool: the first failure marks an
// endpoint's HTTP/3 broken for h3BrokenBase, each further one doubles it
// up to h3BrokenMax.
const (
	h3BrokenBase = 30 * time.Second
	h3BrokenMax  = 10 * time.Minute
)

// h3FallbackPool is an endpoint's pool of an auto_config cluster: HTTP/3
// first; when a QUIC handshake fails (UDP blocked, no QUIC listener) the
// endpoint's HTTP/3 is marked broken for a while, counted in
// upstream_http3_broken, and streams go to an HTTP/2 pool over TCP, the
// failed stream included (a connect failure is unprocessed).
type h3FallbackPool struct {
	h3, h2 *h2Pool
	stats  *Stats
	logger *slog.Logger

	mu          sync.Mutex
	brokenUntil time.Time
	brokenFor   time.Duration
}

func newH3FallbackPool(addr string, spec *Spec, st *Stats, sh *poolShared, logger *slog.Logger) *h3FallbackPool {
	return &h3FallbackPool{
		h3:     newH2Pool(addr, spec, st, sh, logger),
		h2:     newH2Pool(addr, spec.fallback(), st, sh, logger),
		stats:  st,
		logger: logger.With("endpoint", addr),
	}
}

func (p *h3FallbackPool) broken() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return time.Now().Before(p.brokenUntil)
}

func (p *h3FallbackPool) markBroken(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if time.Now().Before(p.brokenUntil) {
		return
	}
	p.brokenFor = min(max(2*p.brokenFor, h3BrokenBase), h3BrokenMax)
	p.brokenUntil = time.Now().Add(p.brokenFor)
	p.stats.H3.HTTP3Broken.Inc()
	p.logger.Warn("HTTP/3 to endpoint broken; using HTTP/2 over TCP", "for", p.brokenFor, "err", err)
}

// NewStream opens the stream over HTTP/3 unless the endpoint's HTTP/3 is
// marked broken, and over HTTP/2 otherwise or when the QUIC handshake
// fails.
func (p *h3FallbackPool) NewStream(ctx context.Context, req *stream.Request, endStream bool) (stream.ClientStream, error) {
	return p.newStreamAvoiding(ctx, req, endStream, nil)
}

// newStreamAvoiding is NewStream avoiding refusedBy as h2Pool's does; the
// connection is in one of the two pools and the other ignores it.
func (p *h3FallbackPool) newStreamAvoiding(ctx context.Context, req *stream.Request, endStream bool, refusedBy stream.ClientConn) (stream.ClientStream, error) {
	if !p.broken() {
		s, err := p.h3.newStreamAvoiding(ctx, req, endStream, refusedBy)
		if err == nil || !isConnectFailure(err) {
			return s, err
		}
		p.markBroken(err)
	}
	s, err := p.h2.newStreamAvoiding(ctx, req, endStream, refusedBy)
	if err != nil {
		return nil, fmt.Errorf("HTTP/2 fallback: %w", err)
	}
	return s, nil
}

// isConnectFailure reports whether err is the pool's connect failure.
func isConnectFailure(err error) bool {
	var se *stream.Error
	return errors.As(err, &se) && se.Unprocessed && se.Reason == "connect failure"
}

// Drain drains both pools.
func (p *h3FallbackPool) Drain() {
	p.h3.Drain()
	p.h2.Drain()
}

// Close closes both pools.
func (p *h3FallbackPool) Close() error {
	return errors.Join(p.h3.Close(), p.h2.Close())
}

// ActiveConns is the number of connections open over both protocols.
func (p *h3FallbackPool) ActiveConns() int { return p.h3.ActiveConns() + p.h2.ActiveConns() }

var (
	_ connPool = (*h3FallbackPool)(nil)
	_ muxConn  = (*h3.ClientConn)(nil)
)
