package translate_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"meshd.dev/meshd/examples"
	"meshd.dev/meshd/xds/model"
	"meshd.dev/meshd/xds/translate"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden.json from the current translation")

// inputs returns the golden-test inputs: testdata/*.yaml and the built-in
// example, by name.
func inputs(t *testing.T) map[string]*model.Mesh {
	t.Helper()
	files, err := filepath.Glob("testdata/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no testdata/*.yaml (%v)", err)
	}
	meshes := make(map[string]*model.Mesh)
	for _, f := range files {
		m, err := model.Load(f)
		if err != nil {
			t.Fatalf("%v", err)
		}
		meshes[strings.TrimSuffix(filepath.Base(f), ".yaml")] = m
	}
	m, err := model.Parse(examples.Mesh, "examples/mesh.yaml")
	if err != nil {
		t.Fatal(err)
	}
	meshes["example"] = m
	return meshes
}

func translateOK(t *testing.T, m *model.Mesh) *translate.Result {
	t.Helper()
	res, err := translate.Translate(m)
	if err != nil {
		t.Fatalf("Translate(%s): %v", m.Source, err)
	}
	return res
}

// render is the golden form of a Result: protojson of every resource,
// re-indented by encoding/json so that the bytes do not depend on
// protojson's deliberately unstable whitespace.
func render(t *testing.T, res *translate.Result) []byte {
	t.Helper()
	enc := func(r *translate.Resources) map[string][]json.RawMessage {
		out := make(map[string][]json.RawMessage)
		for kind, list := range map[string][]types.Resource{"listeners": r.Listeners, "routes": r.Routes, "clusters": r.Clusters, "endpoints": r.Endpoints, "secrets": r.Secrets} {
			for _, msg := range list {
				b, err := protojson.Marshal(msg)
				if err != nil {
					t.Fatalf("protojson: %v", err)
				}
				out[kind] = append(out[kind], b)
			}
		}
		return out
	}
	doc := map[string]any{"version": res.Version, "proxyless": enc(res.Proxyless)}
	nodes := make(map[string]any)
	for id, r := range res.Nodes {
		nodes[id] = enc(r)
	}
	doc["nodes"] = nodes
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

func TestGolden(t *testing.T) {
	for name, m := range inputs(t) {
		t.Run(name, func(t *testing.T) {
			got := render(t, translateOK(t, m))
			golden := filepath.Join("testdata", name+".golden.json")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("translation of %s differs from %s (go test -update, then review the diff):\n%s", m.Source, golden, firstDiff(got, want))
			}
		})
	}
}

func firstDiff(got, want []byte) string {
	g, w := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
	for i := range min(len(g), len(w)) {
		if g[i] != w[i] {
			return "line " + strconv.Itoa(i+1) + ":\n  got:  " + g[i] + "\n  want: " + w[i]
		}
	}
	return "lengths differ: got " + strconv.Itoa(len(g)) + " lines, want " + strconv.Itoa(len(w))
}

// TestDeterministic translates each input twice, the second time from a
// fresh parse, and expects equal resources and versions; a changed input
// must change the version.
func TestDeterministic(t *testing.T) {
	for name, m := range inputs(t) {
		a := translateOK(t, m)
		again, err := model.Parse(mustRead(t, m), m.Source)
		if err != nil {
			t.Fatal(err)
		}
		b := translateOK(t, again)
		if a.Version != b.Version || !bytes.Equal(render(t, a), render(t, b)) {
			t.Errorf("%s: two translations differ (versions %s, %s)", name, a.Version, b.Version)
		}
	}
	base := translateOK(t, mustParse(t, examples.Mesh))
	changed := translateOK(t, mustParse(t, bytes.Replace(examples.Mesh, []byte("maxConcurrentStreams: 100\n    initialStream"), []byte("maxConcurrentStreams: 99\n    initialStream"), 1)))
	if base.Version == changed.Version {
		t.Error("changing http2.maxConcurrentStreams did not change the version")
	}
}

