package source

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"meshd.dev/meshd/xds/server"
	"meshd.dev/meshd/xds/translate"
)

// TestLeftOutPodServedEmptyConfig: the sidecar of a Pod the source left
// out connects to the xDS server that publishes the source's mesh and gets
// what a proxy the mesh does not know gets: no listeners and no clusters,
// which it ACKs (no NACK), while /status lists the node with the Pod's
// rejection as the reason. A valid pod's sidecar keeps its own listeners.
func TestLeftOutPodServedEmptyConfig(t *testing.T) {
	const timeout = 10 * time.Second
	r := startSource(t, replace(fixture(nil), injectedPod("client.v2", "10.1.0.10", "client", nil)))
	res := r.sink.waitFor(t, "a mesh without the left-out pod", func(res *translate.Result) bool { return res.Nodes["client-1.demo"] != nil })
	if res.Nodes["client.v2.demo"] != nil {
		t.Fatal("the left-out pod has a node in the translation")
	}
	srv := server.New(server.Options{Rejected: r.src.Rejections})
	if err := srv.Publish(res, nil); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cc.Close()
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		srv.Stop(ctx)
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	tests := []struct {
		node      string
		listeners int // at least; 0: exactly none
	}{
		{"client.v2.demo", 0},
		{"client-1.demo", 1},
	}
	for _, tc := range tests {
		st, err := discovery.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: tc.node, UserAgentName: "envoy"}, TypeUrl: resource.ListenerType}); err != nil {
			t.Fatal(err)
		}
		resp, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		n := len(resp.GetResources())
		if resp.GetVersionInfo() != res.Version || (tc.listeners == 0 && n != 0) || n < tc.listeners {
			t.Errorf("%s: %d listeners at version %q, want %d at %s", tc.node, n, resp.GetVersionInfo(), tc.listeners, res.Version)
		}
		if err := st.Send(&discovery.DiscoveryRequest{TypeUrl: resource.ListenerType, VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(timeout)
	for {
		st := srv.Status()
		acked := 0
		for _, s := range st.Streams {
			if s.Types[resource.ListenerType].AckedVersion == res.Version {
				acked++
			}
		}
		if acked == 2 && len(st.UnknownNodes) == 1 {
			u := st.UnknownNodes[0]
			if u.Node != "client.v2.demo" || !strings.Contains(u.Reason, "Pod demo/client.v2 is left out of the mesh: metadata.name") {
				t.Errorf("unknown_nodes = %+v, want client.v2.demo with the Pod's rejection", st.UnknownNodes)
			}
			for _, s := range st.Streams {
				if nack := s.Types[resource.ListenerType].LastNACK; nack != nil {
					t.Errorf("%s NACKed: %+v", s.Node, nack)
				}
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not both ACKed with one unknown node within %v: %+v", timeout, st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
