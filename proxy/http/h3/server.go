package h3

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"
	"golang.org/x/net/http/httpguts"

	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/internal/park"
	"meshd.dev/meshd/proxy/http/stream"
)

// DefaultMaxRequestHeaderBytes bounds a request's header section when
// ServerConfig.MaxHeaderBytes is zero (1 MiB, net/http's and quic-go's
// server default).
const DefaultMaxRequestHeaderBytes = 1 << 20

// ErrServerClosed is returned by Server.ServeListener after Shutdown or
// Close.
var ErrServerClosed = errors.New("h3: server closed")

// ServerConfig configures a Server.
type ServerConfig struct {
	// MaxHeaderBytes bounds a request's header section and its trailers
	// (HCM max_request_headers_kb); zero: DefaultMaxRequestHeaderBytes. It
	// is announced as SETTINGS_MAX_FIELD_SECTION_SIZE; a larger request
	// gets a 431 response.
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

	// parkTime replaces handlerParkTime in tests.
	parkTime time.Duration
}

// Listener is what a Server accepts QUIC connections from (a
// *quic.Listener or *quic.EarlyListener).
type Listener interface {
	Accept(ctx context.Context) (*quic.Conn, error)
	Addr() net.Addr
	Close() error
}

// Server serves HTTP/3 requests (RFC 9114) on QUIC connections as
// stream.ServerStreams, with meshd's own framing: quic-go does QUIC and
// QPACK's static-table coding; the server reads and writes the HTTP/3
// frames of its control and request streams itself, so a request costs
// one goroutine (the handler's) and no net/http conversion.
//
// Each connection gets the server's SETTINGS on a control stream; the
// peer's control stream is read for SETTINGS and GOAWAY. Shutdown sends
// GOAWAY naming the first request stream the server will not process,
// refuses later streams with H3_REQUEST_REJECTED and waits for the
// requests in flight.
type Server struct {
	cfg            ServerConfig
	h              stream.Handler
	maxHeaderBytes int
	// parkTime is how long an idle handler goroutine waits for its
	// connection's next request stream: handlerParkTime, shorter in tests.
	parkTime time.Duration

	mu        sync.Mutex
	listeners map[Listener]struct{}
	conns     map[*serverConn]struct{}
	draining  bool           // Shutdown called
	closed    bool           // Close called
	wg        sync.WaitGroup // connection goroutines
}

// NewServer returns a server handing every request to h.
func NewServer(cfg ServerConfig, h stream.Handler) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Stats == nil {
		cfg.Stats = NewStats(nil)
	}
	mhb := cfg.MaxHeaderBytes
	if mhb <= 0 {
		mhb = DefaultMaxRequestHeaderBytes
	}
	park := cfg.parkTime
	if park <= 0 {
		park = handlerParkTime
	}
	return &Server{cfg: cfg, h: h, maxHeaderBytes: mhb, parkTime: park, listeners: map[Listener]struct{}{}, conns: map[*serverConn]struct{}{}}
}

// ServeListener serves the connections ln accepts until Shutdown or
// Close, then returns ErrServerClosed; it returns another error if ln
// fails. ln is closed on return.
func (s *Server) ServeListener(ln Listener) error {
	s.mu.Lock()
	if s.draining || s.closed {
		s.mu.Unlock()
		_ = ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		_ = ln.Close()
	}()
	for {
		qc, err := ln.Accept(context.Background())
		if err != nil {
			s.mu.Lock()
			stopped := s.draining || s.closed
			s.mu.Unlock()
			if stopped {
				return ErrServerClosed
			}
			return fmt.Errorf("accepting QUIC connections: %w", err)
		}
		c := s.newConn(qc)
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			_ = qc.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "")
			return ErrServerClosed
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		draining := s.draining
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			c.serve(draining)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

// stopAccepting closes the listeners and returns the connections.
func (s *Server) stopAccepting(close bool) []*serverConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if close {
		s.closed = true
	}
	s.draining = true
	for ln := range s.listeners {
		_ = ln.Close()
	}
	conns := make([]*serverConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	return conns
}

// Shutdown stops accepting connections, sends GOAWAY on every connection
// and waits until the connections ended (each closes once its requests
// are done and the peer closed it) or ctx is done, when it closes them
// and returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	for _, c := range s.stopAccepting(false) {
		c.goAway()
	}
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		_ = s.Close()
		return ctx.Err()
	}
}

