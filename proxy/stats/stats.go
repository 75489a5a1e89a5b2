// Package stats is meshd's stats store: counters, gauges and histograms
// named the way Envoy names them, so /stats and /stats/prometheus read like
// Envoy's and existing dashboards keep working.
//
// Every metric has a flat name ("cluster.backend.upstream_rq_total") and a
// Prometheus name with labels ("envoy_cluster_upstream_rq_total" with
// envoy_cluster_name="backend"). Scopes build both at once: a plain segment
// goes into both names, a tagged segment goes into the flat name and becomes a
// label in the Prometheus one, as Envoy's tag extraction does.
//
// Metrics are created once (under a lock) and updated lock-free; callers keep
// the returned pointers on their hot paths. A metric lives as long as the
// store: a config swap that rebuilds a cluster finds the same counters again.
package stats

import (
	"math"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
)

// Tag is one Prometheus label extracted from a flat stat name.
type Tag struct {
	Name  string
	Value string
}

// Store holds every metric of a process. The zero value is not usable; call
// NewStore.
type Store struct {
	mu       sync.RWMutex
	counters map[string]*Counter
	gauges   map[string]*Gauge
	hists    map[string]*Histogram
	// refreshers run before every Visit (Refresh), keyed by registration.
	refreshMu   sync.Mutex
	refreshers  map[uint64]func()
	refreshNext uint64
	// shared holds process-wide objects that live beside the metrics
	// (Shared); keys are the owning package's unexported types.
	shared sync.Map
}

// NewStore returns an empty store.
func NewStore() *Store {
	return &Store{
		counters: map[string]*Counter{},
		gauges:   map[string]*Gauge{},
		hists:    map[string]*Histogram{},
	}
}

// Scope names a group of metrics; see the package doc.
type Scope struct {
	store      *Store
	flatPrefix string // "cluster.backend."
	promPrefix string // "cluster."
	tags       []Tag
	codes      sync.Map // prefix → *CodeStats, for ResponseCode (codes.go)
}

// Root returns the unnamed scope of the store.
func (s *Store) Root() *Scope { return &Scope{store: s} }

// Scope returns a child scope with a plain segment: Scope("http") under the
// root names "http.X" and "envoy_http_X".
func (sc *Scope) Scope(segment string) *Scope {
	return &Scope{
		store:      sc.store,
		flatPrefix: sc.flatPrefix + segment + ".",
		promPrefix: sc.promPrefix + segment + ".",
		tags:       sc.tags,
	}
}

// Tagged returns a child scope whose segment is a tag value: under
// Scope("cluster"), Tagged("envoy_cluster_name", "b") names "cluster.b.X"
// and "envoy_cluster_X{envoy_cluster_name="b"}".
func (sc *Scope) Tagged(tagName, value string) *Scope {
	tags := make([]Tag, len(sc.tags), len(sc.tags)+1)
	copy(tags, sc.tags)
	return &Scope{
		store:      sc.store,
		flatPrefix: sc.flatPrefix + value + ".",
		promPrefix: sc.promPrefix,
		tags:       append(tags, Tag{tagName, value}),
	}
}

// Shared returns the object stored under key, storing create() first when
// there is none; concurrent callers get the same object. It lets a package
// keep one process-wide object (such as the HTTP/2 codec's table of live
// streams) beside the metrics it counts in, found by whoever holds the
// store, without a global. key should be a value of an unexported type of
// the calling package.
func (s *Store) Shared(key any, create func() any) any {
	if v, ok := s.shared.Load(key); ok {
		return v
	}
	v, _ := s.shared.LoadOrStore(key, create())
	return v
}

// Name returns the scope's flat prefix without the trailing dot.
func (sc *Scope) Name() string { return strings.TrimSuffix(sc.flatPrefix, ".") }

// Counter returns the counter name in this scope, creating it on first use.
func (sc *Scope) Counter(name string) *Counter {
	return sc.TaggedCounter(name, name)
}

