package h3

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/qlog"
	"github.com/quic-go/quic-go/qlogwriter"
	"github.com/quic-go/quic-go/quicvarint"

	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// DefaultMaxResponseHeaderBytes bounds a response's header section when
// ClientConfig.MaxHeaderBytes is zero (quic-go's client default).
const DefaultMaxResponseHeaderBytes = 10 << 20

// ClientConfig configures an upstream HTTP/3 connection. The callbacks
// are how a pool learns what the connection can carry; they run on quic-go
// goroutines and must not block.
type ClientConfig struct {
	// QUIC holds the QUIC settings (a cluster's
	// http3_protocol_options.quic_protocol_options). Its
	// MaxConcurrentStreams caps the streams meshd opens on the connection.
	QUIC QUICOptions
	// MaxHeaderBytes bounds a response's header section (and its
	// trailers); zero: DefaultMaxResponseHeaderBytes. It is announced to
	// the peer as SETTINGS_MAX_FIELD_SECTION_SIZE.
	MaxHeaderBytes int
	Stats          *Stats
	Logger         *slog.Logger
	// OnStreamLimit reports the peer's bidirectional stream limit
	// (initial_max_streams_bidi), capped by QUIC.MaxConcurrentStreams,
	// once the handshake is done.
	OnStreamLimit func(limit uint32)
	// OnCredit is called when a MAX_STREAMS frame raised the stream credit.
	OnCredit func()
	// OnGoAway is called once, for the first HTTP/3 GOAWAY received.
	OnGoAway func()
	// OnStreamDone is called once per stream opened, when it ended.
	OnStreamDone func()
	// OnStreamRefused is called once per stream the peer refused with
	// H3_REQUEST_REJECTED (RefusedStreams counts it), when the stream
	// ended, just before its OnStreamDone.
	OnStreamRefused func()
	// OnClose is called once when the connection closed; err is nil after
	// a local graceful close (H3_NO_ERROR), else the cause (ClosedByPeer
	// tells whose).
	OnClose func(err error)
}

// ClientConn is one upstream HTTP/3 connection: meshd's HTTP/3 client
// framing (RFC 9114) over a quic-go connection.
//
// quic-go does QUIC (TLS, loss recovery, flow control) and QPACK's
// static-table coding; the connection writes and reads HTTP/3 frames on
// its request streams itself, so a request costs no goroutine, pipe or
// net/http conversion, a stream is opened without blocking on the peer's
// stream credit, and GOAWAY is read off the peer's control stream with
// its stream ID, which tells exactly which requests the peer never saw.
//
// Stream capacity follows QUIC's stream credit: the peer's
// initial_max_streams_bidi and every MAX_STREAMS frame raise the count of
// streams meshd may open; Capacity is that count less the streams opened,
// capped by the local limit. quic-go does not expose the credit, so the
// connection reads it from the qlog events of transport parameters and
// received frames (a trace that records nothing else).
type ClientConn struct {
	qc  *quic.Conn
	cfg *ClientConfig
	// localLimit caps concurrent streams (QUIC.MaxConcurrentStreams).
	localLimit     int64
	maxHeaderBytes int

	maxStreams atomic.Int64  // the peer's cumulative bidirectional stream credit
	opened     atomic.Int64  // request streams opened
	active     atomic.Int64  // request streams not yet done
	refused    atomic.Uint64 // request streams the peer refused, counted when done
	goAwayID   atomic.Int64  // the first GOAWAY's stream ID; -1 before any
	goAwayOnce sync.Once
	closeOnce  sync.Once
	closing    atomic.Bool // Shutdown called
	loops      sync.WaitGroup

	mu      sync.Mutex
	streams map[quic.StreamID]*clientStream // request streams not yet done
}

