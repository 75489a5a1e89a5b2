package hcm

import (
	"errors"
	mrand "math/rand/v2"
	"runtime"
	"strconv"
	"time"
	"weak"

	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/proxy/route"
	"meshd.dev/meshd/proxy/stats"
	"meshd.dev/meshd/proxy/upstream"
)

// Transparent retries. A stream the upstream did not process (REFUSED_STREAM,
// above a GOAWAY's last-stream-id, its connection lost before the request
// was written) is retried on another or a new connection whether or not the
// route has a retry_policy, without the client seeing it. These retries do
// not count against num_retries nor the cluster's max_retries/retry_budget:
// they are bounded by a per-request budget of their own and by the
// request's deadline.
const (
	// DefaultTransparentRetries is how many unprocessed attempts one request
	// may retry transparently: what one connection at the HTTP/2 default of
	// 100 concurrent streams can refuse.
	DefaultTransparentRetries = 100
	// transparentImmediate is how many transparent retries go out at once;
	// later ones back off (transparentBase doubling up to transparentMax,
	// with full jitter) so a peer that refuses everything is not hammered.
	transparentImmediate = 3
	transparentBase      = 2 * time.Millisecond
	transparentMax       = 50 * time.Millisecond
)

// A connect failure is also unprocessed, but retrying it on the same
// endpoint only waits for another timeout: it is retried transparently only
// on an endpoint not tried yet (at most once per other endpoint); beyond
// that the route's retry_on connect-failure decides.

// retryStats are the router's per-cluster retry stats. They are created
// with the first request to the cluster, so they read 0 before any retry
// (as Envoy's do), and cached per cluster by Handler.retryStatsFor.
type retryStats struct {
	retry          *stats.Counter // upstream_rq_retry
	success        *stats.Counter // upstream_rq_retry_success
	overflow       *stats.Counter // upstream_rq_retry_overflow
	limitExceeded  *stats.Counter // upstream_rq_retry_limit_exceeded
	transparent    *stats.Counter // meshd: upstream_rq_transparent_retry
	bufferAbandon  *stats.Counter // retry_or_shadow_abandoned
	active         *stats.Gauge   // meshd: upstream_rq_retry_active
	maxDurationHit *stats.Counter // upstream_rq_max_duration_reached
	// perTryIdleTimeout is upstream_rq_per_try_idle_timeout.
	perTryIdleTimeout *stats.Counter
}

func newRetryStats(sc *stats.Scope) *retryStats {
	return &retryStats{
		retry:             sc.Counter("upstream_rq_retry"),
		success:           sc.Counter("upstream_rq_retry_success"),
		overflow:          sc.Counter("upstream_rq_retry_overflow"),
		limitExceeded:     sc.Counter("upstream_rq_retry_limit_exceeded"),
		transparent:       sc.Counter("upstream_rq_transparent_retry"),
		bufferAbandon:     sc.Counter("retry_or_shadow_abandoned"),
		active:            sc.Gauge(upstream.RetryActiveStat),
		maxDurationHit:    sc.Counter("upstream_rq_max_duration_reached"),
		perTryIdleTimeout: sc.Counter("upstream_rq_per_try_idle_timeout"),
	}
}

// retryState is one request's retry bookkeeping.
type retryState struct {
	policy *route.RetryPolicy // nil: no retry_policy
	c      *upstream.Cluster
	st     *retryStats

	retries     uint32 // ordinary retries done
	transparent int    // transparent retries done
	// refusedBy is the connection that refused the last attempt's stream
	// unprocessed (stream.ConnOf), for the next attempt to avoid
	// (upstream.Host.NewStreamAvoiding); nil otherwise.
	refusedBy stream.ClientConn
	// holding is true while this request holds one of the cluster's active
	// retry slots (from scheduling a retry until that attempt ends).
	holding bool
}

func (rs *retryState) stats() *retryStats { return rs.st }

// retryStatsFor returns the retry stats of the cluster whose stats are cs.
// The cache holds cs weakly: the entry goes when the cluster does.
func (h *Handler) retryStatsFor(cs *upstream.Stats) *retryStats {
	k := weak.Make(cs)
	if v, ok := h.retryStats.Load(k); ok {
		return v.(*retryStats)
	}
	st := newRetryStats(cs.Scope)
	if v, loaded := h.retryStats.LoadOrStore(k, st); loaded {
		return v.(*retryStats)
	}
	runtime.AddCleanup(cs, func(k weak.Pointer[upstream.Stats]) { h.retryStats.Delete(k) }, k)
	return st
}

// release returns the active retry slot the request holds, if any.
func (rs *retryState) release() {
	if rs.holding {
		rs.holding = false
		rs.stats().active.Dec()
	}
}

// retried reports whether an ordinary retry was made.
func (rs *retryState) retried() bool { return rs.retries > 0 }

// allowTransparent reports whether one more unprocessed attempt may be
// retried transparently, counting it if so.
func (rs *retryState) allowTransparent() bool {
	if rs.transparent >= DefaultTransparentRetries {
		return false
	}
	rs.transparent++
	rs.stats().transparent.Inc()
	return true
}

