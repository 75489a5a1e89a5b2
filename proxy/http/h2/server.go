package h2

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"strconv"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/internal/park"
	"meshd.dev/meshd/proxy/http/stream"
)

const (
	// prefaceTimeout bounds how long a new connection may take to send the
	// client connection preface.
	prefaceTimeout = 10 * time.Second
	// shutdownPingTimeout bounds the wait for the PING ACK between the two
	// GOAWAY frames of a graceful shutdown.
	shutdownPingTimeout = time.Second
	// maxPingStrikes is how many early pings a client gets before
	// GOAWAY ENHANCE_YOUR_CALM (grpc-go's limit).
	maxPingStrikes = 2
	// pingWithoutStreamInterval is the minimum ping interval while no
	// stream is open and PermitWithoutStream is false: any ping sooner is
	// a strike (grpc-go's defaultPingTimeout, 2 hours).
	pingWithoutStreamInterval = 2 * time.Hour
	// Rapid reset (CVE-2023-44487), as Envoy's connection manager judges
	// it: once prematureResetMinStreams streams have closed on a
	// connection, it is closed with GOAWAY ENHANCE_YOUR_CALM if at least
	// half of them were reset by the client prematurely: within
	// prematureResetLifetime and before the response headers were sent
	// (Envoy's isPrematureRstStream). A client cancelling a stream that is
	// being answered — a streaming RPC it no longer wants — is normal.
	prematureResetMinStreams = 500
	prematureResetLifetime   = time.Second
	// defaultMaxHeadersCount is Envoy's max_headers_count default.
	defaultMaxHeadersCount = 100
)

// shutdownPingData marks the PING sent between the two shutdown GOAWAYs.
var shutdownPingData = [8]byte{'s', 'h', 'u', 't', 'd', 'o', 'w', 'n'}

// ServerConfig configures a downstream HTTP/2 connection. The zero value
// is usable: every zero field takes the default its comment names.
type ServerConfig struct {
	// MaxConcurrentStreams is the advertised SETTINGS_MAX_CONCURRENT_STREAMS;
	// streams beyond it are refused with RST_STREAM REFUSED_STREAM.
	// 0 means 2147483647 (Envoy's default).
	MaxConcurrentStreams uint32
	// InitialStreamWindowSize is the receive window advertised for each
	// stream, and so the most request body bytes buffered per stream.
	// 0 means 268435456 (Envoy's default); values below 65535 are allowed.
	InitialStreamWindowSize uint32
	// InitialConnectionWindowSize is the connection receive window.
	// 0 means 268435456 (Envoy's default); at least 65535.
	InitialConnectionWindowSize uint32
	// MaxFrameSize is the advertised SETTINGS_MAX_FRAME_SIZE, clamped to
	// [16384, 16777215]. 0 means 16384.
	MaxFrameSize uint32
	// MaxHeaderListSize is the advertised SETTINGS_MAX_HEADER_LIST_SIZE; a
	// larger request header list gets a 431 response. 0 means 60 KiB
	// (Envoy's max_request_headers_kb default).
	MaxHeaderListSize uint32
	// MinPingInterval is meshd's ping policy (Envoy has no field for it),
	// grpc-go's keepalive.EnforcementPolicy.MinTime: a PING arriving sooner
	// than this after the previous one is a strike; while no stream is open
	// and PermitWithoutStream is false, any PING within 2 hours of the
	// previous one is. More than two strikes end the connection with
	// GOAWAY ENHANCE_YOUR_CALM, debug data "too_many_pings". Sending
	// HEADERS or DATA clears the strikes. 0 disables the policy.
	MinPingInterval time.Duration
	// PermitWithoutStream lets clients ping at MinPingInterval while no
	// stream is open (grpc-go's EnforcementPolicy.PermitWithoutStream).
	PermitWithoutStream bool
	// KeepaliveInterval sends the client a PING this often, whether or not
	// streams are open (the HCM's http2_protocol_options.
	// connection_keepalive); 0 disables keepalive. When the ACK does not
	// arrive within KeepaliveTimeout (0 means 20 s) the connection closes,
	// counting http2.keepalive_timeout, as a client connection's does.
	KeepaliveInterval, KeepaliveTimeout time.Duration
	// KeepaliveJitterPercent adds a random delay of up to this percentage
	// of KeepaliveInterval to each interval (interval_jitter). 0 means none.
	KeepaliveJitterPercent float64
	// IdleTimeout closes the connection with GOAWAY NO_ERROR after it had
	// no active stream for this long (counting
	// downstream_cx_idle_timeout). 0 means never.
	IdleTimeout time.Duration
	// MaxConnectionDuration starts a graceful drain (GOAWAY, in-flight
	// streams finish) once the connection is this old, counting
	// downstream_cx_max_duration_reached. 0 means never.
	MaxConnectionDuration time.Duration
	// MaxRequestsPerConnection starts a graceful drain once this many
	// streams were accepted, counting downstream_cx_max_requests_reached.
	// 0 means no limit.
	MaxRequestsPerConnection uint32
	// MaxBufferedBytes bounds what the connection buffers
	// (per_connection_buffer_limit_bytes): the receive windows advertised
	// are clamped so the client can never have more than this many request
	// body bytes in flight (stream windows to it, the connection window to
	// max(it, 65535)) nor buffered unread per stream (the connection window
	// is returned on receipt, so a stalled stream cannot block its
	// siblings), and response body bytes queued across all streams are
	// capped at it, blocking handler writes until the client's windows let
	// them drain. 0 means no bound beyond the windows and 64 KiB queued
	// per stream.
	MaxBufferedBytes uint32
	// MaxHeadersCount caps the fields (pseudo-headers included) of a
	// request header section; more get a 431 response and count
	// header_overflow (common_http_protocol_options.max_headers_count).
	// 0 means 100, Envoy's default.
	MaxHeadersCount uint32
	// RequestHeadersTimeout bounds reading a header block (HEADERS and its
	// CONTINUATIONs) from its first byte (request_headers_timeout); a peer
	// exceeding it loses the connection with GOAWAY ENHANCE_YOUR_CALM. 0
	// means no bound (Envoy's default), and the framer reads the socket
	// without an extra buffer.
	RequestHeadersTimeout time.Duration
	// Flood caps the frames a client may provoke or send; nil means
	// DefaultFloodLimits.
	Flood *FloodLimits
	// Logger receives debug logs of protocol errors; nil discards them.
	Logger *slog.Logger
	// Stats counts connection events; nil counts nothing.
	Stats *Stats
	// Bytes, when set, count the connection's bytes
	// (downstream_cx_{rx,tx}_bytes_total).
	Bytes ByteCounters

	// parkTime replaces handlerParkTime in tests.
	parkTime time.Duration
}

