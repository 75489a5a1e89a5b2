package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"meshd.dev/meshd/proxy/http/h2"
	"meshd.dev/meshd/proxy/http/h3"
	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/proxy/stats"
	"meshd.dev/meshd/xds/observe"
)

// assumedStreamsPerConn is the stream capacity the pool expects of a
// connection being dialled before any peer SETTINGS told it better.
const assumedStreamsPerConn = 100

// maxPlaceAttempts bounds how often one NewStream tries another connection
// after losing a race for a slot (the connection filled up or went away
// between the pick and the open).
const maxPlaceAttempts = 8

// muxConn is a multiplexed upstream connection as the pool drives it:
// an HTTP/2 connection (*h2.ClientConn) or an HTTP/3 one (*h3.ClientConn).
// Its events reach the pool through the callbacks the pool's connector
// installs (limit, GOAWAY, stream done, close).
type muxConn interface {
	// Capacity is how many more streams the connection takes now.
	Capacity() int
	NewStream(ctx context.Context, req *stream.Request, endStream bool) (stream.ClientStream, error)
	// ActiveStreams is how many streams are open on the connection: opened
	// and not yet ended, as the codec counts them (a stream it removed is
	// no longer counted when its OnStreamDone runs).
	ActiveStreams() int
	// RefusedStreams is how many of the connection's streams the peer
	// refused unprocessed (REFUSED_STREAM, H3_REQUEST_REJECTED). A
	// refusal is counted no earlier than its stream leaves ActiveStreams
	// and before the stream's Response returns it. The codec also reports
	// each refusal through the callback the connector installs
	// (refusalReported).
	RefusedStreams() uint64
	// Shutdown closes the connection gracefully once its streams end.
	Shutdown()
	Close() error
}

// keepalivePinger is a muxConn that can send a keepalive PING on demand
// (HTTP/2; QUIC keepalive runs inside quic-go).
type keepalivePinger interface{ KeepalivePing() }

// observer is a muxConn that measures its path and load (HTTP/2).
type observer interface{ Observe() h2.Observation }

// h2Pool multiplexes streams to one endpoint over as few connections as
// the peer's stream limit allows: HTTP/2 connections limited by
// SETTINGS_MAX_CONCURRENT_STREAMS, or HTTP/3 ones limited by QUIC's
// MAX_STREAMS (h3pool.go supplies that connector; the policy is the same).
//
// A stream goes to the oldest usable connection with a free slot, where a
// connection's capacity is min(peer SETTINGS_MAX_CONCURRENT_STREAMS,
// http2_protocol_options.max_concurrent_streams), read from the codec at
// every pick so a lowered limit applies at once. With no free slot the pool
// dials another connection if the cluster's max_connections allows, and
// the stream waits in a FIFO queue bounded cluster-wide by
// max_pending_requests; beyond that NewStream fails with ErrOverflow.
// Failed dials back off per endpoint with full jitter; while backing off
// with no connection, streams fail at once with a connect failure, except
// for a short hold after refused dials (see holdWaitersLocked).
//
// The pool outlives its connections and remembers per endpoint the
// keepalive interval, doubled on each GOAWAY ENHANCE_YOUR_CALM
// "too_many_pings" up to maxKeepaliveInterval.
type h2Pool struct {
	addr   string
	spec   *Spec
	stats  *Stats
	sh     *poolShared
	logger *slog.Logger

	mu         sync.Mutex
	conns      []*pconn // usable and draining connections, oldest first
	connecting int
	waiters    []*waiter // FIFO
	closed     bool
	// limitHint is the stream limit the last SETTINGS gave (capped by the
	// local max_concurrent_streams), used to plan dials.
	limitHint int
	// Dial backoff.
	failures int
	retryAt  time.Time
	lastErr  error
	// refusedSince is when the dials since the last good connection
	// began to be refused, all of them, if the endpoint had served before
	// (zero otherwise): the start of a restart hold (holdWaitersLocked).
	refusedSince time.Time
	// connected is set once a dial to the endpoint has succeeded.
	connected bool
	kickTimer *time.Timer
	// kaInterval is this endpoint's current keepalive interval.
	kaInterval time.Duration
	kaGauge    *stats.Gauge
	// connect dials the endpoint and sets pc.cc, wiring the connection's
	// events to the pool: connectH2, or connectH3 for HTTP/3.
	connect func(pc *pconn) error
	// h3Dialed, set by tests only, runs in connectH3 after the QUIC and
	// HTTP/3 handshakes succeeded and before the connection is counted,
	// where a peer's close may already be on its way.
	h3Dialed func(*h3.ClientConn)
	// obs accumulates what Observe reports for the current interval.
	obs poolObs
}

