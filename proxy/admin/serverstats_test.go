package admin

import (
	"io"
	"log/slog"
	"runtime"
	"testing"
	"time"

	"meshd.dev/meshd/proxy/stats"
)

// TestServerStats checks Envoy's server.* gauges: state and live follow
// the server state /ready reports, uptime counts from New, concurrency is
// GOMAXPROCS and the memory gauges are non-zero and ordered as Envoy's
// (allocated <= heap_size <= physical_size); Close stops the updates.
func TestServerStats(t *testing.T) {
	tests := []struct {
		name      string
		set       func(*fakeBackend)
		state     int64
		live      int64
		stateName string
	}{
		{name: "live", set: func(b *fakeBackend) {}, state: 0, live: 1, stateName: "LIVE"},
		{name: "draining", set: func(b *fakeBackend) { b.draining = true }, state: 1, live: 0, stateName: "DRAINING"},
		{name: "healthcheck failed", set: func(b *fakeBackend) { b.hcFailed = true }, state: 1, live: 0, stateName: "DRAINING"},
		{name: "pre-initializing", set: func(b *fakeBackend) { b.ready = false }, state: 2, live: 0, stateName: "PRE_INITIALIZING"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := newFakeBackend()
			b.set(tc.set)
			store := stats.NewStore()
			srv := New(b, store, slog.New(slog.NewTextHandler(io.Discard, nil)))
			srv.started = time.Now().Add(-90*time.Second - 300*time.Millisecond)
			got := gauges(store)
			want := map[string]int64{
				"server.state":       tc.state,
				"server.live":        tc.live,
				"server.uptime":      90,
				"server.concurrency": int64(runtime.GOMAXPROCS(0)),
			}
			for name, v := range want {
				if got[name] != v {
					t.Errorf("%s = %d, want %d (state %s)", name, got[name], v, tc.stateName)
				}
			}
			alloc, heap, phys := got["server.memory_allocated"], got["server.memory_heap_size"], got["server.memory_physical_size"]
			if alloc <= 0 || alloc > heap || heap > phys {
				t.Errorf("memory_allocated %d, memory_heap_size %d, memory_physical_size %d: want 0 < allocated <= heap_size <= physical_size", alloc, heap, phys)
			}
			if err := srv.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			srv.started = time.Now().Add(-time.Hour)
			if up := gauges(store)["server.uptime"]; up != 90 {
				t.Errorf("server.uptime after Close = %d, want 90 (no more updates)", up)
			}
		})
	}
}

func gauges(store *stats.Store) map[string]int64 {
	m := map[string]int64{}
	store.Visit(nil, func(g *stats.Gauge) { m[g.FlatName()] = g.Value() }, nil)
	return m
}
