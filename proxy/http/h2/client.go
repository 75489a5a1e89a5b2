package h2

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

const (
	defaultSettingsTimeout  = time.Second
	defaultKeepaliveTimeout = 20 * time.Second
	// assumedMaxConcurrentStreams is the peer limit assumed when its first
	// SETTINGS does not arrive within SettingsTimeout.
	assumedMaxConcurrentStreams = 100
)

// ClientConfig configures an upstream HTTP/2 connection. The zero value is
// usable: every zero field takes the default its comment names.
type ClientConfig struct {
	// MaxConcurrentStreams caps the streams this side opens, in addition to
	// the peer's SETTINGS_MAX_CONCURRENT_STREAMS. 0 means no local cap.
	MaxConcurrentStreams uint32
	// InitialStreamWindowSize and InitialConnectionWindowSize are the
	// receive windows we advertise. 0 means 268435456 (Envoy's default).
	InitialStreamWindowSize, InitialConnectionWindowSize uint32
	// MaxFrameSize (0 means 16384) and MaxHeaderListSize (0 means 60 KiB)
	// are advertised and enforced on what we receive.
	MaxFrameSize, MaxHeaderListSize uint32
	// KeepaliveInterval sends a PING this often (0 disables keepalive);
	// the connection closes, counting http2.keepalive_timeout, when the ACK
	// does not arrive within KeepaliveTimeout (0 means 20 s).
	KeepaliveInterval, KeepaliveTimeout time.Duration
	// KeepaliveJitterPercent adds a random delay of up to this percentage
	// of KeepaliveInterval to each interval (Envoy's interval_jitter), so
	// that connections opened together do not ping together. 0 means none.
	KeepaliveJitterPercent float64
	// SettingsTimeout is how long to wait for the peer's first SETTINGS
	// before assuming SETTINGS_MAX_CONCURRENT_STREAMS=100. Until then one
	// stream may be open. 0 means 1 s.
	SettingsTimeout time.Duration
	// Logger receives debug logs of protocol errors; nil discards them.
	Logger *slog.Logger
	// Stats counts connection events; nil counts nothing.
	Stats *Stats
	// Bytes, when set, count the connection's bytes
	// (upstream_cx_{rx,tx}_bytes_total).
	Bytes ByteCounters

	// Events let a pool observe the connection. Any may be nil. They are
	// called without the connection's lock held, from the reader goroutine
	// (OnSettings may also come from the settings timer), and must not
	// block.

	// OnSettings reports the peer's SETTINGS_MAX_CONCURRENT_STREAMS when
	// its SETTINGS carry it (or the assumed 100 after SettingsTimeout).
	OnSettings func(peerMaxConcurrentStreams uint32)
	// OnGoAway reports a received GOAWAY. It runs once the connection
	// takes no new stream and before the streams above the GOAWAY's last
	// stream ID fail as unprocessed, so their retries see it.
	OnGoAway func(lastStreamID uint32, code stream.ErrCode, debug string)
	// OnStreamDone reports that a stream's slot was freed.
	OnStreamDone func()
	// OnStreamRefused reports that the peer refused a stream with
	// RST_STREAM REFUSED_STREAM (RefusedStreams counts it). It comes
	// before the OnStreamDone of the refused stream; refusals that arrive
	// together may be reported by one call.
	OnStreamRefused func()
	// OnClose reports that the connection closed, with its cause.
	OnClose func(err error)
	// MaxBufferedBytes bounds what the connection buffers (the cluster's
	// per_connection_buffer_limit_bytes): advertised receive windows are
	// clamped to it (so each stream buffers at most this much unread
	// response body, and a stream whose reader stalls never holds the
	// connection window, which is returned on receipt) and request bytes
	// queued across streams are capped at it, so a slow peer
	// back-pressures instead of growing memory. 0 = no limit beyond the
	// windows.
	MaxBufferedBytes uint32
}

// ClientConn is an upstream HTTP/2 connection. It implements
// stream.ClientConn. All methods are safe for concurrent use.
type ClientConn struct {
	c   *conn
	cfg ClientConfig

	settingsTimer *time.Timer // immutable after NewClientConn
	start         time.Time   // immutable: when our preface and SETTINGS were queued
	kaTimer       *time.Timer // immutable after NewClientConn

	// Guarded by c.mu.
	nextID       uint32
	peerMCS      uint32
	gotSettings  bool
	shuttingDown bool
	// idlePing: the outstanding keepalive PING went out with no stream
	// open. New streams wait for its ACK (see NewStream); pingWait (on
	// c.mu) wakes them when it comes or the connection stops being usable.
	idlePing bool
	pingWait *sync.Cond
	ping     keepalivePing
}

