package translate

import (
	"net/netip"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tracev3 "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"meshd.dev/meshd/xds/model"
)

// TracingClusterName is the cluster of Mesh.spec.tracing's collector in
// every sidecar.
const TracingClusterName = "meshd_tracing_collector"

// defaultTracingConnectTimeout is the collector cluster's connect_timeout
// (Envoy's default).
const defaultTracingConnectTimeout = 5 * time.Second

// TracerName is the OpenTelemetry tracer's Envoy name.
const TracerName = "envoy.tracers.opentelemetry"

// tracing returns the HCM tracing of workload w's listeners, nil when the
// mesh does not trace. Spans carry the workload's node ID as service.name.
func (t *translator) tracing(w *model.Workload) *hcmv3.HttpConnectionManager_Tracing {
	mt := t.m.Spec.Tracing
	if mt == nil {
		return nil
	}
	return &hcmv3.HttpConnectionManager_Tracing{
		RandomSampling: &typev3.Percent{Value: mt.Sampling()},
		Provider: &tracev3.Tracing_Http{
			Name: TracerName,
			ConfigType: &tracev3.Tracing_Http_TypedConfig{TypedConfig: t.typed(&tracev3.OpenTelemetryConfig{
				GrpcService: &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
					EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: TracingClusterName},
				}},
				ServiceName: w.NodeID(),
			})},
		},
	}
}

// tracingCluster is the collector's cluster: STATIC for an IP, STRICT_DNS
// for a name, HTTP/2 (OTLP/gRPC).
func (t *translator) tracingCluster() *clusterv3.Cluster {
	host, port := t.m.Spec.Tracing.CollectorHostPort()
	typ := clusterv3.Cluster_STRICT_DNS
	if _, err := netip.ParseAddr(host); err == nil {
		typ = clusterv3.Cluster_STATIC
	}
	return &clusterv3.Cluster{
		Name:                 TracingClusterName,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: typ},
		ConnectTimeout:       durationpb.New(defaultTracingConnectTimeout),
		TypedExtensionProtocolOptions: map[string]*anypb.Any{
			HTTPProtocolOptionsKey: t.typed(explicitHTTP(model.ProtocolGRPC, nil, nil)),
		},
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: TracingClusterName,
			Endpoints:   []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{lbEndpoint(host, port, 1)}}},
		},
	}
}
