package hcm

import (
	"context"
	"errors"
	"io"
	"slices"
	"strconv"
	"time"

	"meshd.dev/meshd/proxy/accesslog"
	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/proxy/route"
	"meshd.dev/meshd/proxy/upstream"
)

// maxHostSelectionAttempts bounds the picks made to find a host not tried
// yet when host_selection_retry_max_attempts is unset.
const maxHostSelectionAttempts = 3

// proxy sends the request to cluster c, retrying as the route's
// retry_policy and the transparent-retry rules allow, and forwards the
// response. It returns when the exchange is over.
//
// Timeouts: the route timeout (or grpc-timeout) runs from the start of the
// stream to the end of the response; per_try_timeout from the start of an
// attempt until its response headers are forwarded; per_try_idle_timeout
// over the whole attempt, on activity in either direction; the stream idle
// timeout (route idle_timeout, else stream_idle_timeout) on activity in
// either direction; request_timeout until the request was received whole
// or the response started; max_stream_duration (route, else HCM) over the
// whole stream, and the cluster's over each upstream stream.
func (ex *exchange) proxy(r *route.Route, c *upstream.Cluster) {
	ctx, cancel := context.WithCancelCause(ex.ds.Context())
	defer cancel(nil)
	ex.ctx, ex.cancel = ctx, cancel
	if ex.hooks != nil {
		ex.hooks.cancel = cancel
	}
	cfg := ex.cfg
	idle := cfg.StreamIdleTimeout
	if r.IdleTimeout != nil {
		idle = *r.IdleTimeout
	}
	maxStream := cfg.MaxStreamDuration
	if r.MaxStreamDuration != nil {
		maxStream = *r.MaxStreamDuration
	}
	request := cfg.RequestTimeout
	if ex.req.EndStream {
		request = 0
		ex.reqDoneAt.Store(int64(time.Since(ex.start)) + 1)
	}
	ex.wd = newWatchdog(ex.start, ex.timedOut, route.EffectiveTimeout(r, ex.req), request, maxStream, idle)
	defer ex.wd.stop()

	ureq := ex.upstreamRequest(r, c.Spec().Name, c.Spec().TLS != nil)
	limit := r.BodyBufferLimit.Bytes(cfg.PerConnectionBufferLimit, DefaultPerRequestBufferLimit)
	ex.setBufferLimit(limit)
	if !ureq.EndStream {
		ex.body = newReplayBody(limit)
		// A unary request's body has usually arrived with its headers:
		// take it here rather than in a goroutine of its own. Body hooks
		// may grow or answer it, so a chain always goes through fill.
		if chain := ex.reqChain(); chain == nil && ex.body.fillBuffered(ex.ds) {
			ex.wd.touch()
			ex.requestReceived()
		} else {
			go ex.body.fill(ctx, ex.ds, chain, cancel, ex.wd.touch, ex.requestReceived)
		}
	}

	rs := &retryState{policy: r.Retry, c: c, st: ex.h.retryStatsFor(c.Stats())}
	defer rs.release()
	for first := true; ; first = false {
		if !first {
			// Like Envoy's router (doRetry), a retry goes to the cluster
			// as it is now: CDS may have replaced it since the request
			// started, and the replaced cluster's pools are closed.
			if c = ex.currentCluster(c, ureq, rs); c == nil {
				return
			}
		}
		host := ex.pickHost(c, r.Retry)
		if host == nil {
			c.Stats().NoHealthyUpstream.Inc()
			ex.flag("UH")
			ex.note(accesslog.NoHealthyUpstream, "no_healthy_upstream")
			ex.localReply(503, "no healthy upstream")
			return
		}
		retry, delay := ex.attempt(ctx, r, c, host, ureq, rs)
		if !retry {
			return
		}
		if delay > 0 {
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				ex.exchangeEnded(c.Stats(), ctx)
				return
			}
		}
	}
}

