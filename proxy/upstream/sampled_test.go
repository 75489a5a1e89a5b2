package upstream

import (
	"log/slog"
	"testing"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/proxy/stats"
)

// TestSampledStats checks the membership and circuit breaker gauges of a
// static cluster as its hosts' health and breaker counts change, and that
// a drained cluster stops updating them.
func TestSampledStats(t *testing.T) {
	testutil.CheckGoroutines(t)
	store := stats.NewStore()
	m := NewManager(store, slog.New(slog.DiscardHandler))
	spec := testSpec(func(s *Spec) {
		s.Discovery = Static
		s.Endpoints = []Endpoint{{Host: "127.0.0.1", Port: 1, Weight: 1}, {Host: "127.0.0.1", Port: 2, Weight: 1}}
		s.Thresholds.MaxConnections, s.Thresholds.MaxPendingRequests, s.Thresholds.MaxRequests = 2, 3, 4
	})
	m.Apply([]*Spec{spec})
	c := m.Get("backend")
	const pre = "cluster.backend."
	// The router's gauge of outstanding retries (hcm's retryStats).
	retries := c.Stats().Scope.Gauge(RetryActiveStat)
	tests := []struct {
		name string
		set  func()
		want map[string]int64
	}{
		{"idle", func() {}, map[string]int64{
			"membership_total": 2, "membership_healthy": 2,
			"circuit_breakers.default.cx_open": 0, "circuit_breakers.default.rq_pending_open": 0, "circuit_breakers.default.rq_open": 0,
		}},
		{"one host ejected", func() { c.setHealthFlag(c.Hosts()[0], true, true) }, map[string]int64{
			"membership_total": 2, "membership_healthy": 1,
		}},
		{"one host failing health checks too", func() { c.setHealthFlag(c.Hosts()[1], false, true) }, map[string]int64{
			"membership_total": 2, "membership_healthy": 0,
		}},
		{"breakers full", func() {
			c.pools.breaker.conns.Store(2)
			c.pools.breaker.pending.Store(3)
			c.pools.breaker.requests.Store(4)
		}, map[string]int64{
			"circuit_breakers.default.cx_open": 1, "circuit_breakers.default.rq_pending_open": 1, "circuit_breakers.default.rq_open": 1,
		}},
		{"breakers below their limits", func() {
			c.pools.breaker.conns.Store(1)
			c.pools.breaker.pending.Store(0)
			c.pools.breaker.requests.Store(3)
		}, map[string]int64{
			"circuit_breakers.default.cx_open": 0, "circuit_breakers.default.rq_pending_open": 0, "circuit_breakers.default.rq_open": 0,
			"circuit_breakers.default.rq_retry_open": 0,
		}},
		{"retries below max_retries", func() { retries.Set(int64(spec.Thresholds.MaxRetries) - 1) }, map[string]int64{
			"circuit_breakers.default.rq_retry_open": 0,
		}},
		{"retries at max_retries", func() { retries.Set(int64(spec.Thresholds.MaxRetries)) }, map[string]int64{
			"circuit_breakers.default.rq_retry_open": 1,
		}},
	}
	for _, tc := range tests {
		tc.set()
		got := gaugeValues(store)
		for name, want := range tc.want {
			if v, ok := got[pre+name]; !ok || v != want {
				t.Errorf("%s: %s%s = %d (present %v), want %d", tc.name, pre, name, v, ok, want)
			}
		}
	}
	c.pools.breaker.conns.Store(0)
	c.pools.breaker.requests.Store(0)
	m.Apply(nil) // drains the cluster
	c.setHealthFlag(c.Hosts()[0], true, false)
	if v := gaugeValues(store)[pre+"membership_healthy"]; v != 0 {
		t.Errorf("after the cluster was drained: membership_healthy = %d, want 0 (no more updates)", v)
	}
}

func gaugeValues(store *stats.Store) map[string]int64 {
	m := map[string]int64{}
	store.Visit(nil, func(g *stats.Gauge) { m[g.FlatName()] = g.Value() }, nil)
	return m
}

// TestLBHealthyPanic checks that lb_healthy_panic counts the picks made
// while fewer hosts are healthy than the panic threshold (50%) and no
// others.
func TestLBHealthyPanic(t *testing.T) {
	testutil.CheckGoroutines(t)
	m := NewManager(stats.NewStore(), slog.New(slog.DiscardHandler))
	defer m.Close()
	m.Apply([]*Spec{testSpec(func(s *Spec) {
		s.Discovery = Static
		s.Endpoints = []Endpoint{{Host: "127.0.0.1", Port: 1, Weight: 1}, {Host: "127.0.0.1", Port: 2, Weight: 1}, {Host: "127.0.0.1", Port: 3, Weight: 1}}
	})})
	c := m.Get("backend")
	tests := []struct {
		name      string
		unhealthy int
		want      uint64 // lb_healthy_panic after 4 more picks
	}{
		{"all healthy", 0, 0},
		{"one of three unhealthy", 1, 0},
		{"two of three unhealthy: panic", 2, 4},
		{"all unhealthy: panic", 3, 8},
	}
	for _, tc := range tests {
		for i, h := range c.Hosts() {
			c.setHealthFlag(h, true, i < tc.unhealthy)
		}
		for range 4 {
			if c.Pick() == nil {
				t.Fatalf("%s: Pick returned no host", tc.name)
			}
		}
		if got := c.Stats().LBHealthyPanic.Value(); got != tc.want {
			t.Errorf("%s: lb_healthy_panic = %d, want %d", tc.name, got, tc.want)
		}
	}
}

// TestRetryLimit checks the retry circuit breaker's limit: max_retries, or
// a retry_budget's share of the active and pending requests with its
// minimum.
func TestRetryLimit(t *testing.T) {
	testutil.CheckGoroutines(t)
	tests := []struct {
		name            string
		budget          *RetryBudget
		active, pending int64
		want            int64
	}{
		{"max_retries", nil, 100, 10, 3},
		{"budget share", &RetryBudget{BudgetPercent: 20, MinRetryConcurrency: 3}, 40, 10, 10},
		{"budget minimum", &RetryBudget{BudgetPercent: 20, MinRetryConcurrency: 3}, 5, 0, 3},
		{"budget share rounds down", &RetryBudget{BudgetPercent: 25, MinRetryConcurrency: 1}, 9, 0, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := NewManager(stats.NewStore(), slog.New(slog.DiscardHandler))
			defer m.Close()
			m.Apply([]*Spec{testSpec(func(s *Spec) {
				s.Discovery = Static
				s.Endpoints = []Endpoint{{Host: "127.0.0.1", Port: 1, Weight: 1}}
				s.Thresholds.MaxRetries, s.Thresholds.RetryBudget = 3, tc.budget
			})})
			c := m.Get("backend")
			c.Stats().RqActive.Set(tc.active)
			c.pools.stats.rqPendingActive.Set(tc.pending)
			if got := c.RetryLimit(); got != tc.want {
				t.Errorf("RetryLimit() = %d with %d active and %d pending, want %d", got, tc.active, tc.pending, tc.want)
			}
		})
	}
}
