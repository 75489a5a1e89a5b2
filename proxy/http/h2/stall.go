package h2

import (
	"cmp"
	"slices"
	"sync"
	"time"

	"meshd.dev/meshd/proxy/stats"
)

// StallReason is why an open stream is not moving. Each stream carries one
// (a byte, set under the connection mutex where the stream's state already
// changes) and the time it entered it; no timer runs per stream.
type StallReason uint8

// Stall reasons. StallNone means the stream is not waiting on anything the
// codec can name (it may simply have nothing to send).
const (
	StallNone StallReason = iota
	// StallPeerHeaders: a client stream sent its request and the peer has
	// not answered with response headers yet (S6 when it lasts).
	StallPeerHeaders
	// StallPeerWindow: body bytes are queued but the peer's stream or
	// connection flow-control window is closed.
	StallPeerWindow
	// StallLocalRead: the stream's receive window is used up because the
	// local side (the application, or the other half of the proxy) has not
	// read what arrived, so the peer cannot send more.
	StallLocalRead
	// StallWriteFlush: the stream's send buffer (or the connection's
	// per_connection_buffer_limit_bytes) is full while the peer's windows
	// are open: the connection's writer has not flushed to the socket (TCP
	// back-pressure).
	StallWriteFlush
	// StallStreamSlot: an upstream stream waits in the connection pool for a
	// free stream slot (max_concurrent_streams × max_connections reached).
	StallStreamSlot
	numStallReasons
)

var stallNames = [numStallReasons]string{"none", "peer_headers", "peer_window", "local_read", "write_flush", "stream_slot"}

// String returns the reason's name as /debug/streams and the
// http2.stream_stall_<reason> stats spell it.
func (r StallReason) String() string {
	if r < numStallReasons {
		return stallNames[r]
	}
	return "unknown"
}

// StallReasons lists the reasons other than StallNone, in order.
func StallReasons() []StallReason {
	rs := make([]StallReason, 0, numStallReasons-1)
	for r := StallNone + 1; r < numStallReasons; r++ {
		rs = append(rs, r)
	}
	return rs
}

// StallCountThreshold is how long a stream must stay in one stall reason to
// be counted in http2.stream_stall_<reason> (counted when it leaves that
// reason or ends). Shorter waits are ordinary flow control.
const StallCountThreshold = time.Second

// epoch anchors the codec's monotonic stall timestamps; set once at init.
var epoch = time.Now()

func nanotime() int64 { return int64(time.Since(epoch)) }

// newStallCounters returns http2.stream_stall_<reason> counters in scope, or
// counters in no store when scope is nil. Index StallNone is nil.
func newStallCounters(scope *stats.Scope) [numStallReasons]*stats.Counter {
	var cs [numStallReasons]*stats.Counter
	for _, r := range StallReasons() {
		if scope == nil {
			cs[r] = new(stats.Counter)
		} else {
			cs[r] = scope.Counter("stream_stall_" + r.String())
		}
	}
	return cs
}

// setStall moves s to reason r, counting the reason it leaves when s spent
// at least StallCountThreshold in it. Caller holds c.mu.
func (c *conn) setStall(s *strm, r StallReason) {
	if s.stall == r {
		return
	}
	now := nanotime()
	if s.stall != StallNone && now-s.stallSince >= int64(StallCountThreshold) {
		c.st.Stalls[s.stall].Inc()
	}
	s.stall, s.stallSince = r, now
}

// sendProgress records that s's body moved: a client stream still waiting
// for its response goes back to StallPeerHeaders, any other to StallNone.
// Caller holds c.mu.
func (c *conn) sendProgress(s *strm) {
	if s.stall != StallPeerWindow && s.stall != StallWriteFlush {
		return
	}
	if s.awaitingHeaders {
		c.setStall(s, StallPeerHeaders)
	} else {
		c.setStall(s, StallNone)
	}
}

// streamTableKey finds a store's StreamTable (stats.Store.Shared).
type streamTableKey struct{}

// StreamTable is the set of live HTTP/2 connections (and pool waits) whose
// Stats were created in one stats store: what the admin endpoint
// /debug/streams reports. Connections join when created and leave when
// closed.
type StreamTable struct {
	mu    sync.Mutex
	conns map[*conn]struct{}
	waits map[*slotWait]struct{}
}

// TableOf returns the StreamTable of store, creating it on first use.
func TableOf(store *stats.Store) *StreamTable {
	return store.Shared(streamTableKey{}, func() any {
		return &StreamTable{conns: map[*conn]struct{}{}, waits: map[*slotWait]struct{}{}}
	}).(*StreamTable)
}

