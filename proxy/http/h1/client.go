package h1

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/proxy/stats"
)

// Client defaults, chosen to match Envoy's HTTP/1.1 upstream pool.
const (
	// DefaultConnectTimeout is Envoy's default cluster connect_timeout.
	DefaultConnectTimeout = 5 * time.Second
	// DefaultIdleTimeout is Envoy's default upstream idle_timeout.
	DefaultIdleTimeout = time.Hour
	// DefaultMaxIdleConns keeps up to this many idle connections to the
	// endpoint. Envoy never closes an HTTP/1.1 upstream connection for being
	// surplus; its only bound is circuit_breakers max_connections, whose
	// default is 1024. net/http's default of 2 causes connection churn and
	// TIME_WAIT storms under bursts, which is exactly what meshd prevents.
	DefaultMaxIdleConns = 1024
)

// ClientConfig configures a Client. Zero values take the defaults above.
type ClientConfig struct {
	// Addr is the endpoint, host:port. Every connection dials it, whatever
	// the request's authority.
	Addr string
	// ConnectTimeout bounds TCP connect plus TLS handshake.
	ConnectTimeout time.Duration
	// MaxIdleConns is how many idle keep-alive connections are kept.
	MaxIdleConns int
	// IdleTimeout closes a connection idle for this long.
	IdleTimeout time.Duration
	// MaxConns caps connections (idle, active and dialing) to the endpoint;
	// requests beyond it wait for one to free up. Zero means no limit.
	MaxConns int
	// TLS, when non-nil, makes every connection TLS with this config
	// (cloned; NextProtos is forced to "http/1.1"). Nil means plaintext.
	TLS *tls.Config
	// TCPKeepalive enables TCP keepalive with these parameters
	// (upstream_connection_options.tcp_keepalive). Nil leaves it off, as
	// Envoy does when the field is absent.
	TCPKeepalive *net.KeepAliveConfig
	// Logger receives diagnostics. Nil means slog.Default().
	Logger *slog.Logger
	// OnConnect, OnConnectFailure and OnConnClose, when set, observe the
	// pool's connections (the cluster keeps upstream_cx_* stats with
	// them): a connection established (TLS included) with the time the
	// dial took, an attempt that failed, and an established connection
	// closed with how long it was open and whether the peer closed it
	// first (a read from it failed, end of stream or reset, before the
	// client closed it) rather than the client (idle timeout, Close,
	// "Connection: close", a cancelled request). They must not block.
	OnConnect        func(connectTime time.Duration)
	OnConnectFailure func(err error)
	OnConnClose      func(lifetime time.Duration, byPeer bool)
	// RxBytes and TxBytes, when set, count the bytes read from and
	// written to the pool's connections (upstream_cx_{rx,tx}_bytes_total),
	// after TLS decryption and before encryption, as Envoy counts them.
	RxBytes, TxBytes *stats.Counter
	// MaxRequestsPerConnection (max_requests_per_connection) closes a
	// connection after this many requests: the last one goes out with
	// "Connection: close" and the connection is not reused. Zero means no
	// limit. OnMaxRequests, when set, is called each time a connection
	// reaches it.
	MaxRequestsPerConnection uint32
	OnMaxRequests            func()
}

// Client is a pool of HTTP/1.1 connections to one endpoint, built on a
// dedicated http.Transport. It implements stream.ClientConn; each stream
// uses one connection exclusively until its response body is read to the
// end, after which the connection is reused.
type Client struct {
	cfg    ClientConfig
	scheme string
	log    *slog.Logger
	tr     *http.Transport

	mu       sync.Mutex
	closed   bool // no new streams (Close or Drain)
	draining bool // Drain: close each connection as its stream ends
	streams  map[*clientStream]struct{}
}