// NewClientConn starts an HTTP/2 client connection over c: it queues the
// preface and SETTINGS and starts the reader and writer goroutines. c should
// have TCP_NODELAY set (Go's default).
func NewClientConn(c net.Conn, cfg *ClientConfig) *ClientConn {
	var cf ClientConfig
	if cfg != nil {
		cf = *cfg
	}
	if cf.SettingsTimeout == 0 {
		cf.SettingsTimeout = defaultSettingsTimeout
	}
	if cf.KeepaliveTimeout == 0 {
		cf.KeepaliveTimeout = defaultKeepaliveTimeout
	}
	streamWin, connWin := bufferedWindows(cf.InitialStreamWindowSize, cf.InitialConnectionWindowSize, cf.MaxBufferedBytes)
	cc := &ClientConn{
		c:       newConn(c, true, cf.Logger, cf.Stats, cf.Bytes, cf.MaxFrameSize, cf.MaxHeaderListSize, streamWin, connWin),
		cfg:     cf,
		nextID:  1,
		peerMCS: 1,
		start:   time.Now(),
	}
	cc.pingWait = sync.NewCond(&cc.c.mu)
	cc.c.client = cc
	cc.c.onRemove = cc.onRemove
	cc.c.sendLimit = int64(cf.MaxBufferedBytes)
	cc.c.onStreamDone = cf.OnStreamDone
	cc.c.onStreamRefused = cf.OnStreamRefused
	cc.c.onClosed = cc.onClosed
	cc.ping = keepalivePing{c: cc.c, timeout: cf.KeepaliveTimeout}
	// The writer is not running yet, so writing the preface here is safe.
	_, _ = cc.c.bw.WriteString(http2.ClientPreface)
	cc.c.initialFrames(http2.Setting{ID: http2.SettingEnablePush, Val: 0})
	cc.c.mu.Lock()
	cc.settingsTimer = time.AfterFunc(cf.SettingsTimeout, cc.settingsExpired)
	if cf.KeepaliveInterval > 0 {
		cc.kaTimer = time.AfterFunc(cc.keepaliveDelay(), cc.keepalive)
	}
	cc.c.mu.Unlock()
	go cc.c.writeLoop()
	go func() { _ = cc.c.readLoop(cc) }()
	return cc
}

// Done is closed once the connection has closed.
func (cc *ClientConn) Done() <-chan struct{} { return cc.c.done }

// Healthy reports whether the connection accepts new streams: it is open
// and no GOAWAY was sent or received.
func (cc *ClientConn) Healthy() bool {
	cc.c.mu.Lock()
	defer cc.c.mu.Unlock()
	return cc.healthy()
}

func (cc *ClientConn) healthy() bool {
	c := cc.c
	return !c.closed && !c.closing && !c.goAwayRecv && !c.goAwaySent && !cc.shuttingDown && cc.nextID <= maxStreamID
}

// limit is how many streams may be open at once. Caller holds mu.
func (cc *ClientConn) limit() int {
	if !cc.gotSettings {
		return 1
	}
	l := cc.peerMCS
	if m := cc.cfg.MaxConcurrentStreams; m > 0 {
		l = min(l, m)
	}
	return int(l)
}

// Capacity is how many more streams NewStream accepts now:
// min(peer SETTINGS_MAX_CONCURRENT_STREAMS, local cap) minus active
// streams; 1 minus active before the peer's first SETTINGS; 0 once
// unhealthy.
func (cc *ClientConn) Capacity() int {
	cc.c.mu.Lock()
	defer cc.c.mu.Unlock()
	if !cc.healthy() {
		return 0
	}
	return max(0, cc.limit()-len(cc.c.streams))
}

// ActiveStreams is the number of streams open on the connection.
func (cc *ClientConn) ActiveStreams() int {
	cc.c.mu.Lock()
	defer cc.c.mu.Unlock()
	return len(cc.c.streams)
}

// RefusedStreams is how many of the connection's streams the peer refused
// with RST_STREAM REFUSED_STREAM. The count includes a refusal before its
// stream's error reaches the stream's user, so whoever sees a refused
// stream's error sees it counted. It takes no lock.
func (cc *ClientConn) RefusedStreams() uint64 { return cc.c.refusedStreams.Load() }