// poolObs is an endpoint's observation in progress (xds/observe). Guarded
// by the pool's mu, except overflow.
type poolObs struct {
	since    time.Time
	peerMCS  uint32
	peak     int
	pings    uint64
	wait     time.Duration
	overflow atomic.Uint64
}

// pconn is one connection of the pool. Fields other than cc are guarded
// by the pool's mu.
type pconn struct {
	cc         muxConn       // set once before the conn joins the pool
	kaInterval time.Duration // immutable: the interval it was opened with
	active     int           // streams placed and not yet done (may dip below 0 briefly)
	reserved   int           // slots promised to waiters not yet opened
	total      uint32        // streams ever placed
	draining   bool          // no new streams
	idleSince  time.Time     // when the last stream ended (for connection_idle_interval)
	settled    bool          // the peer's first SETTINGS arrived (or were assumed)
	limit      int           // stream limit from the last SETTINGS, capped locally
	closed     bool
	localClose bool // the pool closed it (Close)
	// opened is when the connection was established (Unix ns), for
	// upstream_cx_length_ms; set before onClose can run (connectH3 holds
	// an early close back), atomic because onClose runs on the codec's
	// goroutine.
	opened    atomic.Int64
	idleTimer *time.Timer
	ageTimer  *time.Timer
	lastRx    int64 // ReceivedBytes at the previous Observe
	// heldAt, when positive, holds the connection at capacity after a
	// refusal (refusedLocked): it takes no new stream until fewer than
	// heldAt streams are open on it, that is until one of the streams
	// open at the refusal completes.
	heldAt int
	// refusals is the codec's RefusedStreams the pool has learned from
	// (learnRefusalsLocked).
	refusals uint64
	// refusalPending: a refusal was learned while streams were being
	// opened on the connection (reserved), so the pool's view was short
	// by the refused stream's own reservation; the hold is decided again
	// as each of them is placed or fails (recheckRefusalLocked).
	refusalPending bool
}

// waiter is a stream queued for a slot.
type waiter struct {
	ready chan struct{} // closed once pc or err is set
	pc    *pconn        // the connection with a slot reserved for it
	err   error
	done  bool // handed a slot or an error (guarded by the pool's mu)
}

func newH2Pool(addr string, spec *Spec, st *Stats, sh *poolShared, logger *slog.Logger) *h2Pool {
	p := &h2Pool{
		addr:       addr,
		spec:       spec,
		stats:      st,
		sh:         sh,
		logger:     logger.With("endpoint", addr),
		limitHint:  assumedStreamsPerConn,
		kaInterval: spec.HTTP2.Keepalive.Interval,
		kaGauge:    sh.stats.keepaliveGauge(addr),
	}
	p.obs.since = time.Now()
	p.connect = p.connectH2
	if spec.Protocol == HTTP3 {
		p.connect = p.connectH3
	}
	if m := p.localStreamLimit(); m > 0 {
		p.limitHint = min(p.limitHint, int(m))
	}
	p.kaGauge.Set(p.kaInterval.Milliseconds())
	if spec.PreconnectRatio > 1 {
		// Envoy: with a preconnect ratio above 1 each host gets a
		// connection before the first stream needs it.
		p.mu.Lock()
		p.planDialsLocked()
		p.mu.Unlock()
	}
	return p
}

// NewStream opens a stream on a connection with a free slot, waiting in
// the pool's queue while ctx allows. Errors: ErrOverflow (wrapped) when a
// circuit breaker is full; an unprocessed *stream.Error with Reason
// "connect failure" when the endpoint cannot be reached; ctx's error
// (wrapped in a CANCEL *stream.Error) when ctx ends while queued.
func (p *h2Pool) NewStream(ctx context.Context, req *stream.Request, endStream bool) (stream.ClientStream, error) {
	return p.newStreamAvoiding(ctx, req, endStream, nil)
}

