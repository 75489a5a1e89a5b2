package wasm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"meshd.dev/meshd/filters"
	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/proxy/stats"
	"meshd.dev/meshd/proxy/upstream"
	"meshd.dev/meshd/wasm"
)

// MaxHTTPCallResponseBody bounds the response body of a guest's http_call.
const MaxHTTPCallResponseBody = 4 << 20

// vm is a running plugin as the filter uses it; *wasm.Plugin through
// pluginVM, or a fake in tests.
type vm interface {
	// NewHTTPContext returns the context of a new stream; into is
	// storage the stream owns that the plugin may use for it (see
	// wasm.Plugin.InitHTTPContext).
	NewHTTPContext(s wasm.StreamHost, into *wasm.HTTPContext) httpContext
	Close()
}

// httpContext is one stream's context in a plugin (*wasm.HTTPContext).
type httpContext interface {
	OnRequestHeaders(numHeaders int, endStream bool) (wasm.Action, error)
	OnRequestBody(size int, endStream bool) (wasm.Action, error)
	OnRequestTrailers(numTrailers int) (wasm.Action, error)
	OnResponseHeaders(numHeaders int, endStream bool) (wasm.Action, error)
	OnResponseBody(size int, endStream bool) (wasm.Action, error)
	OnResponseTrailers(numTrailers int) (wasm.Action, error)
	Done() error
}

// pluginVM adapts *wasm.Plugin to vm.
type pluginVM struct{ p *wasm.Plugin }

func (v pluginVM) NewHTTPContext(s wasm.StreamHost, into *wasm.HTTPContext) httpContext {
	v.p.InitHTTPContext(into, s)
	return into
}

func (v pluginVM) Close() { v.p.Close() }

// clusterSource is implemented by the connection manager's Callbacks
// (proxy/http/hcm): the sidecar's clusters, for http_call.
type clusterSource interface {
	Clusters() *upstream.Manager
}

// hostEnv is what plugins reach beyond a stream: the sidecar's cluster
// manager and stats store. Filter builders do not see them, so they are
// bound from the streams' Callbacks; until the first stream http_call fails
// and metric values are kept locally, then carried into the store. Metrics
// stay in the first store bound (a process has one).
type hostEnv struct {
	clusters atomic.Pointer[upstream.Manager]
	store    atomic.Pointer[stats.Store]

	mu      sync.Mutex
	pending []*metric // created before the store was bound; guarded by mu
}

// bind records the cluster manager of cb (the latest stream's: a sidecar
// has one, tests have several) and, the first time, its stats store.
func (e *hostEnv) bind(cb filters.Callbacks) {
	if cs, ok := cb.(clusterSource); ok {
		if m := cs.Clusters(); e.clusters.Load() != m {
			e.clusters.Store(m)
		}
	}
	if e.store.Load() != nil {
		return
	}
	st := cb.Stats().Store()
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.store.CompareAndSwap(nil, st) {
		return
	}
	for _, m := range e.pending {
		m.bind(st)
	}
	e.pending = nil
}

// metric returns a metric named name in the root scope of the store,
// bound now or when the store is known.
func (e *hostEnv) metric(name string, kind wasm.MetricKind) *metric {
	m := &metric{name: name, kind: kind}
	e.mu.Lock()
	defer e.mu.Unlock()
	if st := e.store.Load(); st != nil {
		m.bind(st)
	} else {
		e.pending = append(e.pending, m)
	}
	return m
}

// metric is a guest metric or a filter stat, a wasm.MetricHandle. Before it
// is bound to the store its value is kept in local (histogram samples are
// dropped: they have no meaningful pre-aggregation).
type metric struct {
	name string
	kind wasm.MetricKind

	mu    sync.Mutex
	local int64
	bound atomic.Bool
	c     *stats.Counter
	g     *stats.Gauge
	h     *stats.Histogram
}

var _ wasm.MetricHandle = (*metric)(nil)

// bind creates the store metric and carries the local value over.
func (m *metric) bind(st *stats.Store) {
	m.mu.Lock()
	defer m.mu.Unlock()
	root := st.Root()
	switch m.kind {
	case wasm.MetricCounter:
		m.c = root.Counter(m.name)
		if m.local > 0 {
			m.c.Add(uint64(m.local))
		}
	case wasm.MetricGauge:
		m.g = root.Gauge(m.name)
		m.g.Add(m.local)
	default:
		m.h = root.Histogram(m.name)
	}
	m.local = 0
	m.bound.Store(true)
}

// Add adds delta: to a counter (negative deltas are ignored, a counter
// only grows) or a gauge.
func (m *metric) Add(delta int64) {
	if !m.bound.Load() {
		m.mu.Lock()
		if !m.bound.Load() {
			if m.kind != wasm.MetricHistogram && (m.kind == wasm.MetricGauge || delta > 0) {
				m.local += delta
			}
			m.mu.Unlock()
			return
		}
		m.mu.Unlock()
	}
	switch {
	case m.c != nil && delta > 0:
		m.c.Add(uint64(delta))
	case m.g != nil:
		m.g.Add(delta)
	}
}

// Record sets a gauge or records a histogram sample.
func (m *metric) Record(v uint64) {
	if !m.bound.Load() {
		m.mu.Lock()
		if !m.bound.Load() {
			if m.kind == wasm.MetricGauge {
				m.local = int64(v)
			}
			m.mu.Unlock()
			return
		}
		m.mu.Unlock()
	}
	switch {
	case m.g != nil:
		m.g.Set(int64(v))
	case m.h != nil:
		m.h.Record(float64(v))
	}
}

