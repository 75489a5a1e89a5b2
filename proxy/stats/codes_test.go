package stats

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"
)

func TestResponseCode(t *testing.T) {
	s := NewStore()
	cluster := s.Root().Scope("cluster").Tagged("envoy_cluster_name", "x")
	for _, code := range []int{200, 200, 204, 503, 101, 600, 23, 99} {
		cluster.ResponseCode("upstream_rq", code)
	}
	want := map[string]uint64{
		"cluster.x.upstream_rq_200":     2,
		"cluster.x.upstream_rq_204":     1,
		"cluster.x.upstream_rq_2xx":     3,
		"cluster.x.upstream_rq_503":     1,
		"cluster.x.upstream_rq_5xx":     1,
		"cluster.x.upstream_rq_101":     1,
		"cluster.x.upstream_rq_1xx":     1,
		"cluster.x.upstream_rq_unknown": 3,
	}
	got := map[string]uint64{}
	s.Visit(func(c *Counter) { got[c.FlatName()] = c.Value() }, nil, nil)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("counters = %v, want %v", got, want)
	}

	var b bytes.Buffer
	if err := s.WritePrometheus(&b, Filter{}); err != nil {
		t.Fatalf("WritePrometheus: %v", err)
	}
	wantProm := "# TYPE envoy_cluster_upstream_rq counter\n" +
		`envoy_cluster_upstream_rq{envoy_cluster_name="x",envoy_response_code="101"} 1` + "\n" +
		`envoy_cluster_upstream_rq{envoy_cluster_name="x",envoy_response_code="200"} 2` + "\n" +
		`envoy_cluster_upstream_rq{envoy_cluster_name="x",envoy_response_code="204"} 1` + "\n" +
		`envoy_cluster_upstream_rq{envoy_cluster_name="x",envoy_response_code="503"} 1` + "\n" +
		"# TYPE envoy_cluster_upstream_rq_unknown counter\n" +
		`envoy_cluster_upstream_rq_unknown{envoy_cluster_name="x"} 3` + "\n" +
		"# TYPE envoy_cluster_upstream_rq_xx counter\n" +
		`envoy_cluster_upstream_rq_xx{envoy_cluster_name="x",envoy_response_code_class="1"} 1` + "\n" +
		`envoy_cluster_upstream_rq_xx{envoy_cluster_name="x",envoy_response_code_class="2"} 3` + "\n" +
		`envoy_cluster_upstream_rq_xx{envoy_cluster_name="x",envoy_response_code_class="5"} 1` + "\n"
	if b.String() != wantProm {
		t.Errorf("WritePrometheus got:\n%s\nwant:\n%s", b.String(), wantProm)
	}
	checkExposition(t, b.String())
}

func TestCodeStatsCached(t *testing.T) {
	sc := NewStore().Root().Scope("http").Tagged("envoy_http_conn_manager_prefix", "in")
	a, b := sc.CodeStats("downstream_rq"), sc.CodeStats("downstream_rq")
	if a != b {
		t.Fatalf("CodeStats returned two values for one prefix")
	}
	if sc.CodeStats("upstream_rq") == a {
		t.Fatalf("CodeStats returned one value for two prefixes")
	}
	a.Record(404)
	if got := sc.Counter("downstream_rq_404").Value(); got != 1 {
		t.Errorf("downstream_rq_404 = %d, want 1", got)
	}
	if got := testing.AllocsPerRun(100, func() { a.Record(404) }); got != 0 {
		t.Errorf("Record of a seen code allocates %v times", got)
	}
}

// TestStoreConcurrent creates, updates and visits metrics from many
// goroutines at once; run with -race.
func TestStoreConcurrent(t *testing.T) {
	const workers, rounds = 8, 200
	s := NewStore()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range rounds {
				// Half the names are shared between workers, half are not.
				cl := s.Root().Scope("cluster").Tagged("envoy_cluster_name", fmt.Sprintf("c%d", i%(10+w)))
				cl.Counter("upstream_rq_total").Inc()
				cl.Gauge("upstream_cx_active").Add(1)
				cl.Histogram("upstream_rq_time").Record(float64(i))
				cl.ResponseCode("upstream_rq", 200+i%3)
			}
		}()
	}
	var visits sync.WaitGroup
	stop := make(chan struct{})
	visits.Add(1)
	go func() {
		defer visits.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			var b bytes.Buffer
			if err := s.WritePrometheus(&b, Filter{}); err != nil {
				t.Errorf("WritePrometheus: %v", err)
				return
			}
			if err := s.WriteText(&b, Filter{UsedOnly: true}); err != nil {
				t.Errorf("WriteText: %v", err)
				return
			}
		}
	}()
	wg.Wait()
	close(stop)
	visits.Wait()

	var total uint64
	s.Visit(func(c *Counter) {
		if strings.HasSuffix(c.FlatName(), ".upstream_rq_total") {
			total += c.Value()
		}
	}, nil, nil)
	if total != workers*rounds {
		t.Errorf("sum of upstream_rq_total = %d, want %d", total, workers*rounds)
	}
	var b bytes.Buffer
	if err := s.WritePrometheus(&b, Filter{}); err != nil {
		t.Fatalf("WritePrometheus: %v", err)
	}
	checkExposition(t, b.String())
}

func BenchmarkCounterInc(b *testing.B) {
	c := NewStore().Root().Scope("cluster").Tagged("envoy_cluster_name", "x").Counter("upstream_rq_total")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c.Inc()
		}
	})
}

func BenchmarkResponseCode(b *testing.B) {
	sc := NewStore().Root().Scope("cluster").Tagged("envoy_cluster_name", "x")
	cs := sc.CodeStats("upstream_rq")
	codes := [...]int{200, 204, 404, 503}
	b.Run("CodeStats.Record", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			cs.Record(codes[i&3])
		}
	})
	b.Run("Scope.ResponseCode", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			sc.ResponseCode("upstream_rq", codes[i&3])
		}
	})
}
