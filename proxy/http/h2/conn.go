package h2

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/proxy/stats"
)

// errConnClosed is the cause of streams failed by a local Close.
var errConnClosed = errors.New("http2: connection closed")

// goAwayFlushTimeout bounds how long the writer tries to flush a final
// GOAWAY to a peer that does not read.
const goAwayFlushTimeout = time.Second

// lingerTimeout bounds how long a gracefully closed connection keeps
// reading (and dropping) what the peer still sends; see lingerClose.
const lingerTimeout = time.Second

// Flood limits of a server connection, Envoy's http2_protocol_options
// defaults. Exceeding one closes the connection with GOAWAY
// ENHANCE_YOUR_CALM and counts the matching http2.*_flood stat.
const (
	// maxOutboundControlFrames caps PING, SETTINGS and RST_STREAM frames
	// queued but not yet written (max_outbound_control_frames): a peer that
	// provokes them without reading its socket cannot grow the queue.
	maxOutboundControlFrames = 1000
	// maxConsecutiveEmptyFrames caps DATA or HEADERS frames in a row with
	// an empty payload and no END_STREAM
	// (max_consecutive_inbound_frames_with_empty_payload).
	maxConsecutiveEmptyFrames = 1
	// maxPriorityFramesPerStream: PRIORITY frames may not exceed this many
	// times (1 + streams opened) (max_inbound_priority_frames_per_stream).
	maxPriorityFramesPerStream = 100
	// maxWindowUpdatesPerDataFrame: WINDOW_UPDATE frames may not exceed
	// 5 + 2*(streams opened + this many times DATA frames sent)
	// (max_inbound_window_update_frames_per_data_frame_sent).
	maxWindowUpdatesPerDataFrame = 10
	// maxOutboundFrames caps every frame queued but not yet written,
	// response body bytes counted in 16 KiB frames (max_outbound_frames).
	maxOutboundFrames = 10000
)

// FloodLimits are a server connection's flood limits, Envoy's
// http2_protocol_options fields of the same names. Exceeding one closes the
// connection with GOAWAY ENHANCE_YOUR_CALM (when the peer still reads) and
// counts the matching http2.*_flood stat.
type FloodLimits struct {
	// MaxOutboundFrames caps frames queued for the peer and not yet
	// written, every kind, with queued response body bytes counted as one
	// frame per 16 KiB (max_outbound_frames, default 10000; http2.outbound_flood).
	MaxOutboundFrames uint32
	// MaxOutboundControlFrames caps queued PING, SETTINGS and RST_STREAM
	// frames (max_outbound_control_frames, default 1000;
	// http2.outbound_control_flood).
	MaxOutboundControlFrames uint32
	// MaxConsecutiveEmptyFrames caps DATA or HEADERS frames in a row with an
	// empty payload and no END_STREAM; 0 ends the connection at the first
	// (max_consecutive_inbound_frames_with_empty_payload, default 1;
	// http2.inbound_empty_frames_flood).
	MaxConsecutiveEmptyFrames uint32
	// MaxPriorityFramesPerStream: PRIORITY frames received may not exceed
	// it times (1 + streams opened) (max_inbound_priority_frames_per_stream,
	// default 100; http2.inbound_priority_frames_flood).
	MaxPriorityFramesPerStream uint32
	// MaxWindowUpdatesPerDataFrame: WINDOW_UPDATE frames received may not
	// exceed 5 + 2*(streams opened + it times DATA frames sent)
	// (max_inbound_window_update_frames_per_data_frame_sent, default 10;
	// http2.inbound_window_update_frames_flood).
	MaxWindowUpdatesPerDataFrame uint32
}

// DefaultFloodLimits returns Envoy's defaults, which a ServerConfig with a
// nil Flood uses.
func DefaultFloodLimits() FloodLimits {
	return FloodLimits{
		MaxOutboundFrames:            maxOutboundFrames,
		MaxOutboundControlFrames:     maxOutboundControlFrames,
		MaxConsecutiveEmptyFrames:    maxConsecutiveEmptyFrames,
		MaxPriorityFramesPerStream:   maxPriorityFramesPerStream,
		MaxWindowUpdatesPerDataFrame: maxWindowUpdatesPerDataFrame,
	}
}

type ctrlKind uint8

const (
	ctrlSettings ctrlKind = iota
	ctrlSettingsAck
	ctrlPing
	ctrlGoAway
	ctrlRST
	ctrlWindowUpdate
	ctrlHeaders
	ctrlClose // close the connection once everything before it is flushed
)

// ctrlItem is one frame queued for the writer.
type ctrlItem struct {
	kind      ctrlKind
	ack       bool // PING ACK; for SETTINGS ACK: n is a new HPACK table size
	endStream bool
	code      http2.ErrCode
	id        uint32 // stream ID (or last-stream-ID for GOAWAY)
	n         uint32 // window increment, or new HPACK table size for a SETTINGS ACK
	ping      [8]byte
	s         *strm // headers: the stream they belong to
	fields    []hpack.HeaderField
	fbuf      *[]hpack.HeaderField // fields' pooled backing, put back once written
	settings  []http2.Setting
	debug     string
	err       error // ctrlClose: the cause the connection closes with
}

// fieldsPool recycles the field lists of HEADERS queued for the writer:
// a stream's user builds one, the writer encodes it and puts it back.
var fieldsPool = sync.Pool{New: func() any { return new([]hpack.HeaderField) }}

// maxPooledFields is the largest field list put back in fieldsPool.
const maxPooledFields = 64

// getFields returns an empty pooled field list with room for n fields.
func getFields(n int) *[]hpack.HeaderField {
	p := fieldsPool.Get().(*[]hpack.HeaderField)
	if cap(*p) < n {
		*p = make([]hpack.HeaderField, 0, max(n, 8))
	}
	return p
}

// putFields returns p (which may be nil) to fieldsPool, dropping the
// strings it references.
func putFields(p *[]hpack.HeaderField) {
	if p == nil || cap(*p) > maxPooledFields {
		return
	}
	clear(*p)
	*p = (*p)[:0]
	fieldsPool.Put(p)
}