// Close closes every connection at once, resetting its streams, and
// waits for the connections' goroutines (not the handlers) to return.
func (s *Server) Close() error {
	for _, c := range s.stopAccepting(true) {
		_ = c.qc.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "")
	}
	s.wg.Wait()
	return nil
}

// serverConn is one downstream HTTP/3 connection.
type serverConn struct {
	s    *Server
	qc   *quic.Conn
	info stream.ConnInfo
	log  *slog.Logger

	ctrlMu sync.Mutex // guards ctrl writes
	ctrl   *quic.SendStream

	mu        sync.Mutex
	active    int           // request streams being served
	nextID    quic.StreamID // one above the largest request stream accepted
	goingAway bool          // GOAWAY sent: streams at or above nextID are refused
	idle      *time.Timer
	peerCtrl  bool // the peer's control stream was opened

	handlers sync.WaitGroup
	// parked holds the handler goroutines that finished a request stream,
	// waiting in handlerLoop for the next one; the accept loop hands it
	// over and closes it when it ends.
	parked *park.Stack[*quic.Stream]
}

func (s *Server) newConn(qc *quic.Conn) *serverConn {
	c := &serverConn{s: s, qc: qc, log: s.cfg.Logger, parked: park.New[*quic.Stream](s.parkTime)}
	if s.cfg.ConnInfo != nil {
		c.info = s.cfg.ConnInfo(qc)
	}
	st := qc.ConnectionState().TLS
	c.info.LocalAddr, c.info.RemoteAddr, c.info.Proto, c.info.TLS = qc.LocalAddr(), qc.RemoteAddr(), "HTTP/3", &st
	return c
}

// closeConn closes the connection with an HTTP/3 connection error.
func (c *serverConn) closeConn(code http3.ErrCode, reason string) {
	if c.qc.Context().Err() == nil {
		c.log.Debug("HTTP/3 connection error", "code", code.String(), "reason", reason, "remote", c.info.RemoteAddr)
	}
	_ = c.qc.CloseWithError(quic.ApplicationErrorCode(code), reason)
}

// serve runs the connection until it closes: it sends SETTINGS, serves
// the peer's unidirectional streams and hands each request stream to a
// handler goroutine. draining says the server was shutting down when the
// connection was accepted.
func (c *serverConn) serve(draining bool) {
	if err := c.openControlStream(); err != nil {
		c.closeConn(http3.ErrCodeInternalError, "opening the control stream")
		return
	}
	var loops sync.WaitGroup
	loops.Go(c.acceptUniStreams)
	if t := c.s.cfg.IdleTimeout; t > 0 {
		c.mu.Lock()
		c.idle = time.AfterFunc(t, func() {
			c.mu.Lock()
			idle := c.active == 0
			c.mu.Unlock()
			if idle {
				c.closeConn(http3.ErrCodeNoError, "idle timeout")
			}
		})
		c.mu.Unlock()
	}
	if draining {
		c.goAway()
	}
	ctx := c.qc.Context()
	for {
		qs, err := c.qc.AcceptStream(ctx)
		if err != nil {
			break
		}
		c.mu.Lock()
		if c.goingAway && qs.StreamID() >= c.nextID {
			c.mu.Unlock()
			// Never seen by the handler: safe for the client to retry
			// (RFC 9114 section 5.2).
			qs.CancelRead(quic.StreamErrorCode(http3.ErrCodeRequestRejected))
			qs.CancelWrite(quic.StreamErrorCode(http3.ErrCodeRequestRejected))
			continue
		}
		c.nextID = max(c.nextID, qs.StreamID()+4)
		c.active++
		if c.idle != nil {
			c.idle.Stop()
		}
		c.mu.Unlock()
		if !c.parked.Hand(qs) {
			c.handlers.Go(func() { c.handlerLoop(qs) })
		}
	}
	c.mu.Lock()
	if c.idle != nil {
		c.idle.Stop()
	}
	c.mu.Unlock()
	// Handlers exit instead of parking from now on.
	c.parked.Close()
	loops.Wait()
	c.handlers.Wait()
}

// openControlStream opens the server's control stream with its SETTINGS
// (RFC 9114 section 6.2.1): the largest request header section accepted;
// no dynamic QPACK table, so no QPACK streams.
func (c *serverConn) openControlStream() error {
	s, err := c.qc.OpenUniStream()
	if err != nil {
		return err
	}
	var settings []byte
	settings = quicvarint.Append(settings, settingMaxFieldSectionSize)
	settings = quicvarint.Append(settings, uint64(c.s.maxHeaderBytes))
	b := quicvarint.Append(nil, streamControl)
	b = appendFrameHeader(b, frameSettings, uint64(len(settings)))
	c.ctrl = s
	_, err = s.Write(append(b, settings...))
	return err
}

