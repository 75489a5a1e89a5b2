package server

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"meshd.dev/meshd/internal/testutil"
)

// TestIsProxyNode: proxies name themselves in user_agent_name (or carry
// meshd's admin metadata); proxyless gRPC clients and nameless nodes do not.
func TestIsProxyNode(t *testing.T) {
	admin := &structpb.Struct{Fields: map[string]*structpb.Value{NodeAdminKey: structpb.NewStringValue("127.0.0.1:15000")}}
	tests := []struct {
		name string
		node *core.Node
		want bool
	}{
		{"envoy", &core.Node{Id: "a.b", UserAgentName: "envoy"}, true},
		{"meshd sidecar", &core.Node{Id: "a.b", UserAgentName: "meshd"}, true},
		{"case-insensitive", &core.Node{Id: "a.b", UserAgentName: "Envoy"}, true},
		{"meshd admin metadata", &core.Node{Id: "a.b", Metadata: admin}, true},
		{"grpc-go", &core.Node{Id: "grpc-client-1", UserAgentName: "gRPC Go"}, false},
		{"grpc-java", &core.Node{Id: "grpc-client-1", UserAgentName: "gRPC Java"}, false},
		{"no user agent", &core.Node{Id: "a.b"}, false},
		{"nil node", nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := IsProxyNode(tc.node); got != tc.want {
				t.Errorf("IsProxyNode(%v) = %v, want %v", tc.node, got, tc.want)
			}
		})
	}
}

