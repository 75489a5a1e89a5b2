package h1

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// serveHTTP is the net/http handler: it applies the underscore policy and
// runs the stream.Handler on this goroutine (net/http's per-connection one).
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	sc, ok := r.Context().Value(connKey{}).(*serverConn)
	if !ok {
		// Unreachable: every connection is delivered as a *serverConn.
		panic(http.ErrAbortHandler)
	}
	sc.startRequest()
	if reason := badTarget(r); reason != "" {
		s.log.Debug("h1: rejecting request target", slog.String("method", r.Method), slog.String("target", r.RequestURI),
			slog.String("reason", reason), slog.Uint64("conn", sc.info.ID))
		w.Header().Set("Connection", "close")
		http.Error(w, "Bad Request", http.StatusBadRequest)
		return
	}
	if limit := s.cfg.MaxHeadersCount; limit > 0 {
		n := 0
		for _, vs := range r.Header {
			n += len(vs)
		}
		if n > limit {
			s.log.Debug("h1: rejecting request with too many headers", slog.Int("count", n), slog.Int("max_headers_count", limit),
				slog.Uint64("conn", sc.info.ID))
			w.Header().Set("Connection", "close")
			http.Error(w, "Request Header Fields Too Large", http.StatusRequestHeaderFieldsTooLarge)
			return
		}
	}
	if act := s.cfg.HeadersWithUnderscoresAction; act != UnderscoreAllow {
		for k := range r.Header {
			if strings.IndexByte(k, '_') < 0 {
				continue
			}
			if act == UnderscoreRejectRequest {
				s.log.Debug("h1: rejecting request with underscore in header name",
					slog.String("header", k), slog.Uint64("conn", sc.info.ID))
				w.Header().Set("Connection", "close")
				http.Error(w, "Bad Request", http.StatusBadRequest)
				return
			}
			delete(r.Header, k)
		}
	}
	ss := newServerStream(w, r, sc)
	defer ss.finish(s.log)
	s.h.ServeStream(ss)
}

// serverStream is one HTTP/1.1 request as a stream.ServerStream.
//
// The send-side fields (wroteHeader, bodyAllowed) are owned by the goroutine
// using the send side; ended and reset are atomics because finish and Reset
// read them from other goroutines.
type serverStream struct {
	w      http.ResponseWriter
	rc     *http.ResponseController
	r      *http.Request
	conn   *serverConn
	req    stream.Request
	ctx    context.Context
	cancel context.CancelFunc
	head   bool // request method is HEAD: the response carries no body

	wroteHeader bool
	bodyAllowed bool

	ended     atomic.Bool   // the response is complete
	reset     atomic.Bool   // Reset was called
	resetCode atomic.Uint32 // the ErrCode given to Reset
}

func newServerStream(w http.ResponseWriter, r *http.Request, sc *serverConn) *serverStream {
	ctx, cancel := context.WithCancel(r.Context())
	rc := http.NewResponseController(w)
	// A proxy reads the request body while it writes the response (gRPC-Web,
	// long uploads answered early); net/http allows that only when asked.
	_ = rc.EnableFullDuplex()
	return &serverStream{
		w:      w,
		rc:     rc,
		r:      r,
		conn:   sc,
		req:    requestOf(r, &sc.info),
		ctx:    ctx,
		cancel: cancel,
		head:   r.Method == http.MethodHead,
	}
}

// badTarget says why r's request target cannot be forwarded, or "". net/http
// accepts some targets a proxy must not pass on: asterisk-form for methods
// other than OPTIONS (RFC 9112 section 3.2.4), and absolute-form URIs that
// are not http or https with an authority ("a:0" parses as scheme "a" with
// opaque "0"), which would become an invalid ":path".
func badTarget(r *http.Request) string {
	switch t := r.RequestURI; {
	case r.Method == http.MethodConnect:
		return ""
	case t == "*":
		if r.Method != http.MethodOptions {
			return "asterisk-form is for OPTIONS only"
		}
	case strings.HasPrefix(t, "/"):
	default:
		scheme := strings.ToLower(r.URL.Scheme)
		if (scheme != "http" && scheme != "https") || r.URL.Host == "" || r.URL.Opaque != "" {
			return "absolute-form target is not an http or https URI with an authority"
		}
	}
	return ""
}

