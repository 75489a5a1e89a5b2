package translate

import (
	"net"
	"strconv"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	originaldstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"meshd.dev/meshd/xds/model"
)

// Names of the capture resources.
const (
	// VirtualOutboundName is the capture listener on
	// 127.0.0.1:<spec.capture.outboundPort> (Istio's name).
	VirtualOutboundName = "virtualOutbound"
	// BlackHoleClusterName is the EDS cluster without endpoints that
	// captured connections to no known Service go to: tcp_proxy closes
	// them (Istio's name for the same cluster).
	BlackHoleClusterName = "BlackHoleCluster"
	// PassthroughClusterName is the ORIGINAL_DST cluster that captured
	// connections to no known Service go to under the allowAny outbound
	// traffic policy: each reaches its original destination (Istio's
	// name).
	PassthroughClusterName = "PassthroughCluster"
	// OriginalDstFilterName is the listener filter recovering
	// SO_ORIGINAL_DST.
	OriginalDstFilterName = "envoy.filters.listener.original_dst"
)

// VirtualServiceName returns the name of the listener (bind_to_port false)
// on a Service's virtual address ip:port, and of its route configuration.
func VirtualServiceName(ip string, port uint32) string {
	return "outbound|" + net.JoinHostPort(ip, strconv.Itoa(int(port)))
}

// capture adds the outbound capture resources of a workload whose
// application's outbound TCP is redirected to the sidecar:
//
//   - the listener VirtualOutboundName on 127.0.0.1:outboundPort with
//     use_original_dst and the original_dst listener filter: a connection
//     is handed to the listener whose address is its original destination
//     (iptables/nft REDIRECT), else served by its own chain, a tcp_proxy to
//     PassthroughClusterName (spec.outboundTrafficPolicy allowAny, the
//     default) or BlackHoleClusterName (registryOnly); both clusters are
//     emitted, as Istio does, so switching the policy changes the
//     listener only;
//   - for every Service address (spec.addresses) a listener on
//     address:spec.port with bind_to_port false, routing to the Service's
//     outbound cluster exactly as a spec.outbound local port does (RDS for
//     HTTP protocols, tcp_proxy for tcp), and that cluster when the node
//     lacks it.
//
// Inbound capture needs nothing more: REDIRECT in PREROUTING delivers
// to the pod IP's spec.inbound.port, where the inbound listener binds.
func (t *translator) capture(r *Resources, c *model.Capture, clusters map[string]bool) {
	passthrough := PassthroughClusterName
	if t.m.Spec.OutboundTrafficPolicy == model.OutboundRegistryOnly {
		passthrough = BlackHoleClusterName
	}
	chain := t.tcpListener(VirtualOutboundName, c.OutboundPort, passthrough).FilterChains
	r.Listeners = append(r.Listeners, &listenerv3.Listener{
		Name:             VirtualOutboundName,
		Address:          socketAddress(LocalAddress, c.OutboundPort),
		TrafficDirection: corev3.TrafficDirection_OUTBOUND,
		UseOriginalDst:   wrapperspb.Bool(true),
		ListenerFilters: []*listenerv3.ListenerFilter{{
			Name:       OriginalDstFilterName,
			ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: t.typed(&originaldstv3.OriginalDst{})},
		}},
		FilterChains: chain,
	})
	r.Clusters = append(r.Clusters, t.edsCluster(BlackHoleClusterName, model.Policy{}))
	r.Endpoints = append(r.Endpoints, &endpointv3.ClusterLoadAssignment{ClusterName: BlackHoleClusterName})
	r.Clusters = append(r.Clusters, &clusterv3.Cluster{
		Name:                 PassthroughClusterName,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST},
		LbPolicy:             clusterv3.Cluster_CLUSTER_PROVIDED,
	})

	for _, svc := range t.m.Services {
		if len(svc.Spec.Addresses) == 0 {
			continue
		}
		cname := OutboundClusterName(svc)
		for _, ip := range svc.Spec.Addresses {
			name := VirtualServiceName(ip, svc.Spec.Port)
			var l *listenerv3.Listener
			if svc.Spec.Protocol == model.ProtocolTCP {
				l = t.tcpListener(name, svc.Spec.Port, cname)
			} else {
				l = t.httpListener(name, svc.Spec.Port, t.rds(name), nil, nil)
				r.Routes = append(r.Routes, t.routeConfig(name, svc.Key(), t.route(cname, t.policy(svc), false)))
			}
			l.Address = socketAddress(ip, svc.Spec.Port)
			l.BindToPort = wrapperspb.Bool(false)
			l.TrafficDirection = corev3.TrafficDirection_OUTBOUND
			r.Listeners = append(r.Listeners, l)
		}
		if clusters[cname] {
			continue
		}
		clusters[cname] = true
		oc := t.outboundCluster(cname, svc)
		t.secureOutbound(oc, svc)
		r.Clusters = append(r.Clusters, oc)
		r.Endpoints = append(r.Endpoints, t.assignment(cname, svc))
	}
}
