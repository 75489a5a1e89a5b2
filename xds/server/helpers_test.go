package server

import (
	"context"
	"net"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	router "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"meshd.dev/meshd/xds/translate"
)

// testTimeout bounds every wait of these tests.
const testTimeout = 10 * time.Second

// Node IDs used by the tests.
const (
	sidecarNode   = "client.demo"
	proxylessNode = "grpc-client-7f9c"
	apiListener   = "greeter.demo:50051"
)

func hcmAny(t testing.TB, h *hcm.HttpConnectionManager) *anypb.Any {
	t.Helper()
	h.HttpFilters = []*hcm.HttpFilter{{
		Name:       "envoy.filters.http.router",
		ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: mustMarshal(t, &router.Router{})},
	}}
	return mustMarshal(t, h)
}

func mustMarshal(t testing.TB, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func rds(name string) *hcm.HttpConnectionManager_Rds {
	return &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{
		RouteConfigName: name,
		ConfigSource: &core.ConfigSource{
			ResourceApiVersion:    core.ApiVersion_V3,
			ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}},
		},
	}}
}

func routeConfig(name, clusterName string) *route.RouteConfiguration {
	return &route.RouteConfiguration{
		Name: name,
		VirtualHosts: []*route.VirtualHost{{
			Name:    name,
			Domains: []string{"*"},
			Routes: []*route.Route{{
				Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
				Action: &route.Route_Route{Route: &route.RouteAction{ClusterSpecifier: &route.RouteAction_Cluster{Cluster: clusterName}}},
			}},
		}},
	}
}

func edsCluster(name string) *cluster.Cluster {
	return &cluster.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
		ConnectTimeout:       durationpb.New(time.Second),
		EdsClusterConfig: &cluster.Cluster_EdsClusterConfig{
			EdsConfig: &core.ConfigSource{
				ResourceApiVersion:    core.ApiVersion_V3,
				ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}},
			},
		},
	}
}

func assignment(name string, port uint32) *endpoint.ClusterLoadAssignment {
	return &endpoint.ClusterLoadAssignment{
		ClusterName: name,
		Endpoints: []*endpoint.LocalityLbEndpoints{{
			LoadBalancingWeight: wrapperspb.UInt32(1),
			LbEndpoints: []*endpoint.LbEndpoint{{
				HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{
					Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
						Address: "127.0.0.1", PortSpecifier: &core.SocketAddress_PortValue{PortValue: port},
					}}},
				}},
			}},
		}},
	}
}

// sidecarResources is one outbound listener on port with RDS → EDS.
func sidecarResources(t testing.TB, port uint32) *translate.Resources {
	t.Helper()
	l := &listener.Listener{
		Name: "outbound_greeter",
		Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
			Address: "127.0.0.1", PortSpecifier: &core.SocketAddress_PortValue{PortValue: port},
		}}},
		FilterChains: []*listener.FilterChain{{
			Filters: []*listener.Filter{{
				Name: "envoy.filters.network.http_connection_manager",
				ConfigType: &listener.Filter_TypedConfig{TypedConfig: hcmAny(t, &hcm.HttpConnectionManager{
					StatPrefix:     "outbound_greeter",
					RouteSpecifier: rds("outbound_greeter"),
				})},
			}},
		}},
	}
	return &translate.Resources{
		Listeners: []types.Resource{l},
		Routes:    []types.Resource{routeConfig("outbound_greeter", "outbound|greeter.demo")},
		Clusters:  []types.Resource{edsCluster("outbound|greeter.demo")},
		Endpoints: []types.Resource{assignment("outbound|greeter.demo", 50051)},
		Secrets: []types.Resource{&tlsv3.Secret{
			Name: "spiffe://example.org/ns/demo/sa/client",
			Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
				TrustedCa: &core.DataSource{Specifier: &core.DataSource_InlineString{InlineString: "-----BEGIN CERTIFICATE-----"}},
			}},
		}},
	}
}

// proxylessResources is the API listener of greeter.demo:50051.
func proxylessResources(t testing.TB, port uint32) *translate.Resources {
	t.Helper()
	l := &listener.Listener{
		Name: apiListener,
		ApiListener: &listener.ApiListener{ApiListener: hcmAny(t, &hcm.HttpConnectionManager{
			StatPrefix:     apiListener,
			RouteSpecifier: rds(apiListener),
		})},
	}
	return &translate.Resources{
		Listeners: []types.Resource{l},
		Routes:    []types.Resource{routeConfig(apiListener, "xds|greeter.demo")},
		Clusters:  []types.Resource{edsCluster("xds|greeter.demo")},
		Endpoints: []types.Resource{assignment("xds|greeter.demo", port)},
	}
}

// testResult is a mesh of the sidecar sidecarNode and the proxyless
// resources, both with their endpoint on port.
func testResult(t testing.TB, version string, port uint32) *translate.Result {
	sc := sidecarResources(t, 15001)
	sc.Endpoints = []types.Resource{assignment("outbound|greeter.demo", port)}
	return &translate.Result{
		Nodes:     map[string]*translate.Resources{sidecarNode: sc},
		Proxyless: proxylessResources(t, port),
		Version:   version,
	}
}

// startServer serves s on a loopback port and returns a client connection
// to it; both are stopped when the test ends.
func startServer(t testing.TB, s *Server) *grpc.ClientConn {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(lis) }()
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cc.Close()
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		s.Stop(ctx)
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(testTimeout):
			t.Errorf("Serve did not return within %v of Stop", testTimeout)
		}
	})
	return cc
}

// recvSotW receives one response within testTimeout.
func recvSotW(t testing.TB, st discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient) *discovery.DiscoveryResponse {
	t.Helper()
	return recvWithin(t, "response", st.Recv)
}

// recvDelta receives one delta response within testTimeout.
func recvDelta(t testing.TB, st discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesClient) *discovery.DeltaDiscoveryResponse {
	t.Helper()
	return recvWithin(t, "delta response", st.Recv)
}

// recvWithin calls recv, a stream's Recv, and fails the test when it
// errs or does not return within testTimeout. A Recv left blocked
// returns when the test's cleanup closes the connection.
func recvWithin[R any](t testing.TB, what string, recv func() (R, error)) R {
	t.Helper()
	type result struct {
		r   R
		err error
	}
	ch := make(chan result, 1)
	go func() {
		r, err := recv()
		ch <- result{r, err}
	}()
	select {
	case res := <-ch:
		if res.err != nil {
			t.Fatalf("Recv: %v", res.err)
		}
		return res.r
	case <-time.After(testTimeout):
		t.Fatalf("no %s within %v", what, testTimeout)
		var zero R
		return zero
	}
}

func insecureCreds() credentials.TransportCredentials { return insecure.NewCredentials() }
