// Package h2 is meshd's HTTP/2 codec (RFC 9113), server and client, built on
// golang.org/x/net/http2's Framer and hpack the way grpc-go's transport is.
// The Framer parses frames; header blocks (HEADERS and CONTINUATION) are
// decoded by the codec into a field slice each connection reuses, with
// every rule the Framer's ReadMetaHeaders enforced (see headerReader).
//
// Each connection has exactly two goroutines: a reader that owns frame
// parsing and stream state transitions, and a writer that owns the socket's
// writes. Everyone else (handlers, client callers, timers) queues typed items
// for the writer under the connection mutex. Streams are state machines
// inside the connection; the codec starts no goroutine per stream. The
// server runs each Handler on a handler goroutine, which then waits up to a
// second for the connection's next stream before exiting, so under load
// goroutines (and the stacks they grew) are reused rather than started
// per stream.
//
// Defaults follow Envoy's http2_protocol_options: SETTINGS_MAX_CONCURRENT_STREAMS
// 2147483647, initial stream and connection windows 268435456 (256 MiB),
// SETTINGS_MAX_FRAME_SIZE 16384 and a 60 KiB header list limit.
package h2

import (
	"sync"

	"golang.org/x/net/http2"

	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/proxy/stats"
)

// Defaults for the zero values of ServerConfig and ClientConfig fields.
const (
	DefaultMaxConcurrentStreams = 1<<31 - 1
	DefaultWindowSize           = 256 << 20
	DefaultMaxFrameSize         = 16384
	DefaultMaxHeaderListSize    = 60 << 10
)

const (
	initialWindowSize = 65535     // RFC 9113 section 6.9.2
	maxWindow         = 1<<31 - 1 // RFC 9113 section 6.9.1
	maxStreamID       = 1<<31 - 1
	chunkSize         = 16 << 10
	// sendBufLimit is how much body data a stream queues for the writer
	// before Write blocks; it bounds memory when the peer's window is closed.
	sendBufLimit = 64 << 10
)

// Stats are the http2.* counters Envoy keeps per HTTP connection manager or
// cluster, plus meshd's own (marked below). A nil *Stats in a config means
// the connection counts nothing.
type Stats struct {
	RxReset          *stats.Counter // rx_reset: RST_STREAM received
	TxReset          *stats.Counter // tx_reset: RST_STREAM sent
	GoAwaySent       *stats.Counter // goaway_sent
	GoAwayRx         *stats.Counter // goaway_rx (meshd): GOAWAY received
	KeepaliveTimeout *stats.Counter // keepalive_timeout: PING not acknowledged in time
	HeaderOverflow   *stats.Counter // header_overflow: header list above the limit
	RxMessagingError *stats.Counter // rx_messaging_error: invalid frame or header from the peer
	TxFlushTimeout   *stats.Counter // tx_flush_timeout: final GOAWAY could not be flushed in time
	StreamRefused    *stats.Counter // stream_refused_errors: REFUSED_STREAM received
	TxRefusedStream  *stats.Counter // tx_refused_stream (meshd): REFUSED_STREAM sent for streams above the limit
	TooManyHeaders   *stats.Counter // too_many_header_frames: a third HEADERS block on one stream
	TooManyPings     *stats.Counter // too_many_pings (meshd): GOAWAY ENHANCE_YOUR_CALM sent for ping strikes
	StreamsActive    *stats.Gauge   // streams_active
	PendingSendBytes *stats.Gauge   // pending_send_bytes: body bytes queued but not yet written

	// Flood protection (Envoy's names; each closes the connection with
	// GOAWAY ENHANCE_YOUR_CALM).
	OutboundControlFlood     *stats.Counter // outbound_control_flood: too many PING/SETTINGS ACKs and RST_STREAMs queued unsent
	InboundEmptyFramesFlood  *stats.Counter // inbound_empty_frames_flood: consecutive empty DATA/HEADERS frames
	InboundPriorityFlood     *stats.Counter // inbound_priority_frames_flood: PRIORITY frames beyond 100 per opened stream
	InboundWindowUpdateFlood *stats.Counter // inbound_window_update_frames_flood: WINDOW_UPDATEs out of proportion to DATA sent
	OutboundFlood            *stats.Counter // outbound_flood: too many frames of any kind queued unsent
	// RequestHeadersTimeout counts connections closed because a header
	// block was not complete within request_headers_timeout (Envoy's
	// downstream_rq_header_timeout, in the connection manager's scope).
	RequestHeadersTimeout *stats.Counter

	// Connection manager counters the server connection feeds. Envoy keeps
	// them in the connection manager's scope ("http.<stat_prefix>."), so
	// the connection manager points these at its own counters; NewStats
	// leaves them counting in no store.
	CxIdleTimeout        *stats.Counter // downstream_cx_idle_timeout: closed by idle_timeout
	CxMaxDurationReached *stats.Counter // downstream_cx_max_duration_reached: drained by max_connection_duration
	CxMaxRequestsReached *stats.Counter // downstream_cx_max_requests_reached: drained by max_requests_per_connection
	// DownstreamPrematureResets is downstream_rq_too_many_premature_resets:
	// connections closed because most of their streams were reset by the
	// client before a response (rapid reset, CVE-2023-44487).
	DownstreamPrematureResets *stats.Counter

	// Stalls[r] is stream_stall_<r> (meshd): streams that spent at least
	// StallCountThreshold in stall reason r (index StallNone is nil).
	Stalls [numStallReasons]*stats.Counter

	label string       // the scope's name, for /debug/streams
	table *StreamTable // the store's live connections; nil counts nowhere
}

