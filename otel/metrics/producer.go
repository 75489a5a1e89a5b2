package metrics

import (
	"context"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"meshd.dev/meshd/proxy/stats"
)

// ScopeName is the instrumentation scope of everything meshd produces.
const ScopeName = "meshd.dev/meshd"

// ProducerOptions shape how the Envoy-named stats are exported, as the
// fields of Envoy's envoy.stat_sinks.open_telemetry do.
type ProducerOptions struct {
	// UseTagExtractedName names metrics without their tag values
	// ("cluster.upstream_rq_total" with attribute envoy.cluster_name)
	// instead of the flat name ("cluster.backend.upstream_rq_total").
	// Envoy's default is true.
	UseTagExtractedName bool
	// EmitTagsAsAttributes attaches the extracted tags as attributes
	// (envoy.cluster_name="backend"). Envoy's default is true.
	EmitTagsAsAttributes bool
	// Prefix is prepended to every stat name, with a '.' (Envoy's prefix).
	Prefix string
}

// Producer is a sdkmetric.Producer reading a stats store and HTTP duration
// histograms at collection time: counters become cumulative monotonic
// sums, gauges gauges, Envoy histograms explicit-bucket histograms with the
// store's bounds, and the semantic-convention durations histograms in
// seconds. Nothing is recorded through the SDK's instruments, so the
// proxy's hot path keeps the store's cost (one atomic add per stat).
type Producer struct {
	opts      ProducerOptions
	store     *stats.Store   // nil: no Envoy stats
	durations *HTTPDurations // nil: no duration histograms
	start     time.Time
	scope     instrumentation.Scope
}

// NewProducer returns a producer of store's stats and durations' histograms
// (either may be nil).
func NewProducer(store *stats.Store, durations *HTTPDurations, opts ProducerOptions) *Producer {
	return &Producer{
		opts: opts, store: store, durations: durations, start: time.Now(),
		scope: instrumentation.Scope{Name: ScopeName},
	}
}

var _ sdkmetric.Producer = (*Producer)(nil)

// Produce implements sdkmetric.Producer; safe for concurrent use.
func (p *Producer) Produce(context.Context) ([]metricdata.ScopeMetrics, error) {
	now := time.Now()
	sm := metricdata.ScopeMetrics{Scope: p.scope}
	if p.store != nil {
		sm.Metrics = p.storeMetrics(now)
	}
	if p.durations != nil {
		sm.Metrics = append(sm.Metrics, p.durationMetrics(now)...)
	}
	return []metricdata.ScopeMetrics{sm}, nil
}

// group collects the data points of one metric name.
type group[T any] struct {
	order []string
	by    map[string]*T
}

func (g *group[T]) get(name string, mk func() *T) *T {
	if g.by == nil {
		g.by = map[string]*T{}
	}
	if v := g.by[name]; v != nil {
		return v
	}
	v := mk()
	g.by[name] = v
	g.order = append(g.order, name)
	return v
}

type named interface {
	FlatName() string
	TagExtractedName() string
	Tags() []stats.Tag
}

func (p *Producer) name(m named) string {
	n := m.FlatName()
	if p.opts.UseTagExtractedName {
		n = m.TagExtractedName()
	}
	if p.opts.Prefix != "" {
		n = p.opts.Prefix + "." + n
	}
	return n
}

func (p *Producer) attrs(m named) attribute.Set {
	if !p.opts.EmitTagsAsAttributes || len(m.Tags()) == 0 {
		return *attribute.EmptySet()
	}
	kvs := make([]attribute.KeyValue, 0, len(m.Tags()))
	for _, t := range m.Tags() {
		kvs = append(kvs, attribute.String(tagKey(t.Name), t.Value))
	}
	return attribute.NewSet(kvs...)
}

// tagKey turns meshd's Prometheus label names back into Envoy's tag names:
// "envoy_cluster_name" → "envoy.cluster_name".
func tagKey(n string) string {
	if rest, ok := strings.CutPrefix(n, "envoy_"); ok {
		return "envoy." + rest
	}
	return n
}

