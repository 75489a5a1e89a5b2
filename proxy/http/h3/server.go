package h3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// ServerConfig configures a Server.
type ServerConfig struct {
	// MaxHeaderBytes bounds a request's header section (HCM
	// max_request_headers_kb); zero means net/http's default (1 MiB).
	MaxHeaderBytes int
	// IdleTimeout closes a connection with no open request stream for this
	// long (HCM common_http_protocol_options.idle_timeout); zero: never.
	IdleTimeout time.Duration
	// ConnInfo describes a new connection; the listener numbers connections
	// process-wide. It is called once per connection, after the handshake.
	ConnInfo func(c *quic.Conn) stream.ConnInfo
	// Stats receives the http3.* counters; nil counts nothing.
	Stats *Stats
	// Logger receives diagnostics; nil means slog.Default().
	Logger *slog.Logger
}

// Server serves HTTP/3 requests on QUIC connections as stream.ServerStreams.
// It is quic-go's http3.Server with meshd's stream interface in front:
// framing, QPACK and stream flow control are quic-go's.
type Server struct {
	srv *http3.Server
	cfg ServerConfig
	h   stream.Handler
}

type connInfoKey struct{}

// NewServer returns a server handing every request to h.
func NewServer(cfg ServerConfig, h stream.Handler) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Stats == nil {
		cfg.Stats = &Stats{}
	}
	s := &Server{cfg: cfg, h: h}
	s.srv = &http3.Server{
		Handler:        http.HandlerFunc(s.serveHTTP),
		MaxHeaderBytes: cfg.MaxHeaderBytes,
		IdleTimeout:    cfg.IdleTimeout,
		Logger:         cfg.Logger,
		ConnContext: func(ctx context.Context, c *quic.Conn) context.Context {
			var info stream.ConnInfo
			if cfg.ConnInfo != nil {
				info = cfg.ConnInfo(c)
			}
			info.LocalAddr, info.RemoteAddr, info.Proto = c.LocalAddr(), c.RemoteAddr(), "HTTP/3"
			st := c.ConnectionState().TLS
			info.TLS = &st
			return context.WithValue(ctx, connInfoKey{}, &info)
		},
	}
	return s
}

// ServeListener serves the connections ln accepts until Shutdown or Close,
// then returns http.ErrServerClosed.
func (s *Server) ServeListener(ln http3.QUICListener) error {
	return s.srv.ServeListener(ln)
}

// Shutdown sends GOAWAY on every connection, stops accepting, and waits
// until the streams in flight end or ctx is done, whichever is first.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }

// Close closes every connection at once, resetting its streams.
func (s *Server) Close() error { return s.srv.Close() }

// serveHTTP runs the stream handler for one request stream on quic-go's
// per-request goroutine.
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	info, _ := r.Context().Value(connInfoKey{}).(*stream.ConnInfo)
	if info == nil {
		// Unreachable: ConnContext sets it on every connection.
		panic(http.ErrAbortHandler)
	}
	ss := newServerStream(w, r, info)
	defer ss.finish(s.cfg.Logger, s.cfg.Stats)
	s.h.ServeStream(ss)
}

// serverStream is one HTTP/3 request as a stream.ServerStream.
//
// wroteHeader and bodyAllowed are owned by the goroutine using the send
// side; ended and reset are atomics because Reset and finish read them from
// other goroutines.
type serverStream struct {
	w      http.ResponseWriter
	rc     *http.ResponseController
	r      *http.Request
	info   *stream.ConnInfo
	req    stream.Request
	ctx    context.Context
	cancel context.CancelFunc
	head   bool

	wroteHeader bool
	bodyAllowed bool

	ended     atomic.Bool
	reset     atomic.Bool
	resetCode atomic.Uint32
}