// Dial connects to addr (host:port, UDP) within ctx with TLS config tlsConf
// (its NextProtos are replaced with h3) and returns a ready connection.
func Dial(ctx context.Context, addr string, tlsConf *tls.Config, cfg *ClientConfig) (*ClientConn, error) {
	if cfg.Stats == nil {
		cfg.Stats = NewStats(nil)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	c := &ClientConn{cfg: cfg, localLimit: cfg.QUIC.MaxConcurrentStreams, maxHeaderBytes: cfg.MaxHeaderBytes, streams: map[quic.StreamID]*clientStream{}}
	if c.localLimit <= 0 {
		c.localLimit = math.MaxInt32
	}
	if c.maxHeaderBytes <= 0 {
		c.maxHeaderBytes = DefaultMaxResponseHeaderBytes
	}
	c.goAwayID.Store(-1)
	qconf := cfg.QUIC.Config()
	qconf.MaxIncomingStreams = -1 // a server opens no request streams (RFC 9114 section 6.1)
	qconf.Tracer = func(context.Context, bool, quic.ConnectionID) qlogwriter.Trace { return (*connTrace)(c) }
	tc := tlsConf.Clone()
	tc.NextProtos = []string{NextProto}
	qc, err := quic.DialAddr(ctx, addr, tc, qconf)
	if err != nil {
		return nil, fmt.Errorf("QUIC handshake with %s: %w", addr, err)
	}
	if p := qc.ConnectionState().TLS.NegotiatedProtocol; p != NextProto {
		_ = qc.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeVersionFallback), "")
		return nil, fmt.Errorf("QUIC peer %s did not negotiate h3 (ALPN %q)", addr, p)
	}
	c.qc = qc
	if err := c.openControlStream(); err != nil {
		_ = qc.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeInternalError), "")
		return nil, fmt.Errorf("HTTP/3 control stream to %s: %w", addr, err)
	}
	if f := cfg.OnStreamLimit; f != nil {
		f(uint32(min(c.maxStreams.Load(), c.localLimit, math.MaxUint32)))
	}
	c.loops.Go(c.acceptUniStreams)
	go func() {
		<-qc.Context().Done()
		c.loops.Wait()
		c.closed(context.Cause(qc.Context()))
	}()
	return c, nil
}

// openControlStream opens the client's control stream with its SETTINGS
// (RFC 9114 section 6.2.1): the largest header section it accepts; no
// dynamic QPACK table, so no QPACK streams.
func (c *ClientConn) openControlStream() error {
	s, err := c.qc.OpenUniStream()
	if err != nil {
		return err
	}
	var settings []byte
	settings = quicvarint.Append(settings, settingMaxFieldSectionSize)
	settings = quicvarint.Append(settings, uint64(c.maxHeaderBytes))
	b := quicvarint.Append(nil, streamControl)
	b = appendFrameHeader(b, frameSettings, uint64(len(settings)))
	_, err = s.Write(append(b, settings...))
	return err
}

// acceptUniStreams serves the peer's unidirectional streams until the
// connection ends: its control stream is read for GOAWAY, QPACK streams
// are drained (no dynamic table was allowed), others are refused.
func (c *ClientConn) acceptUniStreams() {
	ctx := c.qc.Context()
	for {
		s, err := c.qc.AcceptUniStream(ctx)
		if err != nil {
			return
		}
		c.loops.Go(func() { c.serveUniStream(s) })
	}
}

func (c *ClientConn) serveUniStream(s *quic.ReceiveStream) {
	r := bufio.NewReaderSize(s, 512)
	typ, err := quicvarint.Read(r)
	if err != nil {
		return
	}
	switch typ {
	case streamControl:
		err := c.readControlStream(r)
		var he *h3Error
		if !errors.As(err, &he) {
			// The peer must not close its control stream (section 6.2.1).
			he = &h3Error{http3.ErrCodeClosedCriticalStream, fmt.Sprintf("control stream ended: %v", err)}
		}
		if c.qc.Context().Err() == nil {
			c.cfg.Logger.Debug("HTTP/3 connection error", "err", he)
		}
		_ = c.qc.CloseWithError(quic.ApplicationErrorCode(he.code), he.reason)
	case streamQPACKEncoder, streamQPACKDecoder:
		_, _ = io.Copy(io.Discard, r)
	case streamPush:
		// No MAX_PUSH_ID was sent, so no push is allowed (section 4.6).
		_ = c.qc.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeIDError), "push stream without MAX_PUSH_ID")
	default:
		s.CancelRead(quic.StreamErrorCode(http3.ErrCodeStreamCreationError))
	}
}