// conn is the state shared by server and client connections. Fields under
// "guarded by mu" may be touched by the reader, the writer and stream users;
// fields marked "writer" belong to the writer goroutine; "reader" to the
// reader goroutine.
type conn struct {
	nc       net.Conn
	raw      io.Reader     // nc, through Bytes.Rx when it is set. Reader.
	fr       *http2.Framer // reads: reader; writes: writer
	src      io.Reader     // what fr reads from; header block payloads are read from it directly. Reader.
	hr       headerReader  // reader
	bw       *pooledWriter // writer
	log      *slog.Logger
	st       *Stats
	isClient bool

	// Immutable after construction: what we advertised.
	localMaxFrame      uint32
	localMaxHeaderList uint32
	localStreamWin     uint32
	localConnWin       uint32

	henc *hpack.Encoder // writer
	hbuf bytes.Buffer   // writer

	resetStrikes atomic.Bool // writer sets when it sends HEADERS or DATA; server reader clears

	// Flood accounting (server connections only enforce it).
	floodChecks   bool         // immutable: enforce the inbound and outbound flood limits
	limits        FloodLimits  // immutable: the limits floodChecks enforces
	outCtrl       int          // guarded by mu: PING/SETTINGS/RST_STREAM frames queued, not yet written
	ctrlFlood     atomic.Bool  // set under mu when outCtrl exceeded limits.MaxOutboundControlFrames; reader checks
	outFrames     int          // guarded by mu: frames of every kind queued, not yet written
	outFlood      bool         // guarded by mu: outbound_flood tripped
	outFloodSeen  atomic.Bool  // set with outFlood; reader checks
	dataFramesTx  atomic.Int64 // writer: DATA frames written
	emptyRun      int          // reader: consecutive empty frames without END_STREAM
	priorityRx    int64        // reader: PRIORITY frames received
	windowUpdRx   int64        // reader: WINDOW_UPDATE frames received
	streamsOpened int64        // guarded by mu: streams ever added to the map

	// Send-side buffer bound (per_connection_buffer_limit_bytes).
	sendLimit   int64 // immutable: cap on body bytes queued across streams; 0 = none
	pendingSend int64 // guarded by mu: body bytes queued across streams
	sendBlocked bool  // guarded by mu: a write waits for pendingSend to fall below sendLimit

	// onPeerReset is called under mu when the peer resets an open stream,
	// before the stream is failed. May be nil.
	onPeerReset func(s *strm)
	// onPeerFault is called under mu when a frame from the peer makes us
	// reset one of its streams (a server-induced reset, MadeYouReset,
	// CVE-2025-8671), s nil when the stream was never opened. May be nil.
	onPeerFault func(s *strm)

	// hdrTimeout bounds reading a HEADERS frame and its CONTINUATIONs
	// from its first byte (request_headers_timeout); 0 means none.
	// Immutable. When set, br buffers the socket for the framer.
	hdrTimeout time.Duration
	br         *bufio.Reader // reader
	// rd, when not nil, is what the framer reads a plaintext socket
	// through (while br is nil). Reader.
	rd *burstReader

	mu    sync.Mutex
	wcond sync.Cond // writer waits here; guarded by mu

	ctrl      []ctrlItem // guarded by mu: queued control frames, FIFO
	ctrlSpare []ctrlItem // guarded by mu
	// ready[readyHead:] are the streams with body bytes or an end to
	// send, FIFO; the slots before readyHead are nil and reused once the
	// queue drains or the array fills. Guarded by mu.
	ready     []*strm
	readyHead int
	streams   map[uint32]*strm

	sendConnWin     int64     // guarded by mu: what the peer lets us send on the connection
	peerInitWin     int64     // guarded by mu: peer's SETTINGS_INITIAL_WINDOW_SIZE
	peerMaxFrame    uint32    // guarded by mu
	peerMaxHdrList  uint32    // guarded by mu; 0 = unlimited
	recvConnAvail   int64     // guarded by mu: what the peer may still send on the connection
	recvConnUnacked int64     // guarded by mu: consumed bytes not yet returned by WINDOW_UPDATE
	settingsAcked   bool      // guarded by mu: the peer acknowledged our SETTINGS
	settingsAckedAt time.Time // guarded by mu: when the first SETTINGS ACK arrived
	recvData        int64     // guarded by mu: DATA payload bytes received (flow-controlled length)
	goAwaySent      bool      // guarded by mu
	goAwayRecv      bool      // guarded by mu
	closed          bool      // guarded by mu
	closeErr        error     // guarded by mu
	closing         bool      // guarded by mu: a ctrlClose is queued
	maxPeerID       uint32    // guarded by mu: highest peer-initiated stream ID seen
	pendingDone     int       // guarded by mu: removed streams not yet reported to onStreamDone
	pendingRefused  bool      // guarded by mu: a stream was refused (client) and onStreamRefused not yet called

	// lingering is set once a graceful close half-closed the socket: the
	// reader drops what still arrives and closes the socket at EOF or at
	// lingerUntil (see lingerClose).
	lingering   atomic.Bool
	lingerUntil time.Time // written before lingering is set
	// goAwayFlushed is set by the writer when the frames before a
	// ctrlClose, its GOAWAY among them, reached the socket: the close then
	// lingers (lingerClose) even when it ends the connection for an error,
	// so the peer reads the GOAWAY instead of losing it to a TCP reset.
	goAwayFlushed atomic.Bool

	done       chan struct{} // closed once the connection is closed
	writerDone chan struct{}
	onClosed   func(err error) // called once after close; may be nil
	onRemove   func(s *strm)   // called under mu when a stream leaves the map
	// client is the ClientConn owning a client-side conn (nil on the
	// server side); set before the reader and writer start.
	client *ClientConn
	// onStreamDone is called, without mu, once per stream that left the
	// map (reported by unlock).
	onStreamDone func()
	// onStreamRefused is called, without mu, after the peer refused one
	// or more client streams with REFUSED_STREAM (refusedStreams counts
	// them), before onStreamDone reports those streams (unlock).
	onStreamRefused func()
	// refusedStreams counts the client streams the peer refused with
	// REFUSED_STREAM; raised under mu before the stream's error is seen.
	refusedStreams atomic.Uint64
}

// writeBufSize is the size of the buffer frames are gathered in before a
// write to the socket.
const writeBufSize = 32 << 10

// writeBufPool holds the write buffers of connections that have nothing
// to send.
var writeBufPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, writeBufSize) }}

// pooledWriter buffers frames for one socket write per burst, holding a
// buffer only between the first write of the burst and the flush that ends
// it (x/net/http2's bufferedWriter does the same), so an idle connection
// holds none. It is not safe for concurrent use: the writer goroutine owns
// it (and, before that starts, the constructor).
type pooledWriter struct {
	w  io.Writer
	bw *bufio.Writer // nil while nothing is buffered
}

// Write buffers p, taking a buffer from the pool if none is held.
func (w *pooledWriter) Write(p []byte) (int, error) {
	if w.bw == nil {
		w.bw = writeBufPool.Get().(*bufio.Writer)
		w.bw.Reset(w.w)
	}
	return w.bw.Write(p)
}

// WriteString buffers s, like Write.
func (w *pooledWriter) WriteString(s string) (int, error) {
	if w.bw == nil {
		w.bw = writeBufPool.Get().(*bufio.Writer)
		w.bw.Reset(w.w)
	}
	return w.bw.WriteString(s)
}

// Buffered is how many bytes wait for Flush.
func (w *pooledWriter) Buffered() int {
	if w.bw == nil {
		return 0
	}
	return w.bw.Buffered()
}

// Flush writes what is buffered and returns the buffer to the pool, also
// when the write fails (what it held is then dropped, as the connection
// is failing).
func (w *pooledWriter) Flush() error {
	bw := w.bw
	if bw == nil {
		return nil
	}
	err := bw.Flush()
	bw.Reset(nil)
	writeBufPool.Put(bw)
	w.bw = nil
	return err
}

// frameHeaderLen is the size of an HTTP/2 frame header, which the framer
// reads on its own before each payload.
const frameHeaderLen = 9

// readBufSize is the size of the buffer a busy connection reads its socket
// into: a burst of frames up to it costs one read syscall.
const readBufSize = 16 << 10

// readBufPool holds the read buffers of connections that have no unread
// input buffered.
var readBufPool = sync.Pool{New: func() any { b := make([]byte, readBufSize); return &b }}

// burstReader lets the framer read a burst of frames in one syscall
// without every connection keeping a read buffer: a frame header read
// that finds nothing buffered goes straight to the socket (so an idle
// connection waits for its peer holding no buffer), and the payload read
// that follows fills a pooled buffer with everything the socket has, from
// which the next frames are served until it is drained and returned to
// the pool. Under load a burst costs two reads instead of two per frame.
// Reader goroutine only.
type burstReader struct {
	r        io.Reader
	buf      *[]byte // nil while nothing is buffered
	off, end int     // unread bytes are (*buf)[off:end]
}

