package server

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"meshd.dev/meshd/xds/translate"
)

// checkReferences checks the cross-references of one node's resources, the
// ones a client would otherwise discover only as a warming listener or a
// cluster with no endpoints:
//   - every RDS route_config_name, in filter chains and in api_listeners, names
//     a RouteConfiguration, and every RouteConfiguration is referenced;
//   - every EDS cluster's service name (or cluster name) names a
//     ClusterLoadAssignment, and every assignment is referenced;
//   - every cluster a route or tcp_proxy targets (inline or RDS) exists.
//
// It lists every problem, sorted, in one error.
func checkReferences(r *translate.Resources) error {
	if r == nil {
		return nil
	}
	var problems []string
	addf := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	clusters := names(r.Clusters)
	routes := names(r.Routes)
	endpoints := names(r.Endpoints)

	rdsRefs := map[string]string{}     // route name → listener referencing it
	clusterRefs := map[string]string{} // cluster name → referrer
	for _, res := range r.Listeners {
		l, ok := res.(*listener.Listener)
		if !ok {
			addf("Listeners: %T is not a Listener", res)
			continue
		}
		where := fmt.Sprintf("listener %q", l.GetName())
		if api := l.GetApiListener().GetApiListener(); api != nil {
			if err := hcmRefs(api, where+" api_listener", rdsRefs, clusterRefs); err != nil {
				addf("%v", err)
			}
		}
		chains := l.GetFilterChains()
		if dc := l.GetDefaultFilterChain(); dc != nil {
			chains = append(chains[:len(chains):len(chains)], dc)
		}
		for i, fc := range chains {
			for j, f := range fc.GetFilters() {
				at := fmt.Sprintf("%s filter_chains[%d].filters[%d]", where, i, j)
				tc := f.GetTypedConfig()
				if tc == nil {
					continue
				}
				switch tc.GetTypeUrl() {
				case "type.googleapis.com/" + string((&hcm.HttpConnectionManager{}).ProtoReflect().Descriptor().FullName()):
					if err := hcmRefs(tc, at, rdsRefs, clusterRefs); err != nil {
						addf("%v", err)
					}
				case "type.googleapis.com/" + string((&tcpproxy.TcpProxy{}).ProtoReflect().Descriptor().FullName()):
					tp := &tcpproxy.TcpProxy{}
					if err := tc.UnmarshalTo(tp); err != nil {
						addf("%s: tcp_proxy: %v", at, err)
						continue
					}
					if c := tp.GetCluster(); c != "" {
						clusterRefs[c] = at
					}
					for _, wc := range tp.GetWeightedClusters().GetClusters() {
						clusterRefs[wc.GetName()] = at
					}
				}
			}
		}
	}
	for _, res := range r.Routes {
		rc, ok := res.(*route.RouteConfiguration)
		if !ok {
			addf("Routes: %T is not a RouteConfiguration", res)
			continue
		}
		routeClusterRefs(rc, fmt.Sprintf("route_config %q", rc.GetName()), clusterRefs)
	}
	edsRefs := map[string]string{}
	for _, res := range r.Clusters {
		c, ok := res.(*cluster.Cluster)
		if !ok {
			addf("Clusters: %T is not a Cluster", res)
			continue
		}
		if c.GetType() != cluster.Cluster_EDS {
			continue
		}
		name := c.GetEdsClusterConfig().GetServiceName()
		if name == "" {
			name = c.GetName()
		}
		edsRefs[name] = fmt.Sprintf("cluster %q", c.GetName())
	}
	for _, res := range r.Endpoints {
		if _, ok := res.(*endpoint.ClusterLoadAssignment); !ok {
			addf("Endpoints: %T is not a ClusterLoadAssignment", res)
		}
	}

	for name, from := range rdsRefs {
		if !routes[name] {
			addf("%s: rds.route_config_name %q: no such RouteConfiguration", from, name)
		}
	}
	for name := range routes {
		if _, ok := rdsRefs[name]; !ok {
			addf("route_config %q: not referenced by any listener's rds", name)
		}
	}
	for name, from := range edsRefs {
		if !endpoints[name] {
			addf("%s: eds service %q: no such ClusterLoadAssignment", from, name)
		}
	}
	for name := range endpoints {
		if _, ok := edsRefs[name]; !ok {
			addf("cluster_load_assignment %q: not referenced by any EDS cluster", name)
		}
	}
	for name, from := range clusterRefs {
		if !clusters[name] {
			addf("%s: cluster %q: no such Cluster", from, name)
		}
	}
	if len(problems) == 0 {
		return nil
	}
	sort.Strings(problems)
	return errors.New("inconsistent resources: " + strings.Join(problems, "; "))
}

// hcmRefs records the RDS name and the inline routes' clusters of the
// HttpConnectionManager in a.
func hcmRefs(a *anypb.Any, at string, rdsRefs, clusterRefs map[string]string) error {
	m := &hcm.HttpConnectionManager{}
	if err := a.UnmarshalTo(m); err != nil {
		return fmt.Errorf("%s: http_connection_manager: %w", at, err)
	}
	if name := m.GetRds().GetRouteConfigName(); name != "" {
		rdsRefs[name] = at
	}
	if rc := m.GetRouteConfig(); rc != nil {
		routeClusterRefs(rc, at+" route_config", clusterRefs)
	}
	return nil
}

func routeClusterRefs(rc *route.RouteConfiguration, at string, clusterRefs map[string]string) {
	for _, vh := range rc.GetVirtualHosts() {
		for _, rt := range vh.GetRoutes() {
			a := rt.GetRoute()
			if c := a.GetCluster(); c != "" {
				clusterRefs[c] = at
			}
			for _, wc := range a.GetWeightedClusters().GetClusters() {
				clusterRefs[wc.GetName()] = at
			}
		}
	}
}

func names(rs []types.Resource) map[string]bool {
	out := make(map[string]bool, len(rs))
	for _, r := range rs {
		if r != nil {
			out[cachev3.GetResourceName(r)] = true
		}
	}
	return out
}