// readControlStream reads the peer's control stream: SETTINGS first, then
// GOAWAY frames whose IDs may only fall, CANCEL_PUSH or unknown frames. It
// returns the error that ends the connection.
func (c *ClientConn) readControlStream(r *bufio.Reader) error {
	forbidden := func(typ uint64) bool {
		return typ == frameData || typ == frameHeaders || typ == framePushPromise || typ == frameMaxPushID
	}
	return readControlFrames(r, forbidden, func(typ uint64, p []byte) error {
		id, n, err := quicvarint.Parse(p)
		if err != nil || n != len(p) {
			return &h3Error{http3.ErrCodeFrameError, fmt.Sprintf("malformed frame type %#x", typ)}
		}
		if typ == frameGoAway {
			return c.goAway(int64(id))
		}
		return nil // CANCEL_PUSH: meshd never asks for pushes
	})
}

// goAway records a GOAWAY's stream ID: requests on streams at or above it
// were not processed (RFC 9114 section 5.2), so they are cancelled at once
// and fail as unprocessed, to be retried elsewhere. IDs must be
// client-initiated bidirectional ones and may not grow.
func (c *ClientConn) goAway(id int64) error {
	if id%4 != 0 || id > 1<<62 {
		return &h3Error{http3.ErrCodeIDError, fmt.Sprintf("GOAWAY stream ID %d is not a request stream", id)}
	}
	for {
		cur := c.goAwayID.Load()
		if cur >= 0 && id > cur {
			return &h3Error{http3.ErrCodeIDError, fmt.Sprintf("GOAWAY stream ID grew from %d to %d", cur, id)}
		}
		if c.goAwayID.CompareAndSwap(cur, id) {
			break
		}
	}
	c.goAwayOnce.Do(func() {
		c.cfg.Stats.GoAwayRx.Inc()
		if c.cfg.OnGoAway != nil {
			c.cfg.OnGoAway()
		}
	})
	c.mu.Lock()
	var unseen []*clientStream
	for sid, s := range c.streams {
		if int64(sid) >= id {
			unseen = append(unseen, s)
		}
	}
	c.mu.Unlock()
	for _, s := range unseen {
		s.qs.CancelWrite(quic.StreamErrorCode(http3.ErrCodeRequestCanceled))
		s.qs.CancelRead(quic.StreamErrorCode(http3.ErrCodeRequestCanceled))
	}
	if c.active.Load() == 0 {
		_ = c.qc.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "")
	}
	return nil
}

// closed runs once when the QUIC connection ended.
func (c *ClientConn) closed(cause error) {
	c.closeOnce.Do(func() {
		s := c.qc.ConnectionStats()
		c.cfg.Stats.PacketsLost.Add(s.PacketsLost)
		c.cfg.Stats.PacketsSent.Add(s.PacketsSent)
		if IsIdleTimeout(cause) {
			c.cfg.Stats.IdleTimeout.Inc()
		}
		var err error
		if ae, ok := errors.AsType[*quic.ApplicationError](cause); !ok || ae.Remote || http3.ErrCode(ae.ErrorCode) != http3.ErrCodeNoError {
			err = cause
		}
		if c.cfg.OnClose != nil {
			c.cfg.OnClose(err)
		}
	})
}

// ClosedByPeer reports whether err, a connection's close cause as OnClose
// reports it, came from the peer: its CONNECTION_CLOSE (any code,
// H3_NO_ERROR included) or a stateless reset. It is false for nil (a local
// graceful close), a local close, and the idle and handshake timeouts:
// Envoy counts those in upstream_cx_destroy_local, the peer's in
// upstream_cx_destroy_remote.
func ClosedByPeer(err error) bool {
	if ae, ok := errors.AsType[*quic.ApplicationError](err); ok {
		return ae.Remote
	}
	if te, ok := errors.AsType[*quic.TransportError](err); ok {
		return te.Remote
	}
	_, reset := errors.AsType[*quic.StatelessResetError](err)
	return reset
}