// ServerConn serves one downstream HTTP/2 connection. It implements
// stream.ServerConn.
type ServerConn struct {
	c    *conn
	cfg  ServerConfig
	h    stream.Handler
	info stream.ConnInfo
	base context.Context
	stop context.CancelFunc

	// parked holds the handler goroutines that finished a stream, waiting
	// in handlerLoop for the next one; the reader hands new streams over,
	// and Serve closes it when it returns.
	parked *park.Stack[*serverStream]

	// Owned by the reader goroutine.
	pingStrikes int
	lastPingAt  time.Time

	// Guarded by c.mu: rapid reset accounting.
	closedStreams   int
	prematureResets int
	accepted        uint32 // streams accepted

	// Guarded by c.mu.
	draining      bool // Shutdown started: the first GOAWAY is queued
	finalGoAway   bool // the GOAWAY with the real last-stream-ID is queued
	lastGoAwayID  uint32
	idleSince     time.Time
	idleTimer     *time.Timer
	shutdownTimer *time.Timer
	durationTimer *time.Timer
	// Keepalive (KeepaliveInterval > 0): kaTimer sends the next PING.
	kaTimer *time.Timer
	ping    keepalivePing
}

// NewServerConn prepares to serve c, which may be a *tls.Conn after its
// handshake. The 24-byte client preface must still be unread: Serve reads
// and checks it. Nothing runs until Serve is called.
func NewServerConn(c net.Conn, cfg *ServerConfig, h stream.Handler, info stream.ConnInfo) *ServerConn {
	var cf ServerConfig
	if cfg != nil {
		cf = *cfg
	}
	if cf.MaxConcurrentStreams == 0 {
		cf.MaxConcurrentStreams = DefaultMaxConcurrentStreams
	}
	if info.Proto == "" {
		info.Proto = "HTTP/2"
	}
	streamWin, connWin := bufferedWindows(cf.InitialStreamWindowSize, cf.InitialConnectionWindowSize, cf.MaxBufferedBytes)
	sc := &ServerConn{
		c:    newConn(c, false, cf.Logger, cf.Stats, cf.Bytes, cf.MaxFrameSize, cf.MaxHeaderListSize, streamWin, connWin),
		cfg:  cf,
		h:    h,
		info: info,
	}
	parkTime := cf.parkTime
	if parkTime <= 0 {
		parkTime = handlerParkTime
	}
	sc.parked = park.New[*serverStream](parkTime)
	sc.base, sc.stop = context.WithCancel(context.Background())
	sc.c.onRemove = sc.onRemove
	sc.c.onPeerReset = sc.onPeerReset
	sc.c.floodChecks = true
	sc.c.limits = DefaultFloodLimits()
	if cf.Flood != nil {
		sc.c.limits = *cf.Flood
	}
	if sc.cfg.MaxHeadersCount == 0 {
		sc.cfg.MaxHeadersCount = defaultMaxHeadersCount
	}
	if sc.cfg.KeepaliveTimeout <= 0 {
		sc.cfg.KeepaliveTimeout = defaultKeepaliveTimeout
	}
	sc.c.onPeerFault = sc.onPeerFault
	sc.ping = keepalivePing{c: sc.c, timeout: sc.cfg.KeepaliveTimeout}
	if cf.RequestHeadersTimeout > 0 {
		sc.c.hdrTimeout = cf.RequestHeadersTimeout
		sc.c.br = bufio.NewReaderSize(sc.c.raw, 16<<10)
		sc.c.setReader(sc.c.br)
	}
	sc.c.sendLimit = int64(cf.MaxBufferedBytes)
	return sc
}

