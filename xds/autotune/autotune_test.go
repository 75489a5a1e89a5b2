package autotune

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	lrsv3 "github.com/envoyproxy/go-control-plane/envoy/service/load_stats/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"meshd.dev/meshd/xds/model"
	"meshd.dev/meshd/xds/observe"
	"meshd.dev/meshd/xds/translate"
)

const meshHead = `apiVersion: meshd.dev/v1alpha1
kind: Mesh
metadata:
  name: m
spec:
  mtls: DISABLE
---
apiVersion: meshd.dev/v1alpha1
kind: Service
metadata:
  name: svc
  namespace: demo
spec:
  protocol: grpc
  port: 50051
  endpoints:
    - address: 10.0.0.1
      port: 8080
---
apiVersion: meshd.dev/v1alpha1
kind: Workload
metadata:
  name: client
  namespace: demo
spec:
  serviceAccount: client
  outbound:
    - service: svc
      port: 9000
---
apiVersion: meshd.dev/v1alpha1
kind: TrafficPolicy
metadata:
  name: svc
  namespace: demo
spec:
  targetRef:
    kind: Service
    name: svc
`

// fakeSink records what the tuner publishes.
type fakeSink struct {
	published []*translate.Result
	errs      []error
}

func (s *fakeSink) Publish(res *translate.Result, _ []model.Warning) error {
	s.published = append(s.published, res)
	return nil
}
func (s *fakeSink) RecordError(err error) { s.errs = append(s.errs, err) }

// clock is a settable clock.
type clock struct{ now time.Time }

func (c *clock) Now() time.Time { return c.now }