// Capacity is how many more streams the connection takes now: the peer's
// remaining stream credit, within the local concurrency limit; 0 after
// GOAWAY or Shutdown.
func (c *ClientConn) Capacity() int {
	if c.goAwayID.Load() >= 0 || c.closing.Load() || c.qc.Context().Err() != nil {
		return 0
	}
	return int(max(min(c.maxStreams.Load()-c.opened.Load(), c.localLimit-c.active.Load()), 0))
}

// ActiveStreams is the number of request streams opened on the
// connection that have not ended yet.
func (c *ClientConn) ActiveStreams() int { return int(c.active.Load()) }

// RefusedStreams is how many of the connection's request streams the
// peer refused with H3_REQUEST_REJECTED. A refused stream is counted when
// it ends, together with its leaving ActiveStreams: before the Response
// that reports the refusal returns, and before a Reset of the stream
// returns.
func (c *ClientConn) RefusedStreams() uint64 { return c.refused.Load() }

// Shutdown closes the connection gracefully once its streams ended; it
// takes no new stream meanwhile.
func (c *ClientConn) Shutdown() {
	c.closing.Store(true)
	if c.active.Load() == 0 {
		_ = c.qc.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "")
	}
}

// Close closes the connection at once, failing its streams.
func (c *ClientConn) Close() error {
	c.closing.Store(true)
	return c.qc.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "")
}

// ConnectionStats returns quic-go's counters of the connection (RTT, loss).
func (c *ClientConn) ConnectionStats() quic.ConnectionStats { return c.qc.ConnectionStats() }

// refused is the error of a stream the connection cannot take: the peer
// never saw it.
func refused(reason string, err error) *stream.Error {
	return &stream.Error{Code: stream.ErrCodeRefusedStream, Unprocessed: true, Reason: reason, Err: err}
}

// NewStream opens a request stream and sends req's headers; the request
// is then written with Write and ended with CloseWrite. An error, or an
// error from the stream's Response, whose stream.Unprocessed is true
// guarantees the peer did not process the request: refused with
// H3_REQUEST_REJECTED, on a stream at or above a GOAWAY's ID, no stream
// credit left, or failed before its headers were written.
func (c *ClientConn) NewStream(ctx context.Context, req *stream.Request, endStream bool) (stream.ClientStream, error) {
	if c.goAwayID.Load() >= 0 || c.closing.Load() {
		return nil, refused("HTTP/3 connection is going away", nil)
	}
	out := getSendBuf()
	out.b = requestHeaders(out.b, req)
	qs, err := c.qc.OpenStream()
	if err != nil {
		putSendBuf(out)
		if _, ok := errors.AsType[*quic.StreamLimitReachedError](err); ok {
			return nil, refused("peer's stream limit (MAX_STREAMS) reached", err)
		}
		return nil, refused("opening a request stream", err)
	}
	c.opened.Add(1)
	c.active.Add(1)
	s := &clientStream{c: c, qs: qs, ended: endStream, out: out}
	s.init(qs, c.maxHeaderBytes, -1)
	c.mu.Lock()
	c.streams[qs.StreamID()] = s
	c.mu.Unlock()
	if id := c.goAwayID.Load(); id >= 0 && int64(qs.StreamID()) >= id {
		s.abort(http3.ErrCodeRequestCanceled)
		s.release()
		return nil, refused("HTTP/3 connection is going away", nil)
	}
	if _, err := qs.Write(s.out.b); err != nil {
		se := s.classify("sending request headers", err)
		se.Unprocessed = se.Unprocessed || !se.Remote
		s.abort(http3.ErrCodeRequestCanceled)
		s.release()
		return nil, se
	}
	s.out.b = s.out.b[:0]
	if endStream {
		if qs.Close() == nil {
			s.sent.Store(true)
		}
		s.release()
	}
	if ctx.Done() != nil {
		// stream.ContextBound: the stream resets itself when ctx ends, so
		// callers need no watcher of their own.
		s.ctx = ctx
		stop := context.AfterFunc(ctx, func() { s.Reset(stream.ErrCodeCancel) })
		c.mu.Lock()
		if s.removed {
			c.mu.Unlock()
			stop()
		} else {
			s.stopCtx = stop
			c.mu.Unlock()
		}
	}
	return s, nil
}