func mustRead(t *testing.T, m *model.Mesh) []byte {
	t.Helper()
	if m.Source == "examples/mesh.yaml" {
		return examples.Mesh
	}
	b, err := os.ReadFile(m.Source)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustParse(t *testing.T, b []byte) *model.Mesh {
	t.Helper()
	m, err := model.Parse(b, "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestValidateAll runs the protos' generated validation (protoc-gen-validate
// rules, recursively, including inside every Any) on every emitted resource.
func TestValidateAll(t *testing.T) {
	for name, m := range inputs(t) {
		res := translateOK(t, m)
		sets := map[string]*translate.Resources{"proxyless": res.Proxyless}
		for id, r := range res.Nodes {
			sets[id] = r
		}
		n := 0
		for set, r := range sets {
			for _, list := range [][]types.Resource{r.Listeners, r.Routes, r.Clusters, r.Endpoints, r.Secrets} {
				for _, msg := range list {
					n++
					if err := validateAll(msg); err != nil {
						t.Errorf("%s %s: %T: %v", name, set, msg, err)
					}
				}
			}
		}
		if n == 0 {
			t.Errorf("%s: no resources", name)
		}
	}
}

// validateAll runs ValidateAll on msg and on the messages in its Anys,
// which the generated code does not unpack.
func validateAll(msg proto.Message) error {
	if v, ok := msg.(interface{ ValidateAll() error }); ok {
		if err := v.ValidateAll(); err != nil {
			return err
		}
	}
	var inner []proto.Message
	switch m := msg.(type) {
	case *listenerv3.Listener:
		for _, fc := range m.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				inner = append(inner, unpack(f.GetTypedConfig()))
			}
		}
		if al := m.GetApiListener(); al != nil {
			inner = append(inner, unpack(al.GetApiListener()))
		}
	case *hcmv3.HttpConnectionManager:
		for _, f := range m.GetHttpFilters() {
			inner = append(inner, unpack(f.GetTypedConfig()))
		}
	case *clusterv3.Cluster:
		for _, a := range m.GetTypedExtensionProtocolOptions() {
			inner = append(inner, unpack(a))
		}
	}
	for _, in := range inner {
		if err := validateAll(in); err != nil {
			return err
		}
	}
	return nil
}

func unpack(a interface {
	UnmarshalNew() (proto.Message, error)
}) proto.Message {
	m, err := a.UnmarshalNew()
	if err != nil {
		panic(err)
	}
	return m
}

// TestPolicyReachesEnvoyFields checks, on the built-in example, that each
// TrafficPolicy setting lands in the Envoy field the sidecar reads.
func TestPolicyReachesEnvoyFields(t *testing.T) {
	res := translateOK(t, mustParse(t, examples.Mesh))
	client := res.Nodes["greeter-client.demo"]
	if client == nil {
		t.Fatal("no resources for greeter-client.demo")
	}
	c := find[*clusterv3.Cluster](t, client.Clusters, "outbound|50051||greeter.demo")
	if c.GetType() != clusterv3.Cluster_EDS || c.GetEdsClusterConfig().GetEdsConfig().GetAds() == nil {
		t.Errorf("cluster is not EDS over ADS: %v", c)
	}
	var opts upstreamhttpv3.HttpProtocolOptions
	if err := c.GetTypedExtensionProtocolOptions()[translate.HTTPProtocolOptionsKey].UnmarshalTo(&opts); err != nil {
		t.Fatal(err)
	}
	// greeter is upstreamProtocol http3: auto_config with HTTP/3 over the
	// QUIC transport, the policy's HTTP/2 settings for the fallback.
	auto := opts.GetAutoConfig()
	if auto.GetHttp3ProtocolOptions() == nil || c.GetTransportSocket().GetName() != translate.QUICTransportSocketName {
		t.Errorf("cluster is not auto_config HTTP/3 over %s: protocol options %v, transport socket %q", translate.QUICTransportSocketName, &opts, c.GetTransportSocket().GetName())
	}
	h2 := auto.GetHttp2ProtocolOptions()
	q := auto.GetHttp3ProtocolOptions().GetQuicProtocolOptions()
	th := c.GetCircuitBreakers().GetThresholds()[0]
	checks := []struct {
		field     string
		got, want any
	}{
		{"max_concurrent_streams", h2.GetMaxConcurrentStreams().GetValue(), uint32(100)},
		{"initial_stream_window_size", h2.GetInitialStreamWindowSize().GetValue(), uint32(1048576)},
		{"initial_connection_window_size", h2.GetInitialConnectionWindowSize().GetValue(), uint32(4194304)},
		{"connection_keepalive.interval", h2.GetConnectionKeepalive().GetInterval().AsDuration().String(), "30s"},
		{"connection_keepalive.timeout", h2.GetConnectionKeepalive().GetTimeout().AsDuration().String(), "5s"},
		// The QUIC connections follow the same policy: PINGs every
		// keepalive.interval, given up after interval + timeout of silence.
		{"quic max_concurrent_streams", q.GetMaxConcurrentStreams().GetValue(), uint32(100)},
		{"quic initial_connection_window_size", q.GetInitialConnectionWindowSize().GetValue(), uint32(4194304)},
		{"quic connection_keepalive.max_interval", q.GetConnectionKeepalive().GetMaxInterval().AsDuration().String(), "30s"},
		{"quic idle_network_timeout", q.GetIdleNetworkTimeout().AsDuration().String(), "35s"},
		{"idle_timeout", opts.GetCommonHttpProtocolOptions().GetIdleTimeout().AsDuration().String(), "5m0s"},
		{"max_connection_duration", opts.GetCommonHttpProtocolOptions().GetMaxConnectionDuration().AsDuration().String(), "30m0s"},
		{"circuit_breakers.max_connections", th.GetMaxConnections().GetValue(), uint32(4)},
		{"circuit_breakers.max_pending_requests", th.GetMaxPendingRequests().GetValue(), uint32(256)},
		{"circuit_breakers.max_requests", th.GetMaxRequests().GetValue(), uint32(400)},
		{"circuit_breakers.retry_budget", th.GetRetryBudget().GetBudgetPercent().GetValue(), 20.0},
		{"outlier_detection.consecutive_5xx", c.GetOutlierDetection().GetConsecutive_5Xx().GetValue(), uint32(5)},
		{"connect_timeout", c.GetConnectTimeout().AsDuration().String(), "1s"},
		{"lb_policy", c.GetLbPolicy(), clusterv3.Cluster_ROUND_ROBIN},
	}
	rc := find[*routev3.RouteConfiguration](t, client.Routes, "outbound|15201")
	ra := rc.GetVirtualHosts()[0].GetRoutes()[0].GetRoute()
	checks = append(checks, []struct {
		field     string
		got, want any
	}{
		{"route.timeout", ra.GetTimeout().AsDuration().String(), "10s"},
		{"route.retry_policy.retry_on", ra.GetRetryPolicy().GetRetryOn(), "refused-stream,reset,connect-failure,unavailable"},
		{"route.retry_policy.num_retries", ra.GetRetryPolicy().GetNumRetries().GetValue(), uint32(2)},
		{"route.retry_policy.per_try_timeout", ra.GetRetryPolicy().GetPerTryTimeout().AsDuration().String(), "3s"},
	}...)
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.field, c.got, c.want)
		}
	}
	cla := find[*endpointv3.ClusterLoadAssignment](t, client.Endpoints, "outbound|50051||greeter.demo")
	lb := cla.GetEndpoints()[0]
	if lb.GetLoadBalancingWeight().GetValue() == 0 || len(lb.GetLbEndpoints()) != 1 ||
		lb.GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().GetPortValue() != 15101 {
		t.Errorf("outbound endpoints are not the server sidecar's inbound listener with a locality weight: %v", cla)
	}
	// Proxyless: grpc-go needs the API listener named host:port, EDS over
	// ADS and no RANDOM.
	pl := find[*listenerv3.Listener](t, res.Proxyless.Listeners, "greeter.demo:50051")
	if pl.GetApiListener() == nil {
		t.Error("proxyless listener has no api_listener")
	}
	// The server sidecar: the inbound listener on TCP, its HTTP/3 twin on
	// UDP, and the application's cluster.
	if sidecar := res.Nodes["greeter-server.demo"]; len(sidecar.Listeners) != 2 || len(sidecar.Clusters) != 1 {
		t.Errorf("server sidecar: %d listeners, %d clusters; want its inbound TCP and QUIC listeners and one cluster", len(sidecar.Listeners), len(sidecar.Clusters))
	}
	find[*listenerv3.Listener](t, res.Nodes["greeter-server.demo"].Listeners, translate.InboundQUICListenerName(15101))
}