// goAway starts the connection's graceful close: a GOAWAY naming the
// first request stream not accepted yet; later streams are refused. The
// connection closes when the peer closes it after its requests are done,
// or at once when none is in flight.
func (c *serverConn) goAway() {
	c.mu.Lock()
	if c.goingAway {
		c.mu.Unlock()
		return
	}
	c.goingAway = true
	id := c.nextID
	c.mu.Unlock()
	frame := appendFrameHeader(nil, frameGoAway, uint64(quicvarint.Len(uint64(id))))
	frame = quicvarint.Append(frame, uint64(id))
	// The write may block on the peer's flow control credit; it returns
	// when the connection closes.
	go func() {
		c.ctrlMu.Lock()
		_, _ = c.ctrl.Write(frame)
		c.ctrlMu.Unlock()
	}()
}

// streamEnded accounts a request stream whose handler returned: the
// idle timeout starts again when none is left.
func (c *serverConn) streamEnded() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.active--
	if c.active == 0 && c.idle != nil && !c.goingAway {
		c.idle.Reset(c.s.cfg.IdleTimeout)
	}
}

// acceptUniStreams serves the peer's unidirectional streams until the
// connection ends.
func (c *serverConn) acceptUniStreams() {
	var loops sync.WaitGroup
	defer loops.Wait()
	ctx := c.qc.Context()
	for {
		s, err := c.qc.AcceptUniStream(ctx)
		if err != nil {
			return
		}
		loops.Go(func() { c.serveUniStream(s) })
	}
}

// serveUniStream reads one of the peer's unidirectional streams: its
// control stream (only one allowed) for SETTINGS and GOAWAY; QPACK streams
// are drained (no dynamic table was allowed); a push stream from a client
// is a connection error; unknown types are refused.
func (c *serverConn) serveUniStream(s *quic.ReceiveStream) {
	r := bufio.NewReaderSize(s, 512)
	typ, err := quicvarint.Read(r)
	if err != nil {
		return
	}
	switch typ {
	case streamControl:
		c.mu.Lock()
		dup := c.peerCtrl
		c.peerCtrl = true
		c.mu.Unlock()
		if dup {
			c.closeConn(http3.ErrCodeStreamCreationError, "second control stream")
			return
		}
		err := readServerControlStream(r)
		he, ok := errors.AsType[*h3Error](err)
		if !ok {
			// The peer must not close its control stream (section 6.2.1).
			he = &h3Error{http3.ErrCodeClosedCriticalStream, fmt.Sprintf("control stream ended: %v", err)}
		}
		c.closeConn(he.code, he.reason)
	case streamQPACKEncoder, streamQPACKDecoder:
		_, _ = io.Copy(io.Discard, r)
	case streamPush:
		c.closeConn(http3.ErrCodeStreamCreationError, "push stream from a client")
	default:
		s.CancelRead(quic.StreamErrorCode(http3.ErrCodeStreamCreationError))
	}
}

// readServerControlStream reads a client's control stream: SETTINGS
// first, then GOAWAY (a client's names push IDs, and meshd pushes
// nothing), MAX_PUSH_ID, CANCEL_PUSH or unknown frames. It returns the
// error that ends the connection.
func readServerControlStream(r *bufio.Reader) error {
	forbidden := func(typ uint64) bool {
		return typ == frameData || typ == frameHeaders || typ == framePushPromise
	}
	return readControlFrames(r, forbidden, func(typ uint64, p []byte) error {
		if _, n, err := quicvarint.Parse(p); err != nil || n != len(p) {
			return &h3Error{http3.ErrCodeFrameError, fmt.Sprintf("malformed frame type %#x", typ)}
		}
		return nil
	})
}

