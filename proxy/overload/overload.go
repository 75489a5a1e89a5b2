// Package overload is Envoy's overload manager for meshd: resource monitors
// sampled on a refresh interval, triggers turning their pressure into
// action states, and the actions the sidecar honours (stop accepting
// connections, shed new requests, shrink the heap).
//
// Pressures are measured only on the refresh interval; the request path
// reads one atomic per request.
package overload

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"time"

	overloadv3 "github.com/envoyproxy/go-control-plane/envoy/config/overload/v3"
	fixedheapv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/resource_monitors/fixed_heap/v3"

	"meshd.dev/meshd/proxy/stats"
)

// The resource monitor and actions meshd implements, by Envoy's names.
const (
	FixedHeap                = "envoy.resource_monitors.fixed_heap"
	StopAcceptingConnections = "envoy.overload_actions.stop_accepting_connections"
	StopAcceptingRequests    = "envoy.overload_actions.stop_accepting_requests"
	ShrinkHeap               = "envoy.overload_actions.shrink_heap"
)

// FixedHeapConfigType is the typed_config of the fixed_heap monitor.
const FixedHeapConfigType = "envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig"

// DefaultRefreshInterval is Envoy's refresh_interval default.
const DefaultRefreshInterval = time.Second

// DefaultShrinkInterval is how often, at most, shrink_heap returns memory
// to the OS while saturated when ShrinkHeapConfig.timer_interval is unset
// (Envoy's heap shrinker default).
const DefaultShrinkInterval = 10 * time.Second

// ShrinkHeapConfigType is the typed_config of the shrink_heap action.
const ShrinkHeapConfigType = "envoy.config.overload.v3.ShrinkHeapConfig"

// Config is a compiled overload_manager.
type Config struct {
	// RefreshInterval is how often monitors are sampled.
	RefreshInterval time.Duration
	// Monitors are the resource monitors, by name.
	Monitors []MonitorConfig
	// Actions are the configured actions, by name.
	Actions []ActionConfig
}

// MonitorConfig is one resource monitor.
type MonitorConfig struct {
	// Name is the monitor's name (FixedHeap).
	Name string
	// MaxHeapBytes is FixedHeapConfig.max_heap_size_bytes.
	MaxHeapBytes uint64
}

// ActionConfig is one overload action and its triggers.
type ActionConfig struct {
	Name     string
	Triggers []Trigger
	// ShrinkInterval (shrink_heap only) is ShrinkHeapConfig.timer_interval:
	// while saturated, the heap is collected and returned to the OS
	// (debug.FreeOSMemory) at most this often.
	ShrinkInterval time.Duration
}

// Trigger maps one monitor's pressure to an action state in [0, 1], 1
// being saturated. Exactly one of Threshold and Scaled shapes it.
type Trigger struct {
	// Monitor names the resource monitor.
	Monitor string
	// Threshold, when Scaled is false: saturated at pressure >= Threshold,
	// inactive below.
	Threshold float64
	// Scaled selects the scaled trigger: inactive below ScalingThreshold,
	// (pressure-ScalingThreshold)/(SaturationThreshold-ScalingThreshold)
	// between, saturated at SaturationThreshold and above.
	Scaled                                bool
	ScalingThreshold, SaturationThreshold float64
}

// Value returns the trigger's state for pressure p (a fraction of the
// monitor's maximum): 0 inactive, 1 saturated, between them scaling.
func (t Trigger) Value(p float64) float64 {
	if !t.Scaled {
		if p >= t.Threshold {
			return 1
		}
		return 0
	}
	switch {
	case p >= t.SaturationThreshold:
		return 1
	case p <= t.ScalingThreshold:
		return 0
	}
	return (p - t.ScalingThreshold) / (t.SaturationThreshold - t.ScalingThreshold)
}

// FieldError is one problem Compile found: Field is the path below
// overload_manager, in proto field names.
type FieldError struct {
	Field, Reason string
}

// Error returns "overload_manager.<field>: <reason>".
func (e *FieldError) Error() string { return "overload_manager." + e.Field + ": " + e.Reason }