// Serve runs the connection until it closes. It returns nil after a
// graceful close (Shutdown, idle timeout, the peer hanging up, Close) and
// the cause otherwise. Handler goroutines may outlive it briefly: their
// streams are failed and their contexts cancelled before Serve returns.
func (sc *ServerConn) Serve() error {
	c := sc.c
	defer sc.parked.Close()
	defer sc.stop()
	go c.writeLoop()
	c.initialFrames(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: sc.cfg.MaxConcurrentStreams},
		http2.Setting{ID: http2.SettingEnablePush, Val: 0})
	err := sc.serve()
	<-c.writerDone
	c.mu.Lock()
	if sc.idleTimer != nil {
		sc.idleTimer.Stop()
	}
	if sc.shutdownTimer != nil {
		sc.shutdownTimer.Stop()
	}
	if sc.durationTimer != nil {
		sc.durationTimer.Stop()
	}
	if sc.kaTimer != nil {
		sc.kaTimer.Stop()
	}
	sc.ping.stopLocked()
	cause := c.closeErr
	c.mu.Unlock()
	if err == nil || errors.Is(cause, errGracefulClose) || errors.Is(cause, errConnClosed) {
		return nil
	}
	return err
}

func (sc *ServerConn) serve() error {
	c := sc.c
	_ = c.nc.SetReadDeadline(time.Now().Add(prefaceTimeout))
	var preface [len(http2.ClientPreface)]byte
	if _, err := io.ReadFull(c.raw, preface[:]); err != nil {
		err = fmt.Errorf("http2: reading client preface: %w", err)
		c.closeWith(err)
		return err
	}
	if !bytes.Equal(preface[:], []byte(http2.ClientPreface)) {
		// Read what the peer already sent, so closing the socket sends FIN
		// rather than RST and the GOAWAY reaches the peer.
		_ = c.nc.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		_, _ = io.Copy(io.Discard, io.LimitReader(c.nc, 1<<20))
		return c.readFailed(connErr(http2.ErrCodeProtocol, "invalid connection preface"))
	}
	// RFC 9113 section 3.4: the preface ends with a SETTINGS frame.
	f, err := c.fr.ReadFrame()
	if err != nil {
		return c.readFailed(err)
	}
	if sf, ok := f.(*http2.SettingsFrame); !ok || sf.IsAck() {
		return c.readFailed(connErr(http2.ErrCodeProtocol, "connection preface must end with SETTINGS"))
	}
	_ = c.nc.SetReadDeadline(time.Time{})
	if err := c.handleFrame(sc, f); err != nil {
		return c.readFailed(err)
	}
	c.mu.Lock()
	if sc.cfg.IdleTimeout > 0 {
		sc.idleSince = time.Now()
		sc.idleTimer = time.AfterFunc(sc.cfg.IdleTimeout, sc.checkIdle)
	}
	if sc.cfg.KeepaliveInterval > 0 {
		sc.kaTimer = time.AfterFunc(jittered(sc.cfg.KeepaliveInterval, sc.cfg.KeepaliveJitterPercent), sc.keepalive)
	}
	if d := sc.cfg.MaxConnectionDuration; d > 0 {
		sc.durationTimer = time.AfterFunc(d, func() {
			c.mu.Lock()
			defer c.unlock()
			if sc.startShutdown() {
				c.st.CxMaxDurationReached.Inc()
			}
		})
	}
	c.mu.Unlock()
	return c.readLoop(sc)
}