// Value returns a counter's or gauge's value; 0 for a histogram.
func (m *metric) Value() uint64 {
	if !m.bound.Load() {
		m.mu.Lock()
		defer m.mu.Unlock()
		if !m.bound.Load() {
			return uint64(m.local)
		}
	}
	switch {
	case m.c != nil:
		return m.c.Value()
	case m.g != nil:
		return uint64(m.g.Value())
	}
	return 0
}

// failStats are a plugin's failure counters, wasm.<vm_id>.*.
type failStats struct {
	vmFailed, failOpen, failClosed *metric
}

func newFailStats(e *hostEnv, vmID string) *failStats {
	if vmID == "" {
		vmID = "default"
	}
	p := "wasm." + vmID + "."
	return &failStats{
		vmFailed:   e.metric(p+"vm_failed", wasm.MetricCounter),
		failOpen:   e.metric(p+"fail_open", wasm.MetricCounter),
		failClosed: e.metric(p+"fail_closed", wasm.MetricCounter),
	}
}

// hostServices is one plugin's wasm.HostServices.
type hostServices struct {
	env                *hostEnv
	name, rootID, vmID string
}

var _ wasm.HostServices = (*hostServices)(nil)

// errNoClusters is http_call before any stream bound the cluster manager.
var errNoClusters = errors.New("cluster manager not known yet (no stream has run through the filter)")

// HTTPCall sends a request to a host of cluster on a goroutine of its own,
// bounded by timeout, and reports the response to done. The request needs
// :method, :path and :authority pseudo-headers, as in Envoy.
func (h *hostServices) HTTPCall(cluster string, headers [][2]string, body []byte, trailers [][2]string, timeout time.Duration,
	done func(headers [][2]string, body []byte, trailers [][2]string, err error)) error {
	m := h.env.clusters.Load()
	if m == nil {
		return errNoClusters
	}
	c := m.Get(cluster)
	if c == nil {
		return fmt.Errorf("http_call: %w %q", wasm.ErrUnknownCluster, cluster)
	}
	req := &stream.Request{Scheme: "http", Header: header.Make(len(headers)), ContentLength: int64(len(body))}
	for _, kv := range headers {
		switch k := strings.ToLower(kv[0]); k {
		case ":method":
			req.Method = kv[1]
		case ":path":
			req.Path = kv[1]
		case ":authority":
			req.Authority = kv[1]
		case ":scheme":
			req.Scheme = kv[1]
		default:
			if strings.HasPrefix(k, ":") || header.IsConnectionSpecific(k) {
				continue
			}
			req.Header.Add(k, kv[1])
		}
	}
	if req.Method == "" || req.Path == "" || req.Authority == "" {
		return fmt.Errorf("http_call: :method, :path and :authority are required")
	}
	req.EndStream = len(body) == 0 && len(trailers) == 0
	if timeout <= 0 {
		timeout = DefaultFetchTimeout
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		rh, rb, rt, err := roundTrip(ctx, c, req, body, trailers)
		done(rh, rb, rt, err)
	}()
	return nil
}

// roundTrip makes one request to a host of c and reads the whole response.
func roundTrip(ctx context.Context, c *upstream.Cluster, req *stream.Request, body []byte, trailers [][2]string) ([][2]string, []byte, [][2]string, error) {
	host := c.Pick()
	if host == nil {
		return nil, nil, nil, errors.New("no healthy upstream")
	}
	us, err := host.NewStream(ctx, req, req.EndStream)
	if err != nil {
		return nil, nil, nil, err
	}
	defer us.Reset(stream.ErrCodeCancel) // no-op once the stream completed
	stop := context.AfterFunc(ctx, func() { us.Reset(stream.ErrCodeCancel) })
	defer stop()
	if !req.EndStream {
		if len(body) > 0 {
			if _, err := us.Write(body); err != nil {
				return nil, nil, nil, err
			}
		}
		t := header.Make(len(trailers))
		for _, kv := range trailers {
			t.Add(kv[0], kv[1])
		}
		if err := us.CloseWrite(t); err != nil {
			return nil, nil, nil, err
		}
	}
	resp, err := us.Response(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	rh := append(make([][2]string, 0, resp.Header.Len()+1), [2]string{":status", fmt.Sprint(resp.Status)})
	for _, f := range resp.Header.Fields() {
		rh = append(rh, [2]string{f.Name, f.Value})
	}
	var rb []byte
	if !resp.EndStream {
		rb, err = io.ReadAll(io.LimitReader(us, MaxHTTPCallResponseBody+1))
		if err != nil {
			return nil, nil, nil, err
		}
		if len(rb) > MaxHTTPCallResponseBody {
			return nil, nil, nil, fmt.Errorf("response body larger than %d bytes", MaxHTTPCallResponseBody)
		}
	}
	var rt [][2]string
	t := us.Trailers()
	for _, f := range t.Fields() {
		rt = append(rt, [2]string{f.Name, f.Value})
	}
	return rh, rb, rt, nil
}

// Metric returns the handle of a guest metric, exported as
// wasmcustom.<name> as Envoy exports them.
func (h *hostServices) Metric(name string, kind wasm.MetricKind) wasm.MetricHandle {
	return h.env.metric("wasmcustom."+name, kind)
}

// Property answers the plugin-wide properties: plugin_name, plugin_root_id,
// plugin_vm_id.
func (h *hostServices) Property(path []string) ([]byte, bool) {
	if len(path) != 1 {
		return nil, false
	}
	switch path[0] {
	case "plugin_name":
		return []byte(h.name), true
	case "plugin_root_id":
		return []byte(h.rootID), true
	case "plugin_vm_id":
		return []byte(h.vmID), true
	}
	return nil, false
}
