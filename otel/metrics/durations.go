// Package metrics exports meshd's metrics through the OpenTelemetry metrics
// SDK: the Envoy-named stats of a proxy/stats store, bridged by a
// metric.Producer that reads the lock-free store at collection time, and
// the OpenTelemetry semantic-convention HTTP duration histograms
// (http.server.request.duration, http.client.request.duration), recorded
// into lock-free histograms of their own. An OTLP/gRPC exporter sends both
// on a periodic reader.
package metrics

import (
	"math"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// DurationBounds are the explicit bucket boundaries, in seconds, that the
// HTTP semantic conventions recommend for http.server.request.duration and
// http.client.request.duration.
var DurationBounds = [...]float64{0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10}

// The semantic-convention metric names.
const (
	ServerDurationName = "http.server.request.duration"
	ClientDurationName = "http.client.request.duration"
)

// durationHist is one attribute set's histogram; updated lock-free.
type durationHist struct {
	buckets [len(DurationBounds) + 1]atomic.Uint64
	sumBits atomic.Uint64 // float64 seconds
	minBits atomic.Uint64 // float64 seconds; valid when count > 0
	maxBits atomic.Uint64
}

func newDurationHist() *durationHist {
	h := &durationHist{}
	h.minBits.Store(math.Float64bits(math.Inf(1)))
	h.maxBits.Store(math.Float64bits(math.Inf(-1)))
	return h
}

func (h *durationHist) record(s float64) {
	i := sort.SearchFloat64s(DurationBounds[:], s)
	h.buckets[i].Add(1)
	for {
		old := h.sumBits.Load()
		if h.sumBits.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+s)) {
			break
		}
	}
	for {
		old := h.minBits.Load()
		if s >= math.Float64frombits(old) || h.minBits.CompareAndSwap(old, math.Float64bits(s)) {
			break
		}
	}
	for {
		old := h.maxBits.Load()
		if s <= math.Float64frombits(old) || h.maxBits.CompareAndSwap(old, math.Float64bits(s)) {
			break
		}
	}
}

// ServerKey is the attribute set of one http.server.request.duration
// series.
type ServerKey struct {
	Method          string // http.request.method (known methods, else "_OTHER")
	Status          int    // http.response.status_code; 0: no response (omitted)
	ProtocolVersion string // network.protocol.version: "1.1", "2", "3"
	Scheme          string // url.scheme
	ErrorType       string // error.type: "" when the request succeeded
}

// ClientKey is the attribute set of one http.client.request.duration
// series: one upstream attempt.
type ClientKey struct {
	Method        string // http.request.method
	Status        int    // http.response.status_code; 0 when no response
	ServerAddress string // server.address: the upstream host's IP
	ServerPort    int    // server.port
	Cluster       string // meshd.upstream.cluster (the Envoy cluster)
	ErrorType     string // error.type
}

// HTTPDurations holds the semantic-convention HTTP duration histograms of
// one process. Recording is a map lookup and a few atomic adds; series are
// created on first use and live as long as the HTTPDurations (their
// attributes are bounded: methods are normalized, addresses are endpoints).
type HTTPDurations struct {
	start  time.Time
	server sync.Map // ServerKey → *durationHist
	client sync.Map // ClientKey → *durationHist
}

// NewHTTPDurations returns empty histograms whose cumulative series start
// now.
func NewHTTPDurations() *HTTPDurations { return &HTTPDurations{start: time.Now()} }

// RecordServer adds one downstream request's duration.
func (d *HTTPDurations) RecordServer(k ServerKey, elapsed time.Duration) {
	k.Method = NormalizeMethod(k.Method)
	load(&d.server, k).record(elapsed.Seconds())
}

// RecordClient adds one upstream attempt's duration.
func (d *HTTPDurations) RecordClient(k ClientKey, elapsed time.Duration) {
	k.Method = NormalizeMethod(k.Method)
	load(&d.client, k).record(elapsed.Seconds())
}

func load[K comparable](m *sync.Map, k K) *durationHist {
	if h, ok := m.Load(k); ok {
		return h.(*durationHist)
	}
	h, _ := m.LoadOrStore(k, newDurationHist())
	return h.(*durationHist)
}

// NormalizeMethod returns m when it is one of the methods of RFC 9110 and
// RFC 5789, and "_OTHER" otherwise, as the semantic conventions require to
// bound cardinality.
func NormalizeMethod(m string) string {
	switch m {
	case http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodHead,
		http.MethodOptions, http.MethodPatch, http.MethodConnect, http.MethodTrace:
		return m
	}
	return "_OTHER"
}

// HistSnapshot is a copy of one series.
type HistSnapshot struct {
	Buckets  [len(DurationBounds) + 1]uint64
	Count    uint64
	Sum      float64
	Min, Max float64 // valid when Count > 0
}

func (h *durationHist) snapshot() HistSnapshot {
	var s HistSnapshot
	// Count is the buckets' total, so the two always agree even while
	// records race with the copy.
	for i := range h.buckets {
		s.Buckets[i] = h.buckets[i].Load()
		s.Count += s.Buckets[i]
	}
	s.Sum = math.Float64frombits(h.sumBits.Load())
	s.Min = math.Float64frombits(h.minBits.Load())
	s.Max = math.Float64frombits(h.maxBits.Load())
	return s
}

// VisitServer calls f for every server series.
func (d *HTTPDurations) VisitServer(f func(ServerKey, HistSnapshot)) {
	d.server.Range(func(k, v any) bool {
		f(k.(ServerKey), v.(*durationHist).snapshot())
		return true
	})
}

// VisitClient calls f for every client series.
func (d *HTTPDurations) VisitClient(f func(ClientKey, HistSnapshot)) {
	d.client.Range(func(k, v any) bool {
		f(k.(ClientKey), v.(*durationHist).snapshot())
		return true
	})
}
