package h3

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	h3qlog "github.com/quic-go/quic-go/http3/qlog"
	"github.com/quic-go/quic-go/qlog"
	"github.com/quic-go/quic-go/qlogwriter"

	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// ClientConfig configures an upstream HTTP/3 connection. The callbacks
// are how a pool learns what the connection can carry; they run on quic-go
// goroutines and must not block.
type ClientConfig struct {
	// QUIC holds the QUIC settings (a cluster's
	// http3_protocol_options.quic_protocol_options). Its
	// MaxConcurrentStreams caps the streams meshd opens on the connection.
	QUIC QUICOptions
	// MaxHeaderBytes bounds a response's header section; zero: 10 MiB
	// (quic-go's default).
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
	// OnClose is called once when the connection closed; err is nil after
	// a graceful close.
	OnClose func(err error)
}

// ClientConn is one upstream HTTP/3 connection (quic-go's
// http3.ClientConn) seen through the stream interface.
//
// Stream capacity follows QUIC's stream credit: the peer's
// initial_max_streams_bidi and every MAX_STREAMS frame raise the count of
// streams meshd may open; Capacity is that count less the streams opened,
// capped by the local limit. quic-go does not expose either number, so
// the connection reads them from its qlog events, as it reads HTTP/3
// GOAWAY frames.
type ClientConn struct {
	qc  *quic.Conn
	hc  *http3.ClientConn
	cfg *ClientConfig
	// localLimit caps concurrent streams (QUIC.MaxConcurrentStreams).
	localLimit int64

	maxStreams atomic.Int64 // the peer's cumulative bidirectional stream credit
	opened     atomic.Int64 // request streams opened
	active     atomic.Int64 // request streams not yet done
	goAwayID   atomic.Int64 // the first GOAWAY's stream ID; -1 before any
	goAwayOnce sync.Once
	closeOnce  sync.Once
	closing    atomic.Bool // Shutdown called
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
	c := &ClientConn{cfg: cfg, localLimit: cfg.QUIC.MaxConcurrentStreams}
	if c.localLimit <= 0 {
		c.localLimit = math.MaxInt32
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
	tr := &http3.Transport{MaxResponseHeaderBytes: cfg.MaxHeaderBytes, DisableCompression: true, Logger: cfg.Logger}
	c.hc = tr.NewClientConn(qc)
	if f := cfg.OnStreamLimit; f != nil {
		f(uint32(min(c.maxStreams.Load(), c.localLimit, math.MaxUint32)))
	}
	go func() {
		<-qc.Context().Done()
		c.closed(context.Cause(qc.Context()))
	}()
	return c, nil
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
		if ae, ok := errors.AsType[*quic.ApplicationError](cause); !ok || http3.ErrCode(ae.ErrorCode) != http3.ErrCodeNoError {
			err = cause
		}
		if c.cfg.OnClose != nil {
			c.cfg.OnClose(err)
		}
	})
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

// Shutdown closes the connection gracefully once its streams ended; it
// takes no new stream meanwhile.
func (c *ClientConn) Shutdown() {
	c.closing.Store(true)
	if c.active.Load() == 0 {
		_ = c.hc.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "")
	}
}

// Close closes the connection at once, failing its streams.
func (c *ClientConn) Close() error {
	c.closing.Store(true)
	return c.hc.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "")
}

// ConnectionStats returns quic-go's counters of the connection (RTT, loss).
func (c *ClientConn) ConnectionStats() quic.ConnectionStats { return c.qc.ConnectionStats() }

