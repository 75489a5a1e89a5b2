package hardening

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"meshd.dev/meshd/internal/testutil"
)

// Bounds of TestLeaksAfterConfigSwaps (issue 11 item 7, config swaps).
const (
	swapCount   = 1000
	swapTimeout = 60 * time.Second
	swapNode    = "swaps"
)

// swapXDS is go-control-plane's ADS server on a SnapshotCache, recording
// the last version the sidecar ACKed per type.
type swapXDS struct {
	addr  string
	cache cachev3.SnapshotCache

	mu    sync.Mutex
	acked map[string]string // type URL → version
	nacks []string
}

func startSwapXDS(t *testing.T) *swapXDS {
	t.Helper()
	x := &swapXDS{cache: cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil), acked: map[string]string{}}
	cb := serverv3.CallbackFuncs{
		StreamRequestFunc: func(_ int64, r *discoveryv3.DiscoveryRequest) error {
			x.mu.Lock()
			defer x.mu.Unlock()
			if r.GetErrorDetail() != nil {
				x.nacks = append(x.nacks, r.GetTypeUrl()+": "+r.GetErrorDetail().GetMessage())
			} else if r.GetResponseNonce() != "" {
				x.acked[r.GetTypeUrl()] = r.GetVersionInfo()
			}
			return nil
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	gs := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, serverv3.NewServer(ctx, x.cache, cb))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	x.addr = lis.Addr().String()
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = gs.Serve(lis)
	}()
	t.Cleanup(func() {
		cancel()
		gs.Stop()
		<-served
	})
	return x
}

