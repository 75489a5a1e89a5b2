package config

import (
	"errors"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
)

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func testRouteConfig(cluster string) *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{
		Name: "local",
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    "all",
			Domains: []string{"*"},
			Routes: []*routev3.Route{{
				Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster}}},
			}},
		}},
	}
}

func testListener(t *testing.T, h *hcmv3.HttpConnectionManager) *listenerv3.Listener {
	return &listenerv3.Listener{
		Name: "ingress",
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 0},
		}}},
		FilterChains: []*listenerv3.FilterChain{{
			Filters: []*listenerv3.Filter{{
				Name:       "hcm",
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, h)},
			}},
		}},
	}
}

// testHCM returns an HTTP connection manager routing with rs, either a
// *hcmv3.HttpConnectionManager_RouteConfig or a *hcmv3.HttpConnectionManager_Rds.
func testHCM(t *testing.T, rs any, filters ...proto.Message) *hcmv3.HttpConnectionManager {
	h := &hcmv3.HttpConnectionManager{StatPrefix: "in"}
	switch rs := rs.(type) {
	case *hcmv3.HttpConnectionManager_RouteConfig:
		h.RouteSpecifier = rs
	case *hcmv3.HttpConnectionManager_Rds:
		h.RouteSpecifier = rs
	default:
		t.Fatalf("testHCM: route specifier %T", rs)
	}
	for _, f := range filters {
		h.HttpFilters = append(h.HttpFilters, &hcmv3.HttpFilter{
			Name:       "f",
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, f)},
		})
	}
	return h
}

func testCluster(typ clusterv3.Cluster_DiscoveryType, addr string) *clusterv3.Cluster {
	c := &clusterv3.Cluster{
		Name:                 "backend",
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: typ},
		ConnectTimeout:       durationpb.New(1e9),
	}
	if addr != "" {
		c.LoadAssignment = &endpointv3.ClusterLoadAssignment{
			ClusterName: "backend",
			Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
					Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
						Address: addr, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 80},
					}}},
				}},
			}}}},
		}
	}
	return c
}

// problems returns err's problems, failing the test if err is not a
// *ValidationError (or nil).
func problems(t *testing.T, err error) []*FieldError {
	t.Helper()
	if err == nil {
		return nil
	}
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("error %v is not a *ValidationError", err)
	}
	return ve.Problems
}