// newStreamAvoiding is NewStream for a request whose previous attempt the
// connection refusedBy refused unprocessed (nil: none, or a connection of
// another pool). The pool first makes sure it learned from the refusal
// (learnRefusalsLocked: the codec's report may still be on its way),
// then places the stream on another connection with a free slot, on a
// new connection when one may be dialled, and on refusedBy or in the
// queue otherwise. A connection that refuses the stream locally (its
// codec has fewer slots than the pool's view) is avoided the same way by
// the next placement attempt.
func (p *h2Pool) newStreamAvoiding(ctx context.Context, req *stream.Request, endStream bool, refusedBy stream.ClientConn) (stream.ClientStream, error) {
	sh := p.sh
	if sh.breaker.requests.Load() >= sh.breaker.maxRequests {
		sh.stats.rqPendingOverflow.Inc()
		p.obs.overflow.Add(1)
		return nil, fmt.Errorf("%w: max_requests (%d) reached", ErrOverflow, sh.breaker.maxRequests)
	}
	start := time.Now()
	p.mu.Lock()
	var avoid *pconn
	if refusedBy != nil {
		avoid = p.connLocked(refusedBy)
		if avoid != nil {
			p.learnRefusalsLocked(avoid)
		}
	}
	for attempt := 0; ; attempt++ {
		if p.closed {
			p.mu.Unlock()
			return nil, &stream.Error{Code: stream.ErrCodeRefusedStream, Unprocessed: true, Reason: "connection pool closed"}
		}
		var pc *pconn
		if len(p.waiters) == 0 { // FIFO: never overtake a queued stream
			pc = p.pickLocked(avoid)
		}
		if pc != nil {
			p.reserveLocked(pc)
		} else {
			var err error
			pc, err = p.waitLocked(ctx) // unlocks while waiting
			if err != nil {
				p.mu.Unlock()
				return nil, err
			}
		}
		if attempt == 0 {
			wait := time.Since(start)
			sh.stats.streamWait.Record(float64(wait.Microseconds()) / 1000)
			p.obs.wait = max(p.obs.wait, wait)
		}
		p.mu.Unlock()

		s, err := pc.cc.NewStream(ctx, req, endStream)

		p.mu.Lock()
		pc.reserved--
		if err == nil {
			p.placedLocked(pc)
			p.mu.Unlock()
			return s, nil
		}
		if pc.refusalPending {
			p.recheckRefusalLocked(pc)
		}
		p.idleCheckLocked(pc)
		if !stream.Unprocessed(err) || ctx.Err() != nil || attempt+1 >= maxPlaceAttempts {
			p.dispatchLocked()
			p.mu.Unlock()
			return nil, err
		}
		// Lost a race for the slot (the limit fell or the connection
		// went away): try again, elsewhere if possible.
		avoid = pc
		p.refusedLocked(pc)
	}
}

// waitLocked queues the caller until a slot is reserved for it, dialling
// as needed. It returns with mu held.
func (p *h2Pool) waitLocked(ctx context.Context) (*pconn, error) {
	sh := p.sh
	if len(p.conns) == 0 && p.connecting == 0 && time.Now().Before(p.retryAt) && !p.holdWaitersLocked() {
		return nil, connectFailure(fmt.Errorf("backing off after failed connects to %s: %w", p.addr, p.lastErr))
	}
	if !tryAcquire(&sh.breaker.pending, sh.breaker.maxPending) {
		sh.stats.rqPendingOverflow.Inc()
		p.obs.overflow.Add(1)
		return nil, fmt.Errorf("%w: max_pending_requests (%d) reached", ErrOverflow, sh.breaker.maxPending)
	}
	sh.stats.rqPendingTotal.Inc()
	sh.stats.rqPendingActive.Inc()
	defer func() {
		sh.breaker.pending.Add(-1)
		sh.stats.rqPendingActive.Dec()
	}()
	w := &waiter{ready: make(chan struct{})}
	p.waiters = append(p.waiters, w)
	p.notePeakLocked()
	p.planDialsLocked()
	p.mu.Unlock()
	waited := p.stats.HTTP2.WaitForSlot(p.addr) // /debug/streams: stream_slot
	select {
	case <-w.ready:
	case <-ctx.Done():
	}
	waited()
	p.mu.Lock()
	if !w.done {
		w.done = true
		if i := slices.Index(p.waiters, w); i >= 0 {
			p.waiters = slices.Delete(p.waiters, i, i+1)
		}
		return nil, &stream.Error{Code: stream.ErrCodeCancel, Unprocessed: true, Reason: "context done while waiting for a connection", Err: ctx.Err()}
	}
	if w.err != nil {
		return nil, w.err
	}
	return w.pc, nil
}

// freeLocked is how many more streams pc takes now. Two counts, each of
// which can only fall short: the codec's capacity less the pool's
// reservations (short while a reserved stream is being opened: the codec
// has it and the pool still holds its reservation), and, once the peer's
// SETTINGS are known, the pool's own count of streams placed against the
// current limit (short while a stream's end has not been reported yet).
// Before SETTINGS arrive the codec allows one stream. A codec that has
// fewer slots than the pool believes (a lowered limit in flight) refuses
// with an unprocessed error and NewStream tries again.
//
// A connection held after a refusal (pconn.heldAt) has no free slot.
func (p *h2Pool) freeLocked(pc *pconn) int {
	if pc.draining || pc.closed || pc.heldAt > 0 {
		return 0
	}
	free := pc.cc.Capacity() - pc.reserved
	if pc.settled {
		free = max(free, pc.limit-max(pc.active, 0)-pc.reserved)
	}
	return free
}