// currentCluster returns the live cluster named like c, for a retry. When
// a config update replaced c, the retry state and the request's scheme
// follow the new cluster and the hosts tried are forgotten (they belong to
// the old one). When the cluster was removed, it answers 503 as Envoy's
// router does (no healthy upstream) and returns nil.
//
// Without this, a request queued in a pool that a cluster update drained
// (its waiters fail as unprocessed: "connection pool closed") retried on
// the drained pool until its transparent-retry budget ran out, then failed
// with 503 "remote refused stream reset" although the new cluster served.
func (ex *exchange) currentCluster(c *upstream.Cluster, ureq *stream.Request, rs *retryState) *upstream.Cluster {
	cur := ex.h.clusters.Get(c.Spec().Name)
	switch cur {
	case c:
		return c
	case nil:
		c.Stats().NoHealthyUpstream.Inc()
		ex.flag("UH")
		ex.note(accesslog.NoHealthyUpstream, "no_healthy_upstream")
		ex.localReply(503, "no healthy upstream")
		return nil
	}
	ex.h.logger.Debug("retrying on the cluster a config update replaced", "cluster", c.Spec().Name)
	ureq.Scheme = "http"
	if cur.Spec().TLS != nil {
		ureq.Scheme = "https"
	}
	// Both clusters' stats live in the same store under the same names, so
	// a retry slot held (rs.holding) is returned to the same gauge.
	rs.c, rs.st = cur, ex.h.retryStatsFor(cur.Stats())
	ex.tried = ex.tried[:0]
	return cur
}

// pickHost chooses the host for the next attempt. On a retry it prefers a
// host not tried yet when the cluster has more than one, trying the load
// balancer up to host_selection_retry_max_attempts times (default 3); unlike
// Envoy's default, which may pick the same host again, this spreads retries
// away from a host that just failed.
//
// An ORIGINAL_DST cluster picks the host of the connection's original
// destination (or of the override header, when the cluster honours one).
func (ex *exchange) pickHost(c *upstream.Cluster, p *route.RetryPolicy) *upstream.Host {
	if c.Spec().Discovery == upstream.OriginalDst {
		t := upstream.Target{Header: ex.req.Header.Get}
		if ci := ex.ds.Conn(); ci != nil {
			t.LocalAddr = ci.LocalAddr
		}
		h := c.PickFor(t)
		if h != nil && !slices.Contains(ex.tried, h) {
			ex.tried = append(ex.tried, h)
		}
		return h
	}
	h := c.Pick()
	if h != nil && len(ex.tried) > 0 && len(c.Hosts()) > 1 {
		attempts := maxHostSelectionAttempts
		if p != nil && p.HostSelectionMaxAttempts > 0 {
			attempts = int(min(p.HostSelectionMaxAttempts, 16))
		}
		for i := 1; i < attempts && slices.Contains(ex.tried, h); i++ {
			if n := c.Pick(); n != nil {
				h = n
			}
		}
	}
	if h != nil && !slices.Contains(ex.tried, h) {
		if ex.tried == nil {
			ex.tried = ex.triedBuf[:0]
		}
		ex.tried = append(ex.tried, h)
	}
	return h
}