// requestOf converts net/http's parsed request into a stream.Request.
func requestOf(r *http.Request, info *stream.ConnInfo) stream.Request {
	scheme := "http"
	if info.TLS != nil || r.TLS != nil {
		scheme = "https"
	}
	authority, path := r.Host, r.RequestURI
	switch {
	case r.Method == http.MethodConnect:
		// Authority-form (RFC 9112 section 3.2.3): no path, as in HTTP/2.
		path = ""
	case path == "*":
	case !strings.HasPrefix(path, "/"):
		// Absolute-form (RFC 9112 section 3.2.2): forward in origin form,
		// the URL's authority replacing Host.
		path = r.URL.RequestURI()
		if r.URL.Host != "" {
			authority = r.URL.Host
		}
	}
	h := fromHTTPHeader(r.Header)
	addTrailerDeclaration(&h, r.Trailer)
	return stream.Request{
		Method:        r.Method,
		Scheme:        scheme,
		Authority:     authority,
		Path:          path,
		Header:        h,
		ContentLength: r.ContentLength,
		// Content-Length: 0 or no body framing at all; chunked is -1.
		EndStream: r.ContentLength == 0,
	}
}

// fromHTTPHeader converts a net/http header map to a header.Header with
// lower-case names, sorted by name (the map lost the wire order).
func fromHTTPHeader(h http.Header) header.Header {
	keys := make([]string, 0, len(h))
	n := 0
	for k, vs := range h {
		keys = append(keys, k)
		n += len(vs)
	}
	slices.Sort(keys)
	out := header.Make(n)
	for _, k := range keys {
		name := strings.ToLower(k)
		for _, v := range h[k] {
			out.Add(name, v)
		}
	}
	return out
}

func (s *serverStream) Request() *stream.Request { return &s.req }
func (s *serverStream) Context() context.Context { return s.ctx }
func (s *serverStream) Conn() *stream.ConnInfo   { return &s.conn.info }
func (s *serverStream) Trailers() header.Header  { return fromHTTPHeader(nonEmpty(s.r.Trailer)) }
func (s *serverStream) resetError() *stream.Error {
	return &stream.Error{Code: stream.ErrCode(s.resetCode.Load()), Reason: "stream reset locally"}
}

// nonEmpty drops declared trailer names that never received a value.
func nonEmpty(h http.Header) http.Header {
	out := make(http.Header, len(h))
	for k, vs := range h {
		if len(vs) > 0 {
			out[k] = vs
		}
	}
	return out
}

// Read reads the request body; net/http has already removed the chunked
// framing and sends "100 Continue" on the first call if the client asked.
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
	return n, downstreamError("reading request body", err)
}

// downstreamError maps a net/http or socket error to a *stream.Error.
func downstreamError(op string, err error) *stream.Error {
	var ne net.Error
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || errors.As(err, &ne) {
		return &stream.Error{Code: stream.ErrCodeCancel, Remote: true, Reason: op + ": downstream connection closed", Err: err}
	}
	return &stream.Error{Code: stream.ErrCodeProtocol, Remote: true, Reason: op, Err: err}
}