// pickLocked returns the oldest usable connection with a free slot other
// than avoid, else avoid if it has one, else nil. Packing streams onto the
// oldest connections lets idle_timeout reclaim the ones a burst left
// behind.
func (p *h2Pool) pickLocked(avoid *pconn) *pconn {
	var fallback *pconn
	for _, pc := range p.conns {
		if p.freeLocked(pc) > 0 {
			if pc != avoid {
				return pc
			}
			fallback = pc
		}
	}
	return fallback
}

// connLocked returns the pool's connection whose codec is cc, or nil.
func (p *h2Pool) connLocked(cc stream.ClientConn) *pconn {
	for _, pc := range p.conns {
		if stream.ClientConn(pc.cc) == cc {
			return pc
		}
	}
	return nil
}

// refusalReported is the codec's report that the peer refused one or
// more of pc's streams unprocessed (h2.ClientConfig.OnStreamRefused,
// h3.ClientConfig.OnStreamRefused): the pool learns from every refusal,
// whether or not the stream is retried.
func (p *h2Pool) refusalReported(pc *pconn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.learnRefusalsLocked(pc)
	p.dispatchLocked()
}

// learnRefusalsLocked learns from the refusals of pc's peer the pool has
// not learned from yet (refusedLocked). It runs on the codec's report and
// on the retry of a refused stream (newStreamAvoiding), whichever comes
// first; the codec's count (RefusedStreams) makes each refusal count once.
// A refusal of a stream above a GOAWAY's last stream id is not in the
// count: the connection drains and takes no new stream anyway.
func (p *h2Pool) learnRefusalsLocked(pc *pconn) {
	n := pc.cc.RefusedStreams()
	if n == pc.refusals {
		return
	}
	pc.refusals = n
	p.refusedLocked(pc)
	// The peer may refuse a stream before the pool placed it (the HTTP/2
	// reader reports the refusal while the opener has yet to account
	// it): its reservation then hides the slot it freed.
	pc.refusalPending = pc.heldAt == 0 && pc.reserved > 0
}

// recheckRefusalLocked decides again on a hold deferred by
// learnRefusalsLocked, once a stream being opened on pc was placed or
// failed: the refused stream's reservation may be gone now. The last
// reservation ends the deferral.
func (p *h2Pool) recheckRefusalLocked(pc *pconn) {
	p.refusedLocked(pc)
	pc.refusalPending = pc.heldAt == 0 && pc.reserved > 0
}

// refusedLocked learns from a stream pc refused unprocessed: the peer's
// REFUSED_STREAM or H3_REQUEST_REJECTED (learnRefusalsLocked), or the
// codec's own refusal to open a stream. When the pool's view still shows
// pc with free slots, the peer's real limit is lower than the view (a
// peer may count streams whose end it has not processed yet, or have
// lowered its limit in a SETTINGS still in flight): pc is held at
// capacity until one of the streams open on it now completes, so neither
// a retry nor new streams go back to it meanwhile; the pool dials instead
// when max_connections allows, or queues. Counted in
// upstream_cx_refused_stream_hold. A connection with no stream open is
// not held (no completion would release it): the peer refused with
// nothing of ours in flight, so a retry may go back to it when no other
// connection has room.
func (p *h2Pool) refusedLocked(pc *pconn) {
	if pc.heldAt > 0 || p.freeLocked(pc) <= 0 {
		return
	}
	open := pc.cc.ActiveStreams()
	if open == 0 {
		return
	}
	pc.heldAt = open
	p.sh.stats.cxRefusedHold.Inc()
	p.logger.Debug("upstream refused a stream below its advertised limit; holding the connection at capacity", "open_streams", open)
}

// reserveLocked promises a slot of pc to a stream. The first stream after
// pc sat idle for connection_idle_interval sends a keepalive PING along,
// so a dead peer is found within the keepalive timeout.
func (p *h2Pool) reserveLocked(pc *pconn) {
	pc.reserved++
	if d := p.spec.HTTP2.Keepalive.ConnectionIdleInterval; d > 0 && pc.total > 0 && pc.active <= 0 && pc.reserved == 1 && time.Since(pc.idleSince) >= d {
		if kp, ok := pc.cc.(keepalivePinger); ok {
			kp.KeepalivePing()
		}
	}
}

// placedLocked accounts a stream opened on pc.
func (p *h2Pool) placedLocked(pc *pconn) {
	p.sh.breaker.requests.Add(1)
	pc.active++
	pc.total++
	p.notePeakLocked()
	p.sh.stats.streamPlaced(pc.total > 1)
	p.idleCheckLocked(pc)
	if m := p.spec.Lifetimes.MaxRequestsPerConnection; m > 0 && pc.total >= m && !pc.draining {
		p.sh.stats.cxMaxRequests.Inc()
		p.drainConnLocked(pc)
	}
	if pc.refusalPending {
		p.recheckRefusalLocked(pc)
	}
	// The stream may have ended (and been reported) before it was placed,
	// so a slot can be free now.
	p.dispatchLocked()
}

