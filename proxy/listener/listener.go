// Package listener accepts downstream TCP connections for meshd: it sets
// TCP_NODELAY, terminates TLS with ALPN, decides between HTTP/1.1 and
// HTTP/2 (the HttpConnectionManager's codec_type, with AUTO detecting the
// HTTP/2 connection preface), hands each connection to a codec (or, in TCP
// mode, to a network filter without reading from it), and drains
// gracefully.
//
// Every connection is handled on its own goroutine; the accept loop never
// blocks on a handshake or a slow client.
package listener

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/proxy/stats"
)

// Codec is the HTTP codec a listener speaks: HttpConnectionManager
// codec_type.
type Codec int

const (
	// Auto picks per connection: the TLS ALPN protocol when one was
	// negotiated, otherwise HTTP/2 when the client opens with the HTTP/2
	// connection preface (prior knowledge) and HTTP/1.1 when it does not.
	Auto Codec = iota
	// HTTP1 serves every connection as HTTP/1.1.
	HTTP1
	// HTTP2 serves every connection as HTTP/2; a client that does not send
	// the preface is the HTTP/2 codec's to reject.
	HTTP2
	// TCP hands every connection, after TLS when configured, to Config.TCP
	// without reading from it: raw byte streams for tcp_proxy.
	TCP
)

// String returns the codec's Envoy codec_type name (AUTO, HTTP1, ...).
func (c Codec) String() string {
	switch c {
	case Auto:
		return "AUTO"
	case HTTP1:
		return "HTTP1"
	case HTTP2:
		return "HTTP2"
	case TCP:
		return "TCP"
	}
	return fmt.Sprintf("Codec(%d)", int(c))
}

// ConnFactory wraps an accepted, handshaken connection in a codec.
type ConnFactory func(c net.Conn, info stream.ConnInfo) stream.ServerConn

// DefaultHandshakeTimeout bounds TLS handshakes and protocol detection when
// Config.HandshakeTimeout is zero (Envoy's transport_socket_connect_timeout
// is unset by default; meshd bounds it so idle sockets cannot pin
// goroutines).
const DefaultHandshakeTimeout = 10 * time.Second

// Config configures a Listener.
type Config struct {
	// Name identifies the listener in logs and errors.
	Name string
	// Address is host:port to bind; port 0 picks a free port.
	Address string
	// TLS, when non-nil, makes the listener terminate TLS with it. The
	// caller sets NextProtos (e.g. "h2", "http/1.1") for ALPN.
	TLS *tls.Config
	// TLSOptional, with TLS set, serves a connection whose first byte is
	// not a TLS record of type handshake (22, which every ClientHello
	// starts with) in plaintext instead of failing its handshake: Envoy's
	// tls_inspector choosing between a filter chain matching
	// transport_protocol "tls" and a plaintext ("raw_buffer") one. The
	// byte is read within HandshakeTimeout and replayed to the TLS server
	// or the codec.
	TLSOptional bool
	// HandshakeTimeout bounds the TLS handshake plus protocol detection.
	// Zero means DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// Codec selects how connections are dispatched to HTTP1 and HTTP2.
	Codec Codec
	// HTTP1 and HTTP2 build the codec for a connection. A connection that
	// needs a nil factory is closed.
	HTTP1, HTTP2 ConnFactory
	// TCP serves connections when Codec is TCP.
	TCP ConnFactory
	// Logger receives per-connection diagnostics at debug level. Nil means
	// slog.Default().
	Logger *slog.Logger
	// OriginalDst runs envoy.filters.listener.original_dst: each accepted
	// connection's local address becomes its destination before a
	// netfilter REDIRECT (SO_ORIGINAL_DST). A connection without one keeps
	// its own and counts original_dst.missing.
	OriginalDst bool
	// Redirect, with OriginalDst, is Envoy's use_original_dst: it returns
	// the listener owning the original destination (nil for none), and
	// the connection is handed to it (Handoff); otherwise this listener
	// serves it.
	Redirect func(dst netip.AddrPort) *Listener
	// NoBind is bind_to_port false: no socket is bound; the listener
	// serves only connections handed to it. Address must then be an IP
	// and a port.
	NoBind bool
	// Stats is the listener's own scope, which the caller names as Envoy
	// does: "listener.<address>." tagged envoy_listener_address (see
	// StatsScope). The listener adds downstream_cx_total,
	// downstream_cx_active, downstream_cx_destroy, downstream_cx_length_ms,
	// downstream_pre_cx_active, downstream_pre_cx_timeout,
	// downstream_cx_transport_socket_connect_timeout, ssl.handshake,
	// ssl.connection_error and, with TLSOptional, tls_inspector.tls_found
	// and tls_inspector.tls_not_found. Nil keeps stats private to the
	// listener.
	Stats *stats.Scope
	// Admit, when non-nil, is called with each accepted connection before
	// it is served, and blocks while accepting is suspended (the overload
	// manager's stop_accepting_connections: further connections wait in
	// the kernel's backlog, as with Envoy's disabled listeners). It
	// returns false when stop is closed first; the connection is then
	// closed.
	Admit func(stop <-chan struct{}) bool
	// Rejected, when non-nil, is called once for every connection the
	// listener closes before a filter chain serves it: its TLS handshake
	// or protocol detection failed, or no factory serves its protocol.
	// It runs on the connection's goroutine after the socket is closed,
	// and feeds the listener's access_log.
	Rejected func(Rejection)
}

