package xds_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"meshd.dev/meshd/ca"
	"meshd.dev/meshd/internal/meshtest"
	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/xds/model"
	"meshd.dev/meshd/xds/translate"
)

// testXDS is an xDS server made of go-control-plane's ADS server and
// SnapshotCache only (none of meshd's control plane), recording what the
// sidecar sends: each request is classified against the response whose
// nonce it answers.
type testXDS struct {
	addr  string
	cache cachev3.SnapshotCache

	mu        sync.Mutex
	sent      map[string]string // response nonce → version
	acks      []xdsReply
	nacks     []xdsReply
	responses atomic.Int64
}

// xdsReply is an ACK or a NACK of one response.
type xdsReply struct {
	TypeURL, Version, ErrorDetail string
}

// testCA returns the registration of a built-in CA service (root and
// token secret in caDir, tokens of meshPath's workloads), so a plain
// go-control-plane server stands in for meshd control-plane's CA too: a
// sidecar bootstrapped by `meshd bootstrap` is ready only once it has its
// SVID, whatever the mesh's mtls mode.
func testCA(t *testing.T, caDir, meshPath string) func(grpc.ServiceRegistrar) {
	t.Helper()
	m, err := model.Load(meshPath)
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString(m.Spec.TrustDomain)
	root, err := ca.LoadOrGenerate(caDir, td)
	if err != nil {
		t.Fatal(err)
	}
	authority, err := ca.New(td, ca.Options{}, root)
	if err != nil {
		t.Fatal(err)
	}
	secret, err := ca.LoadOrCreateTokenSecret(caDir)
	if err != nil {
		t.Fatal(err)
	}
	tokens := ca.NewTokenAuthenticator(secret, td)
	if err := tokens.SetMesh(m); err != nil {
		t.Fatal(err)
	}
	return ca.NewService(authority, tokens, ca.ServiceOptions{}).Register
}

// startTestXDS serves ADS (SotW and delta) and any extra services on
// 127.0.0.1:0 until the test ends.
func startTestXDS(t *testing.T, services ...func(grpc.ServiceRegistrar)) *testXDS {
	t.Helper()
	x := &testXDS{cache: cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil), sent: map[string]string{}}
	cb := serverv3.CallbackFuncs{
		StreamRequestFunc: func(_ int64, r *discoveryv3.DiscoveryRequest) error {
			x.reply(r.GetTypeUrl(), r.GetResponseNonce(), r.GetErrorDetail().GetMessage())
			return nil
		},
		StreamResponseFunc: func(_ context.Context, _ int64, _ *discoveryv3.DiscoveryRequest, r *discoveryv3.DiscoveryResponse) {
			x.response(r.GetNonce(), r.GetVersionInfo())
		},
		StreamDeltaRequestFunc: func(_ int64, r *discoveryv3.DeltaDiscoveryRequest) error {
			x.reply(r.GetTypeUrl(), r.GetResponseNonce(), r.GetErrorDetail().GetMessage())
			return nil
		},
		StreamDeltaResponseFunc: func(_ int64, _ *discoveryv3.DeltaDiscoveryRequest, r *discoveryv3.DeltaDiscoveryResponse) {
			x.response(r.GetNonce(), r.GetSystemVersionInfo())
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv := serverv3.NewServer(ctx, x.cache, cb)
	gs := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, srv)
	for _, register := range services {
		register(gs)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	x.addr = lis.Addr().String()
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = gs.Serve(lis)
	}()
	t.Cleanup(func() {
		cancel()
		gs.Stop()
		<-served
	})
	return x
}

func (x *testXDS) response(nonce, version string) {
	x.responses.Add(1)
	x.mu.Lock()
	x.sent[nonce] = version
	x.mu.Unlock()
}

