package sidecar

import (
	"fmt"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"meshd.dev/meshd/proxy/config"
)

// configDump renders snap as Envoy's admin.v3.ConfigDump: a
// BootstrapConfigDump, then (for xDS snapshots) ListenersConfigDump with
// static and dynamic_listeners, ClustersConfigDump with static and
// dynamic_active_clusters, RoutesConfigDump with dynamic_route_configs and
// EndpointsConfigDump with dynamic_endpoint_configs, each dynamic resource
// with its version_info and last_updated.
func configDump(snap *config.Snapshot) ([]byte, error) {
	dumps := []proto.Message{&adminv3.BootstrapConfigDump{Bootstrap: snap.Bootstrap}}
	if d := snap.Dynamic; d != nil {
		b := snap.Bootstrap
		ls := &adminv3.ListenersConfigDump{VersionInfo: d.Versions[resourcev3.ListenerType]}
		for _, l := range b.GetStaticResources().GetListeners() {
			a, err := anypb.New(l)
			if err != nil {
				return nil, fmt.Errorf("config_dump: listener %q: %w", l.GetName(), err)
			}
			ls.StaticListeners = append(ls.StaticListeners, &adminv3.ListenersConfigDump_StaticListener{Listener: a})
		}
		cs := &adminv3.ClustersConfigDump{VersionInfo: d.Versions[resourcev3.ClusterType]}
		for _, c := range b.GetStaticResources().GetClusters() {
			a, err := anypb.New(c)
			if err != nil {
				return nil, fmt.Errorf("config_dump: cluster %q: %w", c.GetName(), err)
			}
			cs.StaticClusters = append(cs.StaticClusters, &adminv3.ClustersConfigDump_StaticCluster{Cluster: a})
		}
		rs := &adminv3.RoutesConfigDump{}
		es := &adminv3.EndpointsConfigDump{}
		for _, r := range d.Listeners {
			a, err := anypb.New(r.Resource)
			if err != nil {
				return nil, fmt.Errorf("config_dump: listener %q: %w", r.Name, err)
			}
			ls.DynamicListeners = append(ls.DynamicListeners, &adminv3.ListenersConfigDump_DynamicListener{
				Name: r.Name,
				ActiveState: &adminv3.ListenersConfigDump_DynamicListenerState{
					VersionInfo: r.Version, Listener: a, LastUpdated: timestamppb.New(r.LastUpdated),
				},
			})
		}
		for _, r := range d.Clusters {
			a, err := anypb.New(r.Resource)
			if err != nil {
				return nil, fmt.Errorf("config_dump: cluster %q: %w", r.Name, err)
			}
			cs.DynamicActiveClusters = append(cs.DynamicActiveClusters, &adminv3.ClustersConfigDump_DynamicCluster{
				VersionInfo: r.Version, Cluster: a, LastUpdated: timestamppb.New(r.LastUpdated),
			})
		}
		for _, r := range d.Routes {
			a, err := anypb.New(r.Resource)
			if err != nil {
				return nil, fmt.Errorf("config_dump: route configuration %q: %w", r.Name, err)
			}
			rs.DynamicRouteConfigs = append(rs.DynamicRouteConfigs, &adminv3.RoutesConfigDump_DynamicRouteConfig{
				VersionInfo: r.Version, RouteConfig: a, LastUpdated: timestamppb.New(r.LastUpdated),
			})
		}
		for _, r := range d.Endpoints {
			a, err := anypb.New(r.Resource)
			if err != nil {
				return nil, fmt.Errorf("config_dump: cluster load assignment %q: %w", r.Name, err)
			}
			es.DynamicEndpointConfigs = append(es.DynamicEndpointConfigs, &adminv3.EndpointsConfigDump_DynamicEndpointConfig{
				VersionInfo: r.Version, EndpointConfig: a, LastUpdated: timestamppb.New(r.LastUpdated),
			})
		}
		dumps = append(dumps, ls, cs, rs, es)
	}
	cd := &adminv3.ConfigDump{}
	for _, m := range dumps {
		a, err := anypb.New(m)
		if err != nil {
			return nil, fmt.Errorf("config_dump: %w", err)
		}
		cd.Configs = append(cd.Configs, a)
	}
	return protojson.MarshalOptions{UseProtoNames: true}.Marshal(cd)
}
