package upstream

import (
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/proxy/stats"
)

// ErrOverflow is the error (wrapped: test with errors.Is) Host.NewStream
// returns when a circuit breaker of the cluster is full: max_requests
// (active streams of the cluster) or max_pending_requests (streams waiting
// for a connection). Nothing was sent upstream. Like Envoy, the router
// answers 503 with "x-envoy-overloaded: true" (gRPC UNAVAILABLE) and does
// not retry it on the same cluster: the overflow is the cluster's verdict,
// counted in upstream_rq_pending_overflow.
var ErrOverflow = errors.New("upstream overflow")

// connectFailure is the error a stream gets when the pool could not
// connect to the endpoint (or is backing off after failing to). It is
// unprocessed, so the router may retry it on another host, and its Reason
// is the one the router maps to "reset reason: connection failure".
func connectFailure(err error) error {
	return &stream.Error{Code: stream.ErrCodeRefusedStream, Unprocessed: true, Reason: "connect failure", Err: err}
}

// breaker holds the circuit-breaker counts of one cluster, shared by the
// pools of all its hosts (Envoy's ResourceManager). Checks are
// compare-and-swap, so a limit is never exceeded by concurrent pools.
type breaker struct {
	maxConns, maxPending, maxRequests int64

	conns    atomic.Int64 // connections open or being dialled
	pending  atomic.Int64 // streams queued for a connection
	requests atomic.Int64 // streams active on connections
}

func newBreaker(t Thresholds) *breaker {
	return &breaker{maxConns: int64(t.MaxConnections), maxPending: int64(t.MaxPendingRequests), maxRequests: int64(t.MaxRequests)}
}

