package sidecar

import (
	"net"
	"slices"
	"sort"
	"strconv"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"meshd.dev/meshd/xds/observe"
)

// loadStats is the LRS report of the named clusters (every cluster when
// all): per HTTP/2 endpoint, one UpstreamEndpointStats whose metadata
// carries the pool's observation since the previous report under
// observe.MetadataKey. Clusters without an HTTP/2 endpoint are left out.
func (s *Sidecar) loadStats(names []string, all bool) []*endpointv3.ClusterStats {
	var out []*endpointv3.ClusterStats
	for name, c := range s.clusters.All() {
		if !all && !slices.Contains(names, name) {
			continue
		}
		obs := c.Observe()
		if len(obs) == 0 {
			continue
		}
		loc := &endpointv3.UpstreamLocalityStats{Locality: &corev3.Locality{}}
		for addr, o := range obs {
			host, port, err := net.SplitHostPort(addr)
			if err != nil {
				continue
			}
			pn, err := strconv.ParseUint(port, 10, 32)
			if err != nil {
				continue
			}
			loc.UpstreamEndpointStats = append(loc.UpstreamEndpointStats, &endpointv3.UpstreamEndpointStats{
				Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
					Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(pn)}}}},
				Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{observe.MetadataKey: structpb.NewStructValue(o.Struct())}},
			})
		}
		sort.Slice(loc.UpstreamEndpointStats, func(i, j int) bool {
			a, b := loc.UpstreamEndpointStats[i].GetAddress().GetSocketAddress(), loc.UpstreamEndpointStats[j].GetAddress().GetSocketAddress()
			return a.GetAddress() < b.GetAddress() || (a.GetAddress() == b.GetAddress() && a.GetPortValue() < b.GetPortValue())
		})
		out = append(out, &endpointv3.ClusterStats{ClusterName: name, UpstreamLocalityStats: []*endpointv3.UpstreamLocalityStats{loc}})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ClusterName < out[j].ClusterName })
	return out
}