// WriteHeader sends the response headers. A 100 is dropped (net/http sends
// its own when the body is first read); 101 is refused (no upgrades over
// this adapter); other 1xx are sent at once. Connection-specific fields are
// dropped; trailer declarations are kept. net/http's automatic Date and
// Content-Type are suppressed so the proxy forwards what it was given.
func (s *serverStream) WriteHeader(resp *stream.Response, endStream bool) error {
	if s.reset.Load() {
		return s.resetError()
	}
	if s.wroteHeader || s.ended.Load() {
		return errors.New("h1: WriteHeader: response headers already sent")
	}
	status := resp.Status
	if status < 100 || status > 999 {
		return fmt.Errorf("h1: WriteHeader: invalid status %d", status)
	}
	h := s.w.Header()
	if status < 200 {
		switch {
		case endStream:
			return fmt.Errorf("h1: WriteHeader: informational status %d cannot end the stream", status)
		case status == http.StatusContinue:
			return nil
		case status == http.StatusSwitchingProtocols:
			return errors.New("h1: WriteHeader: 101 Switching Protocols is not supported")
		}
		clear(h)
		copyFields(h, &resp.Header)
		s.w.WriteHeader(status) // net/http writes and flushes 1xx at once
		clear(h)
		return nil
	}
	clear(h)
	copyFields(h, &resp.Header)
	for _, k := range []string{"Content-Type", "Date"} {
		if _, ok := h[k]; !ok {
			h[k] = nil
		}
	}
	if _, ok := h["Content-Length"]; !ok && resp.ContentLength >= 0 {
		h["Content-Length"] = []string{strconv.FormatInt(resp.ContentLength, 10)}
	}
	if s.conn.isDraining() {
		h.Set("Connection", "close")
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

// copyFields adds f's fields to h, skipping connection-specific ones.
func copyFields(h http.Header, f *header.Header) {
	for _, fl := range f.Fields() {
		if header.IsConnectionSpecific(fl.Name) {
			continue
		}
		h.Add(fl.Name, fl.Value)
	}
}

func (s *serverStream) flush() error {
	if err := s.rc.Flush(); err != nil {
		if s.reset.Load() {
			return s.resetError()
		}
		return downstreamError("writing response", err)
	}
	return nil
}

// Write sends body data and flushes it. For HEAD requests and 204/304
// responses the data is discarded, as HTTP/1.1 framing has no body there.
func (s *serverStream) Write(p []byte) (int, error) {
	if s.reset.Load() {
		return 0, s.resetError()
	}
	if !s.wroteHeader {
		return 0, errors.New("h1: Write before WriteHeader")
	}
	if s.ended.Load() {
		return 0, errors.New("h1: Write after the response ended")
	}
	if !s.bodyAllowed {
		return len(p), nil
	}
	n, err := s.w.Write(p)
	if err != nil {
		if s.reset.Load() {
			return n, s.resetError()
		}
		return n, downstreamError("writing response", err)
	}
	return n, s.flush()
}

// WriteTrailers ends the response with trailers. They are sent as chunked
// trailers; a response framed by Content-Length cannot carry trailers and
// net/http drops them.
func (s *serverStream) WriteTrailers(t header.Header) error {
	if s.reset.Load() {
		return s.resetError()
	}
	if !s.wroteHeader {
		return errors.New("h1: WriteTrailers before WriteHeader")
	}
	if s.ended.Swap(true) {
		return errors.New("h1: WriteTrailers after the response ended")
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

// CloseWrite ends the response. The last chunk goes out when the handler
// returns (net/http finishes a response when its handler does).
func (s *serverStream) CloseWrite() error {
	if s.reset.Load() {
		return s.resetError()
	}
	if !s.wroteHeader {
		return errors.New("h1: CloseWrite before WriteHeader")
	}
	s.ended.Store(true)
	return nil
}

// Reset closes the connection, the only way to abort an HTTP/1.1 exchange,
// which unblocks pending Read and Write calls.
func (s *serverStream) Reset(code stream.ErrCode) {
	if s.reset.Swap(true) {
		return
	}
	s.resetCode.Store(uint32(code))
	s.cancel()
	s.conn.Close()
}

// finish runs when the handler returns. A response the handler did not end,
// a reset, or a handler panic aborts the connection without net/http
// writing anything more.
func (s *serverStream) finish(log *slog.Logger) {
	s.cancel()
	if p := recover(); p != nil {
		log.Error("h1: handler panicked", slog.Any("panic", p), slog.String("stack", string(debug.Stack())))
		panic(http.ErrAbortHandler)
	}
	if s.reset.Load() || !s.ended.Load() {
		s.conn.Close()
		panic(http.ErrAbortHandler)
	}
}