// Shutdown starts a graceful close: a GOAWAY with last-stream-ID 2^31-1
// and a PING, then, once the PING is answered (or after a second), a GOAWAY
// with the last stream actually accepted. Streams already accepted run to
// completion; the connection closes when none is left. It does not block.
func (sc *ServerConn) Shutdown() {
	c := sc.c
	c.mu.Lock()
	defer c.unlock()
	sc.startShutdown()
}

// startShutdown queues the first GOAWAY and PING of a graceful close and
// reports whether it started one (false if the connection was already
// draining or closing). Caller holds mu.
func (sc *ServerConn) startShutdown() bool {
	c := sc.c
	if sc.draining || c.closing || c.closed {
		return false
	}
	sc.draining = true
	c.goAwaySent = true
	c.queue(ctrlItem{kind: ctrlGoAway, id: maxStreamID, code: http2.ErrCodeNo})
	c.queue(ctrlItem{kind: ctrlPing, ping: shutdownPingData})
	sc.shutdownTimer = time.AfterFunc(shutdownPingTimeout, sc.finishShutdown)
	return true
}

// finishShutdown sends the final GOAWAY.
func (sc *ServerConn) finishShutdown() {
	c := sc.c
	c.mu.Lock()
	defer c.unlock()
	if sc.finalGoAway || c.closing || c.closed {
		return
	}
	sc.finalGoAway = true
	sc.lastGoAwayID = c.maxPeerID
	c.queue(ctrlItem{kind: ctrlGoAway, id: sc.lastGoAwayID, code: http2.ErrCodeNo})
	if len(c.streams) == 0 {
		c.closing = true
		c.queue(ctrlItem{kind: ctrlClose})
	}
}

// Close closes the connection at once, failing its streams.
func (sc *ServerConn) Close() error {
	sc.c.closeWith(errConnClosed)
	return nil
}

// ActiveStreams is the number of streams open or half-closed.
func (sc *ServerConn) ActiveStreams() int {
	sc.c.mu.Lock()
	defer sc.c.mu.Unlock()
	return len(sc.c.streams)
}

// onRemove runs under mu whenever a stream leaves the connection.
func (sc *ServerConn) onRemove(*strm) {
	c := sc.c
	sc.closedStreams++
	if sc.checkPrematureResets() {
		return
	}
	if len(c.streams) > 0 {
		return
	}
	sc.idleSince = time.Now()
	if (sc.finalGoAway || c.goAwayRecv) && !c.closing {
		c.closing = true
		c.queue(ctrlItem{kind: ctrlClose})
	}
}

func (sc *ServerConn) checkIdle() {
	c := sc.c
	c.mu.Lock()
	defer c.unlock()
	if c.closed || c.closing {
		return
	}
	if idle := time.Since(sc.idleSince); len(c.streams) == 0 && idle >= sc.cfg.IdleTimeout {
		c.st.CxIdleTimeout.Inc()
		c.closing = true
		c.goAwaySent = true
		c.queue(ctrlItem{kind: ctrlGoAway, id: c.maxPeerID, code: http2.ErrCodeNo, debug: "idle timeout"})
		c.queue(ctrlItem{kind: ctrlClose})
		return
	} else if len(c.streams) == 0 {
		sc.idleTimer.Reset(sc.cfg.IdleTimeout - idle)
		return
	}
	sc.idleTimer.Reset(sc.cfg.IdleTimeout)
}

// isIdle reports whether the client never opened id. Caller holds mu.
func (sc *ServerConn) isIdle(id uint32) bool {
	return id%2 == 0 || id > sc.c.maxPeerID
}

func (sc *ServerConn) streamErrorOnNew(id uint32) {
	c := sc.c
	c.mu.Lock()
	if id%2 == 1 && id > c.maxPeerID {
		c.maxPeerID = id
	}
	c.mu.Unlock()
}

func (sc *ServerConn) handleSettings(*http2.SettingsFrame) {}

func (sc *ServerConn) handleGoAway(*http2.GoAwayFrame) error {
	c := sc.c
	c.mu.Lock()
	defer c.unlock()
	c.goAwayRecv = true
	if len(c.streams) == 0 && !c.closing {
		c.closing = true
		c.queue(ctrlItem{kind: ctrlClose})
	}
	return nil
}