// readControlFrames reads a peer's control stream (RFC 9114 section 6.2.1):
// SETTINGS first and only once, validated by checkSettings; a type for
// which forbidden reports true closes the connection with
// H3_FRAME_UNEXPECTED; GOAWAY, MAX_PUSH_ID and CANCEL_PUSH payloads (at
// most maxControlFrame bytes) go to onFrame; unknown types are skipped. It
// returns the error that ends the connection.
func readControlFrames(r *bufio.Reader, forbidden func(typ uint64) bool, onFrame func(typ uint64, p []byte) error) error {
	first := true
	for {
		typ, length, err := readFrameHeader(r)
		if err != nil {
			return err
		}
		if first != (typ == frameSettings) {
			if first {
				return &h3Error{http3.ErrCodeMissingSettings, "control stream does not start with SETTINGS"}
			}
			return &h3Error{http3.ErrCodeFrameUnexpected, "second SETTINGS frame"}
		}
		first = false
		switch {
		case forbidden(typ):
			return &h3Error{http3.ErrCodeFrameUnexpected, fmt.Sprintf("frame type %#x on the control stream", typ)}
		case typ == frameSettings:
			p, err := readControlPayload(r, length)
			if err != nil {
				return err
			}
			if err := checkSettings(p); err != nil {
				return err
			}
		case typ == frameGoAway, typ == frameMaxPushID, typ == frameCancelPush:
			p, err := readControlPayload(r, length)
			if err != nil {
				return err
			}
			if err := onFrame(typ, p); err != nil {
				return err
			}
		default:
			if err := skip(r, length); err != nil {
				return err
			}
		}
	}
}

func readControlPayload(r *bufio.Reader, length uint64) ([]byte, error) {
	if length > maxControlFrame {
		return nil, &h3Error{http3.ErrCodeExcessiveLoad, fmt.Sprintf("control frame of %d bytes", length)}
	}
	return readBlock(r, length, maxControlFrame)
}

// checkSettings validates a SETTINGS payload: identifier/value pairs, no
// identifier twice, none of HTTP/2's reserved ones (RFC 9114 section
// 7.2.4.1). meshd needs no setting of the client's: it sends no dynamic
// QPACK table, and its responses' header sections are what the upstream
// sent.
func checkSettings(p []byte) error {
	seen := map[uint64]bool{}
	for len(p) > 0 {
		id, n, err := quicvarint.Parse(p)
		if err != nil {
			return &h3Error{http3.ErrCodeFrameError, "malformed SETTINGS"}
		}
		p = p[n:]
		_, n, err = quicvarint.Parse(p)
		if err != nil {
			return &h3Error{http3.ErrCodeFrameError, "malformed SETTINGS"}
		}
		p = p[n:]
		if seen[id] {
			return &h3Error{http3.ErrCodeSettingsError, fmt.Sprintf("setting %#x sent twice", id)}
		}
		seen[id] = true
		if id >= 0x2 && id <= 0x5 {
			return &h3Error{http3.ErrCodeSettingsError, fmt.Sprintf("HTTP/2 setting %#x", id)}
		}
	}
	return nil
}

// errHeaderTooLarge marks a request header section over the limit.
var errHeaderTooLarge = errors.New("request header section too large")

// readRequestHead reads a request stream up to its HEADERS frame and
// decodes the request (RFC 9114 sections 4.1 and 4.3.1). Unknown frame
// types before it are skipped. A frame that may not open a request stream
// is an *h3Error closing the connection (H3_FRAME_UNEXPECTED); a malformed
// request is H3_MESSAGE_ERROR, an undecodable block
// H3_QPACK_DECOMPRESSION_FAILED (stream errors); a header section over
// maxHeaderBytes is errHeaderTooLarge.
func readRequestHead(r *bufio.Reader, maxHeaderBytes int) (stream.Request, error) {
	for {
		typ, length, err := readFrameHeader(r)
		if err != nil {
			if err == io.EOF {
				err = &h3Error{http3.ErrCodeRequestIncomplete, "request stream ended before its headers"}
			}
			return stream.Request{}, err
		}
		switch typ {
		case frameHeaders:
			if length > uint64(maxHeaderBytes) {
				return stream.Request{}, errHeaderTooLarge
			}
			block, peeked, err := peekBlock(r, length, maxHeaderBytes)
			if err != nil {
				return stream.Request{}, err
			}
			req, err := decodeRequest(block, maxHeaderBytes)
			if peeked {
				_, _ = r.Discard(len(block))
			}
			return req, err
		case frameData, frameSettings, frameGoAway, framePushPromise, frameMaxPushID, frameCancelPush:
			return stream.Request{}, &h3Error{http3.ErrCodeFrameUnexpected, fmt.Sprintf("frame type %#x before the request headers", typ)}
		default:
			if err := skip(r, length); err != nil {
				return stream.Request{}, err
			}
		}
	}
}

