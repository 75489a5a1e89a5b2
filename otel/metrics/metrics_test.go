package metrics

import (
	"context"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/proxy/stats"
)

func testStore() *stats.Store {
	st := stats.NewStore()
	cl := st.Root().Scope("cluster").Tagged("envoy_cluster_name", "backend")
	cl.Counter("upstream_rq_total").Add(7)
	cl.Gauge("upstream_cx_active").Set(2)
	cl.Histogram("upstream_rq_time").Record(3)
	cl.TaggedCounter("upstream_rq_200", "upstream_rq", stats.Tag{Name: "envoy_response_code", Value: "200"}).Add(5)
	st.Root().Scope("cluster").Tagged("envoy_cluster_name", "other").Counter("upstream_rq_total").Add(1)
	return st
}

func TestProducerNames(t *testing.T) {
	for _, tc := range []struct {
		name      string
		opts      ProducerOptions
		wantName  string
		wantAttrs map[string]string
		wantValue int64
	}{
		{"tag-extracted with attributes (Envoy's defaults)", ProducerOptions{UseTagExtractedName: true, EmitTagsAsAttributes: true},
			"cluster.upstream_rq_total", map[string]string{"envoy.cluster_name": "backend"}, 7},
		{"flat names", ProducerOptions{EmitTagsAsAttributes: false},
			"cluster.backend.upstream_rq_total", nil, 7},
		{"prefix", ProducerOptions{UseTagExtractedName: true, EmitTagsAsAttributes: true, Prefix: "mesh"},
			"mesh.cluster.upstream_rq_total", map[string]string{"envoy.cluster_name": "backend"}, 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sms, err := NewProducer(testStore(), nil, tc.opts).Produce(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			var found bool
			for _, m := range sms[0].Metrics {
				if m.Name != tc.wantName {
					continue
				}
				sum, ok := m.Data.(metricdata.Sum[int64])
				if !ok || !sum.IsMonotonic || sum.Temporality != metricdata.CumulativeTemporality {
					t.Fatalf("%s: %#v, want a cumulative monotonic sum", m.Name, m.Data)
				}
				for _, dp := range sum.DataPoints {
					if v, _ := dp.Attributes.Value("envoy.cluster_name"); tc.wantAttrs != nil && v.AsString() != "backend" {
						continue
					}
					found = true
					if dp.Value != tc.wantValue {
						t.Errorf("value %d, want %d", dp.Value, tc.wantValue)
					}
					for k, want := range tc.wantAttrs {
						if v, _ := dp.Attributes.Value(attribute.Key(k)); v.AsString() != want {
							t.Errorf("attribute %s = %q, want %q", k, v.AsString(), want)
						}
					}
					if tc.wantAttrs == nil && dp.Attributes.Len() != 0 {
						t.Errorf("attributes %v, want none", dp.Attributes.ToSlice())
					}
				}
			}
			if !found {
				t.Fatalf("no metric %s", tc.wantName)
			}
		})
	}
}

func TestDurations(t *testing.T) {
	d := NewHTTPDurations()
	for _, ms := range []int{1, 3, 20, 20, 400, 20000} {
		d.RecordServer(ServerKey{Method: "POST", Status: 200, ProtocolVersion: "2", Scheme: "http"}, time.Duration(ms)*time.Millisecond)
	}
	d.RecordServer(ServerKey{Method: "BREW", Status: 503, ProtocolVersion: "1.1", Scheme: "http"}, time.Millisecond)
	d.RecordClient(ClientKey{Method: "POST", Status: 200, ServerAddress: "127.0.0.1", ServerPort: 8080, Cluster: "b"}, 2*time.Millisecond)
	var seen int
	d.VisitServer(func(k ServerKey, s HistSnapshot) {
		seen++
		switch k.Method {
		case "POST":
			want := [len(DurationBounds) + 1]uint64{0: 2, 2: 2, 7: 1, 14: 1}
			if s.Buckets != want || s.Count != 6 || s.Min != 0.001 || s.Max != 20 {
				t.Errorf("POST: %+v", s)
			}
		case "_OTHER":
			if s.Count != 1 {
				t.Errorf("_OTHER: %+v", s)
			}
		default:
			t.Errorf("method %q not normalized", k.Method)
		}
	})
	if seen != 2 {
		t.Errorf("%d server series, want 2", seen)
	}
	allocs := testing.AllocsPerRun(100, func() {
		d.RecordServer(ServerKey{Method: "POST", Status: 200, ProtocolVersion: "2", Scheme: "http"}, time.Millisecond)
	})
	if allocs != 0 {
		t.Errorf("RecordServer allocates %v times per call on an existing series, want 0", allocs)
	}
}

func TestExportOverOTLP(t *testing.T) {
	testutil.CheckGoroutines(t)
	recv := testutil.StartMetricsReceiver(t)
	d := NewHTTPDurations()
	d.RecordServer(ServerKey{Method: "GET", Status: 200, ProtocolVersion: "1.1", Scheme: "http"}, 30*time.Millisecond)
	st := testStore()
	exp, err := StartExporter(context.Background(), ExporterConfig{
		Endpoint: recv.Addr, Interval: 100 * time.Millisecond,
		Producer: NewProducer(st, d, ProducerOptions{UseTagExtractedName: true, EmitTagsAsAttributes: true}),
		Resource: []attribute.KeyValue{attribute.String("service.name", "test")},
		Stats:    st, StatPrefix: "stats_sinks.otlp",
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := exp.Shutdown(context.Background()); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	}()
	m := recv.WaitMetric(t, 10*time.Second, "cluster.upstream_rq_total", func(m *metricspb.Metric) bool {
		return m.GetName() == "cluster.upstream_rq_total"
	})
	if s := m.GetSum(); s == nil || !s.GetIsMonotonic() || len(s.GetDataPoints()) != 2 {
		t.Fatalf("cluster.upstream_rq_total: %v", m)
	}
	h := recv.WaitMetric(t, 10*time.Second, ServerDurationName, func(m *metricspb.Metric) bool { return m.GetName() == ServerDurationName })
	dp := h.GetHistogram().GetDataPoints()
	if h.GetUnit() != "s" || len(dp) != 1 || dp[0].GetCount() != 1 || len(dp[0].GetExplicitBounds()) != len(DurationBounds) {
		t.Fatalf("%s: %v", ServerDurationName, h)
	}
	ok := st.Root().Scope("stats_sinks.otlp").Counter("export_success")
	for deadline := time.Now().Add(10 * time.Second); ok.Value() == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("export_success not counted")
		}
	}
}