// Compile checks om and returns its Config. Every problem is reported, each
// a *FieldError, joined with errors.Join. A nil om compiles to nil.
func Compile(om *overloadv3.OverloadManager) (*Config, error) {
	if om == nil {
		return nil, nil
	}
	var errs []error
	bad := func(path, format string, args ...any) {
		errs = append(errs, &FieldError{Field: path, Reason: fmt.Sprintf(format, args...)})
	}
	cfg := &Config{RefreshInterval: DefaultRefreshInterval}
	if d := om.GetRefreshInterval(); d != nil {
		cfg.RefreshInterval = d.AsDuration()
		if cfg.RefreshInterval <= 0 {
			bad("refresh_interval", "must be positive, got %s", cfg.RefreshInterval)
		}
	}
	monitors := map[string]bool{}
	for i, m := range om.GetResourceMonitors() {
		p := fmt.Sprintf("resource_monitors[%d]", i)
		if m.GetName() != FixedHeap {
			bad(p+".name", "unsupported resource monitor %q (meshd supports %s)", m.GetName(), FixedHeap)
			continue
		}
		if monitors[m.GetName()] {
			bad(p+".name", "duplicate resource monitor %q", m.GetName())
			continue
		}
		monitors[m.GetName()] = true
		var fh fixedheapv3.FixedHeapConfig
		if m.GetTypedConfig() == nil {
			bad(p+".typed_config", "missing: %s needs a %s", FixedHeap, FixedHeapConfigType)
			continue
		}
		if err := m.GetTypedConfig().UnmarshalTo(&fh); err != nil {
			bad(p+".typed_config", "%s needs a %s: %v", FixedHeap, FixedHeapConfigType, err)
			continue
		}
		if fh.GetMaxHeapSizeBytes() == 0 {
			bad(p+".typed_config.max_heap_size_bytes", "must be positive")
			continue
		}
		cfg.Monitors = append(cfg.Monitors, MonitorConfig{Name: m.GetName(), MaxHeapBytes: fh.GetMaxHeapSizeBytes()})
	}
	actions := map[string]bool{}
	for i, a := range om.GetActions() {
		p := fmt.Sprintf("actions[%d]", i)
		switch a.GetName() {
		case StopAcceptingConnections, StopAcceptingRequests, ShrinkHeap:
		default:
			bad(p+".name", "unsupported overload action %q (meshd supports %s, %s, %s)",
				a.GetName(), StopAcceptingConnections, StopAcceptingRequests, ShrinkHeap)
			continue
		}
		if actions[a.GetName()] {
			bad(p+".name", "duplicate overload action %q", a.GetName())
			continue
		}
		actions[a.GetName()] = true
		ac := ActionConfig{Name: a.GetName(), ShrinkInterval: DefaultShrinkInterval}
		if tc := a.GetTypedConfig(); tc != nil {
			var sh overloadv3.ShrinkHeapConfig
			if a.GetName() != ShrinkHeap {
				bad(p+".typed_config", "%s takes no typed_config", a.GetName())
			} else if err := tc.UnmarshalTo(&sh); err != nil {
				bad(p+".typed_config", "%s takes a %s: %v", ShrinkHeap, ShrinkHeapConfigType, err)
			} else if sh.GetMaxUnfreedMemoryBytes() != nil {
				bad(p+".typed_config.max_unfreed_memory_bytes", "not supported (Go's runtime returns all free memory)")
			} else if d := sh.GetTimerInterval(); d != nil {
				if ac.ShrinkInterval = d.AsDuration(); ac.ShrinkInterval <= 0 {
					bad(p+".typed_config.timer_interval", "must be positive, got %s", ac.ShrinkInterval)
				}
			}
		}
		used := map[string]bool{}
		for j, t := range a.GetTriggers() {
			tp := fmt.Sprintf("%s.triggers[%d]", p, j)
			if !monitors[t.GetName()] {
				bad(tp+".name", "unknown resource monitor %q", t.GetName())
				continue
			}
			if used[t.GetName()] {
				bad(tp+".name", "duplicate trigger for resource monitor %q (one per action)", t.GetName())
				continue
			}
			used[t.GetName()] = true
			tr := Trigger{Monitor: t.GetName()}
			switch {
			case t.GetThreshold() != nil:
				tr.Threshold = t.GetThreshold().GetValue()
				if !(tr.Threshold >= 0 && tr.Threshold <= 1) {
					bad(tp+".threshold.value", "must be in [0, 1], got %v", tr.Threshold)
					continue
				}
			case t.GetScaled() != nil:
				s := t.GetScaled()
				tr.Scaled, tr.ScalingThreshold, tr.SaturationThreshold = true, s.GetScalingThreshold(), s.GetSaturationThreshold()
				if !(tr.ScalingThreshold >= 0 && tr.SaturationThreshold <= 1 && tr.ScalingThreshold < tr.SaturationThreshold) {
					bad(tp+".scaled", "need 0 <= scaling_threshold < saturation_threshold <= 1, got %v and %v",
						tr.ScalingThreshold, tr.SaturationThreshold)
					continue
				}
			default:
				bad(tp, "missing threshold or scaled")
				continue
			}
			ac.Triggers = append(ac.Triggers, tr)
		}
		if len(a.GetTriggers()) == 0 {
			bad(p+".triggers", "an action needs at least one trigger")
		}
		cfg.Actions = append(cfg.Actions, ac)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return cfg, nil
}

// Monitor samples one resource: its pressure as a fraction of its maximum
// (may exceed 1).
type Monitor func() (float64, error)

// HeapMonitor returns the fixed_heap monitor for a maximum of max bytes:
// heap in use (runtime/metrics heap objects plus unused space in in-use
// spans, Go's counterpart of tcmalloc's allocated bytes) over max.
func HeapMonitor(max uint64) Monitor {
	samples := []metrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/unused:bytes"},
	}
	return func() (float64, error) {
		metrics.Read(samples)
		var used uint64
		for _, s := range samples {
			if s.Value.Kind() != metrics.KindUint64 {
				return 0, fmt.Errorf("fixed_heap: runtime metric %s unavailable", s.Name)
			}
			used += s.Value.Uint64()
		}
		return float64(used) / float64(max), nil
	}
}

