package upstream

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/proxy/stats"
)

// testClusterProto returns a STATIC cluster proto with one endpoint per
// address ("127.0.0.1:port").
func testClusterProto(t testing.TB, addrs ...string) *clusterv3.Cluster {
	t.Helper()
	var lbs []*endpointv3.LbEndpoint
	for _, a := range addrs {
		var port uint32
		if _, err := fmt.Sscanf(a[strings.LastIndexByte(a, ':')+1:], "%d", &port); err != nil {
			t.Fatalf("bad address %q: %v", a, err)
		}
		lbs = append(lbs, &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Address:       a[:strings.LastIndexByte(a, ':')],
				PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
			}}},
		}}})
	}
	return &clusterv3.Cluster{
		Name:                 "backend",
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: "backend",
			Endpoints:   []*endpointv3.LocalityLbEndpoints{{LbEndpoints: lbs}},
		},
	}
}

// startTestCluster compiles cp and starts it as the Manager would; the
// cluster is drained when the test ends.
func startTestCluster(t testing.TB, cp *clusterv3.Cluster) (*Cluster, *stats.Store) {
	t.Helper()
	spec, err := CompileCluster(cp)
	if err != nil {
		t.Fatalf("CompileCluster: %v", err)
	}
	store := stats.NewStore()
	c := newCluster(spec, store, slog.New(slog.NewTextHandler(io.Discard, nil)))
	t.Cleanup(c.drain)
	return c, store
}

// fakeAddrs returns n loopback addresses nobody dials in these tests.
func fakeAddrs(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("127.0.0.1:%d", 10000+i)
	}
	return out
}

// fakeClock is a settable clock for the detector.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fakeClock) Advance(d time.Duration) {
	f.mu.Lock()
	f.now = f.now.Add(d)
	f.mu.Unlock()
}

func statValue(t testing.TB, store *stats.Store, name string) int64 {
	t.Helper()
	var v int64
	found := false
	store.Visit(func(c *stats.Counter) {
		if c.FlatName() == name {
			v, found = int64(c.Value()), true
		}
	}, func(g *stats.Gauge) {
		if g.FlatName() == name {
			v, found = g.Value(), true
		}
	}, func(*stats.Histogram) {})
	if !found {
		t.Fatalf("stat %s does not exist", name)
	}
	return v
}

// event is one outcome reported to a host: a status code, or a local
// origin success/failure.
type event struct {
	code  int
	local string // "ok" or "fail" when code is 0
}

func statuses(code, n int) []event {
	out := make([]event, n)
	for i := range out {
		out[i] = event{code: code}
	}
	return out
}

func locals(ok bool, n int) []event {
	out := make([]event, n)
	for i := range out {
		out[i] = event{local: map[bool]string{true: "ok", false: "fail"}[ok]}
	}
	return out
}