func newServerStream(w http.ResponseWriter, r *http.Request, info *stream.ConnInfo) *serverStream {
	ctx, cancel := context.WithCancel(r.Context())
	path := r.RequestURI
	if path == "" {
		path = r.URL.RequestURI()
	}
	if r.Method == http.MethodConnect {
		path = ""
	}
	h := fromHTTPHeader(r.Header)
	for k := range r.Trailer {
		h.Add("trailer", strings.ToLower(k))
	}
	return &serverStream{
		w:    w,
		rc:   http.NewResponseController(w),
		r:    r,
		info: info,
		req: stream.Request{
			Method:        r.Method,
			Scheme:        "https",
			Authority:     r.Host,
			Path:          path,
			Header:        h,
			ContentLength: r.ContentLength,
			// quic-go's request has a body reader even without DATA;
			// only a declared empty body tells the end up front.
			EndStream: r.ContentLength == 0,
		},
		ctx:    ctx,
		cancel: cancel,
		head:   r.Method == http.MethodHead,
	}
}

func (s *serverStream) Request() *stream.Request { return &s.req }
func (s *serverStream) Context() context.Context { return s.ctx }
func (s *serverStream) Conn() *stream.ConnInfo   { return s.info }

// Trailers returns the request trailers, valid once Read returned io.EOF.
func (s *serverStream) Trailers() header.Header { return fromHTTPHeader(s.r.Trailer) }

func (s *serverStream) resetError() *stream.Error {
	return &stream.Error{Code: stream.ErrCode(s.resetCode.Load()), Reason: "stream reset locally"}
}

// Read reads request body data (the payload of DATA frames).
func (s *serverStream) Read(p []byte) (int, error) {
	if s.reset.Load() {
		return 0, s.resetError()
	}
	n, err := s.r.Body.Read(p)
	if err == nil || err == io.EOF {
		return n, err
	}
	if s.reset.Load() {
		return n, s.resetError()
	}
	return n, streamError("reading request body", err)
}

// WriteHeader sends the response headers. 1xx other than 101 are sent at
// once; connection-specific fields are dropped; quic-go's automatic
// Content-Type and Date are suppressed so the proxy forwards what it got.
func (s *serverStream) WriteHeader(resp *stream.Response, endStream bool) error {
	if s.reset.Load() {
		return s.resetError()
	}
	if s.wroteHeader || s.ended.Load() {
		return errors.New("h3: WriteHeader: response headers already sent")
	}
	status := resp.Status
	if status < 100 || status > 999 {
		return fmt.Errorf("h3: WriteHeader: invalid status %d", status)
	}
	h := s.w.Header()
	clear(h)
	copyFields(h, &resp.Header)
	if status < 200 {
		if endStream {
			return fmt.Errorf("h3: WriteHeader: informational status %d cannot end the stream", status)
		}
		if status == http.StatusSwitchingProtocols {
			return errors.New("h3: WriteHeader: 101 Switching Protocols does not exist in HTTP/3")
		}
		s.w.WriteHeader(status)
		clear(h)
		return nil
	}
	for _, k := range []string{"Content-Type", "Date"} {
		if _, ok := h[k]; !ok {
			h[k] = nil
		}
	}
	if _, ok := h["Content-Length"]; !ok && resp.ContentLength >= 0 {
		h["Content-Length"] = []string{strconv.FormatInt(resp.ContentLength, 10)}
	}
	s.w.WriteHeader(status)
	s.wroteHeader = true
	s.bodyAllowed = !s.head && status != http.StatusNoContent && status != http.StatusNotModified
	if endStream {
		s.ended.Store(true)
		return nil
	}
	return s.flush()
}

func (s *serverStream) flush() error {
	if err := s.rc.Flush(); err != nil {
		if s.reset.Load() {
			return s.resetError()
		}
		return streamError("writing response", err)
	}
	return nil
}

// Write sends body data in a DATA frame and flushes it.
func (s *serverStream) Write(p []byte) (int, error) {
	if s.reset.Load() {
		return 0, s.resetError()
	}
	if !s.wroteHeader {
		return 0, errors.New("h3: Write before WriteHeader")
	}
	if s.ended.Load() {
		return 0, errors.New("h3: Write after the response ended")
	}
	if !s.bodyAllowed {
		return len(p), nil
	}
	n, err := s.w.Write(p)
	if err != nil {
		if s.reset.Load() {
			return n, s.resetError()
		}
		return n, streamError("writing response", err)
	}
	return n, s.flush()
}