func (x *testXDS) reply(typeURL, nonce, errorDetail string) {
	if nonce == "" {
		return // a subscription, not a reply
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	r := xdsReply{TypeURL: typeURL, Version: x.sent[nonce], ErrorDetail: errorDetail}
	if errorDetail != "" {
		x.nacks = append(x.nacks, r)
	} else {
		x.acks = append(x.acks, r)
	}
}

// set publishes r at version for node.
func (x *testXDS) set(t *testing.T, node, version string, r *translate.Resources) {
	t.Helper()
	snap, err := cachev3.NewSnapshot(version, map[resourcev3.Type][]types.Resource{
		resourcev3.ListenerType: r.Listeners,
		resourcev3.RouteType:    r.Routes,
		resourcev3.ClusterType:  r.Clusters,
		resourcev3.EndpointType: r.Endpoints,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := x.cache.SetSnapshot(context.Background(), node, snap); err != nil {
		t.Fatal(err)
	}
}

// waitReply waits for an ACK (nack false) or NACK of typeURL at version.
func (x *testXDS) waitReply(t *testing.T, typeURL, version string, nack bool) xdsReply {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for time.Now().Before(deadline) {
		x.mu.Lock()
		list := x.acks
		if nack {
			list = x.nacks
		}
		for _, r := range list {
			if r.TypeURL == typeURL && r.Version == version {
				x.mu.Unlock()
				return r
			}
		}
		x.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no %s of %s at version %s within %v (NACK=%v)", map[bool]string{false: "ACK", true: "NACK"}[nack], typeURL, version, waitTimeout, nack)
	return xdsReply{}
}

// ackedVersions returns the versions ACKed for typeURL, in order.
func (x *testXDS) ackedVersions(typeURL string) []string {
	x.mu.Lock()
	defer x.mu.Unlock()
	var out []string
	for _, r := range x.acks {
		if r.TypeURL == typeURL {
			out = append(out, r.Version)
		}
	}
	return out
}

// nackMesh is a mesh whose client workload calls greeter, a service with
// one endpoint at backend, from 127.0.0.1:outbound.
func nackMesh(backend string, outbound, admin int) string {
	host, port, _ := strings.Cut(backend, ":")
	return fmt.Sprintf(`apiVersion: meshd.dev/v1alpha1
kind: Mesh
metadata:
  name: test
spec:
  trustDomain: test.example
---
apiVersion: meshd.dev/v1alpha1
kind: Service
metadata:
  name: greeter
  namespace: demo
spec:
  protocol: grpc
  port: 50051
  endpoints:
    - address: %s
      port: %s
---
apiVersion: meshd.dev/v1alpha1
kind: Workload
metadata:
  name: greeter-client
  namespace: demo
spec:
  serviceAccount: greeter-client
  outbound:
    - service: greeter.demo
      port: %d
  admin: 127.0.0.1:%d
`, host, port, outbound, admin)
}

// stormBound is how long the test lets a go-control-plane SnapshotCache
// re-send a NACKed snapshot (it answers every NACK at once with the same
// version) before it publishes a good one.
const stormBound = time.Second

// TestBadResourceNACKed (issue 4, acceptance 3, NACK half): a plain
// go-control-plane server drives a real meshd sidecar. A good snapshot is
// ACKed and carries calls; a snapshot with one bad resource is NACKed with
// error_detail naming the resource and the field, while calls keep
// succeeding on the old config (zero failures during the NACK storm the
// SnapshotCache causes, and after); the following good snapshot, which
// moves greeter to a second backend, is ACKed and applied.
func TestBadResourceNACKed(t *testing.T) {
	tests := []struct {
		name    string
		typeURL string
		// spoil makes r bad; outbound is the sidecar's outbound port.
		spoil func(r *translate.Resources, outbound int)
		want  func(outbound int) []string
	}{
		{
			name:    "cluster lb_policy",
			typeURL: resourcev3.ClusterType,
			spoil: func(r *translate.Resources, _ int) {
				r.Clusters[0].(*clusterv3.Cluster).LbPolicy = clusterv3.Cluster_MAGLEV
			},
			want: func(int) []string { return []string{`cluster "outbound|50051||greeter.demo"`, "lb_policy", "MAGLEV"} },
		},
		{
			name:    "route regex",
			typeURL: resourcev3.RouteType,
			spoil: func(r *translate.Resources, _ int) {
				rt := r.Routes[0].(*routev3.RouteConfiguration)
				rt.VirtualHosts[0].Routes[0].Match.PathSpecifier = &routev3.RouteMatch_SafeRegex{
					SafeRegex: &matcherv3.RegexMatcher{Regex: "/grpc.testing.TestService/(Empty"},
				}
			},
			want: func(outbound int) []string {
				return []string{fmt.Sprintf(`route configuration "outbound|%d"`, outbound), "virtual_hosts[0].routes[0].match.safe_regex.regex"}
			},
		},
	}
	for _, delta := range []bool{false, true} {
		for _, tc := range tests {
			name := "sotw/" + tc.name
			if delta {
				name = "delta/" + tc.name
			}
			t.Run(name, func(t *testing.T) {
				testutil.CheckGoroutines(t)
				backend1 := testutil.StartGRPCInteropServer(t)
				backend2 := testutil.StartGRPCInteropServer(t)
				ports := meshtest.FreePorts(t, 2)
				outbound := ports[0]
				meshPath := filepath.Join(t.TempDir(), "mesh.yaml")
				writeFile(t, meshPath, nackMesh(backend1.Addr, outbound, ports[1]))
				good := translated(t, nackMesh(backend1.Addr, outbound, ports[1])).Nodes[clientNode]
				moved := translated(t, nackMesh(backend2.Addr, outbound, ports[1])).Nodes[clientNode]
				bad := cloneResources(good)
				tc.spoil(bad, outbound)

				caDir := filepath.Join(t.TempDir(), "ca")
				x := startTestXDS(t, testCA(t, caDir, meshPath))
				x.set(t, clientNode, "v1", good)
				args := []string{"bootstrap", "-f", meshPath, "--workload", clientNode, "--xds", x.addr, "--ca-dir", caDir}
				if delta {
					args = append(args, "--delta")
				}
				res := testutil.RunMeshd(t, waitTimeout, args...)
				if res.ExitCode != 0 {
					t.Fatalf("meshd bootstrap: exit %d\n%s", res.ExitCode, res.Stderr)
				}
				sc := testutil.StartSidecar(t, res.Stdout)
				x.waitReply(t, tc.typeURL, "v1", false)

				load := meshtest.StartCallLoad(t, meshtest.DialLoopback(t, outbound), 2)
				load.WaitCalls(t, 20, "calls on v1")

				before := x.responses.Load()
				x.set(t, clientNode, "v2", bad)
				nack := x.waitReply(t, tc.typeURL, "v2", true)
				t.Logf("NACK error_detail: %s", nack.ErrorDetail)
				for _, want := range tc.want(outbound) {
					if !strings.Contains(nack.ErrorDetail, want) {
						t.Errorf("error_detail %q does not name %q", nack.ErrorDetail, want)
					}
				}
				// The storm: calls keep going on v1 while the cache re-sends v2.
				time.Sleep(stormBound)
				load.WaitCalls(t, 20, "calls while v2 is NACKed")
				if n := backend2.StartedRPCs(); n != 0 {
					t.Errorf("backend2 got %d calls before v3 sent it any", n)
				}
				for _, v := range x.ackedVersions(tc.typeURL) {
					if v == "v2" {
						t.Errorf("the bad %s was ACKed at v2", tc.typeURL)
					}
				}
				t.Logf("%d xDS responses in the %v after publishing the bad snapshot", x.responses.Load()-before, stormBound)
				if code, _, err := sc.AdminRequest(http.MethodGet, "/ready"); err != nil || code != http.StatusOK {
					t.Errorf("sidecar /ready after the NACKs: %d, %v", code, err)
				}
				rejected := sc.Stats(t)[statScope(tc.typeURL)+".update_rejected"]
				if rejected == 0 {
					t.Errorf("%s.update_rejected = 0 after a NACK", statScope(tc.typeURL))
				}
				// Envoy's per-subscription RDS stats: v1 loaded the route
				// configuration once; v2 was rejected under the manager
				// that takes it.
				var rds string
				var reloads int64
				if tc.typeURL == resourcev3.RouteType {
					rds = rdsStatScope(t, good)
					st := sc.Stats(t)
					reloads = st[rds+".config_reload"]
					if reloads != 1 || st[rds+".update_success"] < 1 || st[rds+".update_rejected"] < 1 || st[rds+".update_attempt"] < st[rds+".update_success"]+st[rds+".update_rejected"] {
						t.Errorf("after v1 and the NACKed v2: %[1]s.config_reload = %[2]d, update_success = %[3]d, update_rejected = %[4]d, update_attempt = %[5]d; want 1, ≥ 1, ≥ 1, ≥ success + rejected",
							rds, reloads, st[rds+".update_success"], st[rds+".update_rejected"], st[rds+".update_attempt"])
					}
				}

				x.set(t, clientNode, "v3", moved)
				x.waitReply(t, resourcev3.EndpointType, "v3", false)
				x.waitReply(t, tc.typeURL, "v3", false)
				if rds != "" {
					// v3 moved greeter's endpoints only: its route
					// configuration is v1's, so it is accepted without a
					// reload.
					st := sc.Stats(t)
					if st[rds+".config_reload"] != reloads || st[rds+".update_success"] < 2 {
						t.Errorf("after v3 (route configuration as in v1): %s.config_reload = %d, update_success = %d; want %d (no reload) and ≥ 2",
							rds, st[rds+".config_reload"], st[rds+".update_success"], reloads)
					}
				}
				deadline := time.Now().Add(waitTimeout)
				for backend2.StartedRPCs() < 20 && time.Now().Before(deadline) {
					time.Sleep(10 * time.Millisecond)
				}
				if n := backend2.StartedRPCs(); n < 20 {
					t.Errorf("backend2 got %d calls after v3 moved greeter to it, want ≥ 20", n)
				}
				load.Stop()
				ok, fail := load.Counts()
				err := load.FirstError()
				if fail != 0 {
					t.Errorf("%d of %d calls failed; first: %v", fail, ok+fail, err)
				}
				select {
				case <-sc.Done():
					t.Errorf("the sidecar exited:\n%s", sc.Stderr())
				default:
				}
			})
		}
	}
}

// statScope is the sidecar's stat scope of an xDS type's update counters
// (Envoy's names for LDS and CDS, meshd's xds.rds and xds.eds for the
// types Envoy counts per resource).
func statScope(typeURL string) string {
	switch typeURL {
	case resourcev3.ClusterType:
		return "cluster_manager.cds"
	case resourcev3.ListenerType:
		return "listener_manager.lds"
	case resourcev3.RouteType:
		return "xds.rds"
	default:
		return "xds.eds"
	}
}

// rdsStatScope returns the flat scope of Envoy's per-subscription RDS
// stats, http.<stat_prefix>.rds.<route_config_name>, of the one connection
// manager in r's listeners that takes its route configuration over RDS.
func rdsStatScope(t *testing.T, r *translate.Resources) string {
	t.Helper()
	var scopes []string
	for _, l := range r.Listeners {
		for _, fc := range l.(*listenerv3.Listener).GetFilterChains() {
			for _, f := range fc.GetFilters() {
				var m hcmv3.HttpConnectionManager
				if f.GetTypedConfig().MessageIs(&m) && f.GetTypedConfig().UnmarshalTo(&m) == nil && m.GetRds() != nil {
					scopes = append(scopes, "http."+m.GetStatPrefix()+".rds."+strings.ReplaceAll(m.GetRds().GetRouteConfigName(), ":", "_"))
				}
			}
		}
	}
	if len(scopes) != 1 {
		t.Fatalf("connection managers using RDS: %v, want one", scopes)
	}
	return scopes[0]
}

// cloneResources deep-copies r so a test can spoil the copy.
func cloneResources(r *translate.Resources) *translate.Resources {
	clone := func(in []types.Resource) []types.Resource {
		out := make([]types.Resource, len(in))
		for i, x := range in {
			out[i] = proto.Clone(x)
		}
		return out
	}
	return &translate.Resources{
		Listeners: clone(r.Listeners), Routes: clone(r.Routes), Clusters: clone(r.Clusters),
		Endpoints: clone(r.Endpoints), Secrets: clone(r.Secrets),
	}
}