func seq(parts ...[]event) []event {
	var out []event
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func TestOutlierConsecutiveErrors(t *testing.T) {
	const p = "cluster.backend.outlier_detection."
	tests := []struct {
		name    string
		od      *clusterv3.OutlierDetection
		events  []event
		ejected bool
		stats   map[string]int64
	}{
		{
			name: "five 500s eject", od: &clusterv3.OutlierDetection{},
			events: statuses(500, 5), ejected: true,
			stats: map[string]int64{
				"ejections_detected_consecutive_5xx": 1, "ejections_enforced_consecutive_5xx": 1,
				"ejections_enforced_total": 1, "ejections_active": 1,
			},
		},
		{
			name: "success resets the count", od: &clusterv3.OutlierDetection{},
			events: seq(statuses(500, 4), statuses(200, 1), statuses(500, 4)), ejected: false,
			stats: map[string]int64{"ejections_detected_consecutive_5xx": 0, "ejections_active": 0},
		},
		{
			name: "4xx resets the count", od: &clusterv3.OutlierDetection{},
			events: seq(statuses(500, 4), statuses(404, 1), statuses(500, 4)), ejected: false,
		},
		{
			name: "gateway failures detected but not enforced by default", od: &clusterv3.OutlierDetection{Consecutive_5Xx: wrapperspb.UInt32(0)},
			events: statuses(503, 5), ejected: false,
			stats: map[string]int64{
				"ejections_detected_consecutive_gateway_failure": 1, "ejections_enforced_consecutive_gateway_failure": 0,
				"ejections_detected_consecutive_5xx": 0,
			},
		},
		{
			name: "gateway failures enforced when asked",
			od: &clusterv3.OutlierDetection{
				Consecutive_5Xx: wrapperspb.UInt32(0), ConsecutiveGatewayFailure: wrapperspb.UInt32(3),
				EnforcingConsecutiveGatewayFailure: wrapperspb.UInt32(100),
			},
			events: seq(statuses(502, 2), statuses(500, 1), statuses(504, 3)), ejected: true,
			stats: map[string]int64{"ejections_enforced_consecutive_gateway_failure": 1},
		},
		{
			name: "enforcing_consecutive_5xx 0 detects only", od: &clusterv3.OutlierDetection{EnforcingConsecutive_5Xx: wrapperspb.UInt32(0)},
			events: statuses(500, 5), ejected: false,
			stats: map[string]int64{"ejections_detected_consecutive_5xx": 1, "ejections_enforced_total": 0},
		},
		{
			name: "consecutive_5xx 0 disables", od: &clusterv3.OutlierDetection{Consecutive_5Xx: wrapperspb.UInt32(0)},
			events: statuses(500, 20), ejected: false,
			stats: map[string]int64{"ejections_detected_consecutive_5xx": 0},
		},
		{
			name: "local failures count as 503 without split", od: &clusterv3.OutlierDetection{},
			events: locals(false, 5), ejected: true,
			stats: map[string]int64{
				"ejections_enforced_consecutive_5xx": 1, "ejections_detected_consecutive_gateway_failure": 1,
				"ejections_detected_consecutive_local_origin_failure": 0,
			},
		},
		{
			name: "local successes do not reset 5xx without split", od: &clusterv3.OutlierDetection{},
			events: seq(statuses(500, 4), locals(true, 1), statuses(500, 1)), ejected: true,
		},
		{
			name:   "split: local failures eject on their own count",
			od:     &clusterv3.OutlierDetection{SplitExternalLocalOriginErrors: true, ConsecutiveLocalOriginFailure: wrapperspb.UInt32(3)},
			events: locals(false, 3), ejected: true,
			stats: map[string]int64{
				"ejections_enforced_consecutive_local_origin_failure": 1, "ejections_detected_consecutive_5xx": 0,
			},
		},
		{
			name:   "split: local success resets local count",
			od:     &clusterv3.OutlierDetection{SplitExternalLocalOriginErrors: true, ConsecutiveLocalOriginFailure: wrapperspb.UInt32(3)},
			events: seq(locals(false, 2), locals(true, 1), locals(false, 2)), ejected: false,
		},
		{
			name:   "split: local failures do not count as 5xx",
			od:     &clusterv3.OutlierDetection{SplitExternalLocalOriginErrors: true, ConsecutiveLocalOriginFailure: wrapperspb.UInt32(0)},
			events: seq(statuses(500, 4), locals(false, 5), statuses(200, 1), statuses(500, 4)), ejected: false,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cp := testClusterProto(t, fakeAddrs(10)...)
			cp.OutlierDetection = tt.od
			c, store := startTestCluster(t, cp)
			h := c.Hosts()[0]
			for _, e := range tt.events {
				switch {
				case e.code != 0:
					h.ReportStatus(e.code)
				default:
					h.ReportLocalOrigin(e.local == "ok")
				}
			}
			if got := !h.LB.Healthy(); got != tt.ejected {
				t.Errorf("host ejected = %v, want %v", got, tt.ejected)
			}
			if _, failedOutlier := h.HealthFlags(); failedOutlier != tt.ejected {
				t.Errorf("failed_outlier_check flag = %v, want %v", failedOutlier, tt.ejected)
			}
			for name, want := range tt.stats {
				if got := statValue(t, store, p+name); got != want {
					t.Errorf("%s = %d, want %d", name, got, want)
				}
			}
			if tt.ejected {
				for range 200 {
					if c.Pick() == h {
						t.Fatal("load balancer picked an ejected host")
					}
				}
			}
		})
	}
}

