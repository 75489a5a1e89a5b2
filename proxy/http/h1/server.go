// Package h1 adapts net/http's HTTP/1.1 server and client to meshd's
// protocol-neutral stream interfaces (proxy/http/stream).
//
// HTTP/1.1 uses net/http rather than a codec of meshd's own: HTTP/1.1 has
// none of the connection-level state (SETTINGS, windows, PING, GOAWAY,
// stream refusal) that made meshd write its HTTP/2 codec, and net/http's
// HTTP/1.1 parser is hardened by a decade of fuzzing and CVE fixes (request
// smuggling, chunked-encoding edge cases, header limits, Expect handling).
// The adapter's job is only to translate between http.Request/ResponseWriter
// and stream.ServerStream, and between http.Transport and stream.ClientConn.
//
// What net/http decides for us, and this package documents rather than
// hides: header order within a message is not preserved (net/http parses
// into a map; the adapter emits fields sorted by name), Transfer-Encoding is
// consumed as framing and never appears as a header, and "100 Continue" is
// sent by net/http itself when the handler first reads the request body.
package h1

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/proxy/stats"
)

// UnderscoreAction is what the server does with a request header whose name
// contains an underscore: Envoy's
// common_http_protocol_options.headers_with_underscores_action.
type UnderscoreAction int

const (
	// UnderscoreAllow passes such headers through (Envoy's default, ALLOW).
	UnderscoreAllow UnderscoreAction = iota
	// UnderscoreRejectRequest answers the request with 400 and closes the
	// connection (REJECT_REQUEST).
	UnderscoreRejectRequest
	// UnderscoreDropHeader removes such headers before the handler sees the
	// request (DROP_HEADER).
	UnderscoreDropHeader
)

// ServerConfig configures a Server. The zero value is usable: no timeouts,
// net/http's default header limit (1 MiB), underscores allowed.
type ServerConfig struct {
	// RxBytes and TxBytes, when set, count the bytes read from and
	// written to each connection (downstream_cx_{rx,tx}_bytes_total),
	// after TLS decryption and before encryption, as Envoy counts them.
	RxBytes, TxBytes *stats.Counter
	// IdleTimeout closes a keep-alive connection that has had no request
	// for this long (HCM common_http_protocol_options.idle_timeout). Zero
	// means no idle timeout.
	IdleTimeout time.Duration
	// ReadHeaderTimeout bounds the time to read a request's header section,
	// from the first byte of the request. Zero means no limit.
	ReadHeaderTimeout time.Duration
	// MaxHeaderBytes bounds the request line plus header section; larger
	// requests get 431. Zero means net/http's default (1 MiB).
	MaxHeaderBytes int
	// MaxHeadersCount bounds the request's header fields (values of a
	// repeated name count once each); more get 431 and the connection
	// closes (common_http_protocol_options.max_headers_count). Zero means
	// no limit.
	MaxHeadersCount int
	// MaxConnectionDuration makes a connection close once it is this old:
	// at once if it is idle, otherwise after its in-flight request, whose
	// response carries "Connection: close" (HCM
	// common_http_protocol_options.max_connection_duration). Zero means
	// no limit.
	MaxConnectionDuration time.Duration
	// MaxRequestsPerConnection makes the response to a connection's Nth
	// request carry "Connection: close" and the connection close after it
	// (common_http_protocol_options.max_requests_per_connection). Zero
	// means no limit.
	MaxRequestsPerConnection uint32
	// MaxDurationReached and MaxRequestsReached, when not nil, count
	// connections drained by the two limits above (Envoy's
	// downstream_cx_max_duration_reached and
	// downstream_cx_max_requests_reached).
	MaxDurationReached, MaxRequestsReached *stats.Counter
	// HeadersWithUnderscoresAction: see UnderscoreAction.
	HeadersWithUnderscoresAction UnderscoreAction
	// Logger receives connection-level diagnostics (net/http's ErrorLog,
	// at debug level). Nil means slog.Default().
	Logger *slog.Logger
}

// Server serves HTTP/1.1 connections handed to it by a listener, calling a
// stream.Handler once per request. One Server serves every connection of a
// listener; its net/http.Server accepts from an in-process channel, not a
// socket.
type Server struct {
	cfg ServerConfig
	h   stream.Handler
	log *slog.Logger
	hs  *http.Server
	ln  *chanListener

	startOnce sync.Once
	served    chan struct{} // closed when hs.Serve has returned

	mu     sync.Mutex
	closed bool // no new connections once Shutdown or Close ran
}

// NewServer returns a Server that calls h for every request. It starts no
// goroutine until the first connection is served.
func NewServer(cfg ServerConfig, h stream.Handler) *Server {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	s := &Server{
		cfg:    cfg,
		h:      h,
		log:    log,
		ln:     newChanListener(),
		served: make(chan struct{}),
	}
	s.hs = &http.Server{
		Handler:           http.HandlerFunc(s.serveHTTP),
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    cfg.MaxHeaderBytes,
		// "OPTIONS *" goes to the handler like any request, as in Envoy.
		DisableGeneralOptionsHandler: true,
		// An empty map disables net/http's own HTTP/2: meshd's listener
		// picks the protocol, this server only ever speaks HTTP/1.x.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ErrorLog:     slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if sc, ok := c.(*serverConn); ok {
				return context.WithValue(ctx, connKey{}, sc)
			}
			return ctx
		},
		ConnState: func(c net.Conn, st http.ConnState) {
			if sc, ok := c.(*serverConn); ok {
				sc.setState(st)
			}
		},
	}
	return s
}