// streamDone accounts a stream of pc that ended.
func (p *h2Pool) streamDone(pc *pconn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pc.closed {
		return // onClose released what was left
	}
	pc.active--
	p.sh.breaker.requests.Add(-1)
	if pc.active <= 0 {
		pc.idleSince = time.Now()
	}
	if pc.heldAt > 0 && pc.cc.ActiveStreams() < pc.heldAt {
		pc.heldAt = 0
	}
	p.idleCheckLocked(pc)
	p.dispatchLocked()
}

// idleCheckLocked starts pc's idle timer when pc has no stream placed or
// promised, and stops it otherwise.
func (p *h2Pool) idleCheckLocked(pc *pconn) {
	if pc.idleTimer == nil {
		return
	}
	if pc.active <= 0 && pc.reserved == 0 && !pc.draining && !pc.closed {
		pc.idleTimer.Reset(p.spec.Lifetimes.IdleTimeout)
	} else {
		pc.idleTimer.Stop()
	}
}

// dispatchLocked hands free slots to queued streams in FIFO order and
// dials for those left waiting.
func (p *h2Pool) dispatchLocked() {
	for len(p.waiters) > 0 {
		pc := p.pickLocked(nil)
		if pc == nil {
			break
		}
		w := p.waiters[0]
		p.waiters[0] = nil
		p.waiters = p.waiters[1:]
		p.reserveLocked(pc)
		w.pc, w.done = pc, true
		close(w.ready)
	}
	if len(p.waiters) == 0 {
		p.waiters = nil
	}
	p.planDialsLocked()
}

// failWaitersLocked ends every queued stream with err.
func (p *h2Pool) failWaitersLocked(err error) {
	for _, w := range p.waiters {
		w.err, w.done = err, true
		close(w.ready)
	}
	p.waiters = nil
}

// planDialsLocked dials for the streams that wait: while the connections
// being dialled, and those open whose SETTINGS have not arrived, cannot be
// expected to hold every queued stream (a queued stream means no settled
// connection has a free slot). With a preconnect ratio r above 1 it also
// dials until the connections' stream limits add up to r times the
// streams in use and waiting, and keeps one connection when idle. All
// within max_connections and the dial backoff.
func (p *h2Pool) planDialsLocked() {
	if p.closed {
		return
	}
	if wait := time.Until(p.retryAt); wait > 0 {
		if len(p.waiters) > 0 && p.kickTimer == nil {
			p.kickTimer = time.AfterFunc(wait, p.kick)
		}
		return
	}
	// spare is the room expected for queued streams: free slots, and on
	// connections not yet settled (until its SETTINGS arrive a connection
	// takes one stream) the limit the endpoint's last SETTINGS gave.
	spare := p.connecting * p.limitHint
	demand, supply := len(p.waiters), p.connecting*p.limitHint
	for _, pc := range p.conns {
		used := max(pc.active, 0) + pc.reserved
		demand += used
		if pc.draining || pc.closed {
			continue
		}
		if pc.settled {
			supply += pc.limit
			// A slot freed since the last dispatch (its stream-done
			// report still on the way) serves a queued stream soon.
			spare += max(p.freeLocked(pc), 0)
		} else {
			supply += p.limitHint
			spare += max(p.limitHint-used, 0)
		}
	}
	want := 0
	if r := p.spec.PreconnectRatio; r > 1 {
		want = max(1, int(math.Ceil(r*float64(demand))))
	}
	for len(p.waiters) > spare || supply < want {
		if !tryAcquire(&p.sh.breaker.conns, p.sh.breaker.maxConns) {
			if len(p.waiters) > 0 {
				p.sh.stats.cxPoolOverflow.Inc()
				p.sh.starve(p)
			}
			return
		}
		p.connecting++
		spare += p.limitHint
		supply += p.limitHint
		go p.dial()
	}
}

// kick re-plans dials once a backoff has passed.
func (p *h2Pool) kick() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.kickTimer = nil
	p.dispatchLocked()
}

// wake re-plans dials after the cluster freed a connection slot.
func (p *h2Pool) wake() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dispatchLocked()
}