// transparentDelay is the back-off before the current transparent retry.
func (rs *retryState) transparentDelay() time.Duration {
	if rs.transparent <= transparentImmediate {
		return 0
	}
	return jittered(transparentBase, transparentMax, rs.transparent-transparentImmediate)
}

// allowRetry decides an ordinary retry for an outcome the policy retries
// on: within num_retries and the cluster's circuit breaker (max_retries, or
// retry_budget when set). It counts the decision in Envoy's stats and, when
// it allows the retry, returns the back-off to wait first.
func (rs *retryState) allowRetry() (time.Duration, bool) {
	st := rs.stats()
	if rs.retries >= rs.policy.NumRetries {
		st.limitExceeded.Inc()
		return 0, false
	}
	if !rs.holding {
		if st.active.Value() >= rs.c.RetryLimit() {
			st.overflow.Inc()
			return 0, false
		}
		st.active.Inc()
		rs.holding = true
	}
	rs.retries++
	st.retry.Inc()
	return jittered(rs.policy.BaseInterval, rs.policy.MaxInterval, int(rs.retries)), true
}

// jittered is Envoy's jittered exponential back-off: a uniform random
// duration in [0, min(base·2^(n-1), max)).
func jittered(base, maxD time.Duration, n int) time.Duration {
	d := maxD
	if n-1 < 30 {
		d = min(base<<(n-1), maxD)
	}
	if d <= 0 {
		return 0
	}
	return time.Duration(mrand.Int64N(int64(d)))
}

// gRPC status codes retry_on names.
const (
	grpcCancelled         = 1
	grpcDeadlineExceeded  = 4
	grpcResourceExhausted = 8
	grpcInternal          = 13
	grpcUnavailable       = 14
)

// retriableResponse reports whether policy p retries response resp, as
// Envoy's router does: 5xx, gateway-error (502, 503, 504), retriable-4xx
// (409), envoy-ratelimited (x-envoy-ratelimited present),
// retriable-status-codes, and the gRPC conditions on a grpc-status carried
// in the response headers (a trailers-only response).
func retriableResponse(p *route.RetryPolicy, resp *stream.Response) bool {
	if p == nil {
		return false
	}
	s := resp.Status
	switch {
	case p.Has(route.Retry5xx) && s >= 500 && s <= 599:
		return true
	case p.Has(route.RetryGatewayError) && (s == 502 || s == 503 || s == 504):
		return true
	case p.Has(route.RetryRetriable4xx) && s == 409:
		return true
	case p.Has(route.RetryEnvoyRateLimited) && resp.Header.Has("x-envoy-ratelimited"):
		return true
	case p.Has(route.RetryRetriableStatusCodes):
		for _, c := range p.RetriableStatusCodes {
			if int(c) == s {
				return true
			}
		}
	}
	v, ok := resp.Header.Lookup("grpc-status")
	if !ok {
		return false
	}
	code, err := strconv.Atoi(v)
	if err != nil {
		return false
	}
	switch code {
	case grpcCancelled:
		return p.Has(route.RetryGRPCCancelled)
	case grpcDeadlineExceeded:
		return p.Has(route.RetryGRPCDeadlineExceeded)
	case grpcResourceExhausted:
		return p.Has(route.RetryGRPCResourceExhausted)
	case grpcInternal:
		return p.Has(route.RetryGRPCInternal)
	case grpcUnavailable:
		return p.Has(route.RetryGRPCUnavailable)
	}
	return false
}

// retriableReset reports whether policy p retries an attempt that failed
// with err before response headers: a reset or disconnect (5xx,
// gateway-error, reset), a connect failure (connect-failure too), a stream
// the upstream did not process (reset-before-request too), a REFUSED_STREAM
// (refused-stream too).
func retriableReset(p *route.RetryPolicy, err error) bool {
	if p == nil {
		return false
	}
	if p.Has(route.Retry5xx | route.RetryGatewayError | route.RetryReset) {
		return true
	}
	if isConnectFailure(err) {
		return p.Has(route.RetryConnectFailure | route.RetryResetBeforeRequest)
	}
	if stream.Unprocessed(err) && p.Has(route.RetryResetBeforeRequest) {
		return true
	}
	var se *stream.Error
	if errors.As(err, &se) && se.Code == stream.ErrCodeRefusedStream && se.Remote {
		return p.Has(route.RetryRefusedStream)
	}
	return false
}

// retriableTimeout reports whether policy p retries an attempt that hit
// per_try_timeout or per_try_idle_timeout: Envoy retries it on 5xx,
// gateway-error and reset.
func retriableTimeout(p *route.RetryPolicy) bool {
	return p != nil && p.Has(route.Retry5xx|route.RetryGatewayError|route.RetryReset)
}

// isConnectFailure reports whether err is the pool's failure to connect to
// the endpoint (TCP connect, TLS handshake, or connect_timeout).
func isConnectFailure(err error) bool {
	var se *stream.Error
	return errors.As(err, &se) && se.Unprocessed && se.Reason == "connect failure"
}