func TestValidateResources(t *testing.T) {
	inline := &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: testRouteConfig("backend")}
	rds := &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
		RouteConfigName: "r",
		ConfigSource:    &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}},
	}}
	known := map[string]bool{"backend": true}
	eds := testCluster(clusterv3.Cluster_EDS, "")
	eds.EdsClusterConfig = &clusterv3.Cluster_EdsClusterConfig{EdsConfig: rds.Rds.ConfigSource}
	negative := testCluster(clusterv3.Cluster_STRICT_DNS, "backend.internal")
	negative.LoadAssignment.Endpoints[0].LbEndpoints[0].GetEndpoint().Address.GetSocketAddress().Protocol = corev3.SocketAddress_UDP

	for _, tc := range []struct {
		name     string
		validate func() error
		wantPath string // "" with wantOK
		want     string
		wantOK   bool
	}{
		{"listener ok", func() error {
			return ValidateListener(testListener(t, testHCM(t, inline, &routerv3.Router{})), ResourceOptions{Clusters: known})
		}, "", "", true},
		{"listener references unchecked without a cluster set", func() error {
			return ValidateListener(testListener(t, testHCM(t, &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: testRouteConfig("later")}, &routerv3.Router{})), ResourceOptions{})
		}, "", "", true},
		{"listener missing cluster", func() error {
			return ValidateListener(testListener(t, testHCM(t, inline, &routerv3.Router{})), ResourceOptions{Clusters: map[string]bool{}})
		}, "filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].routes[0].route.cluster", `unknown cluster "backend"`, false},
		{"listener rds needs dynamic", func() error {
			return ValidateListener(testListener(t, testHCM(t, rds, &routerv3.Router{})), ResourceOptions{})
		}, "filter_chains[0].filters[0].typed_config.rds", "requires dynamic_resources.ads_config", false},
		{"listener rds with dynamic", func() error {
			return ValidateListener(testListener(t, testHCM(t, rds, &routerv3.Router{})), ResourceOptions{Dynamic: true})
		}, "", "", true},
		{"listener unsupported filter", func() error {
			return ValidateListener(testListener(t, testHCM(t, inline, &corsv3.Cors{}, &routerv3.Router{})), ResourceOptions{})
		}, "filter_chains[0].filters[0].typed_config.http_filters[0].typed_config", "unsupported typed_config type", false},
		{"listener Envoy filter type not linked", func() error {
			h := testHCM(t, inline, &corsv3.Cors{}, &routerv3.Router{})
			h.HttpFilters[0].ConfigType = &hcmv3.HttpFilter_TypedConfig{TypedConfig: &anypb.Any{TypeUrl: luaTypeURL}}
			return ValidateListener(testListener(t, h), ResourceOptions{})
		}, "filter_chains[0].filters[0].typed_config.http_filters[0].typed_config", `unsupported typed_config type "` + luaTypeURL + `" for extension point "http filter" (meshd supports: `, false},
		{"listener filter type not in the Envoy API", func() error {
			h := testHCM(t, inline, &corsv3.Cors{}, &routerv3.Router{})
			h.HttpFilters[0].ConfigType = &hcmv3.HttpFilter_TypedConfig{TypedConfig: &anypb.Any{TypeUrl: "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Luaa"}}
			return ValidateListener(testListener(t, h), ResourceOptions{})
		}, "filter_chains[0].filters[0].typed_config.http_filters[0].typed_config", `unknown type "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Luaa": not an Envoy API type`, false},
		{"listener router missing", func() error {
			return ValidateListener(testListener(t, testHCM(t, inline)), ResourceOptions{})
		}, "filter_chains[0].filters[0].typed_config.http_filters", "must end with the router", false},
		{"route configuration ok", func() error {
			return ValidateRouteConfiguration(testRouteConfig("backend"), ResourceOptions{Clusters: known})
		}, "", "", true},
		{"route configuration duplicate domain", func() error {
			rc := testRouteConfig("backend")
			rc.VirtualHosts = append(rc.VirtualHosts, &routev3.VirtualHost{Name: "other", Domains: []string{"*"}})
			return ValidateRouteConfiguration(rc, ResourceOptions{})
		}, "virtual_hosts[1].domains[0]", `domain "*" is already used by virtual_hosts[0].domains[0]`, false},
		{"route configuration pgv", func() error {
			rc := testRouteConfig("backend")
			rc.VirtualHosts[0].Domains = nil
			return ValidateRouteConfiguration(rc, ResourceOptions{})
		}, "virtual_hosts[0].domains", "at least 1 item", false},
		{"cluster STRICT_DNS ok", func() error {
			return ValidateCluster(testCluster(clusterv3.Cluster_STRICT_DNS, "backend.internal"), ResourceOptions{})
		}, "", "", true},
		{"cluster EDS needs dynamic", func() error {
			return ValidateCluster(eds, ResourceOptions{})
		}, "type", "EDS requires dynamic_resources.ads_config", false},
		{"cluster EDS with dynamic", func() error {
			return ValidateCluster(eds, ResourceOptions{Dynamic: true})
		}, "", "", true},
		{"cluster without endpoints", func() error {
			return ValidateCluster(testCluster(clusterv3.Cluster_STATIC, ""), ResourceOptions{})
		}, "load_assignment", "a STATIC cluster needs at least one endpoint", false},
		{"cluster UDP endpoint", func() error {
			return ValidateCluster(negative, ResourceOptions{})
		}, "load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.protocol", "UDP endpoints are not supported", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.validate()
			probs := problems(t, err)
			if tc.wantOK {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			for _, p := range probs {
				if p.Path == tc.wantPath && strings.Contains(p.Reason, tc.want) {
					return
				}
			}
			t.Fatalf("no problem at %q containing %q; got %v", tc.wantPath, tc.want, err)
		})
	}
}

func TestValidateNil(t *testing.T) {
	for name, err := range map[string]error{
		"bootstrap":           ValidateBootstrap(nil),
		"listener":            ValidateListener(nil, ResourceOptions{}),
		"cluster":             ValidateCluster(nil, ResourceOptions{}),
		"route configuration": ValidateRouteConfiguration(nil, ResourceOptions{}),
	} {
		if probs := problems(t, err); len(probs) != 1 || err.Error() != name+": invalid: missing (nil)" {
			t.Errorf("Validate(nil %s) = %v, want one problem saying it is missing", name, err)
		}
	}
}

func TestValidateListenerNamesSource(t *testing.T) {
	l := testListener(t, testHCM(t, &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: testRouteConfig("x")}))
	err := ValidateListener(l, ResourceOptions{})
	if err == nil || !strings.HasPrefix(err.Error(), `listener "ingress": `) {
		t.Fatalf("got %v, want an error starting with the listener's name", err)
	}
}