// attempt makes one upstream attempt. It either finishes the exchange
// (forwarding the response or answering locally) and returns retry false,
// or discards the attempt and returns retry true with the back-off to wait
// before the next one.
func (ex *exchange) attempt(ctx context.Context, r *route.Route, c *upstream.Cluster, host *upstream.Host, ureq *stream.Request, rs *retryState) (retry bool, delay time.Duration) {
	cs := c.Stats()
	var perTry, perTryIdle time.Duration
	if r.Retry != nil {
		perTry, perTryIdle = r.Retry.PerTryTimeout, r.Retry.PerTryIdleTimeout
	}
	maxDuration := c.Spec().Lifetimes.MaxStreamDuration
	// inline: the request side is sent from this goroutine (no body, or a
	// small body received whole), so nothing but the attempt's own limits
	// needs a context of its own; without them the attempt runs under the
	// exchange's context and ends with it.
	inline := ex.body == nil || ex.body.buffered()
	actx, acancel := ctx, context.CancelCauseFunc(nil)
	if !inline || perTry > 0 || perTryIdle > 0 || maxDuration > 0 {
		actx, acancel = context.WithCancelCause(ctx)
		defer acancel(nil)
	}
	ex.wd.startAttempt(acancel, perTry, perTryIdle, maxDuration)
	defer ex.wd.endAttempt()
	var attErr error // why the attempt failed before a response, for its span
	if ex.tr != nil {
		ex.beginAttempt(c, host, ureq)
		defer func() { ex.endAttempt(attErr) }()
	}

	// A stream the client reset before it could be forwarded (rapid reset,
	// CVE-2023-44487: HEADERS then RST_STREAM at once) never reaches the
	// upstream: the attacker's churn stays in this proxy instead of
	// filling the shared upstream connection. Envoy counts it the same way
	// (upstream_rq_cancelled: cancelled before obtaining a connection).
	if ctx.Err() != nil {
		ex.exchangeEnded(cs, ctx)
		return false, 0
	}
	host.LB.Acquire()
	defer host.LB.Release()
	ex.noteAttempt(c.Spec().Name, host)
	var status int
	var failure error
	if ex.h.obs.Durations != nil {
		defer ex.observeAttempt(c.Spec().Name, host, time.Now(), &status, &failure)
	}
	cs.RqTotal.Inc()
	cs.RqActive.Inc()
	defer cs.RqActive.Dec()

	refusedBy := rs.refusedBy
	rs.refusedBy = nil
	us, err := host.NewStreamAvoiding(actx, ureq, ureq.EndStream, refusedBy)
	if err != nil {
		attErr = err
		failure = err
		return ex.attemptFailed(ctx, actx, cs, host, rs, err)
	}
	// Cancellation and timeouts travel upstream as RST_STREAM CANCEL: the
	// codec's stream does it itself when it is stream.ContextBound.
	if _, ok := us.(stream.ContextBound); !ok {
		stop := context.AfterFunc(actx, func() { us.Reset(stream.ErrCodeCancel) })
		defer stop()
	}
	switch {
	case inline:
		if ex.body != nil {
			ex.body.sendBuffered(us)
			ex.wd.touch()
		}
		defer us.Reset(stream.ErrCodeCancel) // no-op once the stream completed
	default:
		sent := make(chan struct{})
		go func() {
			defer close(sent)
			ex.body.send(actx, us, ex.wd.touch)
		}()
		defer func() {
			us.Reset(stream.ErrCodeCancel) // no-op once the stream completed
			acancel(nil)
			<-sent
		}()
	}

	resp, err := us.Response(actx)
	if err != nil {
		if stream.Unprocessed(err) {
			// A transparent retry goes to another connection when one
			// has room: this one refused.
			rs.refusedBy = stream.ConnOf(us)
		}
		attErr = err
		failure = err
		return ex.attemptFailed(ctx, actx, cs, host, rs, err)
	}
	if ex.tr != nil {
		ex.attemptResponse(us, resp)
	}
	status = resp.Status
	ex.noteUpstreamResponse(us)
	ex.wd.touch()
	rs.release()
	cs.Scope.ResponseCode("upstream_rq", resp.Status)
	host.ReportStatus(resp.Status)
	host.ReportLocalOrigin(true)
	switch {
	case !retriableResponse(rs.policy, resp):
		if rs.retried() {
			rs.stats().success.Inc()
		}
	case ex.body != nil && !ex.body.replayable():
		// Envoy forwards the response it cannot retry.
		rs.stats().bufferAbandon.Inc()
	default:
		if d, ok := rs.allowRetry(); ok {
			us.Reset(stream.ErrCodeCancel)
			return true, d
		}
	}
	ex.forward(ctx, actx, r, c, host, us, resp)
	return false, 0
}