func (s *Server) start() {
	s.startOnce.Do(func() {
		go func() {
			defer close(s.served)
			// Serve returns when the channel listener is closed; the error
			// (ErrServerClosed or net.ErrClosed) carries no information.
			_ = s.hs.Serve(s.ln)
		}()
	})
}

// NewConn wraps c, an accepted connection whose protocol is HTTP/1.x, for
// serving. The connection is not read until Serve is called. info describes
// c; its Proto is set to "HTTP/1.1".
func (s *Server) NewConn(c net.Conn, info stream.ConnInfo) stream.ServerConn {
	info.Proto = "HTTP/1.1"
	return &serverConn{Conn: c, srv: s, info: info, done: make(chan struct{})}
}

// Shutdown stops serving gracefully: idle connections close at once, busy
// ones after their in-flight request (with "Connection: close"), and
// connections not yet handed to Serve are refused. It returns when every
// connection is closed, or, when ctx ends first, closes the rest and
// returns ctx.Err().
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.start() // so that s.served is closed once Serve sees the closed listener
	err := s.hs.Shutdown(ctx)
	if err != nil {
		s.hs.Close()
	}
	s.ln.Close()
	<-s.served
	return err
}

// Close closes every connection at once, resetting in-flight requests.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.start()
	err := s.hs.Close()
	s.ln.Close()
	<-s.served
	return err
}

// connKey is the context key under which ConnContext stores *serverConn.
type connKey struct{}

// serverConn is one downstream connection. It is the net.Conn net/http
// serves (so its Close tells Serve the connection ended) and the
// stream.ServerConn the listener holds.
type serverConn struct {
	net.Conn
	srv  *Server
	info stream.ConnInfo

	closeOnce sync.Once
	done      chan struct{} // closed by Close
	readAny   atomic.Bool   // some request bytes have been read

	mu       sync.Mutex
	state    http.ConnState // last state net/http reported
	draining bool           // Shutdown was called: close once idle
	requests uint32         // requests started
}

// CloseWrite half-closes the connection when the underlying conn supports
// it, so net/http can end a connection after an error response without the
// peer seeing a TCP reset before it read the response.
func (c *serverConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// Read notes that the connection has started a request, and counts the
// bytes read.
func (c *serverConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.readAny.Store(true)
		if rx := c.srv.cfg.RxBytes; rx != nil {
			rx.Add(uint64(n))
		}
	}
	return n, err
}

// Write counts the bytes written.
func (c *serverConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if tx := c.srv.cfg.TxBytes; tx != nil && n > 0 {
		tx.Add(uint64(n))
	}
	return n, err
}

// Close closes the connection. It is idempotent and unblocks Serve.
func (c *serverConn) Close() error {
	err := net.ErrClosed
	c.closeOnce.Do(func() {
		err = c.Conn.Close()
		close(c.done)
	})
	return err
}

// Serve hands the connection to net/http and blocks until it is closed.
func (c *serverConn) Serve() error {
	s := c.srv
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		c.Close()
		return errors.New("h1: server shut down before the connection was served")
	}
	s.start()
	if d := s.cfg.MaxConnectionDuration; d > 0 {
		t := time.AfterFunc(d, func() {
			if !c.isDraining() && s.cfg.MaxDurationReached != nil {
				s.cfg.MaxDurationReached.Inc()
			}
			c.Shutdown()
		})
		defer t.Stop()
	}
	if !s.ln.deliver(c) {
		c.Close()
		return errors.New("h1: server shut down before the connection was served")
	}
	<-c.done
	return nil
}

// startRequest counts a request and, when it is the last one
// MaxRequestsPerConnection allows, marks the connection draining so the
// response carries "Connection: close".
func (c *serverConn) startRequest() {
	limit := c.srv.cfg.MaxRequestsPerConnection
	c.mu.Lock()
	c.requests++
	last := limit > 0 && c.requests == limit && !c.draining
	if last {
		c.draining = true
	}
	c.mu.Unlock()
	if last && c.srv.cfg.MaxRequestsReached != nil {
		c.srv.cfg.MaxRequestsReached.Inc()
	}
}

// Shutdown makes the connection close after its in-flight request, or at
// once when it is idle: between requests, or before its first request
// sent a byte. It does not block.
func (c *serverConn) Shutdown() {
	c.mu.Lock()
	c.draining = true
	idle := c.state == http.StateIdle || (c.state == http.StateNew && !c.readAny.Load())
	c.mu.Unlock()
	if idle {
		c.Close()
	}
}

func (c *serverConn) setState(st http.ConnState) {
	c.mu.Lock()
	c.state = st
	closeNow := st == http.StateIdle && c.draining
	c.mu.Unlock()
	if closeNow {
		c.Close()
	}
	if st == http.StateClosed || st == http.StateHijacked {
		c.Close()
	}
}

func (c *serverConn) isDraining() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.draining
}

// chanListener is the net.Listener net/http's Server accepts from: Serve
// calls deliver, Accept receives.
type chanListener struct {
	ch        chan net.Conn
	closed    chan struct{}
	closeOnce sync.Once
}

func newChanListener() *chanListener {
	return &chanListener{ch: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *chanListener) deliver(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.closed:
		return false
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.closed:
		return nil, fmt.Errorf("h1: accept: %w", net.ErrClosed)
	}
}

func (l *chanListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return chanAddr{} }

type chanAddr struct{}

func (chanAddr) Network() string { return "meshd" }
func (chanAddr) String() string  { return "h1-server" }