// Shutdown stops new streams, sends GOAWAY NO_ERROR and closes the
// connection once the active streams end. It does not block.
func (cc *ClientConn) Shutdown() {
	c := cc.c
	c.mu.Lock()
	defer c.unlock()
	if cc.shuttingDown || c.closing || c.closed {
		return
	}
	cc.shuttingDown = true
	c.goAwaySent = true
	c.queue(ctrlItem{kind: ctrlGoAway, id: 0, code: http2.ErrCodeNo})
	if len(c.streams) == 0 {
		c.closing = true
		c.queue(ctrlItem{kind: ctrlClose})
	}
}

// Close closes the connection at once, failing its streams.
func (cc *ClientConn) Close() error {
	cc.c.closeWith(errConnClosed)
	return nil
}

func (cc *ClientConn) onClosed(err error) {
	cc.settingsTimer.Stop()
	if cc.kaTimer != nil {
		cc.kaTimer.Stop()
	}
	cc.c.mu.Lock()
	cc.ping.stopLocked()
	cc.pingWait.Broadcast()
	cc.c.mu.Unlock()
	if cc.cfg.OnClose != nil {
		if errors.Is(err, errGracefulClose) {
			err = nil
		}
		cc.cfg.OnClose(err)
	}
}

// onRemove runs under mu when a stream leaves the connection.
func (cc *ClientConn) onRemove(s *strm) {
	c := cc.c
	if cs := s.client; cs != nil && !cs.respDone {
		cs.respDone = true
		close(cs.respCh)
	}
	if len(c.streams) == 0 && (c.goAwayRecv || cc.shuttingDown) && !c.closing {
		c.closing = true
		c.queue(ctrlItem{kind: ctrlClose})
	}
}

func unprocessed(reason string, err error) error {
	return &stream.Error{Code: stream.ErrCodeRefusedStream, Unprocessed: true, Reason: reason, Err: err}
}

// NewStream opens a stream and queues req's HEADERS (END_STREAM when
// endStream). Stream IDs are assigned in the order HEADERS are written. An
// error satisfying stream.Unprocessed means nothing was sent: the
// connection is unhealthy or has no free stream slot. When ctx is done
// before the stream ends, the stream is reset with CANCEL.
func (cc *ClientConn) NewStream(ctx context.Context, req *stream.Request, endStream bool) (stream.ClientStream, error) {
	if err := ctx.Err(); err != nil {
		return nil, &stream.Error{Code: stream.ErrCodeCancel, Unprocessed: true, Reason: "context done before the stream opened", Err: err}
	}
	fbuf := requestFields(req)
	fields := *fbuf
	cs := &clientStream{respCh: make(chan struct{}), isHead: req.Method == "HEAD"}
	s := &cs.strm
	c := cc.c
	c.mu.Lock()
	if cc.idlePing && cc.healthy() {
		// A server enforcing a ping policy (grpc-go's too_many_pings)
		// answers a ping it counts as the last strike with GOAWAY and
		// closes at once; a stream sent right behind that ping would die
		// with the connection, processed or not. Waiting for the ACK (one
		// round trip, only while an idle keepalive is in flight) sends the
		// stream to a connection known to be alive instead.
		stop := context.AfterFunc(ctx, func() {
			c.mu.Lock()
			cc.pingWait.Broadcast()
			c.mu.Unlock()
		})
		for cc.idlePing && cc.healthy() && ctx.Err() == nil {
			cc.pingWait.Wait()
		}
		stop()
		if err := ctx.Err(); err != nil {
			c.mu.Unlock()
			return nil, &stream.Error{Code: stream.ErrCodeCancel, Unprocessed: true, Reason: "context done waiting for a keepalive ACK", Err: err}
		}
	}
	if !cc.healthy() {
		cause := c.closeErr // read under mu: closeWith writes it
		c.mu.Unlock()
		return nil, unprocessed("connection is not accepting streams", cause)
	}
	if len(c.streams) >= cc.limit() {
		c.mu.Unlock()
		return nil, unprocessed("no stream capacity on the connection", nil)
	}
	id := cc.nextID
	cc.nextID += 2
	c.newStrm(s, id)
	s.client = cs
	s.awaitingHeaders = true
	c.setStall(s, StallPeerHeaders)
	c.queue(ctrlItem{kind: ctrlHeaders, s: s, id: id, fields: fields, fbuf: fbuf, endStream: endStream})
	if endStream {
		s.sendEnd, s.sentEnd = true, true
	}
	c.mu.Unlock()
	if ctx.Done() != nil {
		stop := context.AfterFunc(ctx, func() { cs.Reset(stream.ErrCodeCancel) })
		c.mu.Lock()
		if s.removed {
			c.mu.Unlock()
			stop()
		} else {
			s.stopAfter = stop
			c.mu.Unlock()
		}
	}
	return cs, nil
}

