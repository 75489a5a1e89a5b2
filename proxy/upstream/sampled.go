package upstream

import "meshd.dev/meshd/proxy/stats"

// sampledStats are Envoy's cluster gauges that describe state the cluster
// keeps elsewhere (its host set, its circuit breaker's counts), set from
// that state whenever the stats store is read (stats.Store.Refresh):
//
//	membership_total, membership_healthy     hosts, and hosts neither failing
//	                                         active health checks nor ejected
//	circuit_breakers.default.cx_open         1 while max_connections is reached
//	circuit_breakers.default.rq_pending_open 1 while max_pending_requests is reached
//	circuit_breakers.default.rq_open         1 while max_requests is reached
//	circuit_breakers.default.rq_retry_open   1 while the retries outstanding
//	                                         reach RetryLimit (max_retries or
//	                                         the retry_budget)
//
// meshd has one priority, Envoy's DEFAULT, hence "default".
type sampledStats struct {
	total, healthy                             *stats.Gauge
	cxOpen, rqPendingOpen, rqOpen, rqRetryOpen *stats.Gauge
	// retryActive is the router's upstream_rq_retry_active (meshd):
	// retries outstanding on the cluster.
	retryActive *stats.Gauge
}

func newSampledStats(sc *stats.Scope) *sampledStats {
	cb := sc.Scope("circuit_breakers").Scope("default")
	return &sampledStats{
		total:         sc.Gauge("membership_total"),
		healthy:       sc.Gauge("membership_healthy"),
		cxOpen:        cb.Gauge("cx_open"),
		rqPendingOpen: cb.Gauge("rq_pending_open"),
		rqOpen:        cb.Gauge("rq_open"),
		rqRetryOpen:   cb.Gauge("rq_retry_open"),
		retryActive:   sc.Gauge(RetryActiveStat),
	}
}

// RetryActiveStat is the name of the cluster gauge (meshd's) the router
// keeps of the retries outstanding on the cluster, which RetryLimit bounds.
const RetryActiveStat = "upstream_rq_retry_active"

// RetryLimit is the cluster's retry circuit breaker: how many retries may
// be outstanding at once. It is max_retries or, with a retry_budget,
// budget_percent of the requests active and pending on the cluster, never
// below min_retry_concurrency (Envoy's RetryBudget).
func (c *Cluster) RetryLimit() int64 {
	th := c.spec.Thresholds
	b := th.RetryBudget
	if b == nil {
		return int64(th.MaxRetries)
	}
	active := c.stats.RqActive.Value() + c.pools.stats.rqPendingActive.Value()
	return max(int64(b.BudgetPercent*float64(active)/100), int64(b.MinRetryConcurrency))
}

// sample sets the gauges from the cluster's current hosts and breaker.
func (c *Cluster) sample(s *sampledStats) {
	var total, healthy int64
	if hs := c.set.Load(); hs != nil {
		for _, h := range hs.hosts {
			total++
			if h.LB.Healthy() {
				healthy++
			}
		}
	}
	s.total.Set(total)
	s.healthy.Set(healthy)
	b := c.pools.breaker
	s.cxOpen.Set(open(b.conns.Load(), b.maxConns))
	s.rqPendingOpen.Set(open(b.pending.Load(), b.maxPending))
	s.rqOpen.Set(open(b.requests.Load(), b.maxRequests))
	s.rqRetryOpen.Set(open(s.retryActive.Value(), c.RetryLimit()))
}

// open is a circuit breaker gauge's value: 1 when n has reached limit.
func open(n, limit int64) int64 {
	if n >= limit {
		return 1
	}
	return 0
}