// NewStats creates the counters in scope, which is normally a scope named
// "http2" (so the names read "http2.rx_reset", "cluster.x.http2.rx_reset").
func NewStats(scope *stats.Scope) *Stats {
	return &Stats{
		RxReset:          scope.Counter("rx_reset"),
		TxReset:          scope.Counter("tx_reset"),
		GoAwaySent:       scope.Counter("goaway_sent"),
		GoAwayRx:         scope.Counter("goaway_rx"),
		KeepaliveTimeout: scope.Counter("keepalive_timeout"),
		HeaderOverflow:   scope.Counter("header_overflow"),
		RxMessagingError: scope.Counter("rx_messaging_error"),
		TxFlushTimeout:   scope.Counter("tx_flush_timeout"),
		StreamRefused:    scope.Counter("stream_refused_errors"),
		TxRefusedStream:  scope.Counter("tx_refused_stream"),
		TooManyHeaders:   scope.Counter("too_many_header_frames"),
		TooManyPings:     scope.Counter("too_many_pings"),
		StreamsActive:    scope.Gauge("streams_active"),
		PendingSendBytes: scope.Gauge("pending_send_bytes"),

		OutboundControlFlood:      scope.Counter("outbound_control_flood"),
		InboundEmptyFramesFlood:   scope.Counter("inbound_empty_frames_flood"),
		InboundPriorityFlood:      scope.Counter("inbound_priority_frames_flood"),
		InboundWindowUpdateFlood:  scope.Counter("inbound_window_update_frames_flood"),
		OutboundFlood:             scope.Counter("outbound_flood"),
		RequestHeadersTimeout:     new(stats.Counter),
		DownstreamPrematureResets: new(stats.Counter),
		CxIdleTimeout:             new(stats.Counter),
		CxMaxDurationReached:      new(stats.Counter),
		CxMaxRequestsReached:      new(stats.Counter),
		Stalls:                    newStallCounters(scope),
		label:                     scope.Name(),
		table:                     TableOf(scope.Store()),
	}
}