// TestUnknownSidecar: a proxy whose node ID the mesh does not name gets an
// empty CDS and LDS at the published version, ACKs them (no NACK, one push
// per type and version), is warned about once however many streams it
// opens, is listed on /status with why (the Pod the source left out, or no
// Workload), and gets its own config once the mesh names it.
func TestUnknownSidecar(t *testing.T) {
	const ghost = "ghost.demo"
	tests := []struct {
		name       string
		node       *core.Node
		rejected   []RejectedObject
		wantReason string
	}{
		{
			name:       "envoy without a Workload",
			node:       &core.Node{Id: ghost, UserAgentName: "envoy"},
			wantReason: "no Workload of the published mesh (version v1) has node ID",
		},
		{
			name: "meshd sidecar of a Pod left out",
			node: &core.Node{Id: ghost, UserAgentName: "meshd"},
			rejected: []RejectedObject{
				{Kind: "Pod", Namespace: "demo", Name: "other", Reason: "not this one"},
				{Kind: "Pod", Namespace: "demo", Name: "ghost", Annotation: "meshd.dev/outbound", Reason: "an annotation only"},
				{Kind: "Pod", Namespace: "demo", Name: "ghost", Reason: "metadata.name: not a DNS label"},
			},
			wantReason: "Pod demo/ghost is left out of the mesh: metadata.name: not a DNS label",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			logs := &testutil.SyncBuffer{}
			opts := Options{Logger: slog.New(slog.NewTextHandler(logs, nil))}
			if tc.rejected != nil {
				opts.Rejected = func() []RejectedObject { return tc.rejected }
			}
			s := New(opts)
			if err := s.Publish(testResult(t, "v1", 50051), nil); err != nil {
				t.Fatal(err)
			}
			cc := startServer(t, s)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			ads := discovery.NewAggregatedDiscoveryServiceClient(cc)

			// Two streams of the same node, one after the other.
			for i := range 2 {
				st, err := ads.StreamAggregatedResources(ctx)
				if err != nil {
					t.Fatal(err)
				}
				for _, typ := range []string{resource.ClusterType, resource.ListenerType} {
					if err := st.Send(&discovery.DiscoveryRequest{Node: tc.node, TypeUrl: typ}); err != nil {
						t.Fatal(err)
					}
					r := recvSotW(t, st)
					if r.GetTypeUrl() != typ || r.GetVersionInfo() != "v1" || len(r.GetResources()) != 0 {
						t.Fatalf("stream %d: %s: got %s version %q with %v, want no resources at v1", i, shortType(typ), shortType(r.GetTypeUrl()), r.GetVersionInfo(), namesOf(t, r))
					}
					if err := st.Send(&discovery.DiscoveryRequest{TypeUrl: typ, VersionInfo: "v1", ResponseNonce: r.GetNonce()}); err != nil {
						t.Fatal(err)
					}
				}
				status := waitStatus(t, s, func(st Status) bool {
					return len(st.Streams) == 1 && allAcked(st.Streams[0], "v1") && len(st.Streams[0].Types) == 2 && len(st.UnknownNodes) == 1
				})
				if got := status.Streams[0].CacheKey; got != UnknownSidecarKey {
					t.Errorf("cache key %q, want %q", got, UnknownSidecarKey)
				}
				u := status.UnknownNodes[0]
				if u.Node != ghost || u.Streams != 1 || !strings.Contains(u.Reason, tc.wantReason) {
					t.Errorf("unknown_nodes[0] = %+v, want node %s, 1 stream, reason containing %q", u, ghost, tc.wantReason)
				}
				if got := s.metrics.unknownNodes.Value(); got != 1 {
					t.Errorf("unknown_nodes gauge = %d, want 1", got)
				}
				if err := st.CloseSend(); err != nil {
					t.Fatal(err)
				}
				waitStatus(t, s, func(st Status) bool { return len(st.Streams) == 0 && len(st.UnknownNodes) == 0 })
			}
			if got := s.metrics.nacks.Value(); got != 0 {
				t.Errorf("xds_nacks = %d, want 0", got)
			}
			if got := s.metrics.pushes.Value(); got != 4 {
				t.Errorf("xds_pushes = %d, want 4 (CDS and LDS on each of two streams)", got)
			}
			if got := s.metrics.unknownNodes.Value(); got != 0 {
				t.Errorf("unknown_nodes gauge = %d after the streams closed, want 0", got)
			}
			if n := strings.Count(logs.String(), "proxy not in the mesh"); n != 1 {
				t.Errorf("%d warnings about the unknown node, want 1:\n%s", n, logs)
			}
			if !strings.Contains(logs.String(), "node="+ghost) || !strings.Contains(logs.String(), tc.wantReason) {
				t.Errorf("warning lacks the node or the reason %q:\n%s", tc.wantReason, logs)
			}

			// The mesh names the node: its open stream gets its config.
			st, err := ads.StreamAggregatedResources(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := st.Send(&discovery.DiscoveryRequest{Node: tc.node, TypeUrl: resource.ListenerType}); err != nil {
				t.Fatal(err)
			}
			r := recvSotW(t, st)
			if err := st.Send(&discovery.DiscoveryRequest{TypeUrl: resource.ListenerType, VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce()}); err != nil {
				t.Fatal(err)
			}
			named := testResult(t, "v2", 50051)
			named.Nodes[ghost] = sidecarResources(t, 15003)
			if err := s.Publish(named, nil); err != nil {
				t.Fatal(err)
			}
			// The watch open under the shared key is answered first (empty,
			// at v2); the ACK's watch, under the node's own key, gets its
			// listeners at the same version.
			var got []string
			for range 2 {
				r = recvSotW(t, st)
				if got = namesOf(t, r); r.GetVersionInfo() != "v2" || len(got) != 0 {
					break
				}
				if err := st.Send(&discovery.DiscoveryRequest{TypeUrl: resource.ListenerType, VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce()}); err != nil {
					t.Fatal(err)
				}
			}
			if r.GetVersionInfo() != "v2" || len(got) != 1 || got[0] != "outbound_greeter" {
				t.Fatalf("after the mesh names the node: version %q, listeners %v; want v2 [outbound_greeter]", r.GetVersionInfo(), got)
			}
			status := waitStatus(t, s, func(st Status) bool { return len(st.Streams) == 1 })
			if status.UnknownNodes != nil || status.Streams[0].CacheKey != ghost {
				t.Errorf("after the mesh names the node: unknown_nodes %+v, cache key %q; want none and %q", status.UnknownNodes, status.Streams[0].CacheKey, ghost)
			}
		})
	}
}