// push publishes version i: a listener whose route adds x-swap: <i> and
// a backend cluster whose connect_timeout is 1 s + i ms, so both the
// connection manager's config and the cluster are replaced on every swap.
func (x *swapXDS) push(t *testing.T, i int, backendPort uint32) string {
	t.Helper()
	mustAny := func(m proto.Message) *anypb.Any {
		a, err := anypb.New(m)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	version := strconv.Itoa(i)
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: "swap",
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{
			Name: "local",
			VirtualHosts: []*routev3.VirtualHost{{
				Name: "backend", Domains: []string{"*"},
				Routes: []*routev3.Route{{
					Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
					Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "backend"}}},
					ResponseHeadersToAdd: []*corev3.HeaderValueOption{{
						Header: &corev3.HeaderValue{Key: "x-swap", Value: version},
					}},
				}},
			}},
		}},
		HttpFilters: []*hcmv3.HttpFilter{{
			Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&routerv3.Router{})},
		}},
	}
	addr := func(port uint32) *corev3.Address {
		return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}
	}
	ln := &listenerv3.Listener{
		Name:    "swap",
		Address: addr(0),
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name: "envoy.filters.network.http_connection_manager", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(hcm)},
		}}}},
	}
	h2 := &upstreamhttpv3.HttpProtocolOptions{UpstreamProtocolOptions: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_{
		ExplicitHttpConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}},
		}}}
	cl := &clusterv3.Cluster{
		Name:                 "backend",
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(time.Second + time.Duration(i)*time.Millisecond),
		TypedExtensionProtocolOptions: map[string]*anypb.Any{
			"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": mustAny(h2),
		},
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: "backend",
			Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: addr(backendPort)}},
			}}}},
		},
	}
	snap, err := cachev3.NewSnapshot(version, map[resourcev3.Type][]types.Resource{
		resourcev3.ListenerType: {ln},
		resourcev3.ClusterType:  {cl},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := x.cache.SetSnapshot(context.Background(), swapNode, snap); err != nil {
		t.Fatal(err)
	}
	return version
}

// waitAcked waits until the sidecar ACKed version for listeners and
// clusters, failing on any NACK.
func (x *swapXDS) waitAcked(t *testing.T, version string, deadline time.Time) {
	t.Helper()
	for {
		x.mu.Lock()
		done := x.acked[resourcev3.ListenerType] == version && x.acked[resourcev3.ClusterType] == version
		nacks := x.nacks
		x.mu.Unlock()
		if len(nacks) > 0 {
			t.Fatalf("the sidecar NACKed: %s", nacks[0])
		}
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("version %s not ACKed within %v", version, swapTimeout)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestLeaksAfterConfigSwaps: after 1 000 listener and cluster swaps pushed
// over ADS (each one ACKed before the next) and two forced GCs, the
// sidecar's goroutines are back within 10 of the baseline, its open fds
// within 5 and its live heap within 10% (+1 MiB), and the last config
// serves.
func TestLeaksAfterConfigSwaps(t *testing.T) {
	be := startBackend(t)
	_, portStr, _ := net.SplitHostPort(be.addr)
	port, _ := strconv.Atoi(portStr)
	x := startSwapXDS(t)
	xdsHost, xdsPort, _ := net.SplitHostPort(x.addr)
	deadline := time.Now().Add(swapTimeout)
	x.push(t, 0, uint32(port))
	sc := testutil.StartSidecar(t, fmt.Sprintf(`node: { id: %s, cluster: hardening }
admin:
  address:
    socket_address: { address: 127.0.0.1, port_value: 0 }
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services: [{ envoy_grpc: { cluster_name: xds } }]
  lds_config: { ads: {}, resource_api_version: V3 }
  cds_config: { ads: {}, resource_api_version: V3 }
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    load_assignment:
      cluster_name: xds
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: %s, port_value: %s } } }
`, swapNode, xdsHost, xdsPort))
	m := &mesh{sc: sc, backend: be}
	x.waitAcked(t, "0", deadline)
	addr := sc.ListenerAddr(t, "swap")
	client := &http.Client{Transport: &http.Transport{}, Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	get := func(want string) {
		t.Helper()
		resp, err := client.Get("http://" + addr + "/")
		if err != nil {
			t.Fatalf("GET: %v", err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get("x-swap") != want {
			t.Fatalf("GET: %d x-swap %q, want 200 x-swap %q", resp.StatusCode, resp.Header.Get("x-swap"), want)
		}
	}
	// Warm up, then a first swap so that the baseline has a replaced
	// cluster and connection manager config behind it.
	get("0")
	x.waitAcked(t, x.push(t, 1, uint32(port)), deadline)
	get("1")
	client.CloseIdleConnections()
	base, baseFDs := m.gc(t), m.fds(t)
	t.Logf("baseline: %d goroutines, %d fds, live heap %d KiB", base.Goroutines, baseFDs, base.LiveHeapBytes>>10)

	start := time.Now()
	for i := 2; i <= swapCount+1; i++ {
		x.waitAcked(t, x.push(t, i, uint32(port)), deadline)
	}
	swapTime := time.Since(start)
	get(strconv.Itoa(swapCount + 1))
	client.CloseIdleConnections()

	var after memory
	var afterFDs int
	settle := time.Now().Add(20 * time.Second)
	for {
		after, afterFDs = m.gc(t), m.fds(t)
		okG := after.Goroutines <= base.Goroutines+leakGoroutines
		okF := afterFDs <= baseFDs+leakFDs
		okH := after.LiveHeapBytes <= base.LiveHeapBytes*(100+leakHeapPercent)/100+leakHeapSlack
		if (okG && okF && okH) || time.Now().After(settle) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("FIGURES swaps: %d LDS+CDS swaps over ADS (each ACKed) in %v: goroutines %d -> %d, fds %d -> %d, live heap %d KiB -> %d KiB",
		swapCount, swapTime.Round(time.Millisecond), base.Goroutines, after.Goroutines, baseFDs, afterFDs, base.LiveHeapBytes>>10, after.LiveHeapBytes>>10)
	if after.Goroutines > base.Goroutines+leakGoroutines {
		t.Errorf("goroutines %d, baseline %d (+%d allowed)", after.Goroutines, base.Goroutines, leakGoroutines)
	}
	if afterFDs > baseFDs+leakFDs {
		t.Errorf("fds %d, baseline %d (+%d allowed)", afterFDs, baseFDs, leakFDs)
	}
	if limit := base.LiveHeapBytes*(100+leakHeapPercent)/100 + leakHeapSlack; after.LiveHeapBytes > limit {
		t.Errorf("live heap %d KiB, baseline %d KiB (limit %d KiB)", after.LiveHeapBytes>>10, base.LiveHeapBytes>>10, limit>>10)
	}
}