// requestHeaders appends req's header section to dst as a HEADERS frame,
// the way the HTTP/2 codec does: pseudo-fields, then the fields that are
// not connection-specific, and content-length when declared.
func requestHeaders(dst []byte, req *stream.Request) []byte {
	authority := req.Authority
	if authority == "" {
		authority = req.Header.Get("host")
	}
	b, start := beginHeaders(dst)
	b = appendField(b, ":method", req.Method)
	if req.Method == "CONNECT" {
		b = appendField(b, ":authority", authority)
	} else {
		scheme, path := req.Scheme, req.Path
		if scheme == "" {
			scheme = "https"
		}
		if path == "" {
			path = "/"
		}
		b = appendField(b, ":scheme", scheme)
		b = appendField(b, ":authority", authority)
		b = appendField(b, ":path", path)
	}
	for _, f := range req.Header.Fields() {
		if header.IsConnectionSpecific(f.Name) || f.Name == "host" || (f.Name == "te" && f.Value != "trailers") {
			continue
		}
		b = appendField(b, f.Name, f.Value)
	}
	if req.ContentLength > 0 && !req.Header.Has("content-length") {
		b = appendContentLength(b, req.ContentLength)
	}
	return endHeaders(b, start)
}

// streamDone accounts a stream that ended, refused by the peer or not.
func (c *ClientConn) streamDone(refused bool) {
	c.cfg.Stats.RTTMs.Record(float64(c.qc.ConnectionStats().SmoothedRTT.Microseconds()) / 1000)
	if c.active.Add(-1) == 0 && (c.closing.Load() || c.goAwayID.Load() >= 0) {
		_ = c.qc.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "")
	}
	if refused {
		c.refused.Add(1)
		if c.cfg.OnStreamRefused != nil {
			c.cfg.OnStreamRefused()
		}
	}
	if c.cfg.OnStreamDone != nil {
		c.cfg.OnStreamDone()
	}
}

// Conn returns the *ClientConn the stream was opened on (stream.Carried).
func (s *clientStream) Conn() stream.ClientConn { return s.c }

// PeerCertificate returns the leaf certificate the upstream presented in
// the QUIC handshake, nil when it sent none.
func (s *clientStream) PeerCertificate() *x509.Certificate {
	if pc := s.c.qc.ConnectionState().TLS.PeerCertificates; len(pc) > 0 {
		return pc[0]
	}
	return nil
}

// clientStream is one request on a ClientConn, a stream.ClientStream and
// a stream.ReadReadier. The send side (Write, CloseWrite) and the receive
// side (Response, Read, ReadReady) may be used from two goroutines; each
// side's fields are owned by its user.
type clientStream struct {
	c  *ClientConn
	qs *quic.Stream

	// Send side. out is where frames are assembled for one QUIC stream
	// Write; from sendBufs, back once the request ended.
	ended bool // the request's FIN was sent
	out   *sendBuf

	// Receive side: the response body (bodyLeft -1: a response's
	// content-length is not checked).
	bodyReader
	gotResp bool
	respErr error

	// sent and received record the two halves completing: the request's
	// FIN handed to QUIC, the response read to its end. Reset after both
	// is a no-op (nothing is left to cancel, and a RESET_STREAM would cost
	// the peer a packet for a finished stream).
	sent, received atomic.Bool

	doneOnce sync.Once
	reset    atomic.Bool
	// refused is set by the first error that shows the peer refused the
	// stream (H3_REQUEST_REJECTED); done reports it.
	refused atomic.Bool

	// ctx is NewStream's context when it can end; stopCtx stops the
	// context.AfterFunc that resets the stream when it does. removed says
	// done ran. stopCtx and removed are guarded by c.mu.
	ctx     context.Context
	stopCtx func() bool
	removed bool
}