// TestUnknownSidecarBeforeFirstPublish: a proxy that connects before any
// mesh is published is not called unknown until a publish leaves it out,
// and is then warned about once.
func TestUnknownSidecarBeforeFirstPublish(t *testing.T) {
	testutil.CheckGoroutines(t)
	logs := &testutil.SyncBuffer{}
	s := New(Options{Logger: slog.New(slog.NewTextHandler(logs, nil))})
	cc := startServer(t, s)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := discovery.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "ghost.demo", UserAgentName: "meshd"}, TypeUrl: resource.ListenerType}); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, s, func(st Status) bool { return len(st.Streams) == 1 && st.Streams[0].Node == "ghost.demo" })
	if u := s.Status().UnknownNodes; u != nil {
		t.Errorf("unknown_nodes before any publish: %+v, want none", u)
	}
	for _, v := range []string{"v1", "v2"} {
		if err := s.Publish(testResult(t, v, 50051), nil); err != nil {
			t.Fatal(err)
		}
		r := recvSotW(t, st)
		if r.GetVersionInfo() != v || len(r.GetResources()) != 0 {
			t.Fatalf("LDS: version %q with %v, want %s with none", r.GetVersionInfo(), namesOf(t, r), v)
		}
		if err := st.Send(&discovery.DiscoveryRequest{TypeUrl: resource.ListenerType, VersionInfo: v, ResponseNonce: r.GetNonce()}); err != nil {
			t.Fatal(err)
		}
		waitStatus(t, s, func(st Status) bool { return len(st.UnknownNodes) == 1 && st.UnknownNodes[0].Node == "ghost.demo" })
	}
	deadline := time.Now().Add(testTimeout)
	for strings.Count(logs.String(), "proxy not in the mesh") == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := strings.Count(logs.String(), "proxy not in the mesh"); n != 1 {
		t.Errorf("%d warnings about the unknown node over two publishes, want 1:\n%s", n, logs)
	}
}

// TestUnknownSidecarDelta: over delta ADS the unknown proxy's first
// wildcard CDS and LDS subscriptions are answered at once with no
// resources (so its initial fetch completes), and it is listed unknown.
func TestUnknownSidecarDelta(t *testing.T) {
	testutil.CheckGoroutines(t)
	s := New(Options{})
	if err := s.Publish(testResult(t, "v1", 50051), nil); err != nil {
		t.Fatal(err)
	}
	cc := startServer(t, s)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := discovery.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := &core.Node{Id: "ghost.demo", UserAgentName: "meshd"}
	for _, typ := range []string{resource.ClusterType, resource.ListenerType} {
		if err := st.Send(&discovery.DeltaDiscoveryRequest{Node: node, TypeUrl: typ}); err != nil {
			t.Fatal(err)
		}
		r := recvDelta(t, st)
		if r.GetTypeUrl() != typ || len(r.GetResources()) != 0 || len(r.GetRemovedResources()) != 0 {
			t.Fatalf("%s: got %s with %d resources, %d removed; want an empty response", shortType(typ), shortType(r.GetTypeUrl()), len(r.GetResources()), len(r.GetRemovedResources()))
		}
		if err := st.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: typ, ResponseNonce: r.GetNonce()}); err != nil {
			t.Fatal(err)
		}
	}
	status := waitStatus(t, s, func(st Status) bool { return len(st.UnknownNodes) == 1 && s.metrics.acks.Value() == 2 })
	if status.UnknownNodes[0].Node != "ghost.demo" || status.Streams[0].CacheKey != UnknownSidecarKey {
		t.Errorf("unknown_nodes %+v, cache key %q; want ghost.demo under %q", status.UnknownNodes, status.Streams[0].CacheKey, UnknownSidecarKey)
	}
	if got := s.metrics.nacks.Value(); got != 0 {
		t.Errorf("xds_nacks = %d, want 0", got)
	}
}