func (sc *ServerConn) handlePing(f *http2.PingFrame) error {
	c := sc.c
	if f.IsAck() {
		if f.Data == shutdownPingData {
			sc.finishShutdown()
			return nil
		}
		c.mu.Lock()
		sc.ping.ackLocked(f.Data)
		c.mu.Unlock()
		return nil
	}
	c.mu.Lock()
	c.queue(ctrlItem{kind: ctrlPing, ack: true, ping: f.Data})
	active := len(c.streams)
	c.mu.Unlock()
	if sc.cfg.MinPingInterval > 0 && sc.pingStrike(time.Now(), active) {
		c.st.TooManyPings.Inc()
		return connErr(http2.ErrCodeEnhanceYourCalm, "too_many_pings")
	}
	return nil
}

// keepalive sends a keepalive PING, unless one is outstanding, and arms
// its timeout; then it schedules the next one. Timer goroutine.
func (sc *ServerConn) keepalive() {
	c := sc.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	sc.ping.sendLocked()
	sc.kaTimer.Reset(jittered(sc.cfg.KeepaliveInterval, sc.cfg.KeepaliveJitterPercent))
}

// pingStrike applies the ping policy to a PING received at now with
// active streams open, as grpc-go's server does, and reports whether the
// client ran out of strikes. Reader only.
func (sc *ServerConn) pingStrike(now time.Time, active int) bool {
	last := sc.lastPingAt
	sc.lastPingAt = now
	// Sending HEADERS or DATA since the previous PING forgives everything,
	// this PING included.
	if sc.c.resetStrikes.Swap(false) {
		sc.pingStrikes = 0
		return false
	}
	minGap := sc.cfg.MinPingInterval
	if active == 0 && !sc.cfg.PermitWithoutStream {
		minGap = pingWithoutStreamInterval
	}
	if !last.IsZero() && now.Sub(last) < minGap {
		sc.pingStrikes++
	}
	return sc.pingStrikes > maxPingStrikes
}

// checkPrematureResets ends the connection with GOAWAY ENHANCE_YOUR_CALM
// once prematureResetMinStreams streams have closed and at least half of
// them were reset prematurely, by the client (rapid reset) or by us because
// of a frame the client sent (MadeYouReset). It reports whether it did.
// Caller holds mu.
func (sc *ServerConn) checkPrematureResets() bool {
	c := sc.c
	if sc.closedStreams < prematureResetMinStreams || 2*sc.prematureResets < sc.closedStreams || c.closing || c.closed {
		return false
	}
	// The GOAWAY tells the client which streams were processed; the
	// connection closes at once.
	c.st.DownstreamPrematureResets.Inc()
	c.log.Debug("http2 client's streams are mostly reset prematurely", "closed", sc.closedStreams, "premature", sc.prematureResets)
	c.closing = true
	c.goAwaySent = true
	reason := "too many premature stream resets"
	c.queue(ctrlItem{kind: ctrlGoAway, id: c.maxPeerID, code: http2.ErrCodeEnhanceYourCalm, debug: reason})
	c.queue(ctrlItem{kind: ctrlClose, err: connErr(http2.ErrCodeEnhanceYourCalm, reason)})
	return true
}

// onPeerFault counts a stream we reset because of the client's frame
// (MadeYouReset, CVE-2025-8671) as premature, whatever its age: the
// client chose to provoke it. A stream that was never opened (a malformed
// request) also counts as closed, so a client cannot spend the budget on
// streams the rapid reset check never sees. Caller holds mu.
func (sc *ServerConn) onPeerFault(s *strm) {
	sc.prematureResets++
	if s == nil {
		sc.closedStreams++
		sc.checkPrematureResets()
	}
}

// onPeerReset counts a client RST_STREAM on an open stream for the rapid
// reset check. Caller holds mu.
func (sc *ServerConn) onPeerReset(s *strm) {
	if ss := s.server; ss != nil && !ss.finalSent && time.Since(ss.start) < prematureResetLifetime {
		sc.prematureResets++
	}
}