// NewClient returns a Client for cfg.Addr. It dials nothing until the first
// stream.
func NewClient(cfg ClientConfig) *Client {
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.MaxIdleConns <= 0 {
		cfg.MaxIdleConns = DefaultMaxIdleConns
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	c := &Client{cfg: cfg, scheme: "http", log: log, streams: map[*clientStream]struct{}{}}
	c.tr = &http.Transport{
		Proxy:                  nil, // never from the environment
		DialContext:            c.dialPlain,
		DisableCompression:     true,
		ForceAttemptHTTP2:      false,
		TLSNextProto:           map[string]func(string, *tls.Conn) http.RoundTripper{},
		MaxIdleConns:           0, // per-host limit below is the only one
		MaxIdleConnsPerHost:    cfg.MaxIdleConns,
		MaxConnsPerHost:        cfg.MaxConns,
		IdleConnTimeout:        cfg.IdleTimeout,
		ExpectContinueTimeout:  0, // send the body at once; the downstream client already waited
		ResponseHeaderTimeout:  0, // the router's timeouts govern
		MaxResponseHeaderBytes: 0,
	}
	if cfg.TLS != nil {
		c.scheme = "https"
		c.tr.DialTLSContext = c.dialTLS
	}
	return c
}

// connectError marks a failure to establish a connection: the request
// cannot have reached the upstream.
type connectError struct{ err error }

func (e *connectError) Error() string { return "connect failure: " + e.err.Error() }
func (e *connectError) Unwrap() error { return e.err }

// dialPlain is the Transport's dialer for plaintext connections.
func (c *Client) dialPlain(ctx context.Context, network, addr string) (net.Conn, error) {
	start := time.Now()
	conn, err := c.dial(ctx, network, addr)
	return c.observe(start, conn, err)
}

// observe reports the outcome of a dial begun at start to the connection
// hooks and, on success, wraps the connection so its close is reported
// once.
func (c *Client) observe(start time.Time, conn net.Conn, err error) (net.Conn, error) {
	if err != nil {
		if c.cfg.OnConnectFailure != nil {
			c.cfg.OnConnectFailure(err)
		}
		return nil, err
	}
	opened := time.Now()
	if c.cfg.OnConnect != nil {
		c.cfg.OnConnect(opened.Sub(start))
	}
	if c.cfg.OnConnClose == nil && c.cfg.MaxRequestsPerConnection == 0 && c.cfg.RxBytes == nil && c.cfg.TxBytes == nil {
		return conn, nil
	}
	return &observedConn{Conn: conn, onClose: c.cfg.OnConnClose, opened: opened, rx: c.cfg.RxBytes, tx: c.cfg.TxBytes}, nil
}

// observedConn reports its first Close, with whether the peer had closed
// the connection before it, and counts the requests sent on it.
type observedConn struct {
	net.Conn
	once     sync.Once
	onClose  func(lifetime time.Duration, byPeer bool) // nil: not reported
	opened   time.Time                                 // when the dial succeeded
	requests atomic.Uint32
	rx, tx   *stats.Counter // bytes read and written; nil: not counted
	// closing is set when Close is called; peerClosed when a read failed
	// before that (net/http reads every idle connection, so a peer's
	// close is seen as soon as it arrives).
	closing, peerClosed atomic.Bool
}

func (c *observedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && c.rx != nil {
		c.rx.Add(uint64(n))
	}
	if err != nil && !c.closing.Load() && !errors.Is(err, os.ErrDeadlineExceeded) {
		c.peerClosed.Store(true)
	}
	return n, err
}

func (c *observedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if n > 0 && c.tx != nil {
		c.tx.Add(uint64(n))
	}
	return n, err
}

func (c *observedConn) Close() error {
	c.closing.Store(true)
	if c.onClose != nil {
		c.once.Do(func() { c.onClose(time.Since(c.opened), c.peerClosed.Load()) })
	}
	return c.Conn.Close()
}

// lastRequest counts a request that got conn and reports whether it is the
// connection's last under MaxRequestsPerConnection.
func (c *Client) lastRequest(conn net.Conn) bool {
	limit := c.cfg.MaxRequestsPerConnection
	oc, ok := conn.(*observedConn)
	if limit == 0 || !ok {
		return false
	}
	if oc.requests.Add(1) != limit {
		return false
	}
	if c.cfg.OnMaxRequests != nil {
		c.cfg.OnMaxRequests()
	}
	return true
}

// dial connects to cfg.Addr (the addr net/http derived from the URL is the
// same string) with TCP_NODELAY set.
func (c *Client) dial(ctx context.Context, _, _ string) (net.Conn, error) {
	d := net.Dialer{Timeout: c.cfg.ConnectTimeout, KeepAlive: -1}
	if ka := c.cfg.TCPKeepalive; ka != nil {
		d.KeepAliveConfig = *ka
		d.KeepAliveConfig.Enable = true
	}
	conn, err := d.DialContext(ctx, "tcp", c.cfg.Addr)
	if err != nil {
		return nil, &connectError{fmt.Errorf("dial %s: %w", c.cfg.Addr, err)}
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		// Go sets TCP_NODELAY by default; meshd depends on it (docs/scenarios.md,
		// S7: no added latency for small streamed messages), so say it here.
		if err := tc.SetNoDelay(true); err != nil {
			conn.Close()
			return nil, &connectError{fmt.Errorf("set TCP_NODELAY on %s: %w", c.cfg.Addr, err)}
		}
	}
	return conn, nil
}

// dialTLS dials and completes the TLS handshake within ConnectTimeout.
func (c *Client) dialTLS(ctx context.Context, network, addr string) (net.Conn, error) {
	start := time.Now()
	conn, err := c.dialTLSConn(ctx, network, addr)
	return c.observe(start, conn, err)
}

func (c *Client) dialTLSConn(ctx context.Context, network, addr string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.ConnectTimeout)
	defer cancel()
	conn, err := c.dial(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	cfg := c.cfg.TLS.Clone()
	cfg.NextProtos = []string{"http/1.1"}
	if cfg.ServerName == "" {
		if host, _, err := net.SplitHostPort(c.cfg.Addr); err == nil {
			cfg.ServerName = host
		}
	}
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, &connectError{fmt.Errorf("TLS handshake with %s: %w", c.cfg.Addr, err)}
	}
	return tc, nil
}