// decodeRequest decodes a request's QPACK header block: pseudo-fields
// first, each once, :method always, :scheme and :path unless CONNECT,
// :authority or host; lower-case token names, values without CR, LF or
// NUL, no connection-specific field, te
// only "trailers", one content-length value. The decoded size (RFC 9114
// section 4.2.2: name + value + 32 per field) may not exceed limit.
func decodeRequest(block []byte, limit int) (stream.Request, error) {
	req := stream.Request{Header: header.Make(8), ContentLength: -1}
	var sr sectionReader
	if err := sr.init(block); err != nil {
		return req, err
	}
	regular, hasScheme, hasPath := false, false, false
	size := 0
	for {
		f, ok, err := sr.next()
		if err != nil {
			return req, err
		}
		if !ok {
			break
		}
		if size += len(f.Name) + len(f.Value) + 32; size > limit {
			return req, errHeaderTooLarge
		}
		if len(f.Name) == 0 {
			return req, &h3Error{http3.ErrCodeMessageError, "empty field name"}
		}
		if f.Name[0] == ':' {
			if regular {
				return req, &h3Error{http3.ErrCodeMessageError, fmt.Sprintf("pseudo-header %q after regular fields", f.Name)}
			}
			var dst *string
			switch f.Name {
			case ":method":
				dst = &req.Method
			case ":scheme":
				dst, hasScheme = &req.Scheme, true
			case ":authority":
				dst = &req.Authority
			case ":path":
				dst, hasPath = &req.Path, true
			default:
				return req, &h3Error{http3.ErrCodeMessageError, fmt.Sprintf("unknown pseudo-header %q", f.Name)}
			}
			if *dst != "" {
				return req, &h3Error{http3.ErrCodeMessageError, fmt.Sprintf("duplicate pseudo-header %q", f.Name)}
			}
			if f.Value == "" {
				return req, &h3Error{http3.ErrCodeMessageError, fmt.Sprintf("empty pseudo-header %q", f.Name)}
			}
			*dst = f.Value
			continue
		}
		regular = true
		for i := 0; i < len(f.Name); i++ {
			if c := f.Name[i]; c >= 'A' && c <= 'Z' {
				return req, &h3Error{http3.ErrCodeMessageError, fmt.Sprintf("upper-case field name %q", f.Name)}
			}
		}
		if !httpguts.ValidHeaderFieldName(f.Name) {
			return req, &h3Error{http3.ErrCodeMessageError, fmt.Sprintf("invalid field name %q", f.Name)}
		}
		if !httpguts.ValidHeaderFieldValue(f.Value) {
			return req, &h3Error{http3.ErrCodeMessageError, fmt.Sprintf("invalid value of field %q", f.Name)}
		}
		switch {
		case f.Name == "te":
			if f.Value != "trailers" {
				return req, &h3Error{http3.ErrCodeMessageError, fmt.Sprintf("te %q other than trailers", f.Value)}
			}
		case header.IsConnectionSpecific(f.Name):
			return req, &h3Error{http3.ErrCodeMessageError, fmt.Sprintf("connection-specific field %q", f.Name)}
		case f.Name == "content-length":
			n, ok := header.ParseContentLength(f.Value)
			if !ok || (req.ContentLength >= 0 && n != req.ContentLength) {
				return req, &h3Error{http3.ErrCodeMessageError, fmt.Sprintf("invalid content-length %q", f.Value)}
			}
			req.ContentLength = n
		case f.Name == "host":
			if req.Authority == "" {
				req.Authority = f.Value
			}
			continue
		}
		req.Header.Add(f.Name, f.Value)
	}
	switch {
	case req.Method == "":
		return req, &h3Error{http3.ErrCodeMessageError, "request without :method"}
	case req.Method == "CONNECT":
		if hasScheme || hasPath || req.Authority == "" {
			return req, &h3Error{http3.ErrCodeMessageError, "CONNECT request needs :authority and no :scheme or :path"}
		}
	case !hasScheme || !hasPath:
		return req, &h3Error{http3.ErrCodeMessageError, "request without :scheme or :path"}
	}
	// The stream arrived over QUIC, so TLS: proxied as https whatever the
	// client wrote (as the HTTP/2 server does for TLS connections).
	req.Scheme = "https"
	req.EndStream = req.ContentLength == 0
	return req, nil
}

// handlerParkTime is how long a handler goroutine that finished its
// stream waits at least for the connection's next one before exiting (at
// most twice that), as the HTTP/2 server's do: a reused goroutine keeps
// the stack the connection manager and the upstream call grew, which a
// fresh one copies again and again, and an idle connection holds no
// goroutine once it has passed.
const handlerParkTime = time.Second