// Read implements io.Reader.
func (b *burstReader) Read(p []byte) (int, error) {
	if b.buf == nil {
		if len(p) <= frameHeaderLen || len(p) >= readBufSize {
			return b.r.Read(p)
		}
		b.buf = readBufPool.Get().(*[]byte)
		n, err := b.r.Read(*b.buf)
		if n == 0 {
			b.release()
			return 0, err
		}
		// Bytes read come before the error, which the next read sees again.
		b.off, b.end = 0, n
	}
	k := copy(p, (*b.buf)[b.off:b.end])
	b.off += k
	if b.off == b.end {
		b.release()
	}
	return k, nil
}

func (b *burstReader) release() {
	readBufPool.Put(b.buf)
	b.buf = nil
	b.off, b.end = 0, 0
}

// unlock releases mu and then reports streams that ended meanwhile: a
// refusal among them first (onStreamRefused), so a pool learns a
// connection's real limit before it hands the refused streams' slots on.
func (c *conn) unlock() {
	n, refused := c.pendingDone, c.pendingRefused
	c.pendingDone, c.pendingRefused = 0, false
	c.mu.Unlock()
	if refused && c.onStreamRefused != nil {
		c.onStreamRefused()
	}
	if c.onStreamDone != nil {
		for range n {
			c.onStreamDone()
		}
	}
}

// ByteCounters count a connection's bytes as Envoy's
// downstream_cx_{rx,tx}_bytes_total and upstream_cx_{rx,tx}_bytes_total
// do: the HTTP/2 bytes (preface and frames) read from and written to the
// connection, each Read and Write adding what it moved, so the counters
// follow a long-lived connection as it goes. Over TLS they are the bytes
// after decryption and before encryption: record overhead and handshakes
// are not counted, as in Envoy (its connection counts what the transport
// socket returns). A nil counter counts nothing.
type ByteCounters struct {
	Rx, Tx *stats.Counter
}

// countingReader adds the bytes each Read returns to n.
type countingReader struct {
	r io.Reader
	n *stats.Counter
}

func (c *countingReader) Read(p []byte) (int, error) {
	k, err := c.r.Read(p)
	if k > 0 {
		c.n.Add(uint64(k))
	}
	return k, err
}

// countingWriter adds the bytes each Write wrote to n.
type countingWriter struct {
	w io.Writer
	n *stats.Counter
}

func (c *countingWriter) Write(p []byte) (int, error) {
	k, err := c.w.Write(p)
	if k > 0 {
		c.n.Add(uint64(k))
	}
	return k, err
}

// errGracefulClose is the cause recorded when the connection closed after
// a GOAWAY NO_ERROR drain.
var errGracefulClose = errors.New("http2: connection closed gracefully")

func newConn(nc net.Conn, isClient bool, log *slog.Logger, st *Stats, bc ByteCounters, maxFrame, maxHdr, streamWin, connWin uint32) *conn {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if st == nil {
		st = discardStats()
	}
	var raw io.Reader = nc
	if bc.Rx != nil {
		raw = &countingReader{r: nc, n: bc.Rx}
	}
	var w io.Writer = nc
	if bc.Tx != nil {
		w = &countingWriter{w: nc, n: bc.Tx}
	}
	c := &conn{
		nc:                 nc,
		raw:                raw,
		bw:                 &pooledWriter{w: w},
		log:                log,
		st:                 st,
		isClient:           isClient,
		localMaxFrame:      orDefault(maxFrame, DefaultMaxFrameSize),
		localMaxHeaderList: orDefault(maxHdr, DefaultMaxHeaderListSize),
		localStreamWin:     orDefault(streamWin, DefaultWindowSize),
		localConnWin:       orDefault(connWin, DefaultWindowSize),
		streams:            map[uint32]*strm{},
		sendConnWin:        initialWindowSize,
		peerInitWin:        initialWindowSize,
		peerMaxFrame:       DefaultMaxFrameSize,
		done:               make(chan struct{}),
		writerDone:         make(chan struct{}),
	}
	c.localMaxFrame = max(min(c.localMaxFrame, 1<<24-1), DefaultMaxFrameSize)
	c.localStreamWin = min(c.localStreamWin, maxWindow)
	c.localConnWin = max(min(c.localConnWin, maxWindow), initialWindowSize)
	c.recvConnAvail = int64(c.localConnWin)
	c.wcond.L = &c.mu
	rd := raw
	if _, isTLS := nc.(*tls.Conn); !isTLS {
		// crypto/tls already reads whole records into its own buffer.
		c.rd = &burstReader{r: raw}
		rd = c.rd
	}
	c.setReader(rd)
	c.hr.init(c.localMaxHeaderList)
	c.henc = hpack.NewEncoder(&c.hbuf)
	if st.table != nil {
		st.table.add(c)
	}
	return c
}

// setReader makes c.fr read frames from r, with what we advertised
// applied to its reading side. Header blocks are not decoded by the
// Framer but by c.hr, which reads their payloads from r too.
func (c *conn) setReader(r io.Reader) {
	c.src = r
	c.fr = http2.NewFramer(c.bw, r)
	c.fr.SetMaxReadFrameSize(c.localMaxFrame)
	c.fr.SetReuseFrames()
}

func orDefault(v, d uint32) uint32 {
	if v == 0 {
		return d
	}
	return v
}

// initialFrames queues our SETTINGS and the connection window increment.
func (c *conn) initialFrames(extra ...http2.Setting) {
	settings := append([]http2.Setting{
		{ID: http2.SettingInitialWindowSize, Val: c.localStreamWin},
		{ID: http2.SettingMaxFrameSize, Val: c.localMaxFrame},
		{ID: http2.SettingMaxHeaderListSize, Val: c.localMaxHeaderList},
	}, extra...)
	c.mu.Lock()
	c.queue(ctrlItem{kind: ctrlSettings, settings: settings})
	if inc := c.localConnWin - initialWindowSize; inc > 0 {
		c.queue(ctrlItem{kind: ctrlWindowUpdate, id: 0, n: inc})
	}
	c.mu.Unlock()
}

// queue appends a control frame for the writer. Caller holds mu.
func (c *conn) queue(it ctrlItem) {
	if c.closed {
		return
	}
	if len(c.ctrl) == 0 {
		c.wcond.Signal()
	}
	if it.isControl() {
		c.outCtrl++
		if c.floodChecks && c.outCtrl > int(c.limits.MaxOutboundControlFrames) {
			c.ctrlFlood.Store(true)
		}
	}
	c.outFrames++
	c.ctrl = append(c.ctrl, it)
	c.checkOutbound()
}

// checkOutbound trips outbound_flood once more than MaxOutboundFrames
// frames are queued, counting queued body bytes as 16 KiB frames. A peer
// that provokes frames without reading cannot grow the queues further: the
// writer gets goAwayFlushTimeout to flush what it can, then fails, and the
// reader ends the connection with GOAWAY ENHANCE_YOUR_CALM if the peer
// sends anything meanwhile. Caller holds mu.
func (c *conn) checkOutbound() {
	if !c.floodChecks || c.outFlood {
		return
	}
	queued := c.outFrames + int((c.pendingSend+chunkSize-1)/chunkSize)
	if queued <= int(c.limits.MaxOutboundFrames) {
		return
	}
	c.outFlood = true
	c.outFloodSeen.Store(true)
	c.st.OutboundFlood.Inc()
	c.log.Debug("http2 outbound frame flood", "queued", queued, "limit", c.limits.MaxOutboundFrames)
	_ = c.nc.SetWriteDeadline(time.Now().Add(goAwayFlushTimeout))
}

// isControl reports whether the frame counts against
// maxOutboundControlFrames.
func (it *ctrlItem) isControl() bool {
	switch it.kind {
	case ctrlSettings, ctrlSettingsAck, ctrlPing, ctrlRST:
		return true
	}
	return false
}