// forward sends the response of the chosen attempt downstream.
func (ex *exchange) forward(ctx, actx context.Context, r *route.Route, c *upstream.Cluster, host *upstream.Host, us stream.ClientStream, resp *stream.Response) {
	cs := c.Stats()
	ex.wd.stopPerTry()
	ex.wd.requestComplete()
	resp.Header.StripHopByHop()
	resp.Header.Set("x-envoy-upstream-service-time", strconv.FormatInt(time.Since(ex.start).Milliseconds(), 10))
	ex.finishHeaders(r, c.Spec().Name, resp)
	if !ex.runResponseFilters(resp, resp.EndStream) {
		return // a filter answered instead; attempt resets the upstream stream
	}
	ex.headersSent.Store(true)
	var held stream.Flusher
	if !resp.EndStream && ex.respChain() == nil {
		held = ex.downstreamFlusher()
		if held != nil {
			held.Hold()
		}
	}
	if resp.EndStream {
		ex.upstreamEnded()
	}
	if err := ex.ds.WriteHeader(resp, resp.EndStream); err != nil || resp.EndStream {
		if err == nil {
			ex.upstreamComplete(cs)
		}
		return
	}
	err := ex.pumpResponse(us, held)
	if err == nil {
		ex.upstreamComplete(cs)
		return
	}
	switch {
	case ctx.Err() != nil:
		ex.exchangeEnded(cs, ctx)
	case ex.ds.Context().Err() != nil, errors.Is(err, errDownstreamGone):
		cs.RqCancelled.Inc()
		ex.flag("DC")
		ex.note(accesslog.DownstreamConnectionTermination, "downstream_remote_disconnect")
	case context.Cause(actx) == errUpstreamMaxDuration:
		ex.note(accesslog.UpstreamMaxStreamDurationReached, "upstream_max_stream_duration_reached")
		ex.h.retryStatsFor(cs).maxDurationHit.Inc()
		ex.ds.Reset(stream.ErrCodeCancel)
	case errors.Is(err, errBufferLimit):
		ex.h.logger.Debug("response body over the buffer limit of an http filter")
		ex.h.stats.RqTxReset.Inc()
		ex.ds.Reset(stream.ErrCodeInternal)
	case context.Cause(actx) == errPerTryIdleTimeout:
		ex.h.retryStatsFor(cs).perTryIdleTimeout.Inc()
		host.ReportLocalOrigin(false)
		ex.ds.Reset(stream.ErrCodeCancel)
	default:
		cs.RqReset.Inc()
		host.ReportLocalOrigin(false)
		ex.note(accesslog.UpstreamRemoteReset, "upstream_reset_after_response_started{remote_reset}")
		ex.h.stats.RqTxReset.Inc()
		ex.ds.Reset(stream.CodeOf(err))
	}
}

// requestReceived marks the downstream request received whole by the
// router (Envoy's onRequestComplete): it disarms request_timeout and
// starts upstream_rq_time. It runs once per exchange, on the exchange's
// goroutine or on the body's.
func (ex *exchange) requestReceived() {
	ex.reqDoneAt.Store(int64(time.Since(ex.start)) + 1)
	ex.wd.requestComplete()
}

// upstreamEnded marks the end of the upstream response (its last frame
// read, before it goes downstream): where Envoy's router stops
// upstream_rq_time (onUpstreamComplete).
func (ex *exchange) upstreamEnded() {
	ex.upEndAt = time.Since(ex.start)
}

// upstreamComplete counts an upstream response forwarded whole, as
// Envoy's router does when the upstream stream ends: upstream_rq_completed
// and upstream_rq_time. Like Envoy's, upstream_rq_time runs from the
// downstream request received whole (requestReceived: the end of its
// body, or its headers when it has none) to the end of the upstream
// response (upstreamEnded), retries and back-offs included, and is not
// recorded when the response ended before the request did.
func (ex *exchange) upstreamComplete(cs *upstream.Stats) {
	cs.RqCompleted.Inc()
	if done := ex.reqDoneAt.Load(); done > 0 && ex.upEndAt >= time.Duration(done-1) {
		cs.RqTime.Record(float64((ex.upEndAt - time.Duration(done-1)).Microseconds()) / 1000)
	}
}