// Close fails every open stream and closes idle connections. Later
// NewStream calls fail with an Unprocessed error.
func (c *Client) Close() error {
	c.mu.Lock()
	c.closed = true
	streams := make([]*clientStream, 0, len(c.streams))
	for s := range c.streams {
		streams = append(streams, s)
	}
	c.mu.Unlock()
	for _, s := range streams {
		s.Reset(stream.ErrCodeCancel)
	}
	c.tr.CloseIdleConnections()
	return nil
}

// Drain refuses new streams (with an Unprocessed error), closes idle
// connections now, and closes each busy connection when its stream ends,
// so in-flight streams complete. It does not block.
func (c *Client) Drain() {
	c.mu.Lock()
	c.closed = true
	c.draining = true
	c.mu.Unlock()
	c.tr.CloseIdleConnections()
}

func (c *Client) track(s *clientStream) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.streams[s] = struct{}{}
	return true
}

func (c *Client) untrack(s *clientStream) {
	c.mu.Lock()
	delete(c.streams, s)
	draining := c.draining
	c.mu.Unlock()
	if draining {
		// The stream's connection is back in the idle pool by now (its
		// body was read to EOF) or already closed.
		c.tr.CloseIdleConnections()
	}
}

// requestURL builds the URL net/http writes, keeping req.Path's escaping.
func (c *Client) requestURL(method, path string) (*url.URL, error) {
	u := &url.URL{Scheme: c.scheme, Host: c.cfg.Addr}
	switch {
	case path == "*":
		u.Opaque = "*"
		return u, nil
	case path == "" && method == http.MethodConnect:
		return u, nil
	case !strings.HasPrefix(path, "/"):
		return nil, fmt.Errorf("h1: request path %q is not in origin form", path)
	}
	p, q, hasQuery := strings.Cut(path, "?")
	dec, err := url.PathUnescape(p)
	if err != nil {
		return nil, fmt.Errorf("h1: request path %q: %w", path, err)
	}
	u.Path, u.RawPath, u.RawQuery = dec, p, q
	u.ForceQuery = hasQuery && q == ""
	return u, nil
}

