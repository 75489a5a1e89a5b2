package localmesh

import (
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestHistogramQuantile(t *testing.T) {
	tests := []struct {
		name string
		add  []time.Duration
		q    float64
		want time.Duration // true quantile; the result is within +10%
	}{
		{"empty", nil, 0.5, 0},
		{"one value", []time.Duration{3 * time.Millisecond}, 0.99, 3 * time.Millisecond},
		{"below the first bucket", []time.Duration{100 * time.Nanosecond}, 0.5, time.Microsecond},
		{"p50 of 1..100 ms", rangeMs(1, 100), 0.50, 50 * time.Millisecond},
		{"p99 of 1..100 ms", rangeMs(1, 100), 0.99, 99 * time.Millisecond},
		{"p100 of 1..100 ms", rangeMs(1, 100), 1, 100 * time.Millisecond},
		{"p99 with a slow tail", append(repeat(time.Millisecond, 98), 2*time.Second, 2*time.Second), 0.99, 2 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var h Histogram
			for _, d := range tc.add {
				h.Add(d)
			}
			if h.Count() != uint64(len(tc.add)) {
				t.Fatalf("Count = %d, want %d", h.Count(), len(tc.add))
			}
			got := h.Quantile(tc.q)
			if got < tc.want || float64(got) > float64(tc.want)*1.1+1 {
				t.Fatalf("Quantile(%v) = %v, want in [%v, %v]", tc.q, got, tc.want, time.Duration(float64(tc.want)*1.1))
			}
		})
	}
}

func TestRate(t *testing.T) {
	tests := []struct {
		name      string
		prev, cur uint64
		dt        time.Duration
		want      float64
	}{
		{"steady", 100, 300, 2 * time.Second, 100},
		{"idle", 5, 5, time.Second, 0},
		{"counter reset by a restart", 500, 40, time.Second, 40},
		{"no time passed", 1, 2, 0, 0},
		{"half a second", 0, 50, 500 * time.Millisecond, 100},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := Rate(tc.prev, tc.cur, tc.dt); got != tc.want {
				t.Fatalf("Rate(%d, %d, %v) = %v, want %v", tc.prev, tc.cur, tc.dt, got, tc.want)
			}
		})
	}
}

func TestParseSidecarStats(t *testing.T) {
	text := strings.Join([]string{
		"cluster.outbound|50051||greeter.demo.upstream_rq_total: 120",
		"cluster.outbound|50051||greeter.demo.upstream_cx_active: 2",
		"cluster.inbound|15101|127.0.0.1:50051.upstream_rq_total: 30",
		"cluster.inbound|15101|127.0.0.1:50051.upstream_cx_active: 1",
		"cluster.xds_cluster.upstream_rq_total: 1",
		"cluster.xds_cluster.upstream_cx_active: 1",
		"http.outbound|15201.downstream_rq_total: 999",
		"cluster.outbound|50051||greeter.demo.upstream_rq_time: P0(nan,1.0) P50(nan,1.2)",
		"garbage",
	}, "\n")
	got := ParseSidecarStats(text)
	want := SidecarCounters{RequestsTotal: 150, ConnectionsActive: 3}
	if got != want {
		t.Fatalf("ParseSidecarStats = %+v, want %+v", got, want)
	}
}

func TestRecorder(t *testing.T) {
	r := NewRecorder()
	unavailable := status.Error(codes.Unavailable, "no healthy upstream")
	r.Record(time.Millisecond, unavailable) // warm-up: before any success
	r.Record(2*time.Millisecond, nil)
	r.Record(4*time.Millisecond, nil)
	r.Record(time.Millisecond, unavailable)
	r.Record(time.Millisecond, status.Error(codes.DeadlineExceeded, "slow"))
	r.Record(time.Millisecond, unavailable)
	r.Record(time.Millisecond, errors.New("not a status"))

	totals, h := r.Take()
	if totals.Calls != 2 || totals.Errors != 4 || totals.WarmupErrors != 1 {
		t.Fatalf("totals = %+v, want 2 calls, 4 errors, 1 warm-up error", totals)
	}
	wantCodes := map[codes.Code]uint64{codes.Unavailable: 2, codes.DeadlineExceeded: 1, codes.Unknown: 1}
	for c, n := range wantCodes {
		if totals.ByCode[c] != n {
			t.Errorf("ByCode[%s] = %d, want %d", c, totals.ByCode[c], n)
		}
	}
	if h.Count() != 2 {
		t.Fatalf("interval latencies = %d, want the 2 successes", h.Count())
	}
	const wantSummary = "meshd up: 2 calls, 4 errors (Unavailable 2, Unknown 1, DeadlineExceeded 1), first success 1.5s after start, 1 failed before the first success (warm-up)"
	if totals.FirstSuccess.IsZero() {
		t.Fatal("FirstSuccess not set after a success")
	}
	start := totals.FirstSuccess.Add(-1500 * time.Millisecond)
	if got := totals.Summary(start); got != wantSummary {
		t.Errorf("Summary = %q\nwant      %q", got, wantSummary)
	}
	if _, h2 := r.Take(); h2.Count() != 0 {
		t.Fatalf("second Take's interval has %d latencies, want 0", h2.Count())
	}
}

func TestViewLines(t *testing.T) {
	v := View{
		Elapsed:  3*time.Second + 400*time.Millisecond,
		CallRate: 99.6,
		Totals:   Totals{Calls: 300, Errors: 1, ByCode: map[codes.Code]uint64{codes.Unavailable: 1}},
		P50:      1200 * time.Microsecond,
		P99:      800 * time.Microsecond,
		Samples:  true,
		Sidecars: []SidecarView{
			{NodeID: "a.demo", Ready: true, RequestRate: 100, ConnectionsActive: 1},
			{NodeID: "b.demo", Err: "connection refused"},
		},
	}
	got := v.Lines()
	want := []string{
		"meshd up  3s  calls 100/s  total 300  errors 1 (Unavailable 1)  p50 1.2ms  p99 800µs",
		"  a.demo                       ready      upstream rq    100/s  cx active 1",
		"  b.demo                       down (connection refused) upstream rq      0/s  cx active 0",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("Lines =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func rangeMs(from, to int) []time.Duration {
	var ds []time.Duration
	for i := from; i <= to; i++ {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	return ds
}

func repeat(d time.Duration, n int) []time.Duration {
	ds := make([]time.Duration, n)
	for i := range ds {
		ds[i] = d
	}
	return ds
}