// markReady puts s on the writer's round-robin list if it has something the
// writer can send now. Caller holds mu.
func (c *conn) markReady(s *strm) {
	if s.inReady || s.err != nil || s.sentEnd {
		return
	}
	endOnly := s.sendQ.n == 0 && s.sendEnd
	if !endOnly && (s.sendQ.n == 0 || s.sendWin <= 0) {
		return
	}
	s.inReady = true
	if c.readyHead == len(c.ready) {
		c.wcond.Signal()
	}
	if len(c.ready) == cap(c.ready) && c.readyHead > 0 {
		n := copy(c.ready, c.ready[c.readyHead:])
		clear(c.ready[n:])
		c.ready, c.readyHead = c.ready[:n], 0
	}
	c.ready = append(c.ready, s)
}

// dataJob is one DATA or trailer frame the writer picked under mu.
type dataJob struct {
	s         *strm
	data      []byte
	release   *[]byte
	endStream bool
	trailers  *[]hpack.HeaderField // pooled; the writer puts it back
	isEnd     bool                 // the frame ends the stream's send side
	rstAfter  bool
}

// pickData chooses the next body frame, round robin across ready streams.
// Caller holds mu.
func (c *conn) pickData(j *dataJob) bool {
	for c.readyHead < len(c.ready) {
		s := c.ready[c.readyHead]
		if s.err != nil || s.sentEnd {
			c.popReady()
			s.inReady = false
			continue
		}
		if s.sendQ.n == 0 {
			c.popReady()
			s.inReady = false
			if !s.sendEnd {
				continue
			}
			*j = dataJob{s: s, isEnd: true, endStream: true, trailers: s.sendTrailers, rstAfter: s.rstAfterEnd}
			s.sendTrailers = nil
			s.sentEnd = true
			c.afterSendEnd(s)
			return true
		}
		if s.sendWin <= 0 {
			c.popReady()
			s.inReady = false
			c.setStall(s, StallPeerWindow)
			continue
		}
		if c.sendConnWin <= 0 {
			for _, r := range c.ready[c.readyHead:] {
				c.setStall(r, StallPeerWindow)
			}
			return false
		}
		n := min(int64(s.sendQ.n), s.sendWin, c.sendConnWin, int64(c.peerMaxFrame))
		data, rel := s.sendQ.peek(int(n))
		n = int64(len(data))
		s.sendWin -= n
		c.sendConnWin -= n
		c.releaseSend(n)
		*j = dataJob{s: s, data: data, release: rel}
		c.popReady()
		s.inReady = false
		c.sendProgress(s)
		if s.sendQ.n == 0 && s.sendEnd && s.sendTrailers == nil {
			j.endStream, j.isEnd, j.rstAfter = true, true, s.rstAfterEnd
			s.sentEnd = true
			c.afterSendEnd(s)
		} else {
			c.markReady(s)
		}
		s.cond.Broadcast()
		return true
	}
	return false
}

// popReady drops the head of the ready queue. Caller holds mu.
func (c *conn) popReady() {
	c.ready[c.readyHead] = nil
	c.readyHead++
	if c.readyHead == len(c.ready) {
		c.ready, c.readyHead = c.ready[:0], 0
	}
}

// releaseSend accounts for n queued body bytes leaving the send queues
// (written or dropped) and wakes writers blocked on the connection's
// buffer limit once there is room. Caller holds mu.
func (c *conn) releaseSend(n int64) {
	if n == 0 {
		return
	}
	c.pendingSend -= n
	c.st.PendingSendBytes.Add(-n)
	if c.sendBlocked && c.pendingSend < c.sendLimit {
		c.sendBlocked = false
		for _, s := range c.streams {
			s.cond.Broadcast()
		}
	}
}

// afterSendEnd runs when the stream's final frame has been picked: the
// stream closes if the peer had ended its side too. Caller holds mu.
func (c *conn) afterSendEnd(s *strm) {
	if s.recvDone || s.rstAfterEnd {
		c.removeStream(s, nil)
	}
}

// writeLoop is the writer goroutine.
func (c *conn) writeLoop() {
	defer close(c.writerDone)
	var j dataJob
	c.mu.Lock()
	for {
		if c.closed {
			c.mu.Unlock()
			return
		}
		if c.outFlood {
			// Stop feeding a peer that does not read: one GOAWAY, flushed
			// within the write deadline checkOutbound set, then close.
			id := c.maxPeerID
			c.mu.Unlock()
			const reason = "too many frames queued: outbound frame flood"
			c.st.GoAwaySent.Inc()
			if c.fr.WriteGoAway(id, http2.ErrCodeEnhanceYourCalm, []byte(reason)) != nil || c.bw.Flush() != nil {
				c.st.TxFlushTimeout.Inc()
			}
			c.closeWith(connErr(http2.ErrCodeEnhanceYourCalm, reason))
			return
		}
		if len(c.ctrl) > 0 {
			items := c.ctrl
			c.ctrl = c.ctrlSpare[:0]
			c.mu.Unlock()
			err := c.writeCtrl(items)
			written := 0
			for i := range items {
				if items[i].isControl() {
					written++
				}
			}
			clear(items)
			c.mu.Lock()
			c.outCtrl -= written
			c.outFrames -= len(items)
			c.ctrlSpare = items[:0]
			if err != nil {
				c.mu.Unlock()
				c.closeWith(err)
				return
			}
			continue
		}
		if c.pickData(&j) {
			c.unlock()
			err := c.writeData(&j)
			j = dataJob{}
			c.mu.Lock()
			if err != nil {
				c.mu.Unlock()
				c.closeWith(err)
				return
			}
			continue
		}
		if c.bw.Buffered() > 0 {
			c.mu.Unlock()
			err := c.bw.Flush()
			c.mu.Lock()
			if err != nil {
				c.mu.Unlock()
				c.closeWith(fmt.Errorf("http2: flush: %w", err))
				return
			}
			continue
		}
		c.wcond.Wait()
	}
}

func (c *conn) writeCtrl(items []ctrlItem) error {
	for i := range items {
		it := &items[i]
		var err error
		switch it.kind {
		case ctrlSettings:
			err = c.fr.WriteSettings(it.settings...)
		case ctrlSettingsAck:
			if it.ack {
				c.henc.SetMaxDynamicTableSizeLimit(it.n)
			}
			err = c.fr.WriteSettingsAck()
		case ctrlPing:
			err = c.fr.WritePing(it.ack, it.ping)
		case ctrlGoAway:
			c.st.GoAwaySent.Inc()
			err = c.fr.WriteGoAway(it.id, it.code, []byte(it.debug))
		case ctrlRST:
			if it.s != nil {
				c.mu.Lock()
				unopened := it.s.headersSkipped
				c.mu.Unlock()
				if unopened {
					// The stream was reset before its HEADERS went out, so
					// the peer never saw it: RST_STREAM on an idle stream
					// is a connection error (RFC 9113 section 6.4).
					continue
				}
			}
			c.st.TxReset.Inc()
			err = c.fr.WriteRSTStream(it.id, it.code)
		case ctrlWindowUpdate:
			err = c.fr.WriteWindowUpdate(it.id, it.n)
		case ctrlHeaders:
			if it.s != nil {
				c.mu.Lock()
				skip := it.s.rstSent
				// Only a client's HEADERS open the stream; a server's
				// skipped response still needs its RST_STREAM.
				it.s.headersSkipped = skip && c.isClient
				c.mu.Unlock()
				if skip {
					putFields(it.fbuf)
					continue
				}
			}
			err = c.writeHeaders(it.id, it.fields, it.endStream)
			putFields(it.fbuf)
		case ctrlClose:
			_ = c.nc.SetWriteDeadline(time.Now().Add(goAwayFlushTimeout))
			if ferr := c.bw.Flush(); ferr != nil {
				c.st.TxFlushTimeout.Inc()
			} else {
				c.mu.Lock()
				c.goAwayFlushed.Store(c.goAwaySent)
				c.mu.Unlock()
			}
			if it.err == nil {
				return errGracefulClose
			}
			return it.err
		}
		if err != nil {
			return fmt.Errorf("http2: write %v frame: %w", it.kind, err)
		}
	}
	return nil
}