func find[T interface {
	proto.Message
	comparable
}](t *testing.T, list []types.Resource, name string) T {
	t.Helper()
	var names []string
	for _, r := range list {
		n := ""
		switch r := r.(type) {
		case *endpointv3.ClusterLoadAssignment:
			n = r.GetClusterName()
		case interface{ GetName() string }:
			n = r.GetName()
		}
		if v, ok := r.(T); ok && n == name {
			return v
		}
		names = append(names, n)
	}
	t.Fatalf("no %s in %v", name, names)
	var zero T
	return zero
}

func TestProxylessLBMapping(t *testing.T) {
	m := mustParse(t, []byte(`apiVersion: meshd.dev/v1alpha1
kind: Mesh
metadata: {name: m}
spec: {defaults: {loadBalancer: random}}
---
apiVersion: meshd.dev/v1alpha1
kind: Service
metadata: {name: a}
spec: {protocol: grpc, port: 9000, endpoints: [{address: 10.1.1.1, port: 9000}]}
`))
	res := translateOK(t, m)
	c := find[*clusterv3.Cluster](t, res.Proxyless.Clusters, "proxyless|a.default:9000")
	if c.GetLbPolicy() != clusterv3.Cluster_ROUND_ROBIN {
		t.Errorf("proxyless lb_policy = %v, want ROUND_ROBIN for random", c.GetLbPolicy())
	}
	names := func(l []types.Resource) []string {
		var s []string
		for _, r := range l {
			s = append(s, r.(interface{ GetName() string }).GetName())
		}
		return s
	}
	if got := names(res.Proxyless.Listeners); !slices.Equal(got, []string{"a.default:9000"}) {
		t.Errorf("proxyless listeners = %v", got)
	}
}