// discardStats returns a Stats whose metrics belong to no store, so the
// codec can count unconditionally.
func discardStats() *Stats {
	var d struct {
		c [22]stats.Counter
		g [2]stats.Gauge
	}
	return &Stats{
		RxReset: &d.c[0], TxReset: &d.c[1], GoAwaySent: &d.c[2], GoAwayRx: &d.c[3],
		KeepaliveTimeout: &d.c[4], HeaderOverflow: &d.c[5], RxMessagingError: &d.c[6],
		TxFlushTimeout: &d.c[7], StreamRefused: &d.c[8], TxRefusedStream: &d.c[9],
		TooManyHeaders: &d.c[10], TooManyPings: &d.c[11],
		StreamsActive: &d.g[0], PendingSendBytes: &d.g[1],
		OutboundControlFlood: &d.c[12], InboundEmptyFramesFlood: &d.c[13], InboundPriorityFlood: &d.c[14],
		InboundWindowUpdateFlood: &d.c[15], DownstreamPrematureResets: &d.c[16],
		CxIdleTimeout: &d.c[17], CxMaxDurationReached: &d.c[18], CxMaxRequestsReached: &d.c[19],
		OutboundFlood: &d.c[20], RequestHeadersTimeout: &d.c[21],
		Stalls: newStallCounters(nil),
	}
}

// connError is a connection error (RFC 9113 section 5.4.1): the reader
// returns it, the connection sends GOAWAY with code and closes.
type connError struct {
	code   stream.ErrCode
	reason string
}

func (e connError) Error() string {
	return "http2: connection error " + e.code.String() + ": " + e.reason
}

func connErr(code http2.ErrCode, reason string) error {
	return connError{code: stream.ErrCode(code), reason: reason}
}

// chunkPool holds body buffers shared by all connections' send and receive
// queues.
var chunkPool = sync.Pool{New: func() any { b := make([]byte, 0, chunkSize); return &b }}

// dataBuf is a FIFO of body bytes in pooled chunks. Only the tail chunk is
// ever appended to, so a reader of the head chunk's already-filled bytes
// never races with an appender.
type dataBuf struct {
	chunks []*[]byte
	off    int // read offset into chunks[0]
	n      int // unread bytes
	// inline backs chunks while it holds at most two chunks (a unary
	// message's body), so a stream's buffer costs no allocation of its
	// own. A dataBuf must not be copied once used.
	inline [2]*[]byte
}

// append copies p into the buffer.
func (b *dataBuf) append(p []byte) {
	b.n += len(p)
	for len(p) > 0 {
		var tail *[]byte
		if k := len(b.chunks); k > 0 && cap(*b.chunks[k-1])-len(*b.chunks[k-1]) > 0 {
			tail = b.chunks[k-1]
		} else {
			tail = chunkPool.Get().(*[]byte)
			*tail = (*tail)[:0]
			if b.chunks == nil {
				b.chunks = b.inline[:0]
			}
			b.chunks = append(b.chunks, tail)
		}
		k := min(len(p), cap(*tail)-len(*tail))
		*tail = append(*tail, p[:k]...)
		p = p[k:]
	}
}

// read copies up to len(p) bytes out, releasing drained chunks.
func (b *dataBuf) read(p []byte) int {
	n := 0
	for n < len(p) && b.n > 0 {
		head := *b.chunks[0]
		k := copy(p[n:], head[b.off:])
		n += k
		b.off += k
		b.n -= k
		if b.off == len(head) {
			b.popHead(true)
		}
	}
	return n
}

// peek returns up to max bytes from the head chunk without copying. When
// the head chunk is consumed by it, the chunk is unlinked and returned as
// release so the caller can put it back after using the bytes.
func (b *dataBuf) peek(max int) (p []byte, release *[]byte) {
	head := *b.chunks[0]
	k := min(max, len(head)-b.off)
	p = head[b.off : b.off+k]
	b.off += k
	b.n -= k
	if b.off == len(head) {
		release = b.chunks[0]
		b.popHead(false)
	}
	return p, release
}

func (b *dataBuf) popHead(free bool) {
	if free {
		chunkPool.Put(b.chunks[0])
	}
	b.chunks[0] = nil
	b.chunks = b.chunks[1:]
	b.off = 0
	if len(b.chunks) == 0 {
		// Back to the inline array, dropping a grown one.
		b.chunks = b.inline[:0]
	}
}

// reset drops everything, returning the chunks to the pool.
func (b *dataBuf) reset() int {
	n := b.n
	for _, c := range b.chunks {
		chunkPool.Put(c)
	}
	clear(b.chunks)
	b.chunks = b.chunks[:0]
	b.off, b.n = 0, 0
	return n
}