// NewStream opens a request stream and sends req's headers; the request
// is then written with Write and ended with CloseWrite. An error, or an
// error from the stream's Response, whose stream.Unprocessed is true
// guarantees the peer did not process the request: refused with
// H3_REQUEST_REJECTED, at or above a GOAWAY's stream ID, or failed before
// its headers were written.
func (c *ClientConn) NewStream(ctx context.Context, req *stream.Request, endStream bool) (stream.ClientStream, error) {
	if c.Capacity() <= 0 && (c.goAwayID.Load() >= 0 || c.closing.Load()) {
		return nil, &stream.Error{Code: stream.ErrCodeRefusedStream, Unprocessed: true, Reason: "HTTP/3 connection is going away"}
	}
	// The path goes out as given: quic-go writes URL.RequestURI(), which
	// is Opaque and the query (an Opaque starting with "//" would gain
	// the scheme, so such a path is parsed instead).
	u := &url.URL{Scheme: "https", Host: req.Authority}
	p, q, _ := strings.Cut(req.Path, "?")
	if strings.HasPrefix(p, "//") {
		pu, err := url.ParseRequestURI(req.Path)
		if err != nil {
			return nil, &stream.Error{Code: stream.ErrCodeProtocol, Unprocessed: true, Reason: fmt.Sprintf("invalid :path %q", req.Path), Err: err}
		}
		u.Path, u.RawPath, u.RawQuery = pu.Path, pu.RawPath, pu.RawQuery
	} else {
		u.Opaque, u.RawQuery = p, q
	}
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s := &clientStream{
		c:         c,
		cancel:    cancel,
		wrote:     make(chan struct{}),
		respReady: make(chan struct{}),
	}
	sctx = httptrace.WithClientTrace(sctx, &httptrace.ClientTrace{WroteHeaders: func() { close(s.wrote) }})
	hreq := &http.Request{
		Method:        req.Method,
		URL:           u,
		Host:          req.Authority,
		Proto:         "HTTP/3.0",
		ProtoMajor:    3,
		Header:        make(http.Header, req.Header.Len()),
		ContentLength: req.ContentLength,
		Trailer:       http.Header{},
	}
	copyFields(hreq.Header, &req.Header)
	delete(hreq.Header, "Trailer")
	if endStream {
		hreq.Body, hreq.ContentLength = http.NoBody, 0
	} else {
		pr, pw := io.Pipe()
		hreq.Body, s.pw = pr, pw
		if hreq.ContentLength == 0 {
			hreq.ContentLength = -1
		}
	}
	hreq = hreq.WithContext(sctx)
	s.hreq = hreq
	c.opened.Add(1)
	c.active.Add(1)
	go s.roundTrip()
	return s, nil
}

// streamDone accounts a stream that ended.
func (c *ClientConn) streamDone() {
	c.cfg.Stats.RTTMs.Record(float64(c.qc.ConnectionStats().SmoothedRTT.Microseconds()) / 1000)
	if c.active.Add(-1) == 0 && c.closing.Load() {
		_ = c.hc.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "")
	}
	if c.cfg.OnStreamDone != nil {
		c.cfg.OnStreamDone()
	}
}

// clientStream is one request on a ClientConn. The request body flows
// through a pipe to quic-go's RoundTrip, which sends it (and the request
// trailers) while the response is read.
type clientStream struct {
	c      *ClientConn
	hreq   *http.Request
	pw     *io.PipeWriter // nil without a request body
	cancel context.CancelFunc
	wrote  chan struct{} // closed when the request headers were written

	respReady chan struct{} // closed once resp or respErr is set
	resp      *http.Response
	respErr   error

	trailers header.Header // valid after Read returned io.EOF
	doneOnce sync.Once
	reset    atomic.Bool
}

func (s *clientStream) roundTrip() {
	resp, err := s.c.hc.RoundTrip(s.hreq)
	if err != nil {
		err = s.classify("sending request", err)
		if s.pw != nil {
			_ = s.pw.CloseWithError(err)
		}
		s.respErr = err
		close(s.respReady)
		s.done()
		return
	}
	s.resp = resp
	close(s.respReady)
}

// classify turns a request error into a *stream.Error, marking it
// Unprocessed when the peer cannot have processed the request.
func (s *clientStream) classify(op string, err error) *stream.Error {
	if s.reset.Load() {
		return &stream.Error{Code: stream.ErrCodeCancel, Reason: "stream reset locally", Err: err}
	}
	se := streamError(op, err)
	if se.Code == stream.ErrCodeRefusedStream {
		s.c.cfg.Stats.StreamRefused.Inc()
	}
	select {
	case <-s.wrote:
		if se.Remote && !se.Unprocessed {
			s.c.cfg.Stats.RxReset.Inc()
		}
		if id := s.c.goAwayID.Load(); id >= 0 && s.resp == nil && se.Code != stream.ErrCodeRefusedStream {
			// Streams at or above a GOAWAY's ID were not processed
			// (RFC 9114 section 5.2); quic-go does not say which stream
			// this was, so only a connection closed after GOAWAY before
			// any response is taken as that case.
			if ae, ok := errors.AsType[*quic.ApplicationError](err); ok && http3.ErrCode(ae.ErrorCode) == http3.ErrCodeNoError {
				se.Unprocessed = true
			}
		}
	default:
		// The request headers never left: nothing was processed.
		se.Unprocessed = true
		if se.Reason == op {
			se.Reason = op + ": headers not sent"
		}
	}
	return se
}

func (s *clientStream) done() {
	s.doneOnce.Do(func() {
		s.cancel()
		s.c.streamDone()
	})
}

// Write sends request body data; it blocks until quic-go took it.
func (s *clientStream) Write(p []byte) (int, error) {
	if s.pw == nil {
		return 0, errors.New("h3: Write on a request that ended with its headers")
	}
	n, err := s.pw.Write(p)
	if err != nil {
		return n, s.sendError(err)
	}
	return n, nil
}