func (sc *ServerConn) handleHeaders(f *headerBlock) error {
	c := sc.c
	id := f.StreamID
	if id%2 == 0 {
		return connErr(http2.ErrCodeProtocol, "client opened an even stream ID")
	}
	c.mu.Lock()
	defer c.unlock()
	if c.closed {
		// The reader may still hold frames it read before the connection
		// closed (reads are batched). A stream opened now would never be
		// failed, and its handler would wait on it forever: drop the block.
		// The read loop goes on to drain a lingering close or to see the
		// socket's end.
		return nil
	}
	if s := c.streams[id]; s != nil {
		sc.handleTrailers(s, f)
		return nil
	}
	if id <= c.maxPeerID {
		return connErr(http2.ErrCodeStreamClosed, "HEADERS on a closed stream")
	}
	if err := c.checkEmptyFrame(len(f.Fields) == 0, f.EndStream); err != nil {
		return err
	}
	c.maxPeerID = id
	if f.HasPriority && f.StreamDep == id {
		c.queue(ctrlItem{kind: ctrlRST, id: id, code: http2.ErrCodeProtocol})
		return nil
	}
	if sc.finalGoAway && id > sc.lastGoAwayID {
		c.queue(ctrlItem{kind: ctrlRST, id: id, code: http2.ErrCodeRefusedStream})
		return nil
	}
	if f.Truncated || len(f.Fields) > int(sc.cfg.MaxHeadersCount) {
		c.st.HeaderOverflow.Inc()
		c.queue(ctrlItem{kind: ctrlHeaders, id: id, endStream: true,
			fields: []hpack.HeaderField{{Name: ":status", Value: "431"}}})
		if !f.EndStream {
			c.queue(ctrlItem{kind: ctrlRST, id: id, code: http2.ErrCodeNo})
		}
		return nil
	}
	ss := &serverStream{sc: sc}
	if reason := parseRequest(&ss.req, f); reason != "" {
		c.st.RxMessagingError.Inc()
		c.log.Debug("http2 malformed request", "stream", id, "reason", reason)
		sc.onPeerFault(nil)
		c.queue(ctrlItem{kind: ctrlRST, id: id, code: http2.ErrCodeProtocol})
		return nil
	}
	if len(c.streams) >= int(sc.cfg.MaxConcurrentStreams) {
		c.st.TxRefusedStream.Inc()
		c.queue(ctrlItem{kind: ctrlRST, id: id, code: http2.ErrCodeRefusedStream})
		return nil
	}
	s := &ss.strm
	c.newStrm(s, id)
	s.server = ss
	ss.start = time.Now()
	s.recvCL = ss.req.ContentLength
	sc.accepted++
	if m := sc.cfg.MaxRequestsPerConnection; m > 0 && sc.accepted == m && sc.startShutdown() {
		c.st.CxMaxRequestsReached.Inc()
	}
	if f.EndStream {
		ss.req.EndStream = true
		s.recvDone = true
		if s.recvCL > 0 {
			c.resetStream(s, http2.ErrCodeProtocol, false, "body length differs from content-length")
			return nil
		}
	}
	ss.ctx, s.cancel = context.WithCancel(sc.base)
	if !sc.parked.Hand(ss) {
		go sc.handlerLoop(ss)
	}
	return nil
}

// handlerParkTime is how long a handler goroutine that finished its stream
// waits at least for the connection's next one before exiting (at most
// twice that). Reusing goroutines keeps the stacks the handler chain grew
// (a fresh goroutine starts small and copies its stack as routing, filters
// and the upstream call deepen it, which cost ~10% of the proxy's CPU
// under unary load), and bounds the goroutines an idle connection holds:
// none once this has passed.
const handlerParkTime = time.Second

// handlerLoop runs ss's handler, then parks on sc.parked and serves the
// streams the reader hands it, until it has been idle for one to two
// handlerParkTimes or Serve returns. It is the body of the connection's
// handler goroutines.
func (sc *ServerConn) handlerLoop(ss *serverStream) {
	sc.parked.Run(ss, sc.runHandler)
}

// handleTrailers processes a second HEADERS block on an open stream.
// Caller holds mu.
func (sc *ServerConn) handleTrailers(s *strm, f *headerBlock) {
	c := sc.c
	if s.recvDone {
		c.resetStream(s, http2.ErrCodeStreamClosed, false, "HEADERS after END_STREAM")
		return
	}
	if f.Truncated {
		c.st.HeaderOverflow.Inc()
		c.resetStream(s, http2.ErrCodeProtocol, false, "trailers too large")
		return
	}
	if reason := parseTrailers(&s.trailers, f); reason != "" {
		c.st.RxMessagingError.Inc()
		c.resetStream(s, http2.ErrCodeProtocol, false, reason)
		return
	}
	if s.recvCL >= 0 && s.recvN != s.recvCL {
		c.resetStream(s, http2.ErrCodeProtocol, false, "body length differs from content-length")
		return
	}
	s.recvDone = true
	s.cond.Broadcast()
	if s.sentEnd {
		c.removeStream(s, nil)
	}
}