// TaggedCounter returns a counter whose flat name and Prometheus name differ
// in their last segment, with extra labels: for Envoy's
// "upstream_rq_200" it is TaggedCounter("upstream_rq_200", "upstream_rq",
// Tag{"envoy_response_code", "200"}).
func (sc *Scope) TaggedCounter(flat, prom string, extra ...Tag) *Counter {
	full := sc.flatPrefix + flat
	return find(sc.store, sc.store.counters, full, func() *Counter {
		return &Counter{meta: sc.meta(full, prom, extra)}
	})
}

// Gauge returns the gauge name in this scope, creating it on first use.
func (sc *Scope) Gauge(name string) *Gauge {
	full := sc.flatPrefix + name
	return find(sc.store, sc.store.gauges, full, func() *Gauge {
		return &Gauge{meta: sc.meta(full, name, nil)}
	})
}

// Histogram returns the histogram name in this scope, creating it on first
// use. Values are recorded in the unit the name states (Envoy's _ms
// histograms take milliseconds).
func (sc *Scope) Histogram(name string) *Histogram {
	full := sc.flatPrefix + name
	return find(sc.store, sc.store.hists, full, func() *Histogram {
		return &Histogram{meta: sc.meta(full, name, nil)}
	})
}

// find returns m[full], one of s's metric maps, storing create() there
// first when it is missing; concurrent callers get the same metric. The
// common case, a metric that exists, takes only the read lock.
func find[T any](s *Store, m map[string]*T, full string, create func() *T) *T {
	s.mu.RLock()
	v := m[full]
	s.mu.RUnlock()
	if v != nil {
		return v
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if v = m[full]; v == nil {
		v = create()
		m[full] = v
	}
	return v
}

func (sc *Scope) meta(full, prom string, extra []Tag) meta {
	tags := make([]Tag, 0, len(sc.tags)+len(extra))
	tags = append(append(tags, sc.tags...), extra...)
	return meta{flat: full, base: sc.promPrefix + prom, prom: promName(sc.promPrefix + prom), tags: tags}
}

// promName turns "cluster.upstream_rq_total" into
// "envoy_cluster_upstream_rq_total".
func promName(s string) string {
	var b strings.Builder
	b.WriteString("envoy_")
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '_':
			b.WriteByte(c)
		default:
			b.WriteByte('_')
		}
	}
	return b.String()
}

type meta struct {
	flat string
	base string // the tag-extracted name: flat name without tag values
	prom string
	tags []Tag
}

// Counter is a monotonically increasing count.
type Counter struct {
	meta
	v atomic.Uint64
}

// Inc adds one.
func (c *Counter) Inc() { c.v.Add(1) }

// Add adds n.
func (c *Counter) Add(n uint64) { c.v.Add(n) }

// Value returns the current count.
func (c *Counter) Value() uint64 { return c.v.Load() }

// Gauge is a value that goes up and down.
type Gauge struct {
	meta
	v atomic.Int64
}

// Inc adds one.
func (g *Gauge) Inc() { g.v.Add(1) }

// Dec subtracts one.
func (g *Gauge) Dec() { g.v.Add(-1) }

// Add adds n, which may be negative.
func (g *Gauge) Add(n int64) { g.v.Add(n) }

// Set sets the value.
func (g *Gauge) Set(n int64) { g.v.Store(n) }

// Value returns the current value.
func (g *Gauge) Value() int64 { return g.v.Load() }

// Bounds are the histogram bucket upper bounds, Envoy's defaults.
var Bounds = [...]float64{0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000}

// Histogram counts recorded values into the fixed Bounds buckets.
type Histogram struct {
	meta
	buckets [len(Bounds) + 1]atomic.Uint64 // last one is +Inf
	count   atomic.Uint64
	sumBits atomic.Uint64 // float64 bits
}

// Record adds one value.
func (h *Histogram) Record(v float64) {
	i := sort.SearchFloat64s(Bounds[:], v)
	h.buckets[i].Add(1)
	h.count.Add(1)
	for {
		old := h.sumBits.Load()
		if h.sumBits.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+v)) {
			return
		}
	}
}

// HistogramSnapshot is a consistent-enough copy of a histogram's state.
type HistogramSnapshot struct {
	// Buckets[i] counts values <= Bounds[i] and > Bounds[i-1]; the last
	// element counts values above every bound.
	Buckets [len(Bounds) + 1]uint64
	Count   uint64
	Sum     float64
}

