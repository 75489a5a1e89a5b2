package translate

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"meshd.dev/meshd/xds/model"
)

// XDSClusterName is the bootstrap's static cluster to the control plane.
const XDSClusterName = "xds_cluster"

// xdsConnectTimeout bounds a sidecar's dial to the control plane.
const xdsConnectTimeout = time.Second

// Bootstrap returns the Envoy v3 bootstrap of the sidecar for the Workload
// with node ID nodeID ("<name>.<namespace>"): node id and cluster (the
// Service it serves as "name.namespace", else the node ID), admin on the
// workload's spec.admin, and dynamic_resources with ads_config over gRPC to
// the static HTTP/2 cluster XDSClusterName at xdsAddr (host:port; a host
// that is not an IP is resolved with STRICT_DNS) and lds_config/cds_config
// from ADS, and (unless the mesh's mTLS is DISABLE) the static cluster
// IdentityClusterName to the same address over which the mTLS SDS secrets
// are fetched. Admin is not an xDS
// resource, which is why it lives here. The caller adds the workload's CA
// token to node.metadata (ca.SetNodeToken).
func Bootstrap(m *model.Mesh, nodeID, xdsAddr string) (*bootstrapv3.Bootstrap, error) {
	w := m.Workload(nodeID)
	if w == nil {
		return nil, fmt.Errorf("bootstrap: no Workload %q in %s (want name.namespace)", nodeID, m.Source)
	}
	host, port, err := splitHostPort(xdsAddr)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: xDS address: %w", err)
	}
	cluster := nodeID
	if w.ServiceRef != nil {
		cluster = w.ServiceRef.Key()
	}
	xds := &clusterv3.Cluster{
		Name:                 XDSClusterName,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(xdsConnectTimeout),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: XDSClusterName,
			Endpoints:   []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{lbEndpoint(host, port, 1)}}},
		},
	}
	if _, err := netip.ParseAddr(host); err != nil {
		xds.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS}
	}
	opts, err := anypb.New(explicitHTTP("http2", nil, nil))
	if err != nil {
		return nil, fmt.Errorf("bootstrap: encoding HttpProtocolOptions: %w", err)
	}
	xds.TypedExtensionProtocolOptions = map[string]*anypb.Any{HTTPProtocolOptionsKey: opts}

	// The SDS secrets of mTLS (SVIDSecretName, BundleSecretName) come over
	// their own cluster to the same address: the built-in CA serves next
	// to xDS, and a sidecar can tell identity traffic from config traffic.
	identity := proto.Clone(xds).(*clusterv3.Cluster)
	identity.Name = IdentityClusterName
	identity.LoadAssignment.ClusterName = IdentityClusterName

	b := &bootstrapv3.Bootstrap{
		Node: &corev3.Node{Id: nodeID, Cluster: cluster},
		DynamicResources: &bootstrapv3.Bootstrap_DynamicResources{
			AdsConfig: &corev3.ApiConfigSource{
				ApiType:             corev3.ApiConfigSource_GRPC,
				TransportApiVersion: corev3.ApiVersion_V3,
				GrpcServices: []*corev3.GrpcService{{
					TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: XDSClusterName}},
				}},
			},
			LdsConfig: ads(),
			CdsConfig: ads(),
		},
		StaticResources: &bootstrapv3.Bootstrap_StaticResources{Clusters: []*clusterv3.Cluster{xds}},
		// Load reports go to the control plane too: they carry the
		// observations autoTune learns from (xds/observe).
		ClusterManager: &bootstrapv3.ClusterManager{LoadStatsConfig: &corev3.ApiConfigSource{
			ApiType:             corev3.ApiConfigSource_GRPC,
			TransportApiVersion: corev3.ApiVersion_V3,
			GrpcServices: []*corev3.GrpcService{{
				TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: XDSClusterName}},
			}},
		}},
	}
	// With mTLS off nothing references the secrets; a sidecar that sees
	// the identity cluster would wait for an SVID before it is ready.
	if m.Spec.MTLS != model.MTLSDisable {
		b.StaticResources.Clusters = append(b.StaticResources.Clusters, identity)
	}
	if w.Spec.Admin != "" {
		ahost, aport, err := splitHostPort(w.Spec.Admin)
		if err == nil {
			_, err = netip.ParseAddr(ahost)
		}
		if err != nil {
			return nil, fmt.Errorf("bootstrap: Workload %s spec.admin %q: the admin address must be an IP and port: %w", nodeID, w.Spec.Admin, err)
		}
		b.Admin = &bootstrapv3.Admin{Address: socketAddress(ahost, aport)}
	}
	return b, nil
}

func splitHostPort(addr string) (string, uint32, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.ParseUint(p, 10, 16)
	if err != nil || port == 0 || host == "" {
		return "", 0, fmt.Errorf("%q is not host:port with a port in 1..65535", addr)
	}
	return host, uint32(port), nil
}