// requestFields encodes req's header section in the order RFC 9113
// section 8.3.1 shows: pseudo-headers first, then regular fields without
// connection-specific ones. The list comes from fieldsPool; the writer
// puts it back once the HEADERS are written.
func requestFields(req *stream.Request) *[]hpack.HeaderField {
	fbuf := getFields(req.Header.Len() + 5)
	fields := append(*fbuf, hpack.HeaderField{Name: ":method", Value: req.Method})
	authority := req.Authority
	if authority == "" {
		authority = req.Header.Get("host")
	}
	if req.Method == "CONNECT" {
		fields = append(fields, hpack.HeaderField{Name: ":authority", Value: authority})
	} else {
		scheme, path := req.Scheme, req.Path
		if scheme == "" {
			scheme = "http"
		}
		if path == "" {
			path = "/"
		}
		fields = append(fields,
			hpack.HeaderField{Name: ":scheme", Value: scheme},
			hpack.HeaderField{Name: ":authority", Value: authority},
			hpack.HeaderField{Name: ":path", Value: path})
	}
	fields = appendRegular(fields, &req.Header)
	if req.ContentLength > 0 && !req.Header.Has("content-length") {
		fields = append(fields, hpack.HeaderField{Name: "content-length", Value: strconv.FormatInt(req.ContentLength, 10)})
	}
	*fbuf = fields
	return fbuf
}

// Observation is what a connection measured of its path and load.
type Observation struct {
	// RTT is the last round trip measured: a keepalive PING's ACK or,
	// before any, the ACK of our first SETTINGS (which also waits for the
	// peer to read the preface). 0: none yet.
	RTT time.Duration
	// ReceivedBytes counts the DATA bytes received (flow-controlled length,
	// padding included) since the connection opened.
	ReceivedBytes int64
}

// Observe returns what the connection measured so far. It does not block
// on I/O.
func (cc *ClientConn) Observe() Observation {
	c := cc.c
	c.mu.Lock()
	defer c.mu.Unlock()
	o := Observation{RTT: cc.ping.rtt, ReceivedBytes: c.recvData}
	if o.RTT == 0 && c.settingsAcked {
		o.RTT = c.settingsAckedAt.Sub(cc.start)
	}
	return o
}

func (cc *ClientConn) settingsExpired() {
	c := cc.c
	c.mu.Lock()
	if cc.gotSettings || c.closed {
		c.mu.Unlock()
		return
	}
	cc.gotSettings = true
	cc.peerMCS = assumedMaxConcurrentStreams
	c.unlock()
	c.log.Debug("http2 peer sent no SETTINGS in time; assuming MAX_CONCURRENT_STREAMS", "value", assumedMaxConcurrentStreams)
	if cc.cfg.OnSettings != nil {
		cc.cfg.OnSettings(assumedMaxConcurrentStreams)
	}
}

func (cc *ClientConn) keepalive() {
	c := cc.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	if !cc.ping.outstanding {
		cc.ping.sendLocked()
		cc.idlePing = len(c.streams) == 0
	}
	cc.kaTimer.Reset(cc.keepaliveDelay())
}

// KeepalivePing sends a keepalive PING now, unless one is already
// outstanding, and closes the connection (counting http2.keepalive_timeout)
// if its ACK does not arrive within KeepaliveTimeout. A pool calls it before
// reusing a connection that has been idle (Envoy's
// connection_keepalive.connection_idle_interval). It does not block.
func (cc *ClientConn) KeepalivePing() {
	c := cc.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		cc.ping.sendLocked()
	}
}

// keepaliveDelay is the time until the next keepalive PING.
func (cc *ClientConn) keepaliveDelay() time.Duration {
	return jittered(cc.cfg.KeepaliveInterval, cc.cfg.KeepaliveJitterPercent)
}

// ClosedByPeer reports whether err, a connection's close cause as OnClose
// reports it, came from the peer: the peer ended or reset the TCP
// connection, or a write to it failed. It is false for nil (a graceful
// close), Close, a keepalive PING not acknowledged and a connection error
// this side detected (it sent GOAWAY and closed): Envoy counts those in
// upstream_cx_destroy_local, the peer's in upstream_cx_destroy_remote.
func ClosedByPeer(err error) bool {
	if err == nil || errors.Is(err, errConnClosed) || errors.Is(err, errGracefulClose) || errors.Is(err, errKeepaliveTimeout) {
		return false
	}
	_, local := errors.AsType[connError](err)
	return !local
}