func (p *h2Pool) dial() {
	p.mu.Lock()
	ka := p.kaInterval
	p.mu.Unlock()
	pc := &pconn{kaInterval: ka}
	err := p.connect(pc)

	p.mu.Lock()
	defer p.mu.Unlock()
	p.connecting--
	if err != nil {
		p.sh.breaker.conns.Add(-1)
		p.sh.connReleased()
		p.failures++
		p.lastErr = err
		switch {
		case !errors.Is(err, syscall.ECONNREFUSED):
			p.refusedSince = time.Time{}
		case p.failures == 1 && p.connected:
			p.refusedSince = time.Now()
		}
		p.retryAt = time.Now().Add(dialBackoff(p.failures))
		p.logger.Debug("upstream connect failed", "err", err, "failures", p.failures)
		if p.connecting == 0 && !p.hasUsableLocked() && !p.holdWaitersLocked() {
			p.failWaitersLocked(connectFailure(err))
		}
		p.planDialsLocked() // arms the kick timer if streams still wait
		return
	}
	p.failures = 0
	p.refusedSince = time.Time{}
	p.connected = true
	if p.closed {
		pc.localClose = true
		p.mu.Unlock()
		pc.cc.Close()
		p.mu.Lock()
		return
	}
	if !pc.closed {
		p.conns = append(p.conns, pc)
		if d := p.spec.Lifetimes.IdleTimeout; d > 0 {
			pc.idleTimer = time.AfterFunc(d, func() { p.idleExpired(pc) })
		}
		if d := p.spec.Lifetimes.MaxConnectionDuration; d > 0 {
			pc.ageTimer = time.AfterFunc(d, func() { p.maxDurationReached(pc) })
		}
	}
	p.dispatchLocked()
}

// restartHold bounds how long refused dials hold the streams that wait
// for a connection (holdWaitersLocked): a server restarting in place on a
// loaded machine rebinds its port within tens, at worst a few hundred,
// milliseconds.
const restartHold = 500 * time.Millisecond

// holdWaitersLocked reports whether streams should wait for the next dial
// rather than fail with the last one: when the endpoint has served before
// and every dial since its last good connection was refused, for
// restartHold from the first refusal. A refused connect to an endpoint
// that was serving means the host is up and nothing listens on the port:
// a server restarting in place (its replacement binds the port moments
// later), which the dials that follow the backoff (25 ms doubling, full
// jitter) usually reach. Failing every stream of that gap instead turns a
// refused dial into a burst of 503s that all retry at once and overflow
// the retry budget. An endpoint that never accepted, a timeout or a TLS
// failure (a dead or hung host), and refusals past restartHold fail the
// streams as before, and new streams then fail at once while the backoff
// lasts, so an endpoint that went away costs at most one hold.
func (p *h2Pool) holdWaitersLocked() bool {
	return !p.refusedSince.IsZero() && time.Since(p.refusedSince) < restartHold
}

func (p *h2Pool) hasUsableLocked() bool {
	for _, pc := range p.conns {
		if !pc.draining && !pc.closed {
			return true
		}
	}
	return false
}

// localStreamLimit is the configured cap on streams per connection
// (max_concurrent_streams of the protocol's options; 0: none).
func (p *h2Pool) localStreamLimit() uint32 {
	if p.spec.Protocol == HTTP3 {
		return uint32(min(max(p.spec.HTTP3.MaxConcurrentStreams, 0), math.MaxUint32))
	}
	return p.spec.HTTP2.MaxConcurrentStreams
}

// established counts pc, whose dial began at start, as established: the
// cluster's upstream_cx_total, upstream_cx_active and upstream_cx_connect_ms.
func (p *h2Pool) established(pc *pconn, start time.Time) {
	now := time.Now()
	pc.opened.Store(now.UnixNano())
	p.stats.CxTotal.Inc()
	p.stats.CxActive.Inc()
	p.stats.CxConnectMs.Record(durationMs(now.Sub(start)))
}

// connectH2 dials the endpoint and starts an HTTP/2 connection for pc.
func (p *h2Pool) connectH2(pc *pconn) error {
	ctx, cancel := context.WithTimeout(context.Background(), p.spec.ConnectTimeout)
	defer cancel()
	start := time.Now()
	conn, err := dialUpstream(ctx, p.addr, p.spec.TLS, p.spec.TCPKeepalive, p.stats)
	if err != nil {
		return err
	}
	if tc, ok := conn.(*tls.Conn); ok && tc.ConnectionState().NegotiatedProtocol != "h2" {
		conn.Close()
		p.stats.CxConnectFail.Inc()
		return fmt.Errorf("upstream %s: TLS peer did not negotiate h2 (ALPN %q)", p.addr, tc.ConnectionState().NegotiatedProtocol)
	}
	p.established(pc, start)
	o := p.spec.HTTP2
	ka := pc.kaInterval
	pc.cc = h2.NewClientConn(conn, &h2.ClientConfig{
		MaxConcurrentStreams:        o.MaxConcurrentStreams,
		InitialStreamWindowSize:     o.InitialStreamWindowSize,
		InitialConnectionWindowSize: o.InitialConnectionWindowSize,
		KeepaliveInterval:           ka,
		KeepaliveTimeout:            o.Keepalive.Timeout,
		KeepaliveJitterPercent:      o.Keepalive.JitterPercent,
		MaxBufferedBytes:            p.spec.PerConnectionBufferLimit,
		Logger:                      p.logger,
		Stats:                       p.stats.HTTP2,
		Bytes:                       h2.ByteCounters{Rx: p.stats.CxRxBytes, Tx: p.stats.CxTxBytes},
		OnSettings:                  func(mcs uint32) { p.onSettings(pc, mcs) },
		OnGoAway: func(_ uint32, code stream.ErrCode, debug string) {
			p.sh.stats.goAwayRx(code)
			p.onGoAway(pc, code, debug)
		},
		OnStreamDone:    func() { p.streamDone(pc) },
		OnStreamRefused: func() { p.refusalReported(pc) },
		OnClose:         func(err error) { p.onClose(pc, err) },
	})
	return nil
}