// newTuner loads meshHead + policy into a Tuner as the watcher would.
func newTuner(t *testing.T, policy string) (*Tuner, *fakeSink, *clock, *model.Mesh) {
	t.Helper()
	m, err := model.Parse([]byte(meshHead+policy), "mesh.yaml")
	if err != nil {
		t.Fatal(err)
	}
	sink, clk := &fakeSink{}, &clock{now: time.Unix(1_000_000, 0)}
	tu, err := New(Options{Sink: sink, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	res, err := translate.Translate(m)
	if err != nil {
		t.Fatal(err)
	}
	_ = tu.Adjust(m)
	if err := tu.Publish(res, nil); err != nil {
		t.Fatal(err)
	}
	return tu, sink, clk, m
}

// report is an LRS request of node "client.demo" for the Service's
// outbound cluster with one observation of its endpoint.
func report(m *model.Mesh, o observe.Endpoint) *lrsv3.LoadStatsRequest {
	return &lrsv3.LoadStatsRequest{ClusterStats: []*endpointv3.ClusterStats{{
		ClusterName: translate.OutboundClusterName(m.Services[0]),
		UpstreamLocalityStats: []*endpointv3.UpstreamLocalityStats{{UpstreamEndpointStats: []*endpointv3.UpstreamEndpointStats{{
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Address: "10.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 8080}}}},
			Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{observe.MetadataKey: structpb.NewStructValue(o.Struct())}},
		}}}},
	}}}
}

func TestRules(t *testing.T) {
	type step struct {
		after time.Duration // clock advance before the report
		obs   observe.Endpoint
		want  translate.Tuned // learned values after the report
	}
	tests := []struct {
		name   string
		policy string
		steps  []step
		// published is how many re-publications the steps cause.
		published int
	}{{
		name: "keepalive: too_many_pings at 1s gives 4s, then nothing new",
		policy: `  http2:
    keepalive: {interval: 1s, timeout: 200ms}
  autoTune: {keepalive: true}
`,
		steps: []step{
			{obs: observe.Endpoint{KeepaliveInterval: time.Second, RTT: time.Millisecond}},
			{after: time.Second, obs: observe.Endpoint{KeepaliveInterval: 2 * time.Second, TooManyPings: 1}, want: translate.Tuned{KeepaliveInterval: 4 * time.Second}},
			{after: time.Second, obs: observe.Endpoint{KeepaliveInterval: 4 * time.Second}, want: translate.Tuned{KeepaliveInterval: 4 * time.Second}},
		},
		published: 1,
	}, {
		name: "keepalive: rule of thumb from the RTT, and the bound",
		policy: `  http2:
    keepalive: {interval: 1s, timeout: 500ms}
  autoTune: {keepalive: true, maxKeepaliveInterval: 3s}
`,
		steps: []step{
			{obs: observe.Endpoint{KeepaliveInterval: time.Second, RTT: 100 * time.Millisecond}, want: translate.Tuned{KeepaliveInterval: 1700 * time.Millisecond}},
			{after: time.Second, obs: observe.Endpoint{KeepaliveInterval: 4 * time.Second, TooManyPings: 1}, want: translate.Tuned{KeepaliveInterval: 3 * time.Second}},
		},
		published: 2,
	}, {
		// Reported durations saturate at the largest Duration
		// (observe.Parse: the interval here), or come close to it (an RTT
		// of 2^53-1 µs, the largest a report carries); 4 × and 2 × them
		// must not wrap negative and leave the interval untuned.
		name: "keepalive: saturated reports are capped by the bound, not wrapped",
		policy: `  http2:
    keepalive: {interval: 1s, timeout: 500ms}
  autoTune: {keepalive: true, maxKeepaliveInterval: 3s}
`,
		steps: []step{
			{obs: observe.Endpoint{KeepaliveInterval: math.MaxInt64, TooManyPings: 1, RTT: (1<<53 - 1) * time.Microsecond}, want: translate.Tuned{KeepaliveInterval: 3 * time.Second}},
		},
		published: 1,
	}, {
		name: "keepalive: no keepalive in the policy, nothing to tune",
		policy: `  autoTune: {keepalive: true}
`,
		steps: []step{{obs: observe.Endpoint{KeepaliveInterval: 2 * time.Second, TooManyPings: 1}}},
	}, {
		name: "pool: overflow doubles, demand decides, shrink only after a quiet 30s",
		policy: `  connectionPool: {maxConnections: 2, maxPendingRequests: 10}
  autoTune: {connectionPool: true}
`,
		steps: []step{
			{obs: observe.Endpoint{PeerMaxConcurrentStreams: 10, PeakStreams: 30, Overflow: 50}, want: translate.Tuned{MaxConnections: 5}},
			{after: time.Second, obs: observe.Endpoint{PeerMaxConcurrentStreams: 10, PeakStreams: 60, Overflow: 40}, want: translate.Tuned{MaxConnections: 13}},
			{after: time.Second, obs: observe.Endpoint{PeerMaxConcurrentStreams: 10, PeakStreams: 100}, want: translate.Tuned{MaxConnections: 13}},
			{after: time.Second, obs: observe.Endpoint{PeerMaxConcurrentStreams: 10, PeakStreams: 20}, want: translate.Tuned{MaxConnections: 13}},
			{after: 15 * time.Second, obs: observe.Endpoint{PeerMaxConcurrentStreams: 10, PeakStreams: 20}, want: translate.Tuned{MaxConnections: 13}},
			{after: 16 * time.Second, obs: observe.Endpoint{PeerMaxConcurrentStreams: 10, PeakStreams: 20}, want: translate.Tuned{MaxConnections: 3}},
		},
		published: 3,
	}, {
		name: "pool: capped by autoTune.maxConnections",
		policy: `  connectionPool: {maxConnections: 2}
  autoTune: {connectionPool: true, maxConnections: 6}
`,
		steps:     []step{{obs: observe.Endpoint{PeerMaxConcurrentStreams: 10, PeakStreams: 100, Overflow: 1}, want: translate.Tuned{MaxConnections: 6}}},
		published: 1,
	}, {
		name: "windows: window-limited grows 4x, link-limited stays",
		policy: `  http2: {initialStreamWindowSize: 65535, initialConnectionWindowSize: 65535}
  autoTune: {windows: true}
`,
		steps: []step{
			{obs: observe.Endpoint{StreamWindow: 65535, RTT: 50 * time.Millisecond, Throughput: 65535 / 0.05}, want: translate.Tuned{StreamWindow: 262144, ConnectionWindow: 524288}},
			{after: time.Second, obs: observe.Endpoint{StreamWindow: 262144, RTT: 50 * time.Millisecond, Throughput: 4e6}, want: translate.Tuned{StreamWindow: 1 << 20, ConnectionWindow: 2 << 20}},
			{after: time.Second, obs: observe.Endpoint{StreamWindow: 1 << 20, RTT: 50 * time.Millisecond, Throughput: 4e6}, want: translate.Tuned{StreamWindow: 1 << 20, ConnectionWindow: 2 << 20}},
		},
		published: 2,
	}, {
		name: "windows: capped by the memory budget",
		policy: `  autoTune: {windows: true, windowMemoryBudget: 131072}
`,
		steps:     []step{{obs: observe.Endpoint{StreamWindow: 65535, RTT: 50 * time.Millisecond, Throughput: 65535 / 0.05}, want: translate.Tuned{StreamWindow: 131072, ConnectionWindow: 131072}}},
		published: 1,
	}, {
		name:   "no autoTune: reports are ignored",
		policy: `  connectionPool: {maxConnections: 2}` + "\n",
		steps:  []step{{obs: observe.Endpoint{PeerMaxConcurrentStreams: 10, PeakStreams: 100, Overflow: 5, KeepaliveInterval: 2 * time.Second, TooManyPings: 1}}},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tu, sink, clk, m := newTuner(t, tc.policy)
			for i, s := range tc.steps {
				clk.now = clk.now.Add(s.after)
				tu.Report("client.demo", report(m, s.obs))
				if got := tu.Tuning()["svc.demo"]; got != s.want {
					t.Fatalf("step %d: learned %+v, want %+v", i, got, s.want)
				}
			}
			if got := len(sink.published) - 1; got != tc.published {
				t.Errorf("re-published %d times, want %d", got, tc.published)
			}
			if got := len(tu.Changes()); tc.published > 0 && got == 0 {
				t.Error("changes were published but none is listed for /status")
			}
			for _, c := range tu.Changes() {
				if c.Service != "demo/svc" || c.Reason == "" || c.From == c.To {
					t.Errorf("change %+v: want Service demo/svc, a reason, and a real change", c)
				}
			}
		})
	}
}