// Manager runs the monitors and publishes action states. The zero of every
// query method on a nil *Manager is "not overloaded", so a sidecar without
// overload_manager passes nil.
type Manager struct {
	cfg      *Config
	monitors map[string]Monitor
	log      *slog.Logger

	// states holds each action's current value as math.Float64bits.
	states map[string]*atomic.Uint64
	// accepting is closed while stop_accepting_connections is not
	// saturated; replaced by an open channel while it is.
	mu        sync.Mutex
	accepting chan struct{}
	paused    bool

	pressure   map[string]*stats.Gauge
	active     map[string]*stats.Gauge
	scale      map[string]*stats.Gauge
	failed     map[string]*stats.Counter
	shrinks    *stats.Counter
	lastShrink time.Time
	freeOSMem  func()

	stop context.CancelFunc
	done chan struct{}
}

// New returns a manager for cfg counting into store under "overload.".
// monitors overrides the monitor of a name (tests); the others are built
// from cfg. It samples nothing until Start.
func New(cfg *Config, store *stats.Store, log *slog.Logger, monitors map[string]Monitor) *Manager {
	if log == nil {
		log = slog.Default()
	}
	sc := store.Root().Scope("overload")
	m := &Manager{
		cfg: cfg, log: log, monitors: map[string]Monitor{},
		states:    map[string]*atomic.Uint64{},
		accepting: make(chan struct{}),
		pressure:  map[string]*stats.Gauge{}, active: map[string]*stats.Gauge{},
		scale: map[string]*stats.Gauge{}, failed: map[string]*stats.Counter{},
		shrinks:   sc.Scope(ShrinkHeap).Counter("shrink_count"),
		freeOSMem: debug.FreeOSMemory,
	}
	close(m.accepting)
	for _, mc := range cfg.Monitors {
		m.monitors[mc.Name] = HeapMonitor(mc.MaxHeapBytes)
		if f := monitors[mc.Name]; f != nil {
			m.monitors[mc.Name] = f
		}
		m.pressure[mc.Name] = sc.Scope(mc.Name).Gauge("pressure")
		m.failed[mc.Name] = sc.Scope(mc.Name).Counter("failed_updates")
	}
	for _, a := range cfg.Actions {
		m.states[a.Name] = new(atomic.Uint64)
		m.active[a.Name] = sc.Scope(a.Name).Gauge("active")
		m.scale[a.Name] = sc.Scope(a.Name).Gauge("scale_percent")
	}
	return m
}