// NewStream sends req's headers on a pooled connection (dialing one if
// needed) and returns once they are written. ctx bounds the whole stream:
// cancelling it aborts the exchange. A failure to connect, or any failure
// before the headers were written, returns a *stream.Error with
// Unprocessed set (Reason "connect failure" for the former).
//
// The connection returns to the pool when the response body has been read
// to io.EOF; a caller that stops earlier must Reset the stream, which
// closes the connection (HTTP/1.1 cannot abandon a response otherwise).
//
// Request trailers are sent when the body is chunked (ContentLength -1),
// declared or not; with a known ContentLength HTTP/1.1 has no place for
// them and CloseWrite drops them.
func (c *Client) NewStream(ctx context.Context, req *stream.Request, endStream bool) (stream.ClientStream, error) {
	u, err := c.requestURL(req.Method, req.Path)
	if err != nil {
		return nil, &stream.Error{Code: stream.ErrCodeProtocol, Reason: "invalid request path", Err: err}
	}
	h, declared, cl := toHTTPHeader(&req.Header, req.ContentLength)
	host := req.Authority
	if host == "" {
		host = req.Header.Get("host")
	}
	sctx, cancel := context.WithCancel(ctx)
	s := &clientStream{
		c:            c,
		cancel:       cancel,
		wroteHeaders: make(chan struct{}),
		done:         make(chan struct{}),
	}
	hreq := &http.Request{
		Method:     req.Method,
		URL:        u,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     h,
		Host:       host,
	}
	if endStream || cl == 0 {
		hreq.Body = http.NoBody
	} else {
		pr, pw := io.Pipe()
		s.pw = pw
		s.body = &reqBody{pr: pr, req: hreq}
		hreq.Body = s.body
		hreq.ContentLength = cl
		if cl < 0 {
			// Non-nil even when empty, so CloseWrite can add undeclared
			// trailers: net/http writes whatever the map holds at EOF.
			hreq.Trailer = declared
			if hreq.Trailer == nil {
				hreq.Trailer = http.Header{}
			}
		}
	}
	var once sync.Once
	var sent *http.Request // the request handed to the transport
	trace := &httptrace.ClientTrace{
		WroteHeaders: func() { once.Do(func() { close(s.wroteHeaders) }) },
		// GotConn runs on the transport's caller goroutine before the
		// request is written: the last request of a connection asks the
		// server to close it, and the transport will not reuse it.
		GotConn: func(info httptrace.GotConnInfo) {
			if c.lastRequest(info.Conn) {
				sent.Close = true
			}
		},
	}
	hreq = hreq.WithContext(httptrace.WithClientTrace(sctx, trace))
	sent = hreq
	if !c.track(s) {
		cancel()
		return nil, &stream.Error{Code: stream.ErrCodeRefusedStream, Unprocessed: true, Reason: "client closed"}
	}
	go s.roundTrip(hreq)
	select {
	case <-s.wroteHeaders:
		return s, nil
	case <-s.done:
		if s.err != nil {
			s.release()
			return nil, s.err
		}
		return s, nil
	}
}

// toHTTPHeader converts req's fields for net/http: canonical names (which
// net/http's own bookkeeping relies on), "host", "content-length" and
// "transfer-encoding" removed (net/http frames the message itself), and
// no User-Agent added when the request had none. It returns the declared
// trailer names and the content length to send.
func toHTTPHeader(f *header.Header, cl int64) (h http.Header, declared http.Header, contentLength int64) {
	h = make(http.Header, f.Len()+1)
	for _, fl := range f.Fields() {
		switch fl.Name {
		case "host", "transfer-encoding":
			continue
		case "content-length":
			if cl < 0 {
				if n, ok := header.ParseContentLength(fl.Value); ok {
					cl = n
				}
			}
			continue
		case "trailer":
			for name := range strings.SplitSeq(fl.Value, ",") {
				if name = strings.TrimSpace(name); name != "" {
					if declared == nil {
						declared = http.Header{}
					}
					declared[http.CanonicalHeaderKey(name)] = nil
				}
			}
			continue
		}
		k := http.CanonicalHeaderKey(fl.Name)
		h[k] = append(h[k], fl.Value)
	}
	if _, ok := h["User-Agent"]; !ok {
		h["User-Agent"] = nil // present but empty: net/http then writes none
	}
	return h, declared, cl
}