// handlerLoop serves qs, then parks on c.parked and serves the streams
// the accept loop hands it, until it has been idle for one to two
// parkTimes or the accept loop ends. It is the body of the connection's
// handler goroutines.
func (c *serverConn) handlerLoop(qs *quic.Stream) {
	c.parked.Run(qs, c.serveCounted)
}

// serveCounted serves qs and accounts its end.
func (c *serverConn) serveCounted(qs *quic.Stream) {
	c.serveStream(qs)
	c.streamEnded()
}

// serveStream reads a request's headers and runs the handler on the
// calling goroutine (the stream's own).
func (c *serverConn) serveStream(qs *quic.Stream) {
	ss := &serverStream{c: c, qs: qs}
	ss.init(qs, c.s.maxHeaderBytes, -1)
	req, err := readRequestHead(ss.r, c.s.maxHeaderBytes)
	if err != nil {
		ss.bodyReader.ended()
		c.rejectRequest(qs, err)
		return
	}
	if !req.EndStream && req.ContentLength < 0 && ss.finished() {
		// The stream's FIN followed the HEADERS frame: a request without a
		// body, which the handler need not read (END_STREAM on HEADERS in
		// HTTP/2 terms).
		req.EndStream = true
	}
	if req.EndStream && ss.finished() {
		ss.bodyReader.ended()
	}
	ss.req, ss.bodyLeft, ss.head = req, req.ContentLength, req.Method == "HEAD"
	defer ss.finish()
	c.s.h.ServeStream(ss)
}

// rejectRequest ends a request stream whose headers could not be read.
func (c *serverConn) rejectRequest(qs *quic.Stream, err error) {
	if errors.Is(err, errHeaderTooLarge) {
		// Stop the client sending and answer 431, as quic-go's server does.
		qs.CancelRead(quic.StreamErrorCode(http3.ErrCodeExcessiveLoad))
		frame, start := beginHeaders(nil)
		frame = endHeaders(appendStatus(frame, 431), start)
		_, _ = qs.Write(frame)
		_ = qs.Close()
		return
	}
	code := http3.ErrCodeRequestIncomplete
	if he, ok := errors.AsType[*h3Error](err); ok {
		code = he.code
		if code == http3.ErrCodeFrameUnexpected || code == http3.ErrCodeFrameError {
			c.closeConn(code, he.reason)
			return
		}
	} else if se, ok := errors.AsType[*quic.StreamError](err); ok && se.Remote {
		return // the peer reset the stream: nothing to answer
	}
	c.s.cfg.Stats.TxReset.Inc()
	qs.CancelRead(quic.StreamErrorCode(code))
	qs.CancelWrite(quic.StreamErrorCode(code))
}

// serverStream is one HTTP/3 request as a stream.ServerStream and a
// stream.Flusher.
//
// The receive-side fields (r, remaining, bodyLeft, trailers, eof) are
// owned by the goroutine reading, the send-side ones (wroteHeader,
// bodyAllowed, hold, out) by the one writing; ended and reset are atomics
// because Reset and finish read them from other goroutines.
type serverStream struct {
	c    *serverConn
	qs   *quic.Stream
	req  stream.Request
	head bool

	// Receive side: the request body.
	bodyReader
	readErr error

	// Send side. out holds frames not yet written to the QUIC stream: a
	// held burst (hold), or the one being written; it comes from
	// sendBufs and goes back when the handler returns.
	wroteHeader bool
	bodyAllowed bool
	hold        bool
	out         *sendBuf

	ended     atomic.Bool
	reset     atomic.Bool
	resetCode atomic.Uint32
}

func (s *serverStream) Request() *stream.Request { return &s.req }

// Context is quic-go's context of the stream's send side, which ends when
// the response ended (Close), the stream was reset locally (CancelWrite),
// the peer sent STOP_SENDING, or the connection closed. A reset of the
// request side by the peer ends it too: readFailed then abandons the
// response, as HTTP/2's RST_STREAM ends both directions.
func (s *serverStream) Context() context.Context { return s.qs.Context() }
func (s *serverStream) Conn() *stream.ConnInfo   { return &s.c.info }

// Trailers returns the request trailers, valid once Read returned io.EOF.
func (s *serverStream) Trailers() header.Header { return s.trailers }

