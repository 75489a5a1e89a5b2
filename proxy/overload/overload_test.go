package overload

import (
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	overloadv3 "github.com/envoyproxy/go-control-plane/envoy/config/overload/v3"
	fixedheapv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/resource_monitors/fixed_heap/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/proxy/stats"
)

func TestTriggerValue(t *testing.T) {
	thr := Trigger{Threshold: 0.9}
	sc := Trigger{Scaled: true, ScalingThreshold: 0.5, SaturationThreshold: 0.9}
	for _, tc := range []struct {
		name string
		tr   Trigger
		p    float64
		want float64
	}{
		{"threshold below", thr, 0.89, 0},
		{"threshold at", thr, 0.9, 1},
		{"threshold above max", thr, 1.7, 1},
		{"scaled below", sc, 0.2, 0},
		{"scaled at scaling", sc, 0.5, 0},
		{"scaled quarter", sc, 0.6, 0.25},
		{"scaled three quarters", sc, 0.8, 0.75},
		{"scaled at saturation", sc, 0.9, 1},
		{"scaled above", sc, 1.2, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.tr.Value(tc.p); got < tc.want-1e-9 || got > tc.want+1e-9 {
				t.Errorf("Value(%v) = %v, want %v", tc.p, got, tc.want)
			}
		})
	}
}

func heapMonitor(t *testing.T, max uint64) *overloadv3.ResourceMonitor {
	t.Helper()
	a, err := anypb.New(&fixedheapv3.FixedHeapConfig{MaxHeapSizeBytes: max})
	if err != nil {
		t.Fatal(err)
	}
	return &overloadv3.ResourceMonitor{Name: FixedHeap, ConfigType: &overloadv3.ResourceMonitor_TypedConfig{TypedConfig: a}}
}

func threshold(mon string, v float64) *overloadv3.Trigger {
	return &overloadv3.Trigger{Name: mon, TriggerOneof: &overloadv3.Trigger_Threshold{Threshold: &overloadv3.ThresholdTrigger{Value: v}}}
}

func scaled(mon string, lo, hi float64) *overloadv3.Trigger {
	return &overloadv3.Trigger{Name: mon, TriggerOneof: &overloadv3.Trigger_Scaled{Scaled: &overloadv3.ScaledTrigger{ScalingThreshold: lo, SaturationThreshold: hi}}}
}

func TestCompileErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		om   *overloadv3.OverloadManager
		want string
	}{
		{"unknown monitor type", &overloadv3.OverloadManager{ResourceMonitors: []*overloadv3.ResourceMonitor{{Name: "envoy.resource_monitors.cpu_utilization"}}},
			"resource_monitors[0].name: unsupported resource monitor"},
		{"zero heap", &overloadv3.OverloadManager{ResourceMonitors: []*overloadv3.ResourceMonitor{heapMonitor(t, 0)}},
			"resource_monitors[0].typed_config.max_heap_size_bytes: must be positive"},
		{"unknown action", &overloadv3.OverloadManager{ResourceMonitors: []*overloadv3.ResourceMonitor{heapMonitor(t, 1)},
			Actions: []*overloadv3.OverloadAction{{Name: "envoy.overload_actions.disable_http_keepalive", Triggers: []*overloadv3.Trigger{threshold(FixedHeap, 0.5)}}}},
			"actions[0].name: unsupported overload action"},
		{"unknown trigger monitor", &overloadv3.OverloadManager{ResourceMonitors: []*overloadv3.ResourceMonitor{heapMonitor(t, 1)},
			Actions: []*overloadv3.OverloadAction{{Name: ShrinkHeap, Triggers: []*overloadv3.Trigger{threshold("nope", 0.5)}}}},
			`actions[0].triggers[0].name: unknown resource monitor "nope"`},
		{"duplicate trigger", &overloadv3.OverloadManager{ResourceMonitors: []*overloadv3.ResourceMonitor{heapMonitor(t, 1)},
			Actions: []*overloadv3.OverloadAction{{Name: ShrinkHeap, Triggers: []*overloadv3.Trigger{threshold(FixedHeap, 0.5), threshold(FixedHeap, 0.6)}}}},
			"actions[0].triggers[1].name: duplicate trigger"},
		{"scaled inverted", &overloadv3.OverloadManager{ResourceMonitors: []*overloadv3.ResourceMonitor{heapMonitor(t, 1)},
			Actions: []*overloadv3.OverloadAction{{Name: StopAcceptingRequests, Triggers: []*overloadv3.Trigger{scaled(FixedHeap, 0.9, 0.5)}}}},
			"actions[0].triggers[0].scaled: need 0 <= scaling_threshold < saturation_threshold <= 1"},
		{"no triggers", &overloadv3.OverloadManager{ResourceMonitors: []*overloadv3.ResourceMonitor{heapMonitor(t, 1)},
			Actions: []*overloadv3.OverloadAction{{Name: StopAcceptingRequests}}},
			"actions[0].triggers: an action needs at least one trigger"},
		{"duplicate action", &overloadv3.OverloadManager{ResourceMonitors: []*overloadv3.ResourceMonitor{heapMonitor(t, 1)},
			Actions: []*overloadv3.OverloadAction{{Name: ShrinkHeap, Triggers: []*overloadv3.Trigger{threshold(FixedHeap, 0.5)}}, {Name: ShrinkHeap, Triggers: []*overloadv3.Trigger{threshold(FixedHeap, 0.5)}}}},
			`actions[1].name: duplicate overload action`},
		{"zero refresh", &overloadv3.OverloadManager{RefreshInterval: durationpb.New(0)}, "refresh_interval: must be positive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Compile(tc.om)
			if err == nil || !strings.Contains(err.Error(), "overload_manager."+tc.want) {
				t.Fatalf("Compile error = %v, want one containing %q", err, "overload_manager."+tc.want)
			}
		})
	}
}