// Snapshot copies the histogram's counts.
func (h *Histogram) Snapshot() HistogramSnapshot {
	var s HistogramSnapshot
	for i := range h.buckets {
		s.Buckets[i] = h.buckets[i].Load()
	}
	s.Count = h.count.Load()
	s.Sum = math.Float64frombits(h.sumBits.Load())
	return s
}

// Quantile estimates the q-quantile (0..1) by linear interpolation inside
// the bucket that holds it; NaN when empty.
func (s HistogramSnapshot) Quantile(q float64) float64 {
	var total uint64
	for _, b := range s.Buckets {
		total += b
	}
	if total == 0 {
		return math.NaN()
	}
	rank := q * float64(total)
	var cum float64
	for i, b := range s.Buckets {
		next := cum + float64(b)
		if next >= rank && b > 0 {
			lo := 0.0
			if i > 0 {
				lo = Bounds[i-1]
			}
			if i == len(Bounds) {
				return Bounds[len(Bounds)-1]
			}
			return lo + (Bounds[i]-lo)*(rank-cum)/float64(b)
		}
		cum = next
	}
	return Bounds[len(Bounds)-1]
}

// FlatName is the metric's Envoy flat name.
func (m *meta) FlatName() string { return m.flat }

// TagExtractedName is the metric's flat name with its tag segments
// removed, as Envoy's tag extraction leaves it: "cluster.upstream_rq_total"
// for "cluster.backend.upstream_rq_total", "cluster.upstream_rq" for
// "cluster.backend.upstream_rq_200". Tags carries what was removed.
func (m *meta) TagExtractedName() string { return m.base }

// PromName is the metric's Prometheus name.
func (m *meta) PromName() string { return m.prom }

// Tags are the metric's Prometheus labels.
func (m *meta) Tags() []Tag { return m.tags }

// Visit calls the functions for every metric, each kind sorted by flat
// name. Any function may be nil.
func (s *Store) Visit(counter func(*Counter), gauge func(*Gauge), hist func(*Histogram)) {
	s.refresh()
	s.mu.RLock()
	cs := sortedValues(s.counters)
	gs := sortedValues(s.gauges)
	hs := sortedValues(s.hists)
	s.mu.RUnlock()
	if counter != nil {
		for _, c := range cs {
			counter(c)
		}
	}
	if gauge != nil {
		for _, g := range gs {
			gauge(g)
		}
	}
	if hist != nil {
		for _, h := range hs {
			hist(h)
		}
	}
}

func sortedValues[T any](m map[string]*T) []*T {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]*T, len(keys))
	for i, k := range keys {
		out[i] = m[k]
	}
	return out
}

// Store returns the store the scope names metrics in, so that code handed
// a scope can name metrics elsewhere in the same store (Store().Root()).
func (sc *Scope) Store() *Store { return sc.store }

// Refresh registers f to run before every Visit (so before every /stats
// scrape and every stats sink export), for gauges that sample state kept
// elsewhere, such as server.uptime or server.memory_allocated: Envoy
// updates those on its stats flush, meshd when they are read. f runs
// without the store's lock held and may create or set metrics; it should
// be cheap. The returned function removes f; calling it again does nothing.
func (s *Store) Refresh(f func()) (remove func()) {
	s.refreshMu.Lock()
	defer s.refreshMu.Unlock()
	if s.refreshers == nil {
		s.refreshers = map[uint64]func(){}
	}
	id := s.refreshNext
	s.refreshNext++
	s.refreshers[id] = f
	return func() {
		s.refreshMu.Lock()
		defer s.refreshMu.Unlock()
		delete(s.refreshers, id)
	}
}

// refresh runs the Refresh functions in registration order.
func (s *Store) refresh() {
	s.refreshMu.Lock()
	ids := make([]uint64, 0, len(s.refreshers))
	for id := range s.refreshers {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	fs := make([]func(), len(ids))
	for i, id := range ids {
		fs[i] = s.refreshers[id]
	}
	s.refreshMu.Unlock()
	for _, f := range fs {
		f()
	}
}