// runHandler serves one stream on a handler goroutine.
func (sc *ServerConn) runHandler(ss *serverStream) {
	c := sc.c
	defer func() {
		if r := recover(); r != nil {
			c.log.Error("http2 handler panic", "stream", ss.id, "panic", r, "stack", string(debug.Stack()))
		}
		c.mu.Lock()
		defer c.unlock()
		s := &ss.strm
		switch {
		case s.removed:
		case !s.sendEnd:
			c.resetStream(s, http2.ErrCodeInternal, false, "handler returned before ending the response")
		case !s.recvDone && s.sentEnd:
			// The response is complete but the request body is not: tell
			// the client to stop sending it (RFC 9113 section 8.1).
			c.queue(ctrlItem{kind: ctrlRST, id: s.id, code: http2.ErrCodeNo})
			c.failStream(s, &stream.Error{Code: stream.ErrCodeNo, Reason: "response complete"})
		case !s.recvDone:
			s.rstAfterEnd = true
		}
	}()
	sc.h.ServeStream(ss)
}

// serverStream is one downstream stream; it implements stream.ServerStream.
type serverStream struct {
	strm
	sc  *ServerConn
	req stream.Request
	ctx context.Context

	finalSent bool      // guarded by c.mu: non-1xx response headers queued
	start     time.Time // immutable: when the stream was accepted
}

// Request returns the request headers.
func (ss *serverStream) Request() *stream.Request { return &ss.req }

// Read reads request body bytes; see stream.ServerStream.
func (ss *serverStream) Read(p []byte) (int, error) { return ss.read(p) }

// BufferedBody reports the request body bytes buffered and not yet read,
// and whether END_STREAM arrived with the stream still healthy; see
// stream.BufferedBody.
func (ss *serverStream) BufferedBody() (n int, complete bool) {
	ss.c.mu.Lock()
	defer ss.c.mu.Unlock()
	return ss.recvQ.n, ss.recvDone && ss.err == nil
}

var _ stream.BufferedBody = (*serverStream)(nil)

// Trailers returns the request trailers once Read returned io.EOF.
func (ss *serverStream) Trailers() header.Header {
	ss.c.mu.Lock()
	defer ss.c.mu.Unlock()
	return ss.trailers
}

// WriteHeader queues the response headers; see stream.ServerStream.
func (ss *serverStream) WriteHeader(resp *stream.Response, endStream bool) error {
	if resp.Status < 100 || resp.Status > 999 || resp.Status == 101 {
		return fmt.Errorf("http2: invalid response status %d", resp.Status)
	}
	informational := resp.Status < 200
	if informational && endStream {
		return fmt.Errorf("http2: 1xx response %d cannot end the stream", resp.Status)
	}
	fbuf := getFields(resp.Header.Len() + 2)
	fields := append(*fbuf, hpack.HeaderField{Name: ":status", Value: statusString(resp.Status)})
	fields = appendRegular(fields, &resp.Header)
	if resp.ContentLength >= 0 && !informational && !resp.Header.Has("content-length") {
		fields = append(fields, hpack.HeaderField{Name: "content-length", Value: strconv.FormatInt(resp.ContentLength, 10)})
	}
	*fbuf = fields
	c := ss.c
	c.mu.Lock()
	defer c.unlock()
	if ss.err != nil {
		return ss.err
	}
	if ss.finalSent {
		return errors.New("http2: response headers already sent")
	}
	if !informational {
		ss.finalSent = true
	}
	c.queue(ctrlItem{kind: ctrlHeaders, s: &ss.strm, id: ss.id, fields: fields, fbuf: fbuf, endStream: endStream})
	if endStream {
		ss.sendEnd, ss.sentEnd = true, true
		c.afterSendEnd(&ss.strm)
	}
	return nil
}

// Write queues response body bytes, blocking while 64 KiB are already
// queued for the writer (which waits on the peer's flow-control windows).
func (ss *serverStream) Write(p []byte) (int, error) {
	ss.c.mu.Lock()
	final := ss.finalSent
	ss.c.mu.Unlock()
	if !final {
		return 0, errors.New("http2: Write before WriteHeader")
	}
	return ss.write(p)
}