// TestPublishedTranslationCarriesTuning checks that the learned values
// reach the resources, that a mesh edit keeps them, and that a Service
// losing autoTune drops them.
func TestPublishedTranslationCarriesTuning(t *testing.T) {
	policy := `  http2:
    keepalive: {interval: 1s, timeout: 200ms}
  autoTune: {keepalive: true}
`
	tu, sink, _, m := newTuner(t, policy)
	tu.Report("client.demo", report(m, observe.Endpoint{KeepaliveInterval: 2 * time.Second, TooManyPings: 1}))
	last := sink.published[len(sink.published)-1]
	want, err := translate.TranslateWith(m, translate.Options{Tuning: translate.Tuning{"svc.demo": {KeepaliveInterval: 4 * time.Second}}})
	if err != nil {
		t.Fatal(err)
	}
	if last.Version != want.Version {
		t.Fatalf("published version %s, want the tuned translation's %s", last.Version, want.Version)
	}
	plain, _ := translate.Translate(m)
	if plain.Version == want.Version {
		t.Fatal("the tuned translation equals the plain one")
	}

	// A mesh edit (same policy) is published with the learned values.
	m2, err := model.Parse([]byte(meshHead+policy+"  timeout: 3s\n"), "mesh.yaml")
	if err != nil {
		t.Fatal(err)
	}
	res2, _ := translate.Translate(m2)
	_ = tu.Adjust(m2)
	if err := tu.Publish(res2, nil); err != nil {
		t.Fatal(err)
	}
	want2, _ := translate.TranslateWith(m2, translate.Options{Tuning: translate.Tuning{"svc.demo": {KeepaliveInterval: 4 * time.Second}}})
	if got := sink.published[len(sink.published)-1].Version; got != want2.Version {
		t.Errorf("after an edit: published %s, want the tuned %s", got, want2.Version)
	}

	// Dropping autoTune drops the learned values.
	m3, err := model.Parse([]byte(meshHead+"  timeout: 3s\n"), "mesh.yaml")
	if err != nil {
		t.Fatal(err)
	}
	res3, _ := translate.Translate(m3)
	_ = tu.Adjust(m3)
	if err := tu.Publish(res3, nil); err != nil {
		t.Fatal(err)
	}
	if got := sink.published[len(sink.published)-1]; got != res3 || len(tu.Tuning()) != 0 {
		t.Errorf("after autoTune was removed: learned %v, published the tuned result", tu.Tuning())
	}

	// A rejected mesh does not become current.
	tu.RecordError(errors.New("bad file"))
	if len(sink.errs) != 1 {
		t.Errorf("RecordError not forwarded")
	}
}

func TestMalformedObservationIgnored(t *testing.T) {
	tu, sink, _, m := newTuner(t, `  connectionPool: {maxConnections: 2}
  autoTune: {connectionPool: true}
`)
	req := report(m, observe.Endpoint{})
	req.ClusterStats[0].UpstreamLocalityStats[0].UpstreamEndpointStats[0].Metadata.Fields[observe.MetadataKey] =
		structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{"peak_streams": structpb.NewStringValue("many")}})
	tu.Report("client.demo", req)
	if len(sink.published) != 1 || len(tu.Tuning()) != 0 {
		t.Errorf("a malformed observation changed something: %v", tu.Tuning())
	}
}

func TestObservationRoundTrip(t *testing.T) {
	in := observe.Endpoint{PeerMaxConcurrentStreams: 100, KeepaliveInterval: 2 * time.Second, TooManyPings: 3, RTT: 1500 * time.Microsecond,
		PeakStreams: 42, Overflow: 7, MaxStreamWait: 20 * time.Millisecond, Throughput: 1.5e6, StreamWindow: 65535, ConnectionWindow: 1 << 20}
	out, err := observe.Parse(in.Struct())
	if err != nil || out != in {
		t.Fatalf("round trip: %+v, %v; want %+v", out, err, in)
	}
	bad := in.Struct()
	bad.Fields["overflow"] = structpb.NewNumberValue(-1)
	if _, err := observe.Parse(bad); err == nil || !strings.Contains(err.Error(), "overflow") {
		t.Errorf("negative overflow: err %v, want one naming the field", err)
	}
}