// reqBody is the request body net/http reads. Trailers given to CloseWrite
// are copied into the request's Trailer map on the transport's goroutine,
// just before it sees EOF and writes them, so there is no data race on it.
type reqBody struct {
	pr  *io.PipeReader
	req *http.Request

	mu       sync.Mutex
	trailers header.Header
}

func (b *reqBody) Read(p []byte) (int, error) {
	n, err := b.pr.Read(p)
	if err == io.EOF {
		b.mu.Lock()
		if b.req.Trailer != nil {
			for _, f := range b.trailers.Fields() {
				k := http.CanonicalHeaderKey(f.Name)
				b.req.Trailer[k] = append(b.req.Trailer[k], f.Value)
			}
		}
		b.mu.Unlock()
	}
	return n, err
}

func (b *reqBody) Close() error { return b.pr.Close() }

// clientStream is one exchange. resp and err are written by roundTrip
// before done is closed and read only after.
type clientStream struct {
	c            *Client
	cancel       context.CancelFunc
	pw           *io.PipeWriter // nil when the request has no body
	body         *reqBody
	wroteHeaders chan struct{}
	done         chan struct{}
	resp         *http.Response
	err          error

	reset       atomic.Bool
	resetCode   atomic.Uint32
	releaseOnce sync.Once
}

func (s *clientStream) roundTrip(hreq *http.Request) {
	resp, err := s.c.tr.RoundTrip(hreq)
	if err != nil {
		s.err = s.mapError(err)
	} else {
		s.resp = resp
	}
	close(s.done)
	if err != nil {
		s.release()
	}
}

// PeerCertificate returns the leaf certificate the upstream presented on
// the connection that carried the response, nil over plaintext. It is
// valid once Response has returned a response.
func (s *clientStream) PeerCertificate() *x509.Certificate {
	select {
	case <-s.done:
	default:
		return nil
	}
	if s.resp == nil || s.resp.TLS == nil || len(s.resp.TLS.PeerCertificates) == 0 {
		return nil
	}
	return s.resp.TLS.PeerCertificates[0]
}

func (s *clientStream) headersWritten() bool {
	select {
	case <-s.wroteHeaders:
		return true
	default:
		return false
	}
}

// mapError turns a RoundTrip error into a *stream.Error.
func (s *clientStream) mapError(err error) error {
	if s.reset.Load() {
		return s.resetError()
	}
	var ce *connectError
	if errors.As(err, &ce) {
		return &stream.Error{Code: stream.ErrCodeRefusedStream, Unprocessed: true, Reason: "connect failure", Err: err}
	}
	unprocessed := !s.headersWritten()
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return &stream.Error{Code: stream.ErrCodeCancel, Unprocessed: unprocessed, Reason: "request context done", Err: err}
	}
	if unprocessed {
		return &stream.Error{Code: stream.ErrCodeRefusedStream, Remote: true, Unprocessed: true, Reason: "request not written", Err: err}
	}
	return &stream.Error{Code: stream.ErrCodeCancel, Remote: true, Reason: "upstream connection failed", Err: err}
}

func (s *clientStream) resetError() *stream.Error {
	return &stream.Error{Code: stream.ErrCode(s.resetCode.Load()), Reason: "stream reset locally"}
}

// release frees the stream's context and pool bookkeeping; idempotent.
func (s *clientStream) release() {
	s.releaseOnce.Do(func() {
		s.cancel()
		s.c.untrack(s)
	})
}