// abort resets both directions of the stream with code and ends it.
func (s *clientStream) abort(code http3.ErrCode) {
	s.qs.CancelWrite(quic.StreamErrorCode(code))
	s.qs.CancelRead(quic.StreamErrorCode(code))
	s.done()
}

func (s *clientStream) done() {
	s.doneOnce.Do(func() {
		s.c.mu.Lock()
		delete(s.c.streams, s.qs.StreamID())
		stop := s.stopCtx
		s.stopCtx, s.removed = nil, true
		s.c.mu.Unlock()
		if stop != nil {
			stop()
		}
		s.c.streamDone(s.refused.Load())
	})
}

// classify turns a stream error into a *stream.Error, marking it
// Unprocessed when the peer cannot have processed the request: refused
// with H3_REQUEST_REJECTED, or on a stream at or above a GOAWAY's ID.
func (s *clientStream) classify(op string, err error) *stream.Error {
	if s.reset.Load() {
		return &stream.Error{Code: stream.ErrCodeCancel, Reason: "stream reset locally", Err: err}
	}
	if he, ok := errors.AsType[*h3Error](err); ok {
		return &stream.Error{Code: codeOf(he.code), Reason: op + ": " + he.reason, Err: err}
	}
	se := streamError(op, err)
	if se.Code == stream.ErrCodeRefusedStream && se.Remote && se.Unprocessed && !s.refused.Swap(true) {
		// Counted once per stream: the send and the receive side may
		// both report the refusal.
		s.c.cfg.Stats.StreamRefused.Inc()
	}
	if id := s.c.goAwayID.Load(); id >= 0 && int64(s.qs.StreamID()) >= id && !s.gotResp {
		se.Unprocessed = true
	}
	if se.Remote && !se.Unprocessed {
		s.c.cfg.Stats.RxReset.Inc()
	}
	return se
}

// coalesceLimit is the largest body chunk Write copies behind its DATA
// frame header so both go to quic-go in one Write (one wake-up of the
// connection's send loop, usually one packet); larger chunks are written
// after the header without a copy.
const coalesceLimit = 4 << 10

// flush writes the frames in out to the QUIC stream in one Write.
func (s *clientStream) flush() error {
	if len(s.out.b) == 0 {
		return nil
	}
	_, err := s.qs.Write(s.out.b)
	s.out.b = s.out.b[:0]
	if err != nil {
		return s.sendError(err)
	}
	return nil
}

// release gives the send buffer back once the send side is done.
func (s *clientStream) release() {
	putSendBuf(s.out)
	s.out = nil
}

// ReadReady reports whether Read returns without waiting for the peer:
// response bytes are buffered or the body ended (stream.ReadReadier). It
// cannot see bytes quic-go has not handed over yet, so false means "may
// wait".
func (s *clientStream) ReadReady() bool { return s.eof || s.r.Buffered() > 0 }