func (k ctrlKind) String() string {
	return [...]string{"SETTINGS", "SETTINGS ACK", "PING", "GOAWAY", "RST_STREAM", "WINDOW_UPDATE", "HEADERS", "close"}[k]
}

// writeHeaders HPACK-encodes fields and writes HEADERS plus CONTINUATION
// frames no larger than the peer's SETTINGS_MAX_FRAME_SIZE.
func (c *conn) writeHeaders(id uint32, fields []hpack.HeaderField, endStream bool) error {
	if err := c.encodeBlock(fields); err != nil {
		return err
	}
	c.resetStrikes.Store(true)
	c.mu.Lock()
	maxFrame := int(c.peerMaxFrame)
	c.mu.Unlock()
	block := c.hbuf.Bytes()
	first := true
	for first || len(block) > 0 {
		frag := block[:min(len(block), maxFrame)]
		block = block[len(frag):]
		var err error
		if first {
			err = c.fr.WriteHeaders(http2.HeadersFrameParam{
				StreamID: id, BlockFragment: frag, EndStream: endStream, EndHeaders: len(block) == 0,
			})
			first = false
		} else {
			err = c.fr.WriteContinuation(id, len(block) == 0, frag)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// encodeBlock HPACK-encodes fields into c.hbuf; per-request values go
// out unindexed (perRequestValue).
func (c *conn) encodeBlock(fields []hpack.HeaderField) error {
	c.hbuf.Reset()
	for i, f := range fields {
		// The first field goes through the encoder, which puts a pending
		// dynamic table size update first in the block (RFC 7541 section
		// 4.2).
		if i > 0 && perRequestValue(f.Name) {
			c.hbuf.Write(appendLiteralUnindexed(c.hbuf.AvailableBuffer(), f.Name, f.Value))
			continue
		}
		if err := c.henc.WriteField(f); err != nil {
			return err
		}
	}
	return nil
}

func (c *conn) writeData(j *dataJob) error {
	var err error
	if j.trailers != nil {
		err = c.writeHeaders(j.s.id, *j.trailers, true)
		putFields(j.trailers)
	} else {
		c.resetStrikes.Store(true)
		c.dataFramesTx.Add(1)
		err = c.fr.WriteData(j.s.id, j.endStream, j.data)
	}
	if j.release != nil {
		chunkPool.Put(j.release)
	}
	if err == nil && j.rstAfter {
		c.st.TxReset.Inc()
		err = c.fr.WriteRSTStream(j.s.id, http2.ErrCodeNo)
	}
	if err != nil {
		return fmt.Errorf("http2: write stream %d data: %w", j.s.id, err)
	}
	return nil
}

// closeWith closes the connection at once: every open stream fails with
// err (wrapped in a *stream.Error), blocked callers wake, the socket closes.
func (c *conn) closeWith(err error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	c.closeErr = err
	remote := !errors.Is(err, errConnClosed) && !errors.Is(err, errGracefulClose)
	var ce connError
	code := stream.ErrCodeNo
	if errors.As(err, &ce) {
		code = ce.code
		remote = false
	}
	for _, s := range c.streams {
		c.failStream(s, &stream.Error{Code: code, Remote: remote, Reason: "connection closed", Err: err})
	}
	c.ready, c.readyHead = nil, 0
	c.ctrl = nil
	c.wcond.Broadcast()
	c.mu.Unlock()
	// A graceful close lingers, and so does a close for an error once its
	// GOAWAY was flushed: closing with the peer's frames unread makes the
	// kernel send a TCP reset, which discards the GOAWAY at the peer
	// before its application reads it (Envoy's delayed_close_timeout
	// serves the same end). A peer that does not read gets no linger.
	if !(errors.Is(err, errGracefulClose) || c.goAwayFlushed.Load()) || !c.lingerClose() {
		_ = c.nc.Close()
	}
	if c.st.table != nil {
		c.st.table.remove(c)
	}
	close(c.done)
	if c.onClosed != nil {
		c.onClosed(err)
	}
}

// lingerClose ends a graceful close the way a careful TCP endpoint does
// (Go's net/http and nginx call it a lingering close): it half-closes the
// write side, so the peer gets FIN (or TLS close_notify) after everything
// written, and leaves the socket open for reading for up to lingerTimeout,
// while the reader drops what still arrives. Closing at once while the
// peer's late frames (WINDOW_UPDATE, PING ACK) sit unread makes the kernel
// answer with a TCP RST, and an RST makes the peer's kernel discard what
// it received but its application has not read yet: the end of the last
// response, a transfer cut a window short when a config push drained its
// connection. It reports false, and the caller closes at once, when the
// connection cannot half-close. Called once, by closeWith.
func (c *conn) lingerClose() bool {
	cw, ok := c.nc.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		return false
	}
	c.lingerUntil = time.Now().Add(lingerTimeout)
	c.lingering.Store(true)
	_ = c.nc.SetReadDeadline(c.lingerUntil)
	return true
}

// goAwayAndClose sends GOAWAY with code and then closes the connection
// with cause. It never blocks.
func (c *conn) goAwayAndClose(lastID uint32, code http2.ErrCode, debug string, cause error) {
	c.mu.Lock()
	defer c.unlock()
	if c.closing || c.closed {
		return
	}
	c.closing = true
	c.goAwaySent = true
	c.queue(ctrlItem{kind: ctrlGoAway, id: lastID, code: code, debug: debug})
	c.queue(ctrlItem{kind: ctrlClose, err: cause})
}

// failStream ends s with err without sending anything. Caller holds mu.
func (c *conn) failStream(s *strm, err *stream.Error) {
	if s.err == nil {
		s.err = err
	}
	c.removeStream(s, err)
}

// removeStream takes s out of the connection. Caller holds mu.
func (c *conn) removeStream(s *strm, err *stream.Error) {
	if err != nil && s.err == nil {
		s.err = err
	}
	if s.removed {
		return
	}
	s.removed = true
	if s.err != nil {
		c.releaseSend(int64(s.sendQ.reset()))
		// The connection window had these bytes back on receipt.
		s.recvQ.reset()
	}
	delete(c.streams, s.id)
	c.setStall(s, StallNone)
	c.st.StreamsActive.Dec()
	if !c.closed {
		c.pendingDone++
	}
	s.cond.Broadcast()
	if s.stopAfter != nil {
		s.stopAfter()
	}
	if s.cancel != nil {
		s.cancel()
	}
	if c.onRemove != nil {
		c.onRemove(s)
	}
}

// resetStream sends RST_STREAM for s (if it is still open) and fails it.
// Caller holds mu.
func (c *conn) resetStream(s *strm, code http2.ErrCode, remote bool, reason string) {
	if s.removed {
		return
	}
	if !remote {
		s.rstSent = true
		c.queue(ctrlItem{kind: ctrlRST, id: s.id, code: code, s: s})
	}
	c.failStream(s, &stream.Error{Code: stream.ErrCode(code), Remote: remote, Reason: reason})
}

// consumeConn returns n received bytes to the connection window, sending a
// WINDOW_UPDATE once a quarter of the window is due. Caller holds mu.
func (c *conn) consumeConn(n int64) {
	if n <= 0 {
		return
	}
	c.recvConnUnacked += n
	if c.recvConnUnacked >= int64(c.localConnWin)/4 {
		c.recvConnAvail += c.recvConnUnacked
		c.queue(ctrlItem{kind: ctrlWindowUpdate, id: 0, n: uint32(c.recvConnUnacked)})
		c.recvConnUnacked = 0
	}
}

// frameHandler is what a role (server or client) adds to the shared reader.
type frameHandler interface {
	// handleHeaders handles a decoded header block; b is valid until it
	// returns.
	handleHeaders(b *headerBlock) error
	handleGoAway(f *http2.GoAwayFrame) error
	handlePing(f *http2.PingFrame) error
	handleSettings(f *http2.SettingsFrame)
	// isIdle reports whether id names a stream that was never opened.
	isIdle(id uint32) bool
	// streamErrorOnNew is called for a stream error on a HEADERS frame that
	// would have opened id, so the role can account for the stream ID.
	streamErrorOnNew(id uint32)
}

// readLoop reads frames until the connection fails. It returns the error
// that ended it (nil for a clean close).
func (c *conn) readLoop(h frameHandler) error {
	for {
		if c.lingering.Load() {
			return c.drainLinger()
		}
		if c.hdrTimeout > 0 {
			if err := c.awaitFrame(); err != nil {
				return c.readFailed(err)
			}
		}
		f, blk, err := c.readFrame()
		if c.lingering.Load() {
			// Closed gracefully while this frame was on its way: drop it.
			return c.drainLinger()
		}
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				c.st.RxMessagingError.Inc()
				c.log.Debug("http2 stream error from peer", "stream", se.StreamID, "code", se.Code, "cause", se.Cause)
				h.streamErrorOnNew(se.StreamID)
				c.mu.Lock()
				if s := c.streams[se.StreamID]; s != nil {
					c.resetForPeer(s, se.Code, "invalid frame")
				} else {
					if c.onPeerFault != nil {
						c.onPeerFault(nil)
					}
					c.queue(ctrlItem{kind: ctrlRST, id: se.StreamID, code: se.Code})
				}
				c.unlock()
				continue
			}
			return c.readFailed(err)
		}
		switch {
		case blk != nil:
			err = h.handleHeaders(blk)
			c.hr.release()
			if err == nil {
				err = c.checkQueueFloods()
			}
		case f != nil:
			err = c.handleFrame(h, f)
		}
		if err != nil {
			return c.readFailed(err)
		}
	}
}