func (cc *ClientConn) handlePing(f *http2.PingFrame) error {
	c := cc.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if f.IsAck() {
		if cc.ping.ackLocked(f.Data) {
			if cc.idlePing {
				cc.idlePing = false
				cc.pingWait.Broadcast()
			}
		}
		return nil
	}
	c.queue(ctrlItem{kind: ctrlPing, ack: true, ping: f.Data})
	return nil
}

func (cc *ClientConn) handleSettings(f *http2.SettingsFrame) {
	c := cc.c
	v, ok := f.Value(http2.SettingMaxConcurrentStreams)
	c.mu.Lock()
	first := !cc.gotSettings
	cc.gotSettings = true
	if ok {
		cc.peerMCS = v
	} else if first {
		cc.peerMCS = DefaultMaxConcurrentStreams // RFC 9113 section 6.5.2: initially unlimited
	}
	mcs := cc.peerMCS
	c.unlock()
	if first {
		cc.settingsTimer.Stop()
	}
	if (ok || first) && cc.cfg.OnSettings != nil {
		cc.cfg.OnSettings(mcs)
	}
}

func (cc *ClientConn) handleGoAway(f *http2.GoAwayFrame) error {
	c := cc.c
	debug := string(f.DebugData())
	code := stream.ErrCode(f.ErrCode)
	c.mu.Lock()
	c.goAwayRecv = true
	cc.pingWait.Broadcast()
	c.unlock()
	c.log.Debug("http2 GOAWAY received", "last_stream_id", f.LastStreamID, "code", code, "debug", debug)
	// Report the GOAWAY before any stream above its last stream ID fails:
	// a caller retrying one of those must find the connection draining in
	// the owner's view (the pool's), not place the retry here again and
	// have it refused locally as if the peer's limit had fallen.
	if cc.cfg.OnGoAway != nil {
		cc.cfg.OnGoAway(f.LastStreamID, code, debug)
	}
	c.mu.Lock()
	for id, s := range c.streams {
		if id > f.LastStreamID {
			c.failStream(s, &stream.Error{Code: code, Remote: true, Unprocessed: true, Reason: "above GOAWAY last-stream-id"})
		}
	}
	if len(c.streams) == 0 && !c.closing {
		c.closing = true
		c.queue(ctrlItem{kind: ctrlClose})
	}
	c.unlock()
	return nil
}

// isIdle reports whether id names a stream never opened. Caller holds mu.
func (cc *ClientConn) isIdle(id uint32) bool {
	return id%2 == 0 || id >= cc.nextID
}

func (cc *ClientConn) streamErrorOnNew(uint32) {}

func (cc *ClientConn) handleHeaders(f *headerBlock) error {
	c := cc.c
	c.mu.Lock()
	defer c.unlock()
	s := c.streams[f.StreamID]
	if s == nil {
		if cc.isIdle(f.StreamID) {
			return connErr(http2.ErrCodeProtocol, "HEADERS on an idle stream")
		}
		return nil // a stream we reset; the peer had not seen it yet
	}
	cs := s.client
	if s.recvDone {
		c.resetStream(s, http2.ErrCodeStreamClosed, false, "HEADERS after END_STREAM")
		return nil
	}
	if f.Truncated {
		c.st.HeaderOverflow.Inc()
		c.resetStream(s, http2.ErrCodeProtocol, false, "response header list too large")
		return nil
	}
	if !s.awaitingHeaders {
		if reason := parseTrailers(&s.trailers, f); reason != "" {
			c.st.RxMessagingError.Inc()
			c.resetStream(s, http2.ErrCodeProtocol, false, reason)
			return nil
		}
		if s.recvCL >= 0 && s.recvN != s.recvCL {
			c.resetStream(s, http2.ErrCodeProtocol, false, "body length differs from content-length")
			return nil
		}
		cc.endRecv(s)
		return nil
	}
	var resp stream.Response
	if reason := parseResponse(&resp, f); reason != "" {
		c.st.RxMessagingError.Inc()
		c.resetStream(s, http2.ErrCodeProtocol, false, reason)
		return nil
	}
	if resp.Status < 200 {
		if f.EndStream {
			c.resetStream(s, http2.ErrCodeProtocol, false, "1xx response ends the stream")
		}
		return nil
	}
	s.awaitingHeaders = false
	c.setStall(s, StallNone)
	resp.EndStream = f.EndStream
	cs.resp = resp
	cs.haveResp = true
	if !cs.isHead && resp.Status != 204 && resp.Status != 304 {
		s.recvCL = resp.ContentLength
	}
	cs.respDone = true
	close(cs.respCh)
	if f.EndStream {
		if s.recvCL > 0 {
			c.resetStream(s, http2.ErrCodeProtocol, false, "body length differs from content-length")
			return nil
		}
		cc.endRecv(s)
	}
	return nil
}

