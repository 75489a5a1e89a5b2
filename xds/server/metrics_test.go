package server

import (
	"context"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"meshd.dev/meshd/internal/testutil"
)

// TestConnectedNodesAndPushLatency: two streams of one node and one of
// another count two connected nodes; an ACK records the push latency; the
// gauge follows streams closing.
func TestConnectedNodesAndPushLatency(t *testing.T) {
	testutil.CheckGoroutines(t)
	s := New(Options{})
	if err := s.Publish(testResult(t, "v1", 50051), nil); err != nil {
		t.Fatal(err)
	}
	cc := startServer(t, s)
	ads := discovery.NewAggregatedDiscoveryServiceClient(cc)
	open := func(node string) context.CancelFunc {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		st, err := ads.StreamAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: node}, TypeUrl: resource.ClusterType}); err != nil {
			t.Fatal(err)
		}
		r := recvSotW(t, st)
		if err := st.Send(&discovery.DiscoveryRequest{TypeUrl: resource.ClusterType, VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce()}); err != nil {
			t.Fatal(err)
		}
		return cancel
	}
	waitGauge := func(want int64) {
		t.Helper()
		deadline := time.Now().Add(testTimeout)
		for s.metrics.connectedNodes.Value() != want {
			if time.Now().After(deadline) {
				t.Fatalf("control_plane.connected_nodes = %d, want %d", s.metrics.connectedNodes.Value(), want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	c1 := open(sidecarNode)
	c2 := open(sidecarNode)
	c3 := open(proxylessNode)
	defer c3()
	waitGauge(2)
	deadline := time.Now().Add(testTimeout)
	for s.metrics.pushLatency.Snapshot().Count < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("xds_push_ack_latency_ms has %d values, want 3 (one per ACK)", s.metrics.pushLatency.Snapshot().Count)
		}
		time.Sleep(5 * time.Millisecond)
	}
	c1()
	waitGauge(2) // sidecarNode still has a stream
	c2()
	waitGauge(1)
}