func (p *Producer) storeMetrics(now time.Time) []metricdata.Metrics {
	var sums group[metricdata.Sum[int64]]
	var gauges group[metricdata.Gauge[int64]]
	var hists group[metricdata.Histogram[float64]]
	bounds := stats.Bounds[:]
	p.store.Visit(
		func(c *stats.Counter) {
			s := sums.get(p.name(c), func() *metricdata.Sum[int64] {
				return &metricdata.Sum[int64]{Temporality: metricdata.CumulativeTemporality, IsMonotonic: true}
			})
			s.DataPoints = append(s.DataPoints, metricdata.DataPoint[int64]{
				Attributes: p.attrs(c), StartTime: p.start, Time: now, Value: int64(c.Value()),
			})
		},
		func(g *stats.Gauge) {
			s := gauges.get(p.name(g), func() *metricdata.Gauge[int64] { return &metricdata.Gauge[int64]{} })
			s.DataPoints = append(s.DataPoints, metricdata.DataPoint[int64]{
				Attributes: p.attrs(g), StartTime: p.start, Time: now, Value: g.Value(),
			})
		},
		func(h *stats.Histogram) {
			s := hists.get(p.name(h), func() *metricdata.Histogram[float64] {
				return &metricdata.Histogram[float64]{Temporality: metricdata.CumulativeTemporality}
			})
			snap := h.Snapshot()
			var count uint64
			for _, b := range snap.Buckets {
				count += b
			}
			s.DataPoints = append(s.DataPoints, metricdata.HistogramDataPoint[float64]{
				Attributes: p.attrs(h), StartTime: p.start, Time: now,
				Count: count, Sum: snap.Sum, Bounds: bounds, BucketCounts: snap.Buckets[:],
			})
		},
	)
	out := make([]metricdata.Metrics, 0, len(sums.order)+len(gauges.order)+len(hists.order))
	for _, n := range sums.order {
		out = append(out, metricdata.Metrics{Name: n, Data: *sums.by[n]})
	}
	for _, n := range gauges.order {
		out = append(out, metricdata.Metrics{Name: n, Data: *gauges.by[n]})
	}
	for _, n := range hists.order {
		out = append(out, metricdata.Metrics{Name: n, Data: *hists.by[n]})
	}
	return out
}

func (p *Producer) durationMetrics(now time.Time) []metricdata.Metrics {
	start := p.durations.start
	server := metricdata.Histogram[float64]{Temporality: metricdata.CumulativeTemporality}
	p.durations.VisitServer(func(k ServerKey, s HistSnapshot) {
		kvs := []attribute.KeyValue{
			attribute.String("http.request.method", k.Method),
			attribute.String("url.scheme", k.Scheme),
			attribute.String("network.protocol.name", "http"),
			attribute.String("network.protocol.version", k.ProtocolVersion),
		}
		if k.Status != 0 {
			kvs = append(kvs, attribute.Int("http.response.status_code", k.Status))
		}
		if k.ErrorType != "" {
			kvs = append(kvs, attribute.String("error.type", k.ErrorType))
		}
		server.DataPoints = append(server.DataPoints, histPoint(attribute.NewSet(kvs...), start, now, s))
	})
	client := metricdata.Histogram[float64]{Temporality: metricdata.CumulativeTemporality}
	p.durations.VisitClient(func(k ClientKey, s HistSnapshot) {
		kvs := []attribute.KeyValue{
			attribute.String("http.request.method", k.Method),
			attribute.String("server.address", k.ServerAddress),
			attribute.Int("server.port", k.ServerPort),
			attribute.String("meshd.upstream.cluster", k.Cluster),
		}
		if k.Status != 0 {
			kvs = append(kvs, attribute.Int("http.response.status_code", k.Status))
		}
		if k.ErrorType != "" {
			kvs = append(kvs, attribute.String("error.type", k.ErrorType))
		}
		client.DataPoints = append(client.DataPoints, histPoint(attribute.NewSet(kvs...), start, now, s))
	})
	var out []metricdata.Metrics
	if len(server.DataPoints) > 0 {
		out = append(out, metricdata.Metrics{Name: ServerDurationName, Unit: "s",
			Description: "Duration of HTTP server requests.", Data: server})
	}
	if len(client.DataPoints) > 0 {
		out = append(out, metricdata.Metrics{Name: ClientDurationName, Unit: "s",
			Description: "Duration of HTTP client requests.", Data: client})
	}
	return out
}

func histPoint(attrs attribute.Set, start, now time.Time, s HistSnapshot) metricdata.HistogramDataPoint[float64] {
	dp := metricdata.HistogramDataPoint[float64]{
		Attributes: attrs, StartTime: start, Time: now,
		Count: s.Count, Sum: s.Sum, Bounds: DurationBounds[:], BucketCounts: append([]uint64(nil), s.Buckets[:]...),
	}
	if s.Count > 0 {
		dp.Min = metricdata.NewExtrema(s.Min)
		dp.Max = metricdata.NewExtrema(s.Max)
	}
	return dp
}