// WriteTrailers ends the response with a trailing HEADERS frame, which
// quic-go writes when the handler returns.
func (s *serverStream) WriteTrailers(t header.Header) error {
	if s.reset.Load() {
		return s.resetError()
	}
	if !s.wroteHeader {
		return errors.New("h3: WriteTrailers before WriteHeader")
	}
	if s.ended.Swap(true) {
		return errors.New("h3: WriteTrailers after the response ended")
	}
	h := s.w.Header()
	for _, f := range t.Fields() {
		if header.IsConnectionSpecific(f.Name) {
			continue
		}
		k := http.TrailerPrefix + http.CanonicalHeaderKey(f.Name)
		h[k] = append(h[k], f.Value)
	}
	return nil
}

// CloseWrite ends the response; the stream's FIN goes out when the handler
// returns.
func (s *serverStream) CloseWrite() error {
	if s.reset.Load() {
		return s.resetError()
	}
	if !s.wroteHeader {
		return errors.New("h3: CloseWrite before WriteHeader")
	}
	s.ended.Store(true)
	return nil
}

// Reset abandons the stream: pending Read and Write calls return at once
// (their deadlines are moved to the past), and when the handler returns
// the stream is reset in both directions (RESET_STREAM and STOP_SENDING
// with H3_INTERNAL_ERROR, the code quic-go's server uses for an aborted
// handler).
func (s *serverStream) Reset(code stream.ErrCode) {
	if s.reset.Swap(true) {
		return
	}
	s.resetCode.Store(uint32(code))
	s.cancel()
	past := time.Unix(1, 0)
	_ = s.rc.SetReadDeadline(past)
	_ = s.rc.SetWriteDeadline(past)
}

// finish runs when the handler returns. A response not ended, a reset or a
// handler panic abort the stream.
func (s *serverStream) finish(log *slog.Logger, st *Stats) {
	s.cancel()
	if p := recover(); p != nil {
		log.Error("h3: handler panicked", slog.Any("panic", p), slog.String("stack", string(debug.Stack())))
		st.TxReset.Inc()
		panic(http.ErrAbortHandler)
	}
	if s.reset.Load() || !s.ended.Load() {
		st.TxReset.Inc()
		panic(http.ErrAbortHandler)
	}
}

// copyFields adds f's fields to h, skipping connection-specific ones.
func copyFields(h http.Header, f *header.Header) {
	for _, fl := range f.Fields() {
		if header.IsConnectionSpecific(fl.Name) {
			continue
		}
		k := http.CanonicalHeaderKey(fl.Name)
		h[k] = append(h[k], fl.Value)
	}
}

// fromHTTPHeader converts a net/http header map to a header.Header with
// lower-case names, sorted by name; declared names without a value are
// dropped.
func fromHTTPHeader(h http.Header) header.Header {
	keys := make([]string, 0, len(h))
	n := 0
	for k, vs := range h {
		if len(vs) == 0 {
			continue
		}
		keys = append(keys, k)
		n += len(vs)
	}
	slices.Sort(keys)
	out := header.Make(n)
	for _, k := range keys {
		name, ok := lowerNames[k]
		if !ok {
			name = strings.ToLower(k)
		}
		for _, v := range h[k] {
			out.Add(name, v)
		}
	}
	return out
}

// lowerNames maps the canonical form of common field names (how quic-go
// hands them over) to their HTTP/3 wire form, so converting a request's
// header section allocates no name. Filled once at init; read-only.
var lowerNames = map[string]string{}

func init() {
	for _, n := range []string{
		"accept", "accept-encoding", "accept-language", "authorization", "cache-control",
		"content-encoding", "content-length", "content-type", "cookie", "date", "etag",
		"grpc-accept-encoding", "grpc-encoding", "grpc-message", "grpc-status", "grpc-timeout",
		"if-modified-since", "if-none-match", "last-modified", "location", "origin", "range",
		"referer", "server", "set-cookie", "te", "traceparent", "tracestate", "user-agent", "vary",
		"x-b3-sampled", "x-b3-spanid", "x-b3-traceid", "x-forwarded-client-cert", "x-forwarded-for",
		"x-forwarded-proto", "x-request-id",
	} {
		lowerNames[http.CanonicalHeaderKey(n)] = n
	}
}