// tryAcquire adds one to v unless that would exceed limit.
func tryAcquire(v *atomic.Int64, limit int64) bool {
	for {
		n := v.Load()
		if n >= limit {
			return false
		}
		if v.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// poolStats are the cluster-scope stats the connection pools keep beyond
// Stats: Envoy's names, plus meshd's own documented in README.md.
type poolStats struct {
	scope             *stats.Scope
	cxIdleTimeout     *stats.Counter // upstream_cx_idle_timeout
	cxMaxRequests     *stats.Counter // upstream_cx_max_requests
	cxMaxDuration     *stats.Counter // upstream_cx_max_duration_reached
	cxDestroyRemoteRq *stats.Counter // upstream_cx_destroy_remote_with_active_rq
	cxDestroyLocalRq  *stats.Counter // upstream_cx_destroy_local_with_active_rq
	cxPoolOverflow    *stats.Counter // upstream_cx_pool_overflow: max_connections reached
	rqPendingTotal    *stats.Counter // upstream_rq_pending_total
	rqPendingOverflow *stats.Counter // upstream_rq_pending_overflow
	rqPendingActive   *stats.Gauge   // upstream_rq_pending_active
	keepaliveBackoff  *stats.Counter // http2.keepalive_backoff (meshd)
	cxRefusedHold     *stats.Counter // upstream_cx_refused_stream_hold (meshd): h2Pool.refusedLocked
	streamWait        *stats.Histogram
	reusePermille     *stats.Gauge // upstream_cx_reuse_ratio_permille (meshd)
	streamsTotal      atomic.Uint64
	streamsReused     atomic.Uint64
	http2Scope        *stats.Scope
	endpointScope     *stats.Scope
}

func newPoolStats(sc *stats.Scope) *poolStats {
	ps := &poolStats{
		scope:             sc,
		cxIdleTimeout:     sc.Counter("upstream_cx_idle_timeout"),
		cxMaxRequests:     sc.Counter("upstream_cx_max_requests"),
		cxMaxDuration:     sc.Counter("upstream_cx_max_duration_reached"),
		cxDestroyRemoteRq: sc.Counter("upstream_cx_destroy_remote_with_active_rq"),
		cxDestroyLocalRq:  sc.Counter("upstream_cx_destroy_local_with_active_rq"),
		cxPoolOverflow:    sc.Counter("upstream_cx_pool_overflow"),
		rqPendingTotal:    sc.Counter("upstream_rq_pending_total"),
		rqPendingOverflow: sc.Counter("upstream_rq_pending_overflow"),
		rqPendingActive:   sc.Gauge("upstream_rq_pending_active"),
		keepaliveBackoff:  sc.Scope("http2").Counter("keepalive_backoff"),
		cxRefusedHold:     sc.Counter("upstream_cx_refused_stream_hold"),
		streamWait:        sc.Histogram("upstream_rq_stream_wait_ms"),
		reusePermille:     sc.Gauge("upstream_cx_reuse_ratio_permille"),
		http2Scope:        sc.Scope("http2"),
		endpointScope:     sc.Scope("endpoint"),
	}
	return ps
}

// goAwayRx counts a received GOAWAY by error code:
// cluster.<name>.http2.goaway_rx_<CODE> (Prometheus:
// envoy_cluster_http2_goaway_rx_by_code{envoy_http2_error_code="<CODE>"}).
func (ps *poolStats) goAwayRx(code stream.ErrCode) {
	name := code.String()
	ps.http2Scope.TaggedCounter("goaway_rx_"+name, "goaway_rx_by_code", stats.Tag{Name: "envoy_http2_error_code", Value: name}).Inc()
}

// keepaliveGauge is the per-endpoint current keepalive interval in
// milliseconds: cluster.<name>.endpoint.<ip>_<port>.http2_keepalive_interval_ms.
func (ps *poolStats) keepaliveGauge(addr string) *stats.Gauge {
	seg := strings.NewReplacer(":", "_", "[", "", "]", "").Replace(addr)
	return ps.endpointScope.Tagged("envoy_upstream_address", seg).Gauge("http2_keepalive_interval_ms")
}

// streamPlaced records that a stream went on a connection, reused when the
// connection had carried a stream before.
func (ps *poolStats) streamPlaced(reused bool) {
	total := ps.streamsTotal.Add(1)
	r := ps.streamsReused.Load()
	if reused {
		r = ps.streamsReused.Add(1)
	}
	ps.reusePermille.Set(int64(r * 1000 / total))
}

// poolShared is what the pools of one cluster share: the circuit breaker
// and the stats.
type poolShared struct {
	breaker *breaker
	stats   *poolStats

	mu sync.Mutex
	// starved are the pools with queued streams that could not dial
	// because the cluster was at max_connections; a connection closing
	// anywhere in the cluster wakes them.
	starved map[*h2Pool]struct{}
}

// starve records that p waits for the cluster's connection budget.
func (sh *poolShared) starve(p *h2Pool) {
	sh.mu.Lock()
	if sh.starved == nil {
		sh.starved = map[*h2Pool]struct{}{}
	}
	sh.starved[p] = struct{}{}
	sh.mu.Unlock()
}

// connReleased wakes the starved pools after a connection slot of the
// cluster was freed. Each wakes on its own goroutine, so no pool's lock is
// ever taken while another's is held.
func (sh *poolShared) connReleased() {
	sh.mu.Lock()
	starved := sh.starved
	sh.starved = nil
	sh.mu.Unlock()
	for p := range starved {
		go p.wake()
	}
}

func newPoolShared(spec *Spec, st *Stats) *poolShared {
	return &poolShared{breaker: newBreaker(spec.Thresholds), stats: newPoolStats(st.Scope)}
}

// Dial backoff: after n consecutive failed connects to an endpoint the
// pool dials it again no sooner than a uniformly random delay in
// [0, min(backoffCap, backoffBase*2^n)) (full jitter), and streams that
// find no connection meanwhile fail at once with a connect failure.
const (
	backoffBase = 25 * time.Millisecond
	backoffCap  = time.Second
)

// dialBackoff is the full-jitter delay after failures consecutive failures.
func dialBackoff(failures int) time.Duration {
	d := backoffCap
	if failures < 16 {
		d = min(backoffCap, backoffBase<<failures)
	}
	return rand.N(d) + time.Millisecond
}

// maxKeepaliveInterval bounds the doubling of an endpoint's keepalive
// interval after GOAWAY ENHANCE_YOUR_CALM "too_many_pings": 5 minutes,
// grpc-go's default keepalive.EnforcementPolicy.MinTime, which every
// grpc-go server accepts while streams are open.
const maxKeepaliveInterval = 5 * time.Minute