// Rejection is a connection the listener closed before any filter chain
// served it.
type Rejection struct {
	// Conn is the connection (TLS is nil: no handshake completed).
	Conn stream.ConnInfo
	// Start is when the connection was accepted.
	Start time.Time
	// Err is why it was closed.
	Err error
	// TLSFailure is set when the TLS handshake failed; Err then says why
	// (Envoy's %DOWNSTREAM_TRANSPORT_FAILURE_REASON%).
	TLSFailure bool
	// NoFilterChain is set when no factory serves the detected protocol
	// (Envoy's filter_chain_not_found).
	NoFilterChain bool
}

// tlsHandshakeError marks a failed downstream TLS handshake.
type tlsHandshakeError struct{ err error }

func (e *tlsHandshakeError) Error() string { return "TLS handshake: " + e.err.Error() }
func (e *tlsHandshakeError) Unwrap() error { return e.err }

// Listener is a bound TCP socket serving HTTP connections.
type Listener struct {
	cfg  Config
	ln   net.Listener
	log  *slog.Logger
	stat listenerStats

	stopOnce sync.Once
	stopped  chan struct{} // closed by StopAccepting
	serving  atomic.Bool   // Serve has been called

	wg       sync.WaitGroup // one per live connection
	mu       sync.Mutex
	conns    map[*conn]struct{}
	draining bool // Shutdown called: new codecs start draining at once
	closing  bool // Close called: new codecs are closed at once
}

type listenerStats struct {
	cxTotal, cxDestroy, preCxTimeout, transportTimeout *stats.Counter
	sslHandshake, sslConnError                         *stats.Counter
	tlsFound, tlsNotFound                              *stats.Counter
	origDstMissing                                     *stats.Counter
	cxActive, preCxActive                              *stats.Gauge
	cxLength                                           *stats.Histogram
}

// nextConnID numbers connections process-wide, so ConnInfo.ID is unique
// across listeners.
var nextConnID atomic.Uint64