// endRecv marks the receive side done. Caller holds mu.
func (cc *ClientConn) endRecv(s *strm) {
	s.recvDone = true
	s.cond.Broadcast()
	if s.sentEnd {
		cc.c.removeStream(s, nil)
	}
}

// parseResponse fills r from a response HEADERS block and returns why it
// is malformed, or "".
func parseResponse(r *stream.Response, f *headerBlock) string {
	status := ""
	for _, hf := range f.PseudoFields() {
		if hf.Name != ":status" {
			return "request pseudo-header in a response"
		}
		status = hf.Value
	}
	code, err := strconv.Atoi(status)
	if len(status) != 3 || err != nil || code < 100 {
		return fmt.Sprintf("invalid :status %q", status)
	}
	r.Status = code
	reg := f.RegularFields()
	r.Header = header.Make(len(reg))
	cl, reason := parseFields(&r.Header, reg)
	r.ContentLength = cl
	return reason
}

// clientStream is one upstream stream; it implements stream.ClientStream.
type clientStream struct {
	strm
	respCh chan struct{} // closed when the response arrived or the stream failed
	isHead bool

	// Guarded by c.mu until respCh is closed; immutable after.
	resp     stream.Response
	haveResp bool
	respDone bool
}

// Write queues request body bytes, blocking while 64 KiB are already
// queued for the writer.
func (cs *clientStream) Write(p []byte) (int, error) { return cs.write(p) }

// CloseWrite ends the request after any queued body, with trailers when t
// is non-empty.
func (cs *clientStream) CloseWrite(t header.Header) error {
	var fbuf *[]hpack.HeaderField // from fieldsPool; the writer puts it back
	if t.Len() > 0 {
		fbuf = getFields(t.Len())
		*fbuf = appendRegular(*fbuf, &t)
	}
	c := cs.c
	c.mu.Lock()
	defer c.unlock()
	return cs.end(fbuf)
}

// Response waits for the final response headers, skipping 1xx ones. It
// returns the stream's *stream.Error if the stream failed first, or a
// CANCEL error wrapping ctx's if ctx ends first.
func (cs *clientStream) Response(ctx context.Context) (*stream.Response, error) {
	select {
	case <-cs.respCh:
	case <-ctx.Done():
		return nil, &stream.Error{Code: stream.ErrCodeCancel, Reason: "waiting for response headers", Err: ctx.Err()}
	}
	c := cs.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if cs.haveResp {
		return &cs.resp, nil
	}
	return nil, cs.err
}

// Read reads response body bytes; io.EOF at the end of the stream.
func (cs *clientStream) Read(p []byte) (int, error) { return cs.read(p) }

// ReadReady reports whether Read returns at once: body bytes are queued,
// the response ended, or the stream failed.
func (cs *clientStream) ReadReady() bool {
	c := cs.c
	c.mu.Lock()
	defer c.mu.Unlock()
	return cs.recvQ.n > 0 || cs.recvDone || cs.err != nil
}

var _ stream.ReadReadier = (*clientStream)(nil)

// Trailers returns the response trailers once Read returned io.EOF.
func (cs *clientStream) Trailers() header.Header {
	cs.c.mu.Lock()
	defer cs.c.mu.Unlock()
	return cs.trailers
}

// Reset sends RST_STREAM with code, unless the stream already ended.
func (cs *clientStream) Reset(code stream.ErrCode) { cs.reset(code) }

// ResetsOnContextDone marks the stream as stream.ContextBound: NewStream
// resets it with CANCEL when its context ends before the stream completes.
func (cs *clientStream) ResetsOnContextDone() {}

// Conn returns the *ClientConn the stream was opened on (stream.Carried).
func (cs *clientStream) Conn() stream.ClientConn { return cs.c.client }

var (
	_ stream.ContextBound = (*clientStream)(nil)
	_ stream.Carried      = (*clientStream)(nil)
)