// filterEnded finishes an exchange a request body hook ended: with the
// hook's local reply, or 413 when hooks buffered more than the limit (as
// Envoy's buffer overflow on a request), unless the response started.
func (ex *exchange) filterEnded(cause error) {
	if ex.headersSent.Load() {
		ex.ds.Reset(stream.ErrCodeCancel)
		return
	}
	if cause == errBufferLimit {
		ex.h.logger.Debug("request body over the buffer limit of an http filter")
		ex.localReply(413, "Payload Too Large")
		return
	}
	ex.hooks.mu.Lock()
	p := ex.hooks.pending
	ex.hooks.mu.Unlock()
	ex.replied = true
	ex.localReply(p.status, p.body)
}

// errDownstreamGone ends the response pump when the downstream stream can
// take no more data.
var errDownstreamGone = errors.New("downstream stream closed")

// downstreamFlusher returns the downstream stream as a stream.Flusher
// when its codec can hold writes (HTTP/3), or nil.
func (ex *exchange) downstreamFlusher() stream.Flusher {
	ds := ex.ds
	if o, ok := ds.(*observedStream); ok {
		// Flush writes no new bytes, so the observer need not see it.
		ds = o.ServerStream
	}
	f, _ := ds.(stream.Flusher)
	return f
}

// pumpResponse copies the upstream response body and trailers downstream,
// each chunk as soon as it arrives. With held, the downstream stream
// holds what it is given (headers included) and is flushed before every
// upstream Read that may wait, so a response whose parts arrived together
// leaves in one write and a streamed one is never delayed. It returns nil
// once the response was forwarded whole, errDownstreamGone when
// downstream went away, and the upstream's error otherwise.
func (ex *exchange) pumpResponse(us stream.ClientStream, held stream.Flusher) error {
	if c := ex.respChain(); c != nil {
		return ex.pumpFilteredResponse(us, c)
	}
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	ready, _ := us.(stream.ReadReadier)
	for {
		if held != nil && (ready == nil || !ready.ReadReady()) {
			if held.Flush() != nil {
				return errDownstreamGone
			}
		}
		n, err := us.Read(buf)
		if n > 0 {
			ex.wd.touch()
			if _, werr := ex.ds.Write(buf[:n]); werr != nil {
				return errDownstreamGone
			}
			ex.wd.touch()
		}
		if err == io.EOF {
			ex.upstreamEnded()
			if t := us.Trailers(); t.Len() > 0 {
				ex.traceTrailers(&t)
				_ = ex.ds.WriteTrailers(t) // a failure means downstream is gone
				return nil
			}
			_ = ex.ds.CloseWrite()
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// attemptFailed handles an attempt that failed before response headers:
// it decides a transparent or an ordinary retry, or answers locally the
// way Envoy's router does.
func (ex *exchange) attemptFailed(ctx, actx context.Context, cs *upstream.Stats, host *upstream.Host, rs *retryState, err error) (bool, time.Duration) {
	rs.release()
	if ex.ds.Context().Err() != nil || ctx.Err() != nil {
		ex.exchangeEnded(cs, ctx)
		return false, 0
	}
	replayable := ex.body == nil || ex.body.replayable()
	switch cause := context.Cause(actx); cause {
	case errPerTryTimeout, errPerTryIdleTimeout:
		if cause == errPerTryTimeout {
			cs.RqPerTryTimeout.Inc()
		} else {
			rs.stats().perTryIdleTimeout.Inc()
		}
		host.ReportLocalOrigin(false)
		if retriableTimeout(rs.policy) && replayable {
			if d, ok := rs.allowRetry(); ok {
				return true, d
			}
		}
		cs.Scope.ResponseCode("upstream_rq", 504)
		ex.flag("UT")
		ex.note(accesslog.UpstreamRequestTimeout, "upstream_per_try_timeout")
		ex.localReply(504, "upstream request timeout")
		return false, 0
	case errUpstreamMaxDuration:
		rs.stats().maxDurationHit.Inc()
		ex.note(accesslog.UpstreamMaxStreamDurationReached, "upstream_max_stream_duration_reached")
		ex.localReply(ex.timeoutCode(), errUpstreamMaxDuration.Error())
		return false, 0
	}
	if errors.Is(err, upstream.ErrOverflow) {
		// The pool is at max_pending_requests: fail fast, no retry.
		cs.Scope.ResponseCode("upstream_rq", 503)
		ex.overloaded = true
		ex.flag("UO")
		ex.note(accesslog.UpstreamOverflow, "upstream_reset_before_response_started{overflow}")
		ex.localReply(503, "upstream connect error or disconnect/reset before headers. reset reason: overflow")
		return false, 0
	}
	if stream.Unprocessed(err) {
		switch {
		case !replayable:
			rs.stats().bufferAbandon.Inc()
			cs.Scope.ResponseCode("upstream_rq", 503)
			ex.note(accesslog.UpstreamRemoteReset, "upstream_reset_before_response_started{remote_refused_stream_reset}")
			ex.localReply(503, "upstream reset: "+errBodyNotReplayable.Error())
			return false, 0
		case isConnectFailure(err):
			host.ReportLocalOrigin(false)
			if len(ex.tried) < len(rs.c.Hosts()) && rs.allowTransparent() {
				return true, 0
			}
		default:
			if rs.allowTransparent() {
				return true, rs.transparentDelay()
			}
		}
	} else {
		host.ReportLocalOrigin(false)
	}
	if retriableReset(rs.policy, err) && replayable {
		if d, ok := rs.allowRetry(); ok {
			return true, d
		}
	}
	if ex.resetAtGRPCDeadline(err) {
		cs.Scope.ResponseCode("upstream_rq", 504)
		ex.flag("UR")
		ex.note(accesslog.UpstreamRemoteReset, "upstream_reset_before_response_started{remote_reset}")
		ex.h.logger.Debug("upstream reset at the grpc-timeout deadline", "err", err)
		ex.localReply(504, "upstream reset after the request's grpc-timeout")
		return false, 0
	}
	cs.Scope.ResponseCode("upstream_rq", 503)
	reason, flag := "remote reset", "UR"
	switch {
	case isConnectFailure(err):
		reason, flag = "connection failure", "UF"
		ex.note(accesslog.UpstreamConnectionFailure, "upstream_reset_before_response_started{connection_failure}")
		if ex.info != nil {
			ex.info.UpstreamTransportFailureReason = err.Error()
		}
	case stream.Unprocessed(err):
		reason = "remote refused stream reset"
		ex.note(accesslog.UpstreamRemoteReset, "upstream_reset_before_response_started{remote_refused_stream_reset}")
	default:
		ex.note(accesslog.UpstreamRemoteReset, "upstream_reset_before_response_started{remote_reset}")
	}
	ex.flag(flag)
	ex.h.logger.Debug("upstream failed", "err", err, "transparent_retries", rs.transparent, "elapsed", time.Since(ex.start))
	ex.localReply(503, "upstream connect error or disconnect/reset before headers. reset reason: "+reason)
	return false, 0
}

// resetAtGRPCDeadline reports whether err is the upstream resetting a gRPC
// request's stream with CANCEL once the deadline its grpc-timeout set
// (counted from the exchange's start) has passed. A grpc-go server resets
// the stream that way when the deadline it was given passes; a client
// talking to it directly turns that reset into DEADLINE_EXCEEDED (grpc-go
// does for a CANCEL received past its deadline), so the proxy answers
// DEADLINE_EXCEEDED too (504), not the UNAVAILABLE (503) of other resets.
// The upstream's deadline is never earlier than this exchange's: it got
// the same grpc-timeout later.
func (ex *exchange) resetAtGRPCDeadline(err error) bool {
	if !ex.grpc {
		return false
	}
	se, ok := errors.AsType[*stream.Error](err)
	if !ok || !se.Remote || se.Code != stream.ErrCodeCancel {
		return false
	}
	v, ok := ex.req.Header.Lookup("grpc-timeout")
	if !ok {
		return false
	}
	d, perr := route.ParseGRPCTimeout(v)
	return perr == nil && time.Since(ex.start) >= d
}

// exchangeEnded accounts for an exchange whose context ended: the
// downstream went away, or one of the exchange's timeouts fired, in which
// case it answers locally while the response has not started and resets
// the downstream stream otherwise.
func (ex *exchange) exchangeEnded(cs *upstream.Stats, ctx context.Context) {
	// The first cause wins: a timeout that reset the downstream stream is
	// still a timeout.
	cause := context.Cause(ctx)
	switch cause {
	case errFilterReply, errBufferLimit:
		ex.filterEnded(cause)
		return
	}
	if !isTimeout(cause) {
		cs.RqCancelled.Inc()
		ex.h.stats.RqRxReset.Inc()
		ex.note(accesslog.DownstreamConnectionTermination, "downstream_remote_disconnect")
		return
	}
	code, msg := 504, cause.Error()
	switch cause {
	case errRouteTimeout:
		cs.RqTimeout.Inc()
		ex.flag("UT")
		cs.Scope.ResponseCode("upstream_rq", 504)
		ex.note(accesslog.UpstreamRequestTimeout, "response_timeout")
	case errRequestTimeout:
		ex.h.stats.RqTimeout.Inc()
		code = 408
		ex.note(0, "request_overall_timeout")
	case errStreamIdle:
		ex.h.stats.RqIdleTimeout.Inc()
		code = ex.timeoutCode()
		ex.note(accesslog.StreamIdleTimeout, "stream_idle_timeout")
	case errMaxStreamDuration:
		ex.h.stats.RqMaxDurationReached.Inc()
		code = ex.timeoutCode()
		ex.note(accesslog.DurationTimeout, "max_duration_timeout")
	}
	if ex.headersSent.Load() {
		ex.ds.Reset(stream.ErrCodeCancel)
		return
	}
	ex.localReply(code, msg)
}

// timeoutCode is Envoy's maybeRequestTimeoutCode: 504 once the request was
// received whole, 408 while the downstream is still sending it.
func (ex *exchange) timeoutCode() int {
	if ex.body == nil || ex.body.complete() {
		return 504
	}
	return 408
}

// timedOut is the watchdog's cancel for the exchange: it ends the
// exchange with cause and, once the response has started, resets the
// downstream stream too, so that a response write waiting on downstream
// flow control returns. A cause that ended the exchange earlier (the
// downstream went away, a filter answered) stays the cause.
func (ex *exchange) timedOut(cause error) {
	ex.cancel(cause)
	if ex.headersSent.Load() && isTimeout(context.Cause(ex.ctx)) {
		ex.ds.Reset(stream.ErrCodeCancel)
	}
}

// isTimeout reports whether cause is one of the exchange's timeouts.
func isTimeout(cause error) bool {
	switch cause {
	case errRouteTimeout, errRequestTimeout, errStreamIdle, errMaxStreamDuration:
		return true
	}
	return false
}

// pumpFilteredResponse is pumpResponse through the response body and
// trailer hooks.
func (ex *exchange) pumpFilteredResponse(us stream.ClientStream, c *bodyChain) error {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	write := func(d []byte) error {
		if len(d) == 0 {
			return nil
		}
		if _, err := ex.ds.Write(d); err != nil {
			return errDownstreamGone
		}
		ex.wd.touch()
		return nil
	}
	for {
		n, err := us.Read(buf)
		if n > 0 {
			ex.wd.touch()
			chunk := make([]byte, n)
			copy(chunk, buf[:n])
			out, ferr := c.onData(chunk, false)
			if ferr != nil {
				return ferr
			}
			if werr := write(out); werr != nil {
				return werr
			}
		}
		if err == io.EOF {
			ex.upstreamEnded()
			if t := us.Trailers(); t.Len() > 0 {
				ex.traceTrailers(&t)
				rest, ferr := c.onTrailers(&t)
				if ferr != nil {
					return ferr
				}
				if werr := write(rest); werr != nil {
					return werr
				}
				_ = ex.ds.WriteTrailers(t) // a failure means downstream is gone
				return nil
			}
			rest, ferr := c.onData(nil, true)
			if ferr != nil {
				return ferr
			}
			if werr := write(rest); werr != nil {
				return werr
			}
			_ = ex.ds.CloseWrite()
			return nil
		}
		if err != nil {
			return err
		}
	}
}