// BufferedBody reports the request body bytes already received and not
// read, and whether they are all of it (stream.BufferedBody): true once
// the stream's FIN was read and the buffered frames end the message
// without an error Read would report, so Read returns them and io.EOF
// without waiting.
func (s *serverStream) BufferedBody() (n int, complete bool) {
	if s.reset.Load() || s.readErr != nil {
		return 0, false
	}
	return s.bufferedBody()
}

func (s *serverStream) resetError() *stream.Error {
	return &stream.Error{Code: stream.ErrCode(s.resetCode.Load()), Reason: "stream reset locally"}
}

// Read reads request body data (the payload of DATA frames); io.EOF at
// the end of the stream, after which Trailers is valid. A body that does
// not match its content-length, or a frame that may not appear on a
// request stream, resets the stream with H3_MESSAGE_ERROR or closes the
// connection with H3_FRAME_UNEXPECTED.
func (s *serverStream) Read(p []byte) (int, error) {
	if s.reset.Load() {
		return 0, s.resetError()
	}
	if s.readErr != nil {
		return 0, s.readErr
	}
	n, err := s.read(p)
	if err != nil && err != io.EOF {
		return n, s.readFailed(err)
	}
	return n, err
}

// readFailed turns a receive-side failure into the stream's error: a
// protocol error found locally resets the stream (or closes the
// connection, for frame errors); a reset by the peer is counted.
func (s *serverStream) readFailed(err error) error {
	if s.reset.Load() {
		s.readErr = s.resetError()
		return s.readErr
	}
	if he, ok := errors.AsType[*h3Error](err); ok {
		switch he.code {
		case http3.ErrCodeFrameUnexpected, http3.ErrCodeFrameError:
			s.c.closeConn(he.code, he.reason)
		}
		s.abort(he.code)
		s.readErr = &stream.Error{Code: codeOf(he.code), Reason: "reading request body: " + he.reason, Err: err}
		return s.readErr
	}
	se := streamError("reading request body", err)
	if se.Remote {
		s.c.s.cfg.Stats.RxReset.Inc()
	}
	if qe, ok := errors.AsType[*quic.StreamError](err); ok && qe.Remote && !s.ended.Load() && !s.reset.Swap(true) {
		// The peer reset the request (RESET_STREAM): the exchange is over,
		// so the response is abandoned too, which ends Context.
		s.resetCode.Store(uint32(stream.ErrCodeCancel))
		s.c.s.cfg.Stats.TxReset.Inc()
		s.qs.CancelWrite(quic.StreamErrorCode(http3.ErrCodeRequestCanceled))
	}
	s.readErr = se
	return se
}

// abort resets both directions of the stream with code and counts it.
func (s *serverStream) abort(code http3.ErrCode) {
	if s.reset.Swap(true) {
		return
	}
	s.resetCode.Store(uint32(codeOf(code)))
	s.c.s.cfg.Stats.TxReset.Inc()
	s.qs.CancelRead(quic.StreamErrorCode(code))
	s.qs.CancelWrite(quic.StreamErrorCode(code))
}

// WriteHeader sends the response headers in a HEADERS frame. 1xx other
// than 101 may precede the final response; connection-specific fields are
// dropped; content-length is added when declared.
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
	informational := status < 200
	if informational {
		if endStream {
			return fmt.Errorf("h3: WriteHeader: informational status %d cannot end the stream", status)
		}
		if status == 101 {
			return errors.New("h3: WriteHeader: 101 Switching Protocols does not exist in HTTP/3")
		}
	}
	if s.out == nil {
		s.out = getSendBuf()
	}
	b, start := beginHeaders(s.out.b)
	b = appendStatus(b, status)
	for _, f := range resp.Header.Fields() {
		if !header.IsConnectionSpecific(f.Name) {
			b = appendField(b, f.Name, f.Value)
		}
	}
	if !informational && resp.ContentLength >= 0 && !resp.Header.Has("content-length") {
		b = appendContentLength(b, resp.ContentLength)
	}
	s.out.b = endHeaders(b, start)
	if !informational {
		s.wroteHeader = true
		s.bodyAllowed = !s.head && status != 204 && status != 304
		if endStream {
			return s.end()
		}
	}
	if s.hold {
		return nil
	}
	return s.flush()
}

// flush writes the frames in out to the QUIC stream in one Write: quic-go
// copies them and wakes its send loop once, so they usually share a
// packet.
func (s *serverStream) flush() error {
	if s.out == nil || len(s.out.b) == 0 {
		return nil
	}
	_, err := s.qs.Write(s.out.b)
	s.out.b = s.out.b[:0]
	if err != nil {
		return s.sendError(err)
	}
	return nil
}

