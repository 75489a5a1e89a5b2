package tcpproxy_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"meshd.dev/meshd/proxy/tcpproxy"
)

func TestCompile(t *testing.T) {
	cluster := &tcpproxyv3.TcpProxy_Cluster{Cluster: "db"}
	weighted := func(ws ...*tcpproxyv3.TcpProxy_WeightedCluster_ClusterWeight) *tcpproxyv3.TcpProxy_WeightedClusters {
		return &tcpproxyv3.TcpProxy_WeightedClusters{WeightedClusters: &tcpproxyv3.TcpProxy_WeightedCluster{Clusters: ws}}
	}
	tests := []struct {
		name         string
		in           *tcpproxyv3.TcpProxy
		wantErr      string
		wantClusters []string
		wantIdle     time.Duration
		wantAttempts int
	}{
		{"defaults", &tcpproxyv3.TcpProxy{StatPrefix: "s", ClusterSpecifier: cluster}, "", []string{"db"}, time.Hour, 1},
		{"idle and attempts", &tcpproxyv3.TcpProxy{StatPrefix: "s", ClusterSpecifier: cluster,
			IdleTimeout: durationpb.New(5 * time.Second), MaxConnectAttempts: wrapperspb.UInt32(3)}, "", []string{"db"}, 5 * time.Second, 3},
		{"idle 0 disables", &tcpproxyv3.TcpProxy{StatPrefix: "s", ClusterSpecifier: cluster, IdleTimeout: durationpb.New(0)}, "", []string{"db"}, 0, 1},
		{"weighted", &tcpproxyv3.TcpProxy{StatPrefix: "s", ClusterSpecifier: weighted(
			&tcpproxyv3.TcpProxy_WeightedCluster_ClusterWeight{Name: "a", Weight: 1},
			&tcpproxyv3.TcpProxy_WeightedCluster_ClusterWeight{Name: "b", Weight: 3})}, "", []string{"a", "b"}, time.Hour, 1},
		{"no stat_prefix", &tcpproxyv3.TcpProxy{ClusterSpecifier: cluster}, "stat_prefix: required", nil, 0, 0},
		{"no cluster", &tcpproxyv3.TcpProxy{StatPrefix: "s"}, "cluster or weighted_clusters: one is required", nil, 0, 0},
		{"empty cluster", &tcpproxyv3.TcpProxy{StatPrefix: "s", ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{}}, "cluster: must not be empty", nil, 0, 0},
		{"zero weight", &tcpproxyv3.TcpProxy{StatPrefix: "s", ClusterSpecifier: weighted(
			&tcpproxyv3.TcpProxy_WeightedCluster_ClusterWeight{Name: "a"})}, "weighted_clusters.clusters[0].weight: must be at least 1", nil, 0, 0},
		{"no weighted clusters", &tcpproxyv3.TcpProxy{StatPrefix: "s", ClusterSpecifier: weighted()}, "weighted_clusters.clusters: at least one", nil, 0, 0},
		{"negative idle", &tcpproxyv3.TcpProxy{StatPrefix: "s", ClusterSpecifier: cluster, IdleTimeout: durationpb.New(-time.Second)}, "idle_timeout: must not be negative", nil, 0, 0},
		{"zero attempts", &tcpproxyv3.TcpProxy{StatPrefix: "s", ClusterSpecifier: cluster, MaxConnectAttempts: wrapperspb.UInt32(0)}, "max_connect_attempts: must be at least 1", nil, 0, 0},
		{"access log flush interval too short", &tcpproxyv3.TcpProxy{StatPrefix: "s", ClusterSpecifier: cluster,
			AccessLogOptions: &tcpproxyv3.TcpProxy_TcpAccessLogOptions{AccessLogFlushInterval: durationpb.New(time.Microsecond)}},
			"access_log_options.access_log_flush_interval: must be at least 1ms", nil, 0, 0},
		{"access log without typed_config", &tcpproxyv3.TcpProxy{StatPrefix: "s", ClusterSpecifier: cluster,
			AccessLog: []*accesslogv3.AccessLog{{Name: "x"}}}, "access_log[0].typed_config: required", nil, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := tcpproxy.Compile(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Compile error = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Compile: %v", err)
			}
			if got := c.ClusterNames(); !slices.Equal(got, tt.wantClusters) {
				t.Errorf("clusters = %v, want %v", got, tt.wantClusters)
			}
			if c.IdleTimeout != tt.wantIdle || c.MaxConnectAttempts != tt.wantAttempts {
				t.Errorf("idle %v attempts %d, want %v %d", c.IdleTimeout, c.MaxConnectAttempts, tt.wantIdle, tt.wantAttempts)
			}
			again, _ := tcpproxy.Compile(tt.in)
			if !c.Equal(again) {
				t.Error("Equal is false for the same message")
			}
		})
	}
}