// Listen binds cfg.Address. The listener accepts nothing until Serve.
func Listen(cfg Config) (*Listener, error) {
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	switch cfg.Codec {
	case Auto, HTTP1, HTTP2, TCP:
	default:
		return nil, fmt.Errorf("listener %q: codec %v is not AUTO, HTTP1, HTTP2 or TCP", cfg.Name, cfg.Codec)
	}
	var ln net.Listener
	if cfg.NoBind {
		ap, err := netip.ParseAddrPort(cfg.Address)
		if err != nil {
			return nil, fmt.Errorf("listener %q: bind_to_port false needs an IP:port address: %w", cfg.Name, err)
		}
		ln = &unbound{addr: net.TCPAddrFromAddrPort(ap), closed: make(chan struct{})}
	} else {
		var err error
		ln, err = net.Listen("tcp", cfg.Address)
		if err != nil {
			// err reads "listen tcp ADDR: bind: REASON".
			return nil, fmt.Errorf("listener %q: %w", cfg.Name, err)
		}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With(slog.String("listener", cfg.Name), slog.String("address", ln.Addr().String()))
	scope := cfg.Stats
	if scope == nil {
		scope = stats.NewStore().Root()
	}
	ssl := scope.Scope("ssl")
	return &Listener{
		cfg:     cfg,
		ln:      ln,
		log:     log,
		stopped: make(chan struct{}),
		conns:   map[*conn]struct{}{},
		stat: listenerStats{
			cxTotal:          scope.Counter("downstream_cx_total"),
			cxDestroy:        scope.Counter("downstream_cx_destroy"),
			preCxTimeout:     scope.Counter("downstream_pre_cx_timeout"),
			transportTimeout: scope.Counter("downstream_cx_transport_socket_connect_timeout"),
			sslHandshake:     ssl.Counter("handshake"),
			sslConnError:     ssl.Counter("connection_error"),
			tlsFound:         scope.Scope("tls_inspector").Counter("tls_found"),
			tlsNotFound:      scope.Scope("tls_inspector").Counter("tls_not_found"),
			origDstMissing:   scope.Scope("original_dst").Counter("missing"),
			cxActive:         scope.Gauge("downstream_cx_active"),
			preCxActive:      scope.Gauge("downstream_pre_cx_active"),
			cxLength:         scope.Histogram("downstream_cx_length_ms"),
		},
	}, nil
}

// StatsScope returns Envoy's scope for a listener on address under root:
// "listener.<address>." with ':' replaced by '_' in the flat name, and the
// address as the envoy_listener_address label.
func StatsScope(root *stats.Scope, address string) *stats.Scope {
	return root.Scope("listener").Tagged("envoy_listener_address", strings.ReplaceAll(address, ":", "_"))
}

// Addr is the bound address.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// Serve accepts connections until StopAccepting, Shutdown or Close, then
// returns nil. Temporary accept errors (out of file descriptors, aborted
// handshakes) are logged and retried with a backoff from 5 ms to 1 s, as
// net/http does; any other error is returned. Serve may be called once.
func (l *Listener) Serve() error {
	if l.serving.Swap(true) {
		return fmt.Errorf("listener %q: Serve called twice", l.cfg.Name)
	}
	var backoff time.Duration
	for {
		c, err := l.ln.Accept()
		if err != nil {
			select {
			case <-l.stopped:
				return nil
			default:
			}
			if !temporary(err) {
				return fmt.Errorf("listener %q on %s: accept: %w", l.cfg.Name, l.ln.Addr(), err)
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			l.log.Warn("listener: accept failed; retrying", slog.Duration("backoff", backoff), slog.Any("error", err))
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-l.stopped:
				t.Stop()
				return nil
			}
			continue
		}
		backoff = 0
		if l.cfg.Admit != nil && !l.cfg.Admit(l.stopped) {
			_ = c.Close()
			return nil
		}
		if l.cfg.OriginalDst {
			var handed bool
			if c, handed = l.restore(c); handed {
				continue
			}
		}
		l.start(c)
	}
}

// temporary reports whether an accept error is worth retrying.
func temporary(err error) bool {
	for _, errno := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED, syscall.ECONNRESET, syscall.EINTR} {
		if errors.Is(err, errno) {
			return true
		}
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// StopAccepting closes the socket: new connections are refused by the
// kernel, existing ones are untouched. Idempotent.
func (l *Listener) StopAccepting() {
	l.stopOnce.Do(func() {
		close(l.stopped)
		if err := l.ln.Close(); err != nil {
			l.log.Debug("listener: closing socket", slog.Any("error", err))
		}
	})
}

// Shutdown stops accepting and drains: every live connection is asked to
// close gracefully (HTTP/2 GOAWAY, HTTP/1.1 "Connection: close"), and
// connections still in TLS handshake or detection are served their
// in-flight request and then closed. It returns nil once all connections
// are closed, or, when ctx ends first, closes the rest, waits for their
// goroutines and returns ctx.Err().
func (l *Listener) Shutdown(ctx context.Context) error {
	l.StopAccepting()
	l.mu.Lock()
	l.draining = true
	live := l.snapshotLocked()
	l.mu.Unlock()
	for _, c := range live {
		c.shutdown()
	}
	done := make(chan struct{})
	go func() {
		l.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		l.closeAll()
		<-done
		return ctx.Err()
	}
}

// Close stops accepting and closes every connection at once, resetting
// their streams; it returns when their goroutines have exited.
func (l *Listener) Close() error {
	l.StopAccepting()
	l.closeAll()
	l.wg.Wait()
	return nil
}

func (l *Listener) closeAll() {
	l.mu.Lock()
	l.closing = true
	live := l.snapshotLocked()
	l.mu.Unlock()
	for _, c := range live {
		c.close()
	}
}

func (l *Listener) snapshotLocked() []*conn {
	out := make([]*conn, 0, len(l.conns))
	for c := range l.conns {
		out = append(out, c)
	}
	return out
}

// ActiveConns is the number of open connections, including those still in
// TLS handshake or protocol detection.
func (l *Listener) ActiveConns() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

// conn is one accepted connection. raw is closed to abort it before the
// codec exists; after, sc owns it.
type conn struct {
	raw net.Conn

	mu sync.Mutex
	sc stream.ServerConn // nil until the protocol is chosen
}

func (c *conn) shutdown() {
	c.mu.Lock()
	sc := c.sc
	c.mu.Unlock()
	if sc != nil {
		sc.Shutdown()
	}
	// Before the codec exists the connection is left to finish its
	// handshake; serve sees l.draining and shuts the codec down at once.
}

func (c *conn) close() {
	c.mu.Lock()
	sc := c.sc
	c.mu.Unlock()
	if sc != nil {
		sc.Close()
		return
	}
	c.raw.Close()
}

// Handoff serves c, accepted by another listener, as if this listener had
// accepted it (use_original_dst). It reports false, leaving c to the
// caller, when this listener no longer takes connections.
func (l *Listener) Handoff(c net.Conn) bool {
	select {
	case <-l.stopped:
		return false
	default:
	}
	l.mu.Lock()
	closing := l.closing || l.draining
	l.mu.Unlock()
	if closing {
		return false
	}
	l.start(c)
	return true
}

func (l *Listener) start(raw net.Conn) {
	c := &conn{raw: raw}
	l.mu.Lock()
	if l.closing {
		l.mu.Unlock()
		raw.Close()
		return
	}
	l.conns[c] = struct{}{}
	l.wg.Add(1)
	l.mu.Unlock()
	l.stat.cxTotal.Inc()
	l.stat.cxActive.Inc()
	go l.serve(c)
}

// serve runs one connection: TLS, protocol choice, then the codec.
func (l *Listener) serve(c *conn) {
	start := time.Now()
	defer func() {
		c.raw.Close()
		l.mu.Lock()
		delete(l.conns, c)
		l.mu.Unlock()
		l.stat.cxActive.Dec()
		l.stat.cxDestroy.Inc()
		l.stat.cxLength.Record(float64(time.Since(start).Milliseconds()))
		l.wg.Done()
	}()
	info := stream.ConnInfo{
		ID:         nextConnID.Add(1),
		LocalAddr:  c.raw.LocalAddr(),
		RemoteAddr: c.raw.RemoteAddr(),
	}
	log := l.log.With(slog.Uint64("conn", info.ID), slog.String("remote", info.RemoteAddr.String()))
	if tc, ok := c.raw.(*net.TCPConn); ok {
		// Go's default, stated: small streamed messages must not wait.
		if err := tc.SetNoDelay(true); err != nil {
			log.Debug("listener: set TCP_NODELAY", slog.Any("error", err))
		}
	}

	l.stat.preCxActive.Inc()
	nc, codec, err := l.prepare(c.raw, &info)
	l.stat.preCxActive.Dec()
	if err != nil {
		log.Debug("listener: connection dropped before serving", slog.Any("error", err))
		if l.cfg.Rejected != nil {
			var te *tlsHandshakeError
			tlsFailure := errors.As(err, &te)
			if tlsFailure {
				err = te.err
			}
			c.raw.Close()
			l.cfg.Rejected(Rejection{Conn: info, Start: start, Err: err, TLSFailure: tlsFailure})
		}
		return
	}
	factory, proto := l.cfg.HTTP1, "HTTP/1.1"
	switch codec {
	case HTTP2:
		factory, proto = l.cfg.HTTP2, "HTTP/2"
	case TCP:
		factory, proto = l.cfg.TCP, "TCP"
	}
	if factory == nil {
		log.Debug("listener: no codec configured for protocol", slog.String("proto", proto))
		if l.cfg.Rejected != nil {
			c.raw.Close()
			l.cfg.Rejected(Rejection{Conn: info, Start: start, NoFilterChain: true,
				Err: fmt.Errorf("no filter chain serves %s", proto)})
		}
		return
	}
	info.Proto = proto
	sc := factory(nc, info)

	l.mu.Lock()
	closing, draining := l.closing, l.draining
	c.mu.Lock()
	c.sc = sc
	c.mu.Unlock()
	l.mu.Unlock()
	switch {
	case closing:
		sc.Close()
		return
	case draining:
		sc.Shutdown()
	}
	if err := sc.Serve(); err != nil {
		log.Debug("listener: connection ended", slog.String("proto", proto), slog.Any("error", err))
	}
}

// prepare does the TLS handshake and picks the codec, all within
// HandshakeTimeout. The returned conn replays any bytes read while sniffing.
func (l *Listener) prepare(raw net.Conn, info *stream.ConnInfo) (net.Conn, Codec, error) {
	deadline := time.Now().Add(l.cfg.HandshakeTimeout)
	if err := raw.SetDeadline(deadline); err != nil {
		return nil, 0, fmt.Errorf("set handshake deadline: %w", err)
	}
	nc := raw
	codec := l.cfg.Codec
	useTLS := l.cfg.TLS != nil
	if useTLS && l.cfg.TLSOptional {
		var err error
		nc, useTLS, err = inspectTLS(raw)
		if err != nil {
			if isTimeout(err) {
				l.stat.preCxTimeout.Inc()
			}
			return nil, 0, fmt.Errorf("detecting TLS: %w", err)
		}
		if useTLS {
			l.stat.tlsFound.Inc()
		} else {
			l.stat.tlsNotFound.Inc()
		}
	}
	if useTLS {
		tc := tls.Server(nc, l.cfg.TLS)
		if err := tc.Handshake(); err != nil {
			l.stat.sslConnError.Inc()
			if isTimeout(err) {
				l.stat.transportTimeout.Inc()
			}
			return nil, 0, &tlsHandshakeError{err: err}
		}
		l.stat.sslHandshake.Inc()
		st := tc.ConnectionState()
		info.TLS = &st
		nc = tc
		if codec == Auto {
			switch st.NegotiatedProtocol {
			case "h2":
				codec = HTTP2
			case "http/1.1":
				codec = HTTP1
			}
		}
	}
	if codec == Auto {
		var err error
		nc, codec, err = sniff(nc)
		if err != nil {
			if isTimeout(err) {
				l.stat.preCxTimeout.Inc()
			}
			return nil, 0, fmt.Errorf("detecting HTTP version: %w", err)
		}
	}
	if err := raw.SetDeadline(time.Time{}); err != nil {
		return nil, 0, fmt.Errorf("clear handshake deadline: %w", err)
	}
	return nc, codec, nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// recordTypeHandshake is the TLS record content type of a ClientHello
// (RFC 8446 section 5.1, RFC 5246 section 6.2.1).
const recordTypeHandshake = 22

// inspectTLS reads the connection's first byte and reports whether it
// opens a TLS handshake record. The returned conn replays that byte.
func inspectTLS(c net.Conn) (net.Conn, bool, error) {
	var b [1]byte
	for {
		n, err := c.Read(b[:])
		if n == 1 {
			return &replayConn{Conn: c, buf: b[:]}, b[0] == recordTypeHandshake, nil
		}
		if err != nil {
			return nil, false, err
		}
	}
}

// preface is the HTTP/2 client connection preface (RFC 9113 section 3.4).
const preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// sniff reads from c until the bytes either diverge from the HTTP/2 preface
// (HTTP/1.1: decided on the first differing byte, so a slow HTTP/1 client
// is not kept waiting for 24 bytes) or complete it (HTTP/2). It never reads
// past the preface, so the bytes to replay are exactly those read.
func sniff(c net.Conn) (net.Conn, Codec, error) {
	var buf [len(preface)]byte
	n := 0
	for n < len(buf) {
		m, err := c.Read(buf[n:])
		if string(buf[n:n+m]) != preface[n:n+m] {
			return &replayConn{Conn: c, buf: buf[:n+m]}, HTTP1, nil
		}
		n += m
		if err != nil && n < len(buf) {
			return nil, 0, err
		}
	}
	return &replayConn{Conn: c, buf: buf[:n]}, HTTP2, nil
}

// replayConn returns buf before reading from Conn again.
type replayConn struct {
	net.Conn
	buf []byte
}

func (r *replayConn) Read(p []byte) (int, error) {
	if len(r.buf) > 0 {
		n := copy(p, r.buf)
		r.buf = r.buf[n:]
		return n, nil
	}
	return r.Conn.Read(p)
}

// CloseWrite half-closes when the wrapped conn can.
func (r *replayConn) CloseWrite() error {
	if cw, ok := r.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