// Start samples the monitors now and then every refresh interval until
// Stop.
func (m *Manager) Start() {
	if m == nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	m.stop, m.done = cancel, make(chan struct{})
	m.Refresh()
	go func() {
		defer close(m.done)
		t := time.NewTicker(m.cfg.RefreshInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				m.Refresh()
			}
		}
	}()
}

// Stop ends sampling and resumes accepting (waiters are released).
func (m *Manager) Stop() {
	if m == nil || m.stop == nil {
		return
	}
	m.stop()
	<-m.done
	m.setPaused(false)
}

// Refresh samples every monitor once and updates the actions, their stats
// and their effects. A monitor that fails keeps its last pressure and counts
// failed_updates.
func (m *Manager) Refresh() {
	press := map[string]float64{}
	for name, mon := range m.monitors {
		p, err := mon()
		if err != nil {
			m.failed[name].Inc()
			m.log.Warn("overload: resource monitor update failed", "monitor", name, "error", err)
			continue
		}
		press[name] = p
		m.pressure[name].Set(int64(math.Round(100 * p)))
	}
	for _, a := range m.cfg.Actions {
		v := 0.0
		for _, t := range a.Triggers {
			p, ok := press[t.Monitor]
			if !ok {
				// Keep the state the last good sample gave.
				v = max(v, m.Value(a.Name))
				continue
			}
			v = max(v, t.Value(p))
		}
		prev := m.Value(a.Name)
		m.states[a.Name].Store(math.Float64bits(v))
		m.scale[a.Name].Set(int64(math.Floor(100*v + 1e-9))) // truncated, as Envoy's
		sat := int64(0)
		if v >= 1 {
			sat = 1
		}
		m.active[a.Name].Set(sat)
		if (prev >= 1) != (v >= 1) {
			m.log.Info("overload action state changed", "action", a.Name, "saturated", v >= 1)
		}
		switch a.Name {
		case StopAcceptingConnections:
			m.setPaused(v >= 1)
		case ShrinkHeap:
			if v >= 1 && time.Since(m.lastShrink) >= a.ShrinkInterval {
				m.lastShrink = time.Now()
				m.freeOSMem()
				m.shrinks.Inc()
			}
		}
	}
}

// Value returns the current state of action name: 0 inactive, 1
// saturated, between them scaling. Unconfigured actions are 0.
func (m *Manager) Value(name string) float64 {
	if m == nil {
		return 0
	}
	s := m.states[name]
	if s == nil {
		return 0
	}
	return math.Float64frombits(s.Load())
}

// ShedRequest reports whether a new request is to be refused: with
// probability stop_accepting_requests' value, as Envoy's connection
// manager does (always when saturated, never when inactive).
func (m *Manager) ShedRequest() bool {
	v := m.Value(StopAcceptingRequests)
	return v >= 1 || (v > 0 && mrand.Float64() < v)
}

// WaitAccepting blocks while stop_accepting_connections is saturated and
// returns true once connections may be served, or false when stop is
// closed first. It returns at once when not overloaded.
func (m *Manager) WaitAccepting(stop <-chan struct{}) bool {
	if m == nil {
		return true
	}
	m.mu.Lock()
	ch := m.accepting
	m.mu.Unlock()
	select {
	case <-ch:
		return true
	case <-stop:
		return false
	}
}

func (m *Manager) setPaused(p bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p == m.paused {
		return
	}
	m.paused = p
	if p {
		m.accepting = make(chan struct{})
	} else {
		close(m.accepting)
	}
}