// TestManagerActions drives a manager from a fake monitor through the
// states and checks the actions' values, stats and effects.
func TestManagerActions(t *testing.T) {
	testutil.CheckGoroutines(t)
	cfg, err := Compile(&overloadv3.OverloadManager{
		RefreshInterval:  durationpb.New(time.Hour), // refreshed by hand below
		ResourceMonitors: []*overloadv3.ResourceMonitor{heapMonitor(t, 1000)},
		Actions: []*overloadv3.OverloadAction{
			{Name: StopAcceptingRequests, Triggers: []*overloadv3.Trigger{scaled(FixedHeap, 0.5, 0.9)}},
			{Name: StopAcceptingConnections, Triggers: []*overloadv3.Trigger{threshold(FixedHeap, 0.95)}},
			{Name: ShrinkHeap, Triggers: []*overloadv3.Trigger{threshold(FixedHeap, 0.95)}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	var p atomic.Uint64 // pressure in thousandths
	var fail atomic.Bool
	store := stats.NewStore()
	m := New(cfg, store, nil, map[string]Monitor{FixedHeap: func() (float64, error) {
		if fail.Load() {
			return 0, errors.New("sampling failed")
		}
		return float64(p.Load()) / 1000, nil
	}})
	var shrinks int
	m.freeOSMem = func() { shrinks++ }
	m.Start()
	defer m.Stop()
	gauge := func(name string) int64 {
		var v int64 = -1
		store.Visit(func(*stats.Counter) {}, func(g *stats.Gauge) {
			if g.FlatName() == name {
				v = g.Value()
			}
		}, func(*stats.Histogram) {})
		return v
	}
	accepting := func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		return !m.paused
	}
	for _, tc := range []struct {
		pressure             uint64
		requests             float64
		reqScale, reqActive  int64
		accepting            bool
		pressureGauge        int64
		shrinksAfterThisStep int
	}{
		{pressure: 100, requests: 0, reqScale: 0, accepting: true, pressureGauge: 10},
		{pressure: 700, requests: 0.5, reqScale: 50, accepting: true, pressureGauge: 70},
		{pressure: 920, requests: 1, reqScale: 100, reqActive: 1, accepting: true, pressureGauge: 92},
		{pressure: 960, requests: 1, reqScale: 100, reqActive: 1, accepting: false, pressureGauge: 96, shrinksAfterThisStep: 1},
		{pressure: 990, requests: 1, reqScale: 100, reqActive: 1, accepting: false, pressureGauge: 99, shrinksAfterThisStep: 1}, // timer_interval (10 s) not elapsed
		{pressure: 300, requests: 0, reqScale: 0, accepting: true, pressureGauge: 30, shrinksAfterThisStep: 1},
	} {
		p.Store(tc.pressure)
		m.Refresh()
		if v := m.Value(StopAcceptingRequests); v < tc.requests-1e-9 || v > tc.requests+1e-9 {
			t.Errorf("pressure %d‰: stop_accepting_requests = %v, want %v", tc.pressure, v, tc.requests)
		}
		if g := gauge("overload." + StopAcceptingRequests + ".scale_percent"); g != tc.reqScale {
			t.Errorf("pressure %d‰: scale_percent = %d, want %d", tc.pressure, g, tc.reqScale)
		}
		if g := gauge("overload." + StopAcceptingRequests + ".active"); g != tc.reqActive {
			t.Errorf("pressure %d‰: active = %d, want %d", tc.pressure, g, tc.reqActive)
		}
		if g := gauge("overload." + FixedHeap + ".pressure"); g != tc.pressureGauge {
			t.Errorf("pressure %d‰: pressure gauge = %d, want %d", tc.pressure, g, tc.pressureGauge)
		}
		if got := accepting(); got != tc.accepting {
			t.Errorf("pressure %d‰: accepting = %v, want %v", tc.pressure, got, tc.accepting)
		}
		if shrinks != tc.shrinksAfterThisStep {
			t.Errorf("pressure %d‰: %d heap shrinks, want %d", tc.pressure, shrinks, tc.shrinksAfterThisStep)
		}
		// Envoy's name for the heap shrinker's count.
		if c := store.Root().Counter("overload.envoy.overload_actions.shrink_heap.shrink_count").Value(); c != uint64(tc.shrinksAfterThisStep) {
			t.Errorf("pressure %d‰: overload.envoy.overload_actions.shrink_heap.shrink_count = %d, want %d", tc.pressure, c, tc.shrinksAfterThisStep)
		}
	}

	// Saturated requests are always shed; half-scaled about half of them.
	p.Store(950)
	m.Refresh()
	for range 100 {
		if !m.ShedRequest() {
			t.Fatal("saturated: a request was not shed")
		}
	}
	p.Store(700)
	m.Refresh()
	shed := 0
	for range 2000 {
		if m.ShedRequest() {
			shed++
		}
	}
	if shed < 800 || shed > 1200 { // 0.5 ± 10 standard deviations (≈11 each)
		t.Errorf("scale 0.5: shed %d of 2000", shed)
	}

	// A failing monitor keeps the last state and counts.
	fail.Store(true)
	m.Refresh()
	if v := m.Value(StopAcceptingRequests); v < 0.5-1e-9 || v > 0.5+1e-9 {
		t.Errorf("after a failed sample: stop_accepting_requests = %v, want 0.5 kept", v)
	}

	// A waiter blocked on the gate is released when pressure drops.
	fail.Store(false)
	p.Store(990)
	m.Refresh()
	released := make(chan bool)
	go func() { released <- m.WaitAccepting(make(chan struct{})) }()
	select {
	case <-released:
		t.Fatal("WaitAccepting returned while saturated")
	case <-time.After(50 * time.Millisecond):
	}
	p.Store(100)
	m.Refresh()
	select {
	case ok := <-released:
		if !ok {
			t.Fatal("WaitAccepting = false, want true")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WaitAccepting still blocked after pressure dropped")
	}
}

func TestHeapMonitor(t *testing.T) {
	p, err := HeapMonitor(1 << 40)()
	if err != nil {
		t.Fatal(err)
	}
	if p <= 0 || p >= 1 {
		t.Fatalf("heap pressure against 1 TiB = %v, want in (0, 1)", p)
	}
}

func TestNilManager(t *testing.T) {
	var m *Manager
	m.Start()
	defer m.Stop()
	if m.ShedRequest() || m.Value(StopAcceptingRequests) != 0 || !m.WaitAccepting(nil) {
		t.Fatal("a nil manager must not shed nor pause")
	}
}