// end writes what is held and closes the send side (FIN) once the
// response is complete; quic-go usually puts the FIN on the last frame.
func (s *serverStream) end() error {
	s.ended.Store(true)
	if err := s.flush(); err != nil {
		return err
	}
	if err := s.qs.Close(); err != nil {
		return s.sendError(err)
	}
	return nil
}

// Hold makes WriteHeader and Write keep their frames until Flush or the
// end of the response (stream.Flusher).
func (s *serverStream) Hold() { s.hold = true }

// Flush writes the frames held since the last write.
func (s *serverStream) Flush() error {
	if s.reset.Load() {
		return s.resetError()
	}
	return s.flush()
}

func (s *serverStream) sendError(err error) error {
	if s.reset.Load() {
		return s.resetError()
	}
	se := streamError("writing response", err)
	if se.Remote {
		s.c.s.cfg.Stats.RxReset.Inc()
	}
	return se
}

// Write sends body data in one DATA frame; quic-go sends it without
// waiting for more, unless the stream holds its writes (Hold), when a
// small chunk waits in the buffer up to maxHeld bytes. It blocks while
// QUIC flow control allows no more.
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
	if !s.bodyAllowed || len(p) == 0 {
		return len(p), nil
	}
	if s.out == nil {
		s.out = getSendBuf()
	}
	s.out.b = appendFrameHeader(s.out.b, frameData, uint64(len(p)))
	if len(p) <= coalesceLimit {
		s.out.b = append(s.out.b, p...)
		if s.hold && len(s.out.b) < maxHeld {
			return len(p), nil
		}
		if err := s.flush(); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	if err := s.flush(); err != nil {
		return 0, err
	}
	n, err := s.qs.Write(p)
	if err != nil {
		return n, s.sendError(err)
	}
	return n, nil
}

// WriteTrailers ends the response with a trailing HEADERS frame.
func (s *serverStream) WriteTrailers(t header.Header) error {
	if s.reset.Load() {
		return s.resetError()
	}
	if !s.wroteHeader {
		return errors.New("h3: WriteTrailers before WriteHeader")
	}
	if s.ended.Load() {
		return errors.New("h3: WriteTrailers after the response ended")
	}
	if s.out == nil {
		s.out = getSendBuf()
	}
	s.out.b = appendTrailers(s.out.b, t)
	return s.end()
}

// CloseWrite ends the response without trailers.
func (s *serverStream) CloseWrite() error {
	if s.reset.Load() {
		return s.resetError()
	}
	if !s.wroteHeader {
		return errors.New("h3: CloseWrite before WriteHeader")
	}
	if s.ended.Load() {
		return nil
	}
	return s.end()
}

// Reset abandons the stream: RESET_STREAM and STOP_SENDING with the
// HTTP/3 code for code; pending Read and Write calls return at once, and
// held frames are dropped.
func (s *serverStream) Reset(code stream.ErrCode) {
	if s.reset.Swap(true) {
		return
	}
	s.resetCode.Store(uint32(code))
	s.c.s.cfg.Stats.TxReset.Inc()
	s.qs.CancelRead(quic.StreamErrorCode(h3Code(code)))
	s.qs.CancelWrite(quic.StreamErrorCode(h3Code(code)))
}

// finish runs when the handler returns. A response not ended, or a
// handler panic, resets the stream with H3_INTERNAL_ERROR; a complete
// response whose request is still arriving stops it with H3_NO_ERROR
// (RFC 9114 section 4.1).
func (s *serverStream) finish() {
	defer func() {
		// The send side is done: no Write can still use out.
		putSendBuf(s.out)
		s.out = nil
	}()
	if p := recover(); p != nil {
		s.c.log.Error("h3: handler panicked", slog.Any("panic", p), slog.String("stack", string(debug.Stack())))
		s.abort(http3.ErrCodeInternalError)
		return
	}
	if s.reset.Load() {
		return
	}
	if !s.ended.Load() {
		s.abort(http3.ErrCodeInternalError)
		return
	}
	if !s.eof && s.readErr == nil && !s.req.EndStream {
		s.qs.CancelRead(quic.StreamErrorCode(http3.ErrCodeNoError))
	}
}

var (
	_ stream.ServerStream = (*serverStream)(nil)
	_ stream.Flusher      = (*serverStream)(nil)
	_ stream.BufferedBody = (*serverStream)(nil)
)