func TestOutlierMaxEjectionPercent(t *testing.T) {
	tests := []struct {
		name        string
		hosts       int
		od          *clusterv3.OutlierDetection
		wantEjected int
		wantOverflw int64
	}{
		{"default 10% of 2 hosts ejects none", 2, &clusterv3.OutlierDetection{}, 0, 2},
		{"always_eject_one_host", 2, &clusterv3.OutlierDetection{AlwaysEjectOneHost: wrapperspb.Bool(true)}, 1, 1},
		{"50% of 4 hosts ejects 2", 4, &clusterv3.OutlierDetection{MaxEjectionPercent: wrapperspb.UInt32(50)}, 2, 2},
		{"100% ejects all", 3, &clusterv3.OutlierDetection{MaxEjectionPercent: wrapperspb.UInt32(100)}, 3, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cp := testClusterProto(t, fakeAddrs(tt.hosts)...)
			cp.OutlierDetection = tt.od
			c, store := startTestCluster(t, cp)
			for _, h := range c.Hosts() {
				for range 5 {
					h.ReportStatus(500)
				}
			}
			ejected := 0
			for _, h := range c.Hosts() {
				if !h.LB.Healthy() {
					ejected++
				}
			}
			if ejected != tt.wantEjected {
				t.Errorf("ejected %d hosts, want %d", ejected, tt.wantEjected)
			}
			if got := statValue(t, store, "cluster.backend.outlier_detection.ejections_overflow"); got != tt.wantOverflw {
				t.Errorf("ejections_overflow = %d, want %d", got, tt.wantOverflw)
			}
			if got := statValue(t, store, "cluster.backend.outlier_detection.ejections_active"); got != int64(tt.wantEjected) {
				t.Errorf("ejections_active = %d, want %d", got, tt.wantEjected)
			}
		})
	}
}

// TestOutlierEjectionTime checks Envoy's ejection time: base × number of
// ejections, capped by max_ejection_time, ended by the interval sweep, and
// the multiplier's decay while the host stays in service.
func TestOutlierEjectionTime(t *testing.T) {
	cp := testClusterProto(t, fakeAddrs(2)...)
	cp.OutlierDetection = &clusterv3.OutlierDetection{
		MaxEjectionPercent: wrapperspb.UInt32(50),
		Interval:           durationpb.New(time.Second),
		BaseEjectionTime:   durationpb.New(10 * time.Second),
		MaxEjectionTime:    durationpb.New(25 * time.Second),
	}
	c, store := startTestCluster(t, cp)
	clock := &fakeClock{now: time.Unix(1000, 0)}
	c.outlier.mu.Lock()
	c.outlier.now = clock.Now
	c.outlier.mu.Unlock()
	h := c.Hosts()[0]
	eject := func() {
		t.Helper()
		for range 5 {
			h.ReportStatus(500)
		}
		if h.LB.Healthy() {
			t.Fatal("host not ejected after 5 consecutive 500s")
		}
	}
	// ejectedFor advances the clock second by second, sweeping, and
	// returns how long the host stayed ejected (bounded at one minute).
	ejectedFor := func() time.Duration {
		t.Helper()
		for i := 1; i <= 60; i++ {
			clock.Advance(time.Second)
			c.outlier.sweep()
			if h.LB.Healthy() {
				return time.Duration(i) * time.Second
			}
		}
		t.Fatal("host still ejected after a minute")
		return 0
	}
	for i, want := range []time.Duration{10 * time.Second, 20 * time.Second, 25 * time.Second, 25 * time.Second} {
		eject()
		if got := ejectedFor(); got != want {
			t.Errorf("ejection %d lasted %v, want %v", i+1, got, want)
		}
	}
	if got := statValue(t, store, "cluster.backend.outlier_detection.ejections_active"); got != 0 {
		t.Errorf("ejections_active = %d after un-ejection, want 0", got)
	}
	// Three ejections' worth of backoff (capped: 3) decays by one per
	// interval in service: after 2 sweeps the multiplier is 1 (10 s).
	for range 2 {
		clock.Advance(time.Second)
		c.outlier.sweep()
	}
	eject()
	if got := ejectedFor(); got != 20*time.Second {
		t.Errorf("after decay, ejection lasted %v, want 20s (multiplier decayed to 1, then incremented)", got)
	}
	// A success after un-ejection starts a fresh count: 4 errors do not
	// eject (the counters were reset at un-ejection).
	for range 4 {
		h.ReportStatus(500)
	}
	if !h.LB.Healthy() {
		t.Error("host ejected again by 4 errors after un-ejection; counters were not reset")
	}
}

