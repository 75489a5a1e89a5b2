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
//
// meshd has one priority, Envoy's DEFAULT, hence "default".
type sampledStats struct {
	total, healthy                *stats.Gauge
	cxOpen, rqPendingOpen, rqOpen *stats.Gauge
}

func newSampledStats(sc *stats.Scope) *sampledStats {
	cb := sc.Scope("circuit_breakers").Scope("default")
	return &sampledStats{
		total:         sc.Gauge("membership_total"),
		healthy:       sc.Gauge("membership_healthy"),
		cxOpen:        cb.Gauge("cx_open"),
		rqPendingOpen: cb.Gauge("rq_pending_open"),
		rqOpen:        cb.Gauge("rq_open"),
	}
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
}

// open is a circuit breaker gauge's value: 1 when n has reached limit.
func open(n, limit int64) int64 {
	if n >= limit {
		return 1
	}
	return 0
}