// WriteTrailers ends the response with trailers (after any queued body).
func (ss *serverStream) WriteTrailers(t header.Header) error {
	fbuf := getFields(t.Len())
	*fbuf = appendRegular(*fbuf, &t)
	c := ss.c
	c.mu.Lock()
	defer c.unlock()
	if !ss.finalSent {
		return errors.New("http2: WriteTrailers before WriteHeader")
	}
	if len(*fbuf) == 0 {
		putFields(fbuf)
		fbuf = nil
	}
	return ss.end(fbuf)
}

// CloseWrite ends the response after any queued body.
func (ss *serverStream) CloseWrite() error {
	c := ss.c
	c.mu.Lock()
	defer c.unlock()
	if !ss.finalSent {
		return errors.New("http2: CloseWrite before WriteHeader")
	}
	return ss.end(nil)
}

// Reset sends RST_STREAM with code and fails pending Read and Write calls.
func (ss *serverStream) Reset(code stream.ErrCode) { ss.reset(code) }

// Context is cancelled when the stream ends: completed, reset by either
// side, or its connection closed.
func (ss *serverStream) Context() context.Context { return ss.ctx }

// Conn describes the connection the stream arrived on.
func (ss *serverStream) Conn() *stream.ConnInfo { return &ss.sc.info }

func statusString(code int) string {
	switch code {
	case 200:
		return "200"
	case 404:
		return "404"
	}
	return strconv.Itoa(code)
}

// appendRegular appends h's fields that may appear in HTTP/2, dropping
// connection-specific ones (RFC 9113 section 8.2.2) and "host".
func appendRegular(dst []hpack.HeaderField, h *header.Header) []hpack.HeaderField {
	for _, f := range h.Fields() {
		if f.Name == "" || f.Name[0] == ':' || f.Name == "host" || header.IsConnectionSpecific(f.Name) {
			continue
		}
		if f.Name == "te" && f.Value != "trailers" {
			continue
		}
		dst = append(dst, hpack.HeaderField{Name: f.Name, Value: f.Value})
	}
	return dst
}

// parseRequest fills r from a request HEADERS block and returns why it is
// malformed (RFC 9113 section 8.3.1), or "".
func parseRequest(r *stream.Request, f *headerBlock) string {
	for _, hf := range f.PseudoFields() {
		switch hf.Name {
		case ":method":
			r.Method = hf.Value
		case ":scheme":
			r.Scheme = hf.Value
		case ":authority":
			r.Authority = hf.Value
		case ":path":
			r.Path = hf.Value
		case ":status":
			return "response pseudo-header in a request"
		default:
			return "unsupported pseudo-header " + hf.Name
		}
	}
	if r.Method == "" {
		return "missing :method"
	}
	if r.Method == "CONNECT" {
		if r.Authority == "" || r.Scheme != "" || r.Path != "" {
			return "CONNECT needs :authority and no :scheme or :path"
		}
	} else if r.Scheme == "" || r.Path == "" {
		return "missing :scheme or :path"
	}
	reg := f.RegularFields()
	r.Header = header.Make(len(reg))
	cl, reason := parseFields(&r.Header, reg)
	if reason != "" {
		return reason
	}
	r.ContentLength = cl
	if r.Authority == "" {
		r.Authority = r.Header.Get("host")
	}
	return ""
}

// parseTrailers fills t from a trailer block, which must end the stream
// and carry no pseudo-header.
func parseTrailers(t *header.Header, f *headerBlock) string {
	if !f.EndStream {
		return "trailers without END_STREAM"
	}
	if len(f.PseudoFields()) > 0 {
		return "pseudo-header in trailers"
	}
	reg := f.RegularFields()
	*t = header.Make(len(reg))
	_, reason := parseFields(t, reg)
	return reason
}

// parseFields copies regular fields into h, rejecting connection-specific
// ones, and returns the content-length (-1 if absent).
func parseFields(h *header.Header, fields []hpack.HeaderField) (int64, string) {
	cl := int64(-1)
	for _, hf := range fields {
		switch {
		case header.IsConnectionSpecific(hf.Name):
			return 0, "connection-specific field " + hf.Name
		case hf.Name == "te" && hf.Value != "trailers":
			return 0, `te other than "trailers"`
		case hf.Name == "content-length":
			n, ok := header.ParseContentLength(hf.Value)
			if !ok || (cl >= 0 && n != cl) {
				return 0, "invalid content-length"
			}
			cl = n
		}
		*h = header.FromFields(append(h.Fields(), header.Field{Name: hf.Name, Value: hf.Value}))
	}
	return cl, ""
}
