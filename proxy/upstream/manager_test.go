package upstream

import (
	"log/slog"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/proxy/stats"
)

// staticCluster is a STATIC cluster named name with one endpoint on
// 127.0.0.1:port.
func staticCluster(name string, port uint32, connectTimeout time.Duration) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(connectTimeout),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{
			LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
					Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}},
			}}}},
		}}},
	}
}

// TestManagerApplyKeepsUnchangedClusters: applying a new config keeps a
// cluster whose config did not change, with its hosts and their pools (so
// their connections), builds a changed cluster anew and stops the old one,
// and stops a removed one (DESIGN's "compile, then swap").
func TestManagerApplyKeepsUnchangedClusters(t *testing.T) {
	testutil.CheckGoroutines(t)
	m := NewManager(stats.NewStore(), slog.New(slog.DiscardHandler))
	defer m.Close()
	compile := func(cs ...*clusterv3.Cluster) []*Spec {
		t.Helper()
		var specs []*Spec
		for _, c := range cs {
			s, err := CompileCluster(c)
			if err != nil {
				t.Fatalf("CompileCluster(%s): %v", c.GetName(), err)
			}
			specs = append(specs, s)
		}
		return specs
	}
	m.Apply(compile(staticCluster("a", 9001, time.Second), staticCluster("b", 9002, time.Second), staticCluster("c", 9003, time.Second)))
	a, b, c := m.Get("a"), m.Get("b"), m.Get("c")
	aHost := a.Hosts()[0]

	// a: the same config, compiled again; b: a new connect_timeout; c: gone.
	m.Apply(compile(staticCluster("a", 9001, time.Second), staticCluster("b", 9002, 2*time.Second)))
	stopped := func(c *Cluster) bool {
		select {
		case <-c.stop:
			return true
		default:
			return false
		}
	}
	for _, tc := range []struct {
		name      string
		old       *Cluster
		wantSame  bool
		wantStop  bool
		wantInNew bool
	}{
		{"unchanged", a, true, false, true},
		{"changed", b, false, true, true},
		{"removed", c, false, true, false},
	} {
		now := m.Get(tc.old.Spec().Name)
		if (now == tc.old) != tc.wantSame || (now != nil) != tc.wantInNew {
			t.Errorf("%s cluster: kept %v, present %v; want kept %v, present %v", tc.name, now == tc.old, now != nil, tc.wantSame, tc.wantInNew)
		}
		if stopped(tc.old) != tc.wantStop {
			t.Errorf("%s cluster: old one stopped %v, want %v", tc.name, stopped(tc.old), tc.wantStop)
		}
	}
	if got := m.Get("a").Hosts()[0]; got != aHost {
		t.Error("the unchanged cluster's host (and its connection pool) was replaced")
	}
	if got := m.Get("b").Spec().ConnectTimeout; got != 2*time.Second {
		t.Errorf("changed cluster's connect_timeout = %v, want 2s", got)
	}
}
