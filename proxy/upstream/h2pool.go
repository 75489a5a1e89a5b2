package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"

	"meshd.dev/meshd/proxy/http/h2"
	"meshd.dev/meshd/proxy/http/stream"
)

// assumedStreamsPerConn is the stream capacity the pool expects of a
// connection whose SETTINGS have not arrived yet, when deciding how many
// connections to dial for the streams waiting.
const assumedStreamsPerConn = 100

// h2Pool multiplexes streams to one endpoint over as few HTTP/2 connections
// as the peer's SETTINGS_MAX_CONCURRENT_STREAMS allows. A stream goes to a
// healthy connection with free capacity; when there is none, the pool dials
// as many connections as the waiting streams need (never more than
// maxConns) and the streams wait for capacity.
type h2Pool struct {
	addr     string
	spec     *Spec
	stats    *Stats
	logger   *slog.Logger
	maxConns int

	mu         sync.Mutex
	conns      []*h2.ClientConn
	connecting int
	waiting    int
	closed     bool
	// changed is closed and replaced whenever capacity may have appeared
	// (a SETTINGS frame, a finished stream, a new or failed connection).
	changed chan struct{}
	dialErr error
}

func newH2Pool(addr string, spec *Spec, st *Stats, logger *slog.Logger) *h2Pool {
	return &h2Pool{
		addr:     addr,
		spec:     spec,
		stats:    st,
		logger:   logger,
		maxConns: spec.Thresholds.MaxConnections,
		changed:  make(chan struct{}),
	}
}

// broadcast wakes every stream waiting for capacity.
func (p *h2Pool) broadcast() {
	p.mu.Lock()
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock()
}

// NewStream opens a stream on a connection with capacity, waiting for one
// while ctx allows.
func (p *h2Pool) NewStream(ctx context.Context, req *stream.Request, endStream bool) (stream.ClientStream, error) {
	counted := false
	defer func() {
		if counted {
			p.mu.Lock()
			p.waiting--
			p.mu.Unlock()
		}
	}()
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, &stream.Error{Code: stream.ErrCodeRefusedStream, Unprocessed: true, Reason: "connection pool closed"}
		}
		cc := p.pickLocked()
		if cc == nil {
			if !counted {
				counted = true
				p.waiting++
			}
			if p.dialErr != nil && p.connecting == 0 && len(p.conns) == 0 {
				err := p.dialErr
				p.dialErr = nil
				p.mu.Unlock()
				return nil, &stream.Error{Code: stream.ErrCodeRefusedStream, Unprocessed: true, Reason: "connect failure", Err: err}
			}
			p.maybeDialLocked()
		}
		wake := p.changed
		p.mu.Unlock()

		if cc != nil {
			s, err := cc.NewStream(ctx, req, endStream)
			if err == nil {
				return s, nil
			}
			if !stream.Unprocessed(err) || ctx.Err() != nil {
				return nil, err
			}
			continue // lost a race for the last slot or the connection went away
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// pickLocked returns the healthy connection with the most free capacity and
// drops connections that have ended.
func (p *h2Pool) pickLocked() *h2.ClientConn {
	var best *h2.ClientConn
	bestCap := 0
	live := p.conns[:0]
	for _, cc := range p.conns {
		select {
		case <-cc.Done():
			continue
		default:
		}
		live = append(live, cc)
		if !cc.Healthy() {
			continue
		}
		if c := cc.Capacity(); c > bestCap {
			best, bestCap = cc, c
		}
	}
	clear(p.conns[len(live):])
	p.conns = live
	return best
}

// maybeDialLocked starts dials until the connections being dialled can be
// expected to hold every waiting stream.
func (p *h2Pool) maybeDialLocked() {
	for p.connecting*assumedStreamsPerConn < p.waiting && len(p.conns)+p.connecting < p.maxConns {
		p.connecting++
		go p.dial()
	}
}

func (p *h2Pool) dial() {
	cc, err := p.connect()
	p.mu.Lock()
	p.connecting--
	if err != nil {
		p.dialErr = err
	} else if p.closed {
		cc.Close()
	} else {
		p.conns = append(p.conns, cc)
	}
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock()
}

func (p *h2Pool) connect() (*h2.ClientConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), p.spec.ConnectTimeout)
	defer cancel()
	conn, err := dialTCP(ctx, p.addr, p.spec.TLS, p.stats)
	if err != nil {
		return nil, err
	}
	if tc, ok := conn.(*tls.Conn); ok && tc.ConnectionState().NegotiatedProtocol != "h2" {
		conn.Close()
		p.stats.CxConnectFail.Inc()
		return nil, fmt.Errorf("upstream %s: TLS peer did not negotiate h2 (ALPN %q)", p.addr, tc.ConnectionState().NegotiatedProtocol)
	}
	p.stats.CxTotal.Inc()
	p.stats.CxActive.Inc()
	o := p.spec.HTTP2
	cc := h2.NewClientConn(conn, &h2.ClientConfig{
		MaxConcurrentStreams:        o.MaxConcurrentStreams,
		InitialStreamWindowSize:     o.InitialStreamWindowSize,
		InitialConnectionWindowSize: o.InitialConnectionWindowSize,
		KeepaliveInterval:           o.Keepalive.Interval,
		KeepaliveTimeout:            o.Keepalive.Timeout,
		Logger:                      p.logger,
		Stats:                       p.stats.HTTP2,
		OnSettings:                  func(uint32) { p.broadcast() },
		OnGoAway: func(_ uint32, _ stream.ErrCode, _ string) {
			p.stats.CxCloseNotify.Inc()
			p.broadcast()
		},
		OnStreamDone: p.broadcast,
		OnClose: func(error) {
			p.stats.CxActive.Dec()
			p.broadcast()
		},
	})
	return cc, nil
}

// dialTCP connects to addr within ctx, with TCP_NODELAY, and completes the
// TLS handshake when cfg is set: connect_timeout covers the handshake.
func dialTCP(ctx context.Context, addr string, cfg *tls.Config, st *Stats) (net.Conn, error) {
	d := net.Dialer{KeepAlive: -1}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		st.CxConnectFail.Inc()
		if errors.Is(err, context.DeadlineExceeded) {
			st.CxConnectTimeout.Inc()
		}
		return nil, fmt.Errorf("connect %s: %w", addr, err)
	}
	if tcp, ok := conn.(*net.TCPConn); ok {
		_ = tcp.SetNoDelay(true)
	}
	if cfg == nil {
		return conn, nil
	}
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		st.CxConnectFail.Inc()
		if errors.Is(err, context.DeadlineExceeded) {
			st.CxConnectTimeout.Inc()
		}
		return nil, fmt.Errorf("TLS handshake with %s: %w", addr, err)
	}
	return tc, nil
}

// ActiveConns is the number of open connections.
func (p *h2Pool) ActiveConns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Drain stops new streams and closes each connection once its streams end.
func (p *h2Pool) Drain() {
	p.mu.Lock()
	p.closed = true
	conns := p.conns
	p.conns = nil
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock()
	for _, cc := range conns {
		cc.Shutdown()
	}
}

// Close closes every connection at once.
func (p *h2Pool) Close() error {
	p.mu.Lock()
	p.closed = true
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	for _, cc := range conns {
		cc.Close()
	}
	return nil
}

var _ connPool = (*h2Pool)(nil)