// readFrame reads the next frame. A HEADERS or CONTINUATION frame is
// decoded by c.hr rather than the Framer: blk is the header block once its
// last frame is in, and f and blk are both nil before. Reader only.
func (c *conn) readFrame() (f http2.Frame, blk *headerBlock, err error) {
	fh, err := c.fr.ReadFrameHeader()
	if err != nil {
		return nil, nil, err
	}
	if fh.Type == http2.FrameHeaders || fh.Type == http2.FrameContinuation {
		blk, err = c.hr.readFrame(fh, c.src)
		return nil, blk, err
	}
	f, err = c.fr.ReadFrameForHeader(fh)
	return f, nil, err
}

// drainLinger reads and drops what the peer still sends after a graceful
// close, until it closes its side or the linger time ends, then closes the
// socket. Reader only.
func (c *conn) drainLinger() error {
	_ = c.nc.SetReadDeadline(c.lingerUntil) // awaitFrame may have reset it
	r := c.raw
	switch { // what the framer reads through, which may hold bytes
	case c.br != nil:
		r = c.br
	case c.rd != nil:
		r = c.rd
	}
	_, _ = io.Copy(io.Discard, r)
	_ = c.nc.Close()
	return nil
}

// errRequestHeadersTimeout is the reason a connection ends when its peer
// took longer than request_headers_timeout to send a frame header or a
// header block it had started.
var errRequestHeadersTimeout = errors.New("request header block not received within request_headers_timeout")

// awaitFrame waits, without a deadline, for the first byte of the next
// frame; from then on the frame header must arrive within hdrTimeout, and
// a HEADERS frame's whole header block too: while its CONTINUATIONs are
// due, the deadline set at its first byte stays. A header block dribbled
// a byte at a time (slowloris) thus cannot hold the connection. Reader
// only.
func (c *conn) awaitFrame() error {
	if c.hr.open {
		return nil
	}
	_ = c.nc.SetReadDeadline(time.Time{})
	if _, err := c.br.Peek(1); err != nil {
		return err
	}
	_ = c.nc.SetReadDeadline(time.Now().Add(c.hdrTimeout))
	hdr, err := c.br.Peek(9)
	if err != nil {
		return err
	}
	if t := http2.FrameType(hdr[3]); t != http2.FrameHeaders && t != http2.FrameContinuation {
		_ = c.nc.SetReadDeadline(time.Time{})
	}
	return nil
}

// readFailed turns a reader error into the connection's end.
func (c *conn) readFailed(err error) error {
	var ce http2.ConnectionError
	var mine connError
	switch {
	case errors.As(err, &mine):
	case errors.As(err, &ce):
		reason := "invalid frame"
		if d := c.fr.ErrorDetail(); d != nil {
			reason = d.Error()
		}
		mine = connError{code: stream.ErrCode(ce), reason: reason}
	case errors.Is(err, http2.ErrFrameTooLarge):
		mine = connError{code: stream.ErrCodeFrameSize, reason: "frame larger than SETTINGS_MAX_FRAME_SIZE"}
	case c.hdrTimeout > 0 && errors.Is(err, os.ErrDeadlineExceeded):
		c.st.RequestHeadersTimeout.Inc()
		mine = connError{code: stream.ErrCodeEnhanceYourCalm, reason: errRequestHeadersTimeout.Error()}
	default:
		c.mu.Lock()
		closing := c.closing || c.closed
		c.mu.Unlock()
		if errors.Is(err, io.EOF) || closing {
			c.closeWith(io.EOF)
			return nil
		}
		err = fmt.Errorf("http2: read: %w", err)
		c.closeWith(err)
		return err
	}
	c.st.RxMessagingError.Inc()
	c.log.Debug("http2 connection error", "code", mine.code, "reason", mine.reason)
	c.goAwayAndClose(c.lastPeerStream(), http2.ErrCode(mine.code), mine.reason, mine)
	// Wait (bounded) for the GOAWAY to go out before the caller returns.
	select {
	case <-c.done:
	case <-time.After(2 * goAwayFlushTimeout):
		c.closeWith(mine)
	}
	return mine
}

// lastPeerStream is the highest peer-initiated stream ID we processed.
func (c *conn) lastPeerStream() uint32 {
	c.mu.Lock()
	defer c.unlock()
	return c.maxPeerID
}

// handleFrame handles a frame other than HEADERS and CONTINUATION.
func (c *conn) handleFrame(h frameHandler, f http2.Frame) error {
	if err := c.dispatchFrame(h, f); err != nil {
		return err
	}
	return c.checkQueueFloods()
}

// checkQueueFloods ends the connection once the peer has provoked more
// queued frames than the outbound flood limits allow.
func (c *conn) checkQueueFloods() error {
	if c.ctrlFlood.Load() {
		c.st.OutboundControlFlood.Inc()
		return connErr(http2.ErrCodeEnhanceYourCalm, "too many control frames queued: outbound control frame flood")
	}
	if c.outFloodSeen.Load() {
		return connErr(http2.ErrCodeEnhanceYourCalm, "too many frames queued: outbound frame flood")
	}
	return nil
}

// resetForPeer resets s because of a frame the peer sent, and counts it
// against the peer's premature reset budget. Caller holds mu.
func (c *conn) resetForPeer(s *strm, code http2.ErrCode, reason string) {
	if !s.removed && c.onPeerFault != nil {
		c.onPeerFault(s)
	}
	c.resetStream(s, code, false, reason)
}