func (p *h2Pool) onSettings(pc *pconn, mcs uint32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := int(min(mcs, math.MaxInt32))
	if m := p.localStreamLimit(); m > 0 {
		l = min(l, int(m))
	}
	pc.settled, pc.limit = true, l
	p.obs.peerMCS = mcs
	p.limitHint = max(l, 1)
	p.dispatchLocked()
}

// onGoAway stops new streams on pc and, for ENHANCE_YOUR_CALM
// "too_many_pings", doubles the endpoint's keepalive interval once per
// interval in use (several connections reporting the same strike double
// it once).
func (p *h2Pool) onGoAway(pc *pconn, code stream.ErrCode, debug string) {
	p.stats.CxCloseNotify.Inc()
	p.mu.Lock()
	defer p.mu.Unlock()
	pc.draining = true
	if code == stream.ErrCodeEnhanceYourCalm && debug == "too_many_pings" && pc.kaInterval > 0 && pc.kaInterval >= p.kaInterval && p.kaInterval < maxKeepaliveInterval {
		p.kaInterval = min(2*p.kaInterval, maxKeepaliveInterval)
		p.kaGauge.Set(p.kaInterval.Milliseconds())
		p.sh.stats.keepaliveBackoff.Inc()
		p.obs.pings++
		p.logger.Info("upstream sent too_many_pings; doubling keepalive interval", "interval", p.kaInterval)
	}
	p.dispatchLocked()
}

// closedByPeer reports whether err, the close cause a connection of the
// pool reported, came from the peer (the codec's ClosedByPeer).
func (p *h2Pool) closedByPeer(err error) bool {
	if p.spec.Protocol == HTTP3 {
		return h3.ClosedByPeer(err)
	}
	return h2.ClosedByPeer(err)
}

func (p *h2Pool) onClose(pc *pconn, err error) {
	// localClose is set under mu before the pool closes the connection,
	// so it is read under mu; the stats below need no lock.
	p.mu.Lock()
	byPeer := !pc.localClose && p.closedByPeer(err)
	p.mu.Unlock()
	p.stats.connClosed(byPeer)
	if opened := pc.opened.Load(); opened != 0 {
		p.stats.CxLengthMs.Record(durationMs(time.Since(time.Unix(0, opened))))
	}
	p.sh.breaker.conns.Add(-1)
	p.sh.connReleased()
	p.mu.Lock()
	defer p.mu.Unlock()
	pc.closed = true
	if pc.idleTimer != nil {
		pc.idleTimer.Stop()
	}
	if pc.ageTimer != nil {
		pc.ageTimer.Stop()
	}
	if pc.active > 0 && err != nil {
		if byPeer {
			p.sh.stats.cxDestroyRemoteRq.Inc()
		} else {
			p.sh.stats.cxDestroyLocalRq.Inc()
		}
	}
	if pc.active > 0 {
		p.sh.breaker.requests.Add(-int64(pc.active))
	}
	pc.active = 0
	if i := slices.Index(p.conns, pc); i >= 0 {
		p.conns = slices.Delete(p.conns, i, i+1)
	}
	p.dispatchLocked()
}

// drainConnLocked stops new streams on pc and closes it gracefully (GOAWAY)
// once its streams end.
func (p *h2Pool) drainConnLocked(pc *pconn) {
	pc.draining = true
	if pc.idleTimer != nil {
		pc.idleTimer.Stop()
	}
	go pc.cc.Shutdown() // takes the connection's lock; never under ours in its callbacks' order
}

func (p *h2Pool) idleExpired(pc *pconn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pc.active > 0 || pc.reserved > 0 || pc.draining || pc.closed {
		return
	}
	p.sh.stats.cxIdleTimeout.Inc()
	p.drainConnLocked(pc)
}

func (p *h2Pool) maxDurationReached(pc *pconn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pc.draining || pc.closed {
		return
	}
	p.sh.stats.cxMaxDuration.Inc()
	p.drainConnLocked(pc)
	p.dispatchLocked()
}