// Write sends request body data; it returns once the transport has taken
// it (io.Pipe semantics), so the caller's back-pressure is the socket's.
func (s *clientStream) Write(p []byte) (int, error) {
	if s.pw == nil {
		return 0, errors.New("h1: Write on a request without a body")
	}
	n, err := s.pw.Write(p)
	if err != nil {
		return n, s.sendError(err)
	}
	return n, nil
}

func (s *clientStream) sendError(err error) error {
	if s.reset.Load() {
		return s.resetError()
	}
	select {
	case <-s.done:
		if s.err != nil {
			return s.err
		}
	default:
	}
	return &stream.Error{Code: stream.ErrCodeStreamClosed, Remote: true, Reason: "upstream no longer reads the request body", Err: err}
}

// CloseWrite ends the request body, with trailers when t is non-empty and
// the body is chunked.
func (s *clientStream) CloseWrite(t header.Header) error {
	if s.pw == nil {
		if t.Len() > 0 {
			s.c.log.Debug("h1: dropping request trailers: request has no body", slog.String("addr", s.c.cfg.Addr))
		}
		return nil
	}
	if t.Len() > 0 {
		s.body.mu.Lock()
		s.body.trailers = t.Clone()
		dropped := s.body.req.Trailer == nil
		s.body.mu.Unlock()
		if dropped {
			s.c.log.Debug("h1: dropping request trailers: body has a Content-Length", slog.String("addr", s.c.cfg.Addr))
		}
	}
	if err := s.pw.Close(); err != nil {
		return s.sendError(err)
	}
	return nil
}

// Response waits for the final response headers. Names are lower case;
// declared trailer names are listed in a "trailer" field.
func (s *clientStream) Response(ctx context.Context) (*stream.Response, error) {
	select {
	case <-s.done:
	case <-ctx.Done():
		return nil, fmt.Errorf("h1: waiting for response headers: %w", ctx.Err())
	}
	if s.err != nil {
		return nil, s.err
	}
	resp := &stream.Response{
		Status:        s.resp.StatusCode,
		Header:        fromHTTPHeader(s.resp.Header),
		ContentLength: s.resp.ContentLength,
		// net/http gives responses that cannot have a body (HEAD, 204,
		// 304, Content-Length: 0) http.NoBody.
		EndStream: s.resp.Body == http.NoBody,
	}
	addTrailerDeclaration(&resp.Header, s.resp.Trailer)
	return resp, nil
}

// addTrailerDeclaration restores the "trailer" field net/http moved into
// the Trailer map's keys.
func addTrailerDeclaration(h *header.Header, t http.Header) {
	if len(t) == 0 || h.Has("trailer") {
		return
	}
	names := make([]string, 0, len(t))
	for k := range t {
		names = append(names, strings.ToLower(k))
	}
	slices.Sort(names)
	h.Add("trailer", strings.Join(names, ", "))
}

// Read reads the response body. At io.EOF the connection has gone back to
// the pool.
func (s *clientStream) Read(p []byte) (int, error) {
	<-s.done
	if s.err != nil {
		return 0, s.err
	}
	n, err := s.resp.Body.Read(p)
	switch {
	case err == nil:
		return n, nil
	case err == io.EOF:
		s.release()
		return n, io.EOF
	case s.reset.Load():
		return n, s.resetError()
	default:
		s.release()
		return n, &stream.Error{Code: stream.ErrCodeCancel, Remote: true, Reason: "reading response body", Err: err}
	}
}

// Trailers returns the response trailers; valid after Read returned io.EOF.
func (s *clientStream) Trailers() header.Header {
	<-s.done
	if s.resp == nil {
		return header.Header{}
	}
	return fromHTTPHeader(nonEmpty(s.resp.Trailer))
}

// Reset aborts the exchange: the request context is cancelled, which makes
// net/http close the connection if the exchange was still running.
func (s *clientStream) Reset(code stream.ErrCode) {
	if s.reset.Swap(true) {
		return
	}
	s.resetCode.Store(uint32(code))
	if s.pw != nil {
		s.pw.CloseWithError(s.resetError())
	}
	s.release()
	select {
	case <-s.done:
		if s.resp != nil {
			s.resp.Body.Close()
		}
	default:
	}
}