// floodError counts stat and returns the connection error that ends a
// flooding connection.
func floodError(stat interface{ Inc() }, reason string) error {
	stat.Inc()
	return connErr(http2.ErrCodeEnhanceYourCalm, reason)
}

// checkEmptyFrame tracks consecutive frames with an empty payload and no
// END_STREAM. Reader only.
func (c *conn) checkEmptyFrame(empty, endStream bool) error {
	if !c.floodChecks {
		return nil
	}
	if !empty {
		c.emptyRun = 0
		return nil
	}
	if endStream {
		return nil
	}
	c.emptyRun++
	if c.emptyRun > int(c.limits.MaxConsecutiveEmptyFrames) {
		return floodError(c.st.InboundEmptyFramesFlood, "too many consecutive frames with an empty payload")
	}
	return nil
}

func (c *conn) dispatchFrame(h frameHandler, f http2.Frame) error {
	switch f := f.(type) {
	case *http2.DataFrame:
		return c.handleData(h, f)
	case *http2.SettingsFrame:
		return c.handleSettings(h, f)
	case *http2.PingFrame:
		return h.handlePing(f)
	case *http2.WindowUpdateFrame:
		return c.handleWindowUpdate(h, f)
	case *http2.RSTStreamFrame:
		return c.handleRST(h, f)
	case *http2.GoAwayFrame:
		c.st.GoAwayRx.Inc()
		return h.handleGoAway(f)
	case *http2.PriorityFrame:
		if c.floodChecks {
			c.priorityRx++
			c.mu.Lock()
			opened := c.streamsOpened
			c.mu.Unlock()
			if c.priorityRx > int64(c.limits.MaxPriorityFramesPerStream)*(1+opened) {
				return floodError(c.st.InboundPriorityFlood, "too many PRIORITY frames")
			}
		}
		if f.StreamDep == f.StreamID {
			c.mu.Lock()
			defer c.unlock()
			if s := c.streams[f.StreamID]; s != nil {
				c.resetForPeer(s, http2.ErrCodeProtocol, "stream depends on itself")
			} else {
				c.queue(ctrlItem{kind: ctrlRST, id: f.StreamID, code: http2.ErrCodeProtocol})
			}
		}
		return nil
	case *http2.PushPromiseFrame:
		return connErr(http2.ErrCodeProtocol, "PUSH_PROMISE is not allowed")
	default:
		return nil // unknown frame types are ignored (RFC 9113 section 4.1)
	}
}

func (c *conn) handleSettings(h frameHandler, f *http2.SettingsFrame) error {
	if f.IsAck() {
		c.mu.Lock()
		if !c.settingsAcked {
			c.settingsAckedAt = time.Now()
		}
		c.settingsAcked = true
		c.mu.Unlock()
		return nil
	}
	if err := f.ForeachSetting(func(s http2.Setting) error { return s.Valid() }); err != nil {
		var ce http2.ConnectionError
		if errors.As(err, &ce) {
			return connErr(http2.ErrCode(ce), "invalid SETTINGS value")
		}
		return err
	}
	ack := ctrlItem{kind: ctrlSettingsAck}
	c.mu.Lock()
	var err error
	_ = f.ForeachSetting(func(s http2.Setting) error {
		switch s.ID {
		case http2.SettingInitialWindowSize:
			// RFC 9113 section 6.9.2: adjust every open stream's window.
			delta := int64(s.Val) - c.peerInitWin
			c.peerInitWin = int64(s.Val)
			for _, st := range c.streams {
				st.sendWin += delta
				if st.sendWin > maxWindow {
					err = connErr(http2.ErrCodeFlowControl, "SETTINGS_INITIAL_WINDOW_SIZE overflows a stream window")
				}
				c.markReady(st)
			}
		case http2.SettingMaxFrameSize:
			c.peerMaxFrame = s.Val
		case http2.SettingMaxHeaderListSize:
			c.peerMaxHdrList = s.Val
		case http2.SettingHeaderTableSize:
			ack.ack = true // the writer applies the new table size limit
			ack.n = min(s.Val, 4096)
		}
		return nil
	})
	if err == nil {
		c.queue(ack)
	}
	c.mu.Unlock()
	if err != nil {
		return err
	}
	h.handleSettings(f)
	return nil
}

func (c *conn) handleWindowUpdate(h frameHandler, f *http2.WindowUpdateFrame) error {
	c.mu.Lock()
	defer c.unlock()
	if c.floodChecks {
		c.windowUpdRx++
		if c.windowUpdRx > 5+2*(c.streamsOpened+int64(c.limits.MaxWindowUpdatesPerDataFrame)*c.dataFramesTx.Load()) {
			return floodError(c.st.InboundWindowUpdateFlood, "too many WINDOW_UPDATE frames")
		}
	}
	if f.StreamID == 0 {
		c.sendConnWin += int64(f.Increment)
		if c.sendConnWin > maxWindow {
			return connErr(http2.ErrCodeFlowControl, "connection window above 2^31-1")
		}
		if c.readyHead < len(c.ready) {
			c.wcond.Signal()
		}
		return nil
	}
	s := c.streams[f.StreamID]
	if s == nil {
		if h.isIdle(f.StreamID) {
			return connErr(http2.ErrCodeProtocol, "WINDOW_UPDATE on idle stream")
		}
		return nil
	}
	s.sendWin += int64(f.Increment)
	if s.sendWin > maxWindow {
		c.resetForPeer(s, http2.ErrCodeFlowControl, "stream window above 2^31-1")
		return nil
	}
	c.markReady(s)
	return nil
}

func (c *conn) handleRST(h frameHandler, f *http2.RSTStreamFrame) error {
	c.mu.Lock()
	defer c.unlock()
	s := c.streams[f.StreamID]
	if s == nil {
		if h.isIdle(f.StreamID) {
			return connErr(http2.ErrCodeProtocol, "RST_STREAM on idle stream")
		}
		return nil
	}
	c.st.RxReset.Inc()
	if c.isClient && f.ErrCode == http2.ErrCodeNo && s.recvDone {
		// RFC 9113 section 8.1: after a complete response, RST_STREAM
		// NO_ERROR only asks the client to stop sending the request; the
		// response stands and must not be discarded.
		c.releaseSend(int64(s.sendQ.reset()))
		s.sendEnd, s.sentEnd, s.stoppedByPeer = true, true, true
		c.removeStream(s, nil)
		return nil
	}
	if c.onPeerReset != nil {
		c.onPeerReset(s)
	}
	e := &stream.Error{Code: stream.ErrCode(f.ErrCode), Remote: true, Reason: "reset by peer"}
	if c.isClient && f.ErrCode == http2.ErrCodeRefusedStream {
		c.st.StreamRefused.Inc()
		c.refusedStreams.Add(1)
		c.pendingRefused = true
		e.Unprocessed = true
		e.Reason = "refused by peer"
	}
	c.failStream(s, e)
	return nil
}