func (s *clientStream) sendError(err error) error {
	if se, ok := errors.AsType[*stream.Error](err); ok {
		return se
	}
	if s.reset.Load() {
		return &stream.Error{Code: stream.ErrCodeCancel, Reason: "stream reset locally", Err: err}
	}
	return &stream.Error{Code: stream.ErrCodeCancel, Reason: "request body not accepted", Err: err}
}

// CloseWrite ends the request, with trailers when t is non-empty.
func (s *clientStream) CloseWrite(t header.Header) error {
	if s.pw == nil {
		if t.Len() > 0 {
			return errors.New("h3: trailers on a request that ended with its headers")
		}
		return nil
	}
	if t.Len() > 0 {
		// quic-go reads Trailer when it writes the headers and again
		// after the body; set them only in between.
		select {
		case <-s.wrote:
		case <-s.respReady:
			if s.respErr != nil {
				return s.respErr
			}
			<-s.wrote
		}
		for _, f := range t.Fields() {
			k := http.CanonicalHeaderKey(f.Name)
			s.hreq.Trailer[k] = append(s.hreq.Trailer[k], f.Value)
		}
	}
	if err := s.pw.Close(); err != nil {
		return s.sendError(err)
	}
	return nil
}

// Response waits for the final response headers. A gRPC response whose
// headers carry grpc-status is Trailers-Only and is reported with
// EndStream, as HTTP/2's END_STREAM on HEADERS would say.
func (s *clientStream) Response(ctx context.Context) (*stream.Response, error) {
	select {
	case <-s.respReady:
	case <-ctx.Done():
		return nil, &stream.Error{Code: stream.ErrCodeCancel, Reason: "waiting for response headers", Err: ctx.Err()}
	}
	if s.respErr != nil {
		return nil, s.respErr
	}
	r := s.resp
	out := &stream.Response{Status: r.StatusCode, Header: fromHTTPHeader(r.Header), ContentLength: r.ContentLength}
	if _, ok := r.Header["Grpc-Status"]; ok {
		out.EndStream = true
		s.finishBody()
	}
	return out, nil
}

// finishBody reads a Trailers-Only response's (empty) body to its end.
func (s *clientStream) finishBody() {
	_, _ = io.Copy(io.Discard, s.resp.Body)
	s.trailers = fromHTTPHeader(s.resp.Trailer)
	_ = s.resp.Body.Close()
	s.done()
}

// Read reads response body data; io.EOF at the end, after which Trailers
// is valid.
func (s *clientStream) Read(p []byte) (int, error) {
	<-s.respReady
	if s.respErr != nil {
		return 0, s.respErr
	}
	n, err := s.resp.Body.Read(p)
	switch {
	case err == io.EOF:
		s.trailers = fromHTTPHeader(s.resp.Trailer)
		s.done()
	case err != nil:
		err = s.classify("reading response body", err)
		s.done()
	}
	return n, err
}

// Trailers returns the response trailers; valid after Read returned io.EOF.
func (s *clientStream) Trailers() header.Header { return s.trailers }

// Reset cancels the stream (RESET_STREAM and STOP_SENDING with
// H3_REQUEST_CANCELLED, quic-go's code for a cancelled request).
func (s *clientStream) Reset(code stream.ErrCode) {
	if s.reset.Swap(true) {
		return
	}
	s.c.cfg.Stats.TxReset.Inc()
	s.cancel()
	if s.pw != nil {
		_ = s.pw.CloseWithError(&stream.Error{Code: code, Reason: "stream reset locally"})
	}
	go func() {
		<-s.respReady
		if s.resp != nil {
			_ = s.resp.Body.Close()
		}
		s.done()
	}()
}

// connTrace is the qlog trace of one ClientConn: it records nothing and
// only watches for the events the pool needs.
type connTrace ClientConn

func (t *connTrace) AddProducer() qlogwriter.Recorder { return t }
func (t *connTrace) Close() error                     { return nil }

// RecordEvent watches transport parameters and MAX_STREAMS frames (the
// stream credit) and HTTP/3 GOAWAY frames.
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
	case h3qlog.FrameParsed:
		c.frameParsed(e.Frame.Frame)
	case *h3qlog.FrameParsed:
		c.frameParsed(e.Frame.Frame)
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

func (c *ClientConn) frameParsed(f any) {
	ga, ok := f.(h3qlog.GoAwayFrame)
	if !ok {
		if p, isPtr := f.(*h3qlog.GoAwayFrame); isPtr {
			ga, ok = *p, true
		}
	}
	if !ok {
		return
	}
	c.goAwayOnce.Do(func() {
		c.goAwayID.Store(int64(ga.StreamID))
		c.cfg.Stats.GoAwayRx.Inc()
		if c.cfg.OnGoAway != nil {
			c.cfg.OnGoAway()
		}
	})
}

var (
	_ stream.ClientStream = (*clientStream)(nil)
	_ qlogwriter.Trace    = (*connTrace)(nil)
)