// TestOutlierSweepLoop checks the sweep goroutine returns a host on its
// own (short real interval) and exits on drain.
func TestOutlierSweepLoop(t *testing.T) {
	testutil.CheckGoroutines(t)
	cp := testClusterProto(t, fakeAddrs(2)...)
	cp.OutlierDetection = &clusterv3.OutlierDetection{
		AlwaysEjectOneHost: wrapperspb.Bool(true),
		Interval:           durationpb.New(20 * time.Millisecond),
		BaseEjectionTime:   durationpb.New(50 * time.Millisecond),
	}
	c, _ := startTestCluster(t, cp)
	h := c.Hosts()[1]
	for range 5 {
		h.ReportStatus(503)
	}
	if h.LB.Healthy() {
		t.Fatal("host not ejected")
	}
	deadline := time.Now().Add(5 * time.Second)
	for !h.LB.Healthy() {
		if time.Now().After(deadline) {
			t.Fatal("host not returned to service within 5s (base_ejection_time 50ms)")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestOutlierConcurrentReports hammers one host from many goroutines; run
// with -race. Exactly the configured number of consecutive errors ejects.
func TestOutlierConcurrentReports(t *testing.T) {
	cp := testClusterProto(t, fakeAddrs(10)...)
	cp.OutlierDetection = &clusterv3.OutlierDetection{Consecutive_5Xx: wrapperspb.UInt32(1000)}
	c, store := startTestCluster(t, cp)
	h := c.Hosts()[0]
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				h.ReportStatus(500)
			}
		}()
	}
	wg.Wait()
	if h.LB.Healthy() {
		t.Error("host not ejected after 1000 concurrent 500s")
	}
	if got := statValue(t, store, "cluster.backend.outlier_detection.ejections_detected_consecutive_5xx"); got != 1 {
		t.Errorf("ejections_detected_consecutive_5xx = %d, want 1", got)
	}
}

func TestCompileOutlier(t *testing.T) {
	tests := []struct {
		name    string
		od      *clusterv3.OutlierDetection
		want    *OutlierSpec
		wantErr string
	}{
		{
			name: "defaults", od: &clusterv3.OutlierDetection{},
			want: &OutlierSpec{
				Consecutive5xx: 5, ConsecutiveGatewayFailure: 5, ConsecutiveLocalOriginFailure: 5,
				EnforcingConsecutive5xx: 100, EnforcingConsecutiveGatewayFailure: 0, EnforcingConsecutiveLocalOriginFailure: 100,
				Interval: 10 * time.Second, BaseEjectionTime: 30 * time.Second, MaxEjectionTime: 300 * time.Second,
				MaxEjectionPercent: 10, UnejectOnHealthCheck: true,
			},
		},
		{
			name: "max_ejection_time defaults to base when larger", od: &clusterv3.OutlierDetection{BaseEjectionTime: durationpb.New(400 * time.Second)},
			want: &OutlierSpec{
				Consecutive5xx: 5, ConsecutiveGatewayFailure: 5, ConsecutiveLocalOriginFailure: 5,
				EnforcingConsecutive5xx: 100, EnforcingConsecutiveLocalOriginFailure: 100,
				Interval: 10 * time.Second, BaseEjectionTime: 400 * time.Second, MaxEjectionTime: 400 * time.Second,
				MaxEjectionPercent: 10, UnejectOnHealthCheck: true,
			},
		},
		{name: "success rate", od: &clusterv3.OutlierDetection{EnforcingSuccessRate: wrapperspb.UInt32(0)}, wantErr: "outlier_detection.enforcing_success_rate: not supported"},
		{name: "failure percentage", od: &clusterv3.OutlierDetection{FailurePercentageThreshold: wrapperspb.UInt32(50)}, wantErr: "outlier_detection.failure_percentage_threshold: not supported"},
		{name: "percent above 100", od: &clusterv3.OutlierDetection{MaxEjectionPercent: wrapperspb.UInt32(101)}, wantErr: "outlier_detection.max_ejection_percent: 101 is above 100"},
		{name: "zero interval", od: &clusterv3.OutlierDetection{Interval: durationpb.New(0)}, wantErr: "outlier_detection.interval: must be positive"},
		{
			name:    "max below base",
			od:      &clusterv3.OutlierDetection{BaseEjectionTime: durationpb.New(time.Minute), MaxEjectionTime: durationpb.New(time.Second)},
			wantErr: "outlier_detection.max_ejection_time: 1s is less than base_ejection_time 1m0s",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cp := testClusterProto(t, fakeAddrs(1)...)
			cp.OutlierDetection = tt.od
			spec, err := CompileCluster(cp)
			if tt.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one starting %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if *spec.Outlier != *tt.want {
				t.Errorf("spec = %+v\nwant   %+v", *spec.Outlier, *tt.want)
			}
		})
	}
}