// Write sends request body data in one DATA frame; it blocks while QUIC
// flow control allows no more.
func (s *clientStream) Write(p []byte) (int, error) {
	if s.ended {
		return 0, errors.New("h3: Write after the request ended")
	}
	if len(p) == 0 {
		return 0, nil
	}
	s.out.b = appendFrameHeader(s.out.b, frameData, uint64(len(p)))
	if len(p) <= coalesceLimit {
		s.out.b = append(s.out.b, p...)
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

func (s *clientStream) sendError(err error) error {
	if s.reset.Load() {
		return &stream.Error{Code: stream.ErrCodeCancel, Reason: "stream reset locally", Err: err}
	}
	return s.classify("sending request body", err)
}

// CloseWrite ends the request, with trailers when t is non-empty.
func (s *clientStream) CloseWrite(t header.Header) error {
	if s.ended {
		if t.Len() > 0 {
			return errors.New("h3: trailers on a request that already ended")
		}
		return nil
	}
	s.ended = true
	defer s.release()
	if t.Len() > 0 {
		s.out.b = appendTrailers(s.out.b, t)
	}
	if err := s.flush(); err != nil {
		return err
	}
	if err := s.qs.Close(); err != nil {
		return s.sendError(err)
	}
	s.sent.Store(true)
	return nil
}

// Response waits for the final response headers; interim 1xx responses
// are skipped. A gRPC response whose headers carry grpc-status is
// Trailers-Only and is reported with EndStream, as HTTP/2's END_STREAM on
// HEADERS would say.
func (s *clientStream) Response(ctx context.Context) (*stream.Response, error) {
	if s.gotResp || s.respErr != nil {
		return nil, errors.New("h3: Response called twice")
	}
	if ctx.Done() != nil && ctx != s.ctx {
		// NewStream's context is watched already (ResetsOnContextDone).
		stop := context.AfterFunc(ctx, func() { _ = s.qs.SetReadDeadline(time.Unix(1, 0)) })
		defer stop()
	}
	resp, err := s.readResponse()
	if err != nil {
		if ctx.Err() != nil && !s.reset.Load() {
			err = &stream.Error{Code: stream.ErrCodeCancel, Reason: "waiting for response headers", Err: ctx.Err()}
		}
		s.respErr = err
		s.fail(err)
		return nil, err
	}
	s.gotResp = true
	if resp.Header.Has("grpc-status") {
		resp.EndStream = true
		if err := s.finishTrailersOnly(); err != nil {
			return nil, err
		}
	}
	return resp, nil
}

// readResponse reads frames up to the final response's HEADERS.
func (s *clientStream) readResponse() (*stream.Response, error) {
	for {
		typ, length, err := readFrameHeader(s.r)
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, s.classify("reading response headers", err)
		}
		switch typ {
		case frameHeaders:
			block, peeked, err := peekBlock(s.r, length, s.c.maxHeaderBytes)
			if err != nil {
				return nil, s.classify("reading response headers", err)
			}
			f, err := decodeFields(block, false)
			if peeked {
				_, _ = s.r.Discard(len(block))
			}
			if err != nil {
				return nil, s.classify("decoding response headers", err)
			}
			if f.status >= 100 && f.status < 200 && f.status != 101 {
				continue // interim response (RFC 9114 section 4.1)
			}
			return &stream.Response{Status: f.status, Header: f.header, ContentLength: f.contentLength}, nil
		case frameData, frameSettings, frameGoAway, framePushPromise, frameMaxPushID, frameCancelPush:
			return nil, s.classify("reading response headers", &h3Error{http3.ErrCodeFrameUnexpected, fmt.Sprintf("frame type %#x before the response headers", typ)})
		default:
			if err := skip(s.r, length); err != nil {
				return nil, s.classify("reading response headers", err)
			}
		}
	}
}

// finishTrailersOnly reads a Trailers-Only response's end: no frame but
// unknown ones may follow its HEADERS.
func (s *clientStream) finishTrailersOnly() error {
	var buf [1]byte
	for {
		n, err := s.Read(buf[:])
		switch {
		case err == io.EOF:
			return nil
		case err != nil:
			return err
		case n > 0:
			return s.readFailed(&h3Error{http3.ErrCodeMessageError, "DATA after a Trailers-Only response"})
		}
	}
}

// fail ends a stream whose receive side failed: a stream error from the
// peer already ended it; an error found locally resets it (a connection
// error closes the connection).
func (s *clientStream) fail(err error) {
	if he, ok := errors.AsType[*h3Error](err); ok {
		switch he.code {
		case http3.ErrCodeFrameUnexpected, http3.ErrCodeFrameError, http3.ErrCodeQPACKDecompressionFailed:
			_ = s.c.qc.CloseWithError(quic.ApplicationErrorCode(he.code), he.reason)
		}
		s.abort(he.code)
		return
	}
	if se, ok := errors.AsType[*stream.Error](err); ok && !se.Remote {
		s.abort(h3Code(se.Code))
		return
	}
	s.abort(http3.ErrCodeRequestCanceled)
}

// Read reads response body data (DATA frame payloads); io.EOF at the end,
// after which Trailers is valid.
func (s *clientStream) Read(p []byte) (int, error) {
	if !s.gotResp {
		if s.respErr != nil {
			return 0, s.respErr
		}
		return 0, errors.New("h3: Read before Response")
	}
	n, err := s.read(p)
	if err == io.EOF {
		s.received.Store(true)
		s.done()
		return n, io.EOF
	}
	if err != nil {
		return n, s.readFailed(err)
	}
	return n, nil
}

func (s *clientStream) readFailed(err error) error {
	se := s.classify("reading response body", err)
	s.fail(err)
	return se
}

// Trailers returns the response trailers; valid after Read returned io.EOF.
func (s *clientStream) Trailers() header.Header { return s.trailers }

// Reset cancels the stream: RESET_STREAM and STOP_SENDING with the HTTP/3
// code for code (H3_REQUEST_CANCELLED for a cancel). A no-op once the
// stream completed: the request sent whole and the response read to its
// end.
func (s *clientStream) Reset(code stream.ErrCode) {
	if s.sent.Load() && s.received.Load() {
		return
	}
	if s.reset.Swap(true) {
		return
	}
	s.c.cfg.Stats.TxReset.Inc()
	_ = s.qs.SetReadDeadline(time.Unix(1, 0))
	s.abort(h3Code(code))
}

// ResetsOnContextDone marks the stream as stream.ContextBound: when the
// context given to NewStream ends before the stream completed, the stream
// is reset with H3_REQUEST_CANCELLED, as Reset(stream.ErrCodeCancel) does.
func (s *clientStream) ResetsOnContextDone() {}

// connTrace is the qlog trace of one ClientConn: it records nothing and
// only watches for the events that carry the peer's stream credit.
type connTrace ClientConn

func (t *connTrace) AddProducer() qlogwriter.Recorder { return t }
func (t *connTrace) Close() error                     { return nil }

// RecordEvent watches transport parameters and MAX_STREAMS frames.
func (t *connTrace) RecordEvent(ev qlogwriter.Event) {
	c := (*ClientConn)(t)
	switch e := ev.(type) {
	case qlog.ParametersSet:
		// Both sides' parameters are recorded; the client's own allow no
		// bidirectional streams, so the larger value is the peer's.
		c.raiseCredit(e.InitialMaxStreamsBidi)
	case *qlog.ParametersSet:
		c.raiseCredit(e.InitialMaxStreamsBidi)
	case qlog.PacketReceived:
		c.framesReceived(e.Frames)
	case *qlog.PacketReceived:
		c.framesReceived(e.Frames)
	}
}

// bidiStreamType is quic-go's protocol.StreamTypeBidi, which MAX_STREAMS
// frames carry and which is internal to quic-go.
const bidiStreamType = 1

func (c *ClientConn) framesReceived(fs []qlog.Frame) {
	for _, f := range fs {
		if ms, ok := f.Frame.(*qlog.MaxStreamsFrame); ok && uint8(ms.Type) == bidiStreamType {
			if c.raiseCredit(int64(ms.MaxStreamNum)) && c.cfg.OnCredit != nil {
				c.cfg.OnCredit()
			}
		}
	}
}

// raiseCredit records a stream credit n; credit only grows (RFC 9000
// section 4.6). It reports whether n raised it.
func (c *ClientConn) raiseCredit(n int64) bool {
	for {
		cur := c.maxStreams.Load()
		if n <= cur {
			return false
		}
		if c.maxStreams.CompareAndSwap(cur, n) {
			return true
		}
	}
}

var (
	_ stream.ClientStream = (*clientStream)(nil)
	_ stream.ReadReadier  = (*clientStream)(nil)
	_ stream.ContextBound = (*clientStream)(nil)
	_ stream.Carried      = (*clientStream)(nil)
	_ stream.ClientConn   = (*ClientConn)(nil)
	_ qlogwriter.Trace    = (*connTrace)(nil)
)