func (c *conn) handleData(h frameHandler, f *http2.DataFrame) error {
	n := int64(f.Length)
	data := f.Data()
	if err := c.checkEmptyFrame(n == 0, f.StreamEnded()); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.unlock()
	if n > c.recvConnAvail {
		return connErr(http2.ErrCodeFlowControl, "DATA beyond the connection window")
	}
	c.recvConnAvail -= n
	c.recvData += n
	s := c.streams[f.StreamID]
	if s == nil || s.recvDone {
		c.consumeConn(n)
		if s == nil && h.isIdle(f.StreamID) {
			return connErr(http2.ErrCodeProtocol, "DATA on idle stream")
		}
		if s != nil {
			c.resetForPeer(s, http2.ErrCodeStreamClosed, "DATA after END_STREAM")
		} else {
			c.queue(ctrlItem{kind: ctrlRST, id: f.StreamID, code: http2.ErrCodeStreamClosed})
		}
		return nil
	}
	if s.awaitingHeaders {
		c.consumeConn(n)
		c.resetForPeer(s, http2.ErrCodeProtocol, "DATA before HEADERS")
		return nil
	}
	if n > s.recvWin {
		c.consumeConn(n)
		c.resetForPeer(s, http2.ErrCodeFlowControl, "DATA beyond the stream window")
		return nil
	}
	s.recvWin -= n
	if s.recvWin <= 0 {
		c.setStall(s, StallLocalRead)
	}
	// The connection window is returned on receipt, as grpc-go does: the
	// stream window bounds what one stream buffers, so a stream whose
	// reader stalls (a slow downstream client behind this upstream
	// stream) cannot hold the connection window and block its siblings.
	c.consumeConn(n)
	// Padding is consumed at once.
	s.recvUnacked += n - int64(len(data))
	s.recvN += int64(len(data))
	if s.recvCL >= 0 && (s.recvN > s.recvCL || (f.StreamEnded() && s.recvN != s.recvCL)) {
		c.resetForPeer(s, http2.ErrCodeProtocol, "body length differs from content-length")
		return nil
	}
	if len(data) > 0 {
		s.recvQ.append(data)
	}
	if f.StreamEnded() {
		s.recvDone = true
		if s.sentEnd {
			c.removeStream(s, nil)
		}
	}
	s.cond.Broadcast()
	return nil
}

// strm is one stream's state, shared by the server and client wrappers.
// Every field is guarded by c.mu.
type strm struct {
	c    *conn
	id   uint32
	cond sync.Cond // L is &c.mu; broadcast on every change a Read or Write waits for

	// Receive side.
	recvQ           dataBuf
	recvWin         int64 // what the peer may still send on this stream
	recvUnacked     int64
	recvDone        bool // END_STREAM received
	recvCL          int64
	recvN           int64
	trailers        header.Header
	awaitingHeaders bool // client: no response HEADERS yet

	// Send side.
	sendQ        dataBuf
	sendWin      int64
	sendEnd      bool                 // the local side asked to end the stream
	sendTrailers *[]hpack.HeaderField // pooled (fieldsPool); nil: none
	sentEnd      bool                 // the final frame was handed to the writer
	inReady      bool
	rstSent      bool
	// headersSkipped: the writer dropped this client stream's opening
	// HEADERS because it was reset first, so its RST_STREAM must be dropped
	// too. Guarded by mu.
	headersSkipped bool
	rstAfterEnd    bool // server: RST_STREAM NO_ERROR after the final frame

	client *clientStream // set on client streams
	server *serverStream // set on server streams

	err     *stream.Error // set once the stream failed
	removed bool
	// stoppedByPeer: the peer answered in full, then RST_STREAM NO_ERROR.
	stoppedByPeer bool
	cancel        context.CancelFunc // server: cancels the handler's context. Called once the stream is removed
	// stopAfter (client) stops the context.AfterFunc that resets the
	// stream when the caller's context ends. Called once it is removed.
	stopAfter func() bool

	// Stall detection (stall.go): why the stream is not moving, and since
	// when (nanotime).
	stall      StallReason
	stallSince int64
}

func (c *conn) newStrm(s *strm, id uint32) {
	s.c = c
	s.id = id
	s.cond.L = &c.mu
	win := int64(c.localStreamWin)
	if !c.settingsAcked {
		// The peer may not have seen our SETTINGS yet.
		win = max(win, initialWindowSize)
	}
	s.recvWin = win
	s.recvCL = -1
	s.sendWin = c.peerInitWin
	c.streams[id] = s
	c.streamsOpened++
	c.st.StreamsActive.Inc()
}

// read implements the body Read of both stream kinds.
func (s *strm) read(p []byte) (int, error) {
	c := s.c
	c.mu.Lock()
	defer c.unlock()
	for s.recvQ.n == 0 {
		if s.recvDone {
			return 0, io.EOF
		}
		if s.err != nil {
			return 0, s.err
		}
		if len(p) == 0 {
			return 0, nil
		}
		s.cond.Wait()
	}
	n := s.recvQ.read(p)
	if !s.recvDone && s.err == nil {
		s.recvUnacked += int64(n)
		if s.recvUnacked >= int64(c.localStreamWin)/4 {
			s.recvWin += s.recvUnacked
			c.queue(ctrlItem{kind: ctrlWindowUpdate, id: s.id, n: uint32(s.recvUnacked)})
			s.recvUnacked = 0
		}
	}
	if s.stall == StallLocalRead && (s.recvQ.n == 0 || s.recvWin > 0) {
		// Read everything that arrived, or reopened the window.
		c.setStall(s, StallNone)
	}
	return n, nil
}

// bufferedWindows clamps the receive windows a connection advertises to its
// buffer limit (0 = no limit), so the peer can never make it buffer more;
// the connection window stays at least the RFC's initial 65535.
func bufferedWindows(streamWin, connWin, limit uint32) (uint32, uint32) {
	if limit == 0 {
		return streamWin, connWin
	}
	return min(orDefault(streamWin, DefaultWindowSize), limit),
		min(orDefault(connWin, DefaultWindowSize), max(limit, initialWindowSize))
}

// errWriteAfterEnd is returned by writes after the send side ended.
var errWriteAfterEnd = errors.New("http2: write after end of stream")

// ErrRequestStopped is returned by a client stream's Write and CloseWrite
// after the server sent a complete response and then RST_STREAM NO_ERROR
// (RFC 9113 section 8.1): the rest of the request is not wanted, and the
// response remains readable.
var ErrRequestStopped = errors.New("http2: server completed the response and stopped the request")

// write implements the body Write of both stream kinds.
func (s *strm) write(p []byte) (int, error) {
	c := s.c
	c.mu.Lock()
	defer c.unlock()
	n := 0
	for len(p) > 0 {
		if s.err != nil {
			return n, s.err
		}
		if s.stoppedByPeer {
			return n, ErrRequestStopped
		}
		if s.sendEnd {
			return n, errWriteAfterEnd
		}
		room := sendBufLimit - s.sendQ.n
		if c.sendLimit > 0 {
			room = min(room, int(c.sendLimit-c.pendingSend))
		}
		if room <= 0 {
			if s.sendQ.n < sendBufLimit {
				c.sendBlocked = true
			}
			if s.sendWin <= 0 || c.sendConnWin <= 0 {
				c.setStall(s, StallPeerWindow)
			} else {
				c.setStall(s, StallWriteFlush)
			}
			s.cond.Wait()
			continue
		}
		k := min(len(p), room)
		s.sendQ.append(p[:k])
		c.pendingSend += int64(k)
		c.st.PendingSendBytes.Add(int64(k))
		c.checkOutbound()
		p = p[k:]
		n += k
		c.markReady(s)
	}
	return n, nil
}

// end asks the writer to end the send side, with trailers if non-nil.
// Caller holds mu.
func (s *strm) end(trailers *[]hpack.HeaderField) error {
	if s.err != nil {
		return s.err
	}
	if s.stoppedByPeer {
		return ErrRequestStopped
	}
	if s.sendEnd {
		return errWriteAfterEnd
	}
	s.sendEnd = true
	s.sendTrailers = trailers
	s.c.markReady(s)
	return nil
}

// reset is Reset for both stream kinds.
func (s *strm) reset(code stream.ErrCode) {
	c := s.c
	c.mu.Lock()
	defer c.unlock()
	if s.removed {
		return
	}
	c.resetStream(s, http2.ErrCode(code), false, "reset locally")
}