func TestTCPProxyReferences(t *testing.T) {
	// The filter chain checks alone, without the rest of a listener.
	for _, tc := range []struct {
		name    string
		filters []proto.Message
		want    []string
	}{
		{"known cluster", []proto.Message{&tcpproxyv3.TcpProxy{StatPrefix: "t", ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: "backend"}}}, nil},
		{"unknown cluster", []proto.Message{&tcpproxyv3.TcpProxy{StatPrefix: "t", ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: "gone"}}},
			[]string{`fc.filters[0].typed_config.cluster: unknown cluster "gone"`}},
		{"weighted clusters", []proto.Message{&tcpproxyv3.TcpProxy{StatPrefix: "t", ClusterSpecifier: &tcpproxyv3.TcpProxy_WeightedClusters{
			WeightedClusters: &tcpproxyv3.TcpProxy_WeightedCluster{Clusters: []*tcpproxyv3.TcpProxy_WeightedCluster_ClusterWeight{
				{Name: "backend", Weight: 1}, {Name: "gone", Weight: 1}}}}}},
			[]string{`fc.filters[0].typed_config.weighted_clusters.clusters[1].name: unknown cluster "gone"`}},
		{"not last", []proto.Message{
			&tcpproxyv3.TcpProxy{StatPrefix: "t", ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: "backend"}},
			&tcpproxyv3.TcpProxy{StatPrefix: "u", ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: "backend"}},
		}, []string{"fc.filters[0]: tcp_proxy is a terminal filter and must be last"}},
		{"non-terminal last", []proto.Message{&routerv3.Router{}},
			[]string{"fc.filters[0]: the last network filter must be a terminal filter"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fc := &listenerv3.FilterChain{}
			for _, f := range tc.filters {
				fc.Filters = append(fc.Filters, &listenerv3.Filter{Name: "f", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, f)}})
			}
			v := &validator{}
			v.filterChain("fc", fc, ResourceOptions{Clusters: map[string]bool{"backend": true}})
			if len(v.probs) != len(tc.want) {
				t.Fatalf("got problems %v, want %d", v.probs, len(tc.want))
			}
			for i, p := range v.probs {
				if !strings.HasPrefix(p.Error(), tc.want[i]) {
					t.Errorf("problem %d = %q, want prefix %q", i, p.Error(), tc.want[i])
				}
			}
		})
	}
}

func TestUnknownBinaryFields(t *testing.T) {
	c := testCluster(clusterv3.Cluster_STATIC, "127.0.0.1")
	// Field 999 does not exist in Cluster: what a newer control plane
	// might send.
	c.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 999, protowire.VarintType), 1))
	probs := problems(t, ValidateCluster(c, ResourceOptions{}))
	if len(probs) != 1 || probs[0].Path != "" || !strings.Contains(probs[0].Reason, "unknown fields (numbers [999])") {
		t.Fatalf("got %v, want one problem about field 999", probs)
	}
}

func TestPGVPath(t *testing.T) {
	cluster := (&clusterv3.Cluster{}).ProtoReflect().Descriptor()
	for _, tc := range []struct {
		goName    string
		key       bool
		wantPath  string
		wantChild string
	}{
		{"ConnectTimeout", false, "p.connect_timeout", "google.protobuf.Duration"},
		{"HealthChecks[3]", false, "p.health_checks[3]", "envoy.config.core.v3.HealthCheck"},
		{"TypedExtensionProtocolOptions[k]", false, `p.typed_extension_protocol_options["k"]`, "google.protobuf.Any"},
		{"TypedExtensionProtocolOptions[k]", true, `p.typed_extension_protocol_options["k"] (key)`, ""},
		{"ClusterDiscoveryType", false, "p.cluster_discovery_type", ""},
		{"NoSuchField", false, "p.NoSuchField", ""},
	} {
		path, child := pgvPath("p", cluster, tc.goName, tc.key)
		gotChild := ""
		if child != nil {
			gotChild = string(child.FullName())
		}
		if path != tc.wantPath || gotChild != tc.wantChild {
			t.Errorf("pgvPath(%q, key=%v) = %q, %q; want %q, %q", tc.goName, tc.key, path, gotChild, tc.wantPath, tc.wantChild)
		}
	}
}

func TestRegistry(t *testing.T) {
	for _, tc := range []struct {
		point ExtensionPoint
		url   string
		want  bool
	}{
		{NetworkFilter, "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager", true},
		{NetworkFilter, "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager", true},
		{NetworkFilter, "example.com/any/prefix/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager", true},
		{HTTPFilter, "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router", true},
		{HTTPFilter, "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors", false},
		{NetworkFilter, "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router", false},
		{DownstreamTransportSocket, "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext", true},
		{UpstreamTransportSocket, "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext", false},
		{UpstreamTransportSocket, "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext", true},
		{ClusterProtocolOptions, "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions", true},
		{AccessLogger, "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog", true},
		{AccessLogger, "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig", false},
		{AccessLogger, "type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig", true},
		{StatsSink, "type.googleapis.com/envoy.extensions.stat_sinks.open_telemetry.v3.SinkConfig", true},
	} {
		if got := IsSupported(tc.point, tc.url); got != tc.want {
			t.Errorf("IsSupported(%q, %q) = %v, want %v", tc.point, tc.url, got, tc.want)
		}
	}
}

func TestRegisterTypeRejectsUnlinkedTypes(t *testing.T) {
	defer func() {
		if r := recover(); r == nil || !strings.Contains(r.(string), "not.a.Type") {
			t.Errorf("RegisterType of an unknown type: recovered %v, want a panic naming it", r)
		}
	}()
	RegisterType(OtherExtension, "type.googleapis.com/not.a.Type")
}

func TestEditDistance(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{
		{"", "", 0}, {"abc", "abc", 0}, {"typed_confg", "typed_config", 1}, {"kitten", "sitting", 3}, {"", "ab", 2},
	} {
		if got := editDistance(tc.a, tc.b); got != tc.want {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
}