// dialUpstream connects to addr within ctx, with TCP_NODELAY and, when ka is
// set, TCP keepalive (upstream_connection_options.tcp_keepalive), and
// completes the TLS handshake when cfg is set: connect_timeout covers the
// handshake.
func dialUpstream(ctx context.Context, addr string, cfg *tls.Config, ka *net.KeepAliveConfig, st *Stats) (net.Conn, error) {
	d := net.Dialer{KeepAlive: -1}
	if ka != nil {
		d.KeepAliveConfig = *ka
	}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		st.CxConnectFail.Inc()
		if errors.Is(err, context.DeadlineExceeded) {
			st.CxConnectTimeout.Inc()
		}
		return nil, fmt.Errorf("connect %s: %w", addr, err)
	}
	if tcp, ok := conn.(*net.TCPConn); ok {
		_ = tcp.SetNoDelay(true)
	}
	if cfg == nil {
		return conn, nil
	}
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		st.CxConnectFail.Inc()
		if errors.Is(err, context.DeadlineExceeded) {
			st.CxConnectTimeout.Inc()
		}
		return nil, fmt.Errorf("TLS handshake with %s: %w", addr, err)
	}
	return tc, nil
}

// ActiveConns is the number of connections open, draining ones included.
func (p *h2Pool) ActiveConns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// stop marks the pool closed and fails queued streams; it returns the
// connections to end.
func (p *h2Pool) stop() []*pconn {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	if p.kickTimer != nil {
		p.kickTimer.Stop()
		p.kickTimer = nil
	}
	p.failWaitersLocked(&stream.Error{Code: stream.ErrCodeRefusedStream, Unprocessed: true, Reason: "connection pool closed"})
	conns := slices.Clone(p.conns)
	for _, pc := range conns {
		pc.draining = true
		if pc.idleTimer != nil {
			pc.idleTimer.Stop()
		}
		if pc.ageTimer != nil {
			pc.ageTimer.Stop()
		}
	}
	return conns
}

// Drain stops new streams and closes each connection once its streams end.
func (p *h2Pool) Drain() {
	for _, pc := range p.stop() {
		pc.cc.Shutdown()
	}
}

// Close closes every connection at once, failing their streams.
func (p *h2Pool) Close() error {
	conns := p.stop()
	p.mu.Lock()
	for _, pc := range conns {
		pc.localClose = true
	}
	p.mu.Unlock()
	for _, pc := range conns {
		pc.cc.Close()
	}
	return nil
}

var _ connPool = (*h2Pool)(nil)

// notePeakLocked records the demand on the endpoint (streams placed,
// promised or queued) for the observation's peak.
func (p *h2Pool) notePeakLocked() {
	n := len(p.waiters)
	for _, pc := range p.conns {
		n += max(pc.active, 0) + pc.reserved
	}
	p.obs.peak = max(p.obs.peak, n)
}

// observe returns the endpoint's observation since the previous call and
// starts the next interval.
func (p *h2Pool) observe() observe.Endpoint {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	o := p.spec.HTTP2
	sw, cw := advertisedWindows(o.InitialStreamWindowSize, o.InitialConnectionWindowSize, p.spec.PerConnectionBufferLimit)
	e := observe.Endpoint{
		PeerMaxConcurrentStreams: p.obs.peerMCS,
		KeepaliveInterval:        p.kaInterval,
		TooManyPings:             p.obs.pings,
		PeakStreams:              uint32(p.obs.peak),
		Overflow:                 p.obs.overflow.Swap(0),
		MaxStreamWait:            p.obs.wait,
		StreamWindow:             sw,
		ConnectionWindow:         cw,
	}
	elapsed := now.Sub(p.obs.since).Seconds()
	for _, pc := range p.conns {
		ob, ok := pc.cc.(observer)
		if !ok {
			continue
		}
		co := ob.Observe()
		e.RTT = max(e.RTT, co.RTT)
		if elapsed > 0 {
			e.Throughput = max(e.Throughput, float64(co.ReceivedBytes-pc.lastRx)/elapsed)
		}
		pc.lastRx = co.ReceivedBytes
	}
	p.obs.since, p.obs.pings, p.obs.wait = now, 0, 0
	p.notePeakReset()
	return e
}

// notePeakReset starts the next interval's peak at the current demand.
func (p *h2Pool) notePeakReset() {
	p.obs.peak = 0
	p.notePeakLocked()
}

// advertisedWindows is the receive windows an h2.ClientConn advertises for
// the configured ones: 0 is h2.DefaultWindowSize, and a buffer limit caps
// both (the connection window not below 65535).
func advertisedWindows(stream, conn, limit uint32) (uint32, uint32) {
	if stream == 0 {
		stream = h2.DefaultWindowSize
	}
	if conn == 0 {
		conn = h2.DefaultWindowSize
	}
	if limit == 0 {
		return stream, conn
	}
	return min(stream, limit), min(conn, max(limit, 65535))
}