func (t *StreamTable) add(c *conn) {
	t.mu.Lock()
	t.conns[c] = struct{}{}
	t.mu.Unlock()
}

func (t *StreamTable) remove(c *conn) {
	t.mu.Lock()
	delete(t.conns, c)
	t.mu.Unlock()
}

// slotWait is one stream waiting in a pool for a stream slot.
type slotWait struct {
	scope string
	peer  string
	since int64
}

// WaitForSlot records that a stream to peer ("ip:port") began waiting in a
// connection pool for a free stream slot, and returns the function to call
// once the wait ends (with a slot or not). The wait shows in /debug/streams
// as stream_slot and, when it lasted StallCountThreshold or more, counts in
// stream_stall_stream_slot. Call it only when a stream has to queue.
func (st *Stats) WaitForSlot(peer string) (done func()) {
	w := &slotWait{scope: st.label, peer: peer, since: nanotime()}
	if st.table != nil {
		st.table.mu.Lock()
		st.table.waits[w] = struct{}{}
		st.table.mu.Unlock()
	}
	return func() {
		if st.table != nil {
			st.table.mu.Lock()
			delete(st.table.waits, w)
			st.table.mu.Unlock()
		}
		if nanotime()-w.since >= int64(StallCountThreshold) {
			st.Stalls[StallStreamSlot].Inc()
		}
	}
}

// StreamState is one waiting stream as /debug/streams shows it.
type StreamState struct {
	// Scope is the stats scope of the stream's connection:
	// "cluster.<name>.http2" upstream, "http2" downstream.
	Scope string `json:"scope"`
	// Side is "upstream" (meshd is the client) or "downstream".
	Side string `json:"side"`
	// Local and Peer are the connection's addresses (Peer only for a pool
	// wait, which has no connection yet).
	Local string `json:"local,omitempty"`
	Peer  string `json:"peer"`
	// StreamID is 0 for a pool wait.
	StreamID uint32 `json:"stream_id,omitempty"`
	// State is the StallReason's name.
	State string `json:"state"`
	// ForMS is how long the stream has been in State, in milliseconds.
	ForMS int64 `json:"for_ms"`
}

// StreamsReport is the body of /debug/streams.
type StreamsReport struct {
	// Connections and ActiveStreams count every live HTTP/2 connection and
	// its open streams.
	Connections   int `json:"connections"`
	ActiveStreams int `json:"active_streams"`
	// States counts the waiting streams (including pool waits) per state.
	States map[string]int `json:"states"`
	// Waiting lists every stream in a state other than "none", longest
	// wait first.
	Waiting []StreamState `json:"waiting"`
	// CountThresholdMS is StallCountThreshold: a wait at least this long is
	// counted in http2.stream_stall_<state>.
	CountThresholdMS int64 `json:"count_threshold_ms"`
}

// Snapshot reports every live connection's waiting streams. It locks each
// connection's mutex in turn, briefly.
func (t *StreamTable) Snapshot() StreamsReport {
	t.mu.Lock()
	conns := make([]*conn, 0, len(t.conns))
	for c := range t.conns {
		conns = append(conns, c)
	}
	rep := StreamsReport{States: map[string]int{}, Waiting: []StreamState{}, CountThresholdMS: StallCountThreshold.Milliseconds()}
	now := nanotime()
	for w := range t.waits {
		rep.Waiting = append(rep.Waiting, StreamState{Scope: w.scope, Side: "upstream", Peer: w.peer, State: StallStreamSlot.String(), ForMS: (now - w.since) / 1e6})
	}
	t.mu.Unlock()
	for _, c := range conns {
		side := "downstream"
		if c.isClient {
			side = "upstream"
		}
		local, peer := c.nc.LocalAddr().String(), c.nc.RemoteAddr().String()
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			continue
		}
		rep.Connections++
		rep.ActiveStreams += len(c.streams)
		for _, s := range c.streams {
			if s.stall == StallNone {
				continue
			}
			rep.Waiting = append(rep.Waiting, StreamState{Scope: c.st.label, Side: side, Local: local, Peer: peer,
				StreamID: s.id, State: s.stall.String(), ForMS: (now - s.stallSince) / 1e6})
		}
		c.mu.Unlock()
	}
	for _, w := range rep.Waiting {
		rep.States[w.State]++
	}
	slices.SortFunc(rep.Waiting, func(a, b StreamState) int {
		return cmp.Or(cmp.Compare(b.ForMS, a.ForMS), cmp.Compare(a.Peer, b.Peer), cmp.Compare(a.StreamID, b.StreamID))
	})
	return rep
}
