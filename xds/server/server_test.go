package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/xds/model"
	"meshd.dev/meshd/xds/translate"
)

// namesOf returns the names of a SotW response's resources, sorted.
func namesOf(t testing.TB, r *discovery.DiscoveryResponse) []string {
	t.Helper()
	var out []string
	for _, a := range r.GetResources() {
		m, err := a.UnmarshalNew()
		if err != nil {
			t.Fatalf("unmarshal %s: %v", a.GetTypeUrl(), err)
		}
		out = append(out, cachev3.GetResourceName(m))
	}
	slices.Sort(out)
	return out
}

// TestSotWSidecar walks one sidecar through CDS, EDS, LDS, RDS and SDS over a
// state-of-the-world ADS stream, ACKing each, and checks /status.
func TestSotWSidecar(t *testing.T) {
	testutil.CheckGoroutines(t)
	s := New(Options{})
	if err := s.Publish(testResult(t, "v1", 50051), nil); err != nil {
		t.Fatal(err)
	}
	cc := startServer(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	st, err := discovery.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := &core.Node{Id: sidecarNode}
	steps := []struct {
		typ   string
		names []string
		want  []string
	}{
		{resource.ClusterType, nil, []string{"outbound|greeter.demo"}},
		{resource.EndpointType, []string{"outbound|greeter.demo"}, []string{"outbound|greeter.demo"}},
		{resource.ListenerType, nil, []string{"outbound_greeter"}},
		{resource.RouteType, []string{"outbound_greeter"}, []string{"outbound_greeter"}},
		{resource.SecretType, []string{"spiffe://example.org/ns/demo/sa/client"}, []string{"spiffe://example.org/ns/demo/sa/client"}},
	}
	for _, step := range steps {
		if err := st.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: step.typ, ResourceNames: step.names}); err != nil {
			t.Fatal(err)
		}
		r := recvSotW(t, st)
		if r.GetTypeUrl() != step.typ || r.GetVersionInfo() != "v1" {
			t.Fatalf("got %s version %q, want %s v1", r.GetTypeUrl(), r.GetVersionInfo(), step.typ)
		}
		if got := namesOf(t, r); !slices.Equal(got, step.want) {
			t.Fatalf("%s: got %v, want %v", shortType(step.typ), got, step.want)
		}
		// ACK.
		if err := st.Send(&discovery.DiscoveryRequest{TypeUrl: step.typ, ResourceNames: step.names, VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce()}); err != nil {
			t.Fatal(err)
		}
	}
	status := waitStatus(t, s, func(st Status) bool {
		return len(st.Streams) == 1 && len(st.Streams[0].Types) == 5 && allAcked(st.Streams[0], "v1")
	})
	got := status.Streams[0]
	if got.Node != sidecarNode || got.CacheKey != sidecarNode || got.Stream != StreamSotW {
		t.Errorf("stream = %+v, want node %s, its own cache key, sotw", got, sidecarNode)
	}

	// A new publication reaches the open watches.
	if err := s.Publish(testResult(t, "v2", 50052), nil); err != nil {
		t.Fatal(err)
	}
	seen := map[string]string{}
	for len(seen) < 5 {
		r := recvSotW(t, st)
		seen[r.GetTypeUrl()] = r.GetVersionInfo()
	}
	for typ, v := range seen {
		if v != "v2" {
			t.Errorf("%s: version %q after publishing v2", shortType(typ), v)
		}
	}
}

func allAcked(s StreamStatus, version string) bool {
	for _, ts := range s.Types {
		if ts.AckedVersion != version {
			return false
		}
	}
	return true
}

// waitStatus polls s.Status until ok or testTimeout.
func waitStatus(t testing.TB, s *Server, ok func(Status) bool) Status {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for {
		st := s.Status()
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			b, _ := json.MarshalIndent(st, "", "  ")
			t.Fatalf("status not as expected within %v:\n%s", testTimeout, b)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestDeltaSidecar subscribes a sidecar over delta ADS (wildcard CDS and
// LDS, named EDS and RDS) and checks a change arrives as a delta.
func TestDeltaSidecar(t *testing.T) {
	testutil.CheckGoroutines(t)
	s := New(Options{})
	if err := s.Publish(testResult(t, "v1", 50051), nil); err != nil {
		t.Fatal(err)
	}
	cc := startServer(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	st, err := discovery.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := &core.Node{Id: sidecarNode}
	steps := []struct {
		typ  string
		subs []string
		want string
	}{
		{resource.ClusterType, nil, "outbound|greeter.demo"},
		{resource.EndpointType, []string{"outbound|greeter.demo"}, "outbound|greeter.demo"},
		{resource.ListenerType, nil, "outbound_greeter"},
		{resource.RouteType, []string{"outbound_greeter"}, "outbound_greeter"},
	}
	for i, step := range steps {
		req := &discovery.DeltaDiscoveryRequest{TypeUrl: step.typ, ResourceNamesSubscribe: step.subs}
		if i == 0 {
			req.Node = node
		}
		if err := st.Send(req); err != nil {
			t.Fatal(err)
		}
		r := recvDelta(t, st)
		if r.GetTypeUrl() != step.typ || len(r.GetResources()) != 1 || r.GetResources()[0].GetName() != step.want {
			t.Fatalf("%s: got %v", shortType(step.typ), r)
		}
		if err := st.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: step.typ, ResponseNonce: r.GetNonce()}); err != nil {
			t.Fatal(err)
		}
	}
	waitStatus(t, s, func(st Status) bool {
		return len(st.Streams) == 1 && st.Streams[0].Stream == StreamDelta && len(st.Streams[0].Types) == 4 && allAcked(st.Streams[0], "v1")
	})

	// Only the endpoints change: only EDS is pushed.
	next := testResult(t, "v2", 50051)
	next.Nodes[sidecarNode].Endpoints = sidecarResources(t, 15001).Endpoints
	next.Nodes[sidecarNode].Endpoints[0] = assignment("outbound|greeter.demo", 50099)
	if err := s.Publish(next, nil); err != nil {
		t.Fatal(err)
	}
	r := recvDelta(t, st)
	if r.GetTypeUrl() != resource.EndpointType || len(r.GetResources()) != 1 || r.GetSystemVersionInfo() != "v2" {
		t.Fatalf("after an endpoint change got %s with %d resources, version %q; want EDS, 1, v2", r.GetTypeUrl(), len(r.GetResources()), r.GetSystemVersionInfo())
	}
}

// TestProxylessNode: any node that is not a Workload gets the API listener.
func TestProxylessNode(t *testing.T) {
	testutil.CheckGoroutines(t)
	s := New(Options{})
	if err := s.Publish(testResult(t, "v1", 50051), nil); err != nil {
		t.Fatal(err)
	}
	cc := startServer(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	st, err := discovery.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: proxylessNode}, TypeUrl: resource.ListenerType, ResourceNames: []string{apiListener}}); err != nil {
		t.Fatal(err)
	}
	r := recvSotW(t, st)
	if got := namesOf(t, r); !slices.Equal(got, []string{apiListener}) {
		t.Fatalf("LDS for a proxyless node: %v, want [%s]", got, apiListener)
	}
	l := &listener.Listener{}
	if err := r.GetResources()[0].UnmarshalTo(l); err != nil || l.GetApiListener() == nil {
		t.Fatalf("listener %v is not an API listener (err %v)", l, err)
	}
	waitStatus(t, s, func(st Status) bool {
		return len(st.Streams) == 1 && st.Streams[0].Node == proxylessNode && st.Streams[0].CacheKey == ProxylessKey
	})
}

// TestNACKDoesNotStorm: a client that NACKs every response gets one
// response per published version, not a resend loop, over SotW and delta.
func TestNACKDoesNotStorm(t *testing.T) {
	const window = 2 * time.Second
	for _, kind := range []string{StreamSotW, StreamDelta} {
		t.Run(kind, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			s := New(Options{})
			if err := s.Publish(testResult(t, "v1", 50051), nil); err != nil {
				t.Fatal(err)
			}
			cc := startServer(t, s)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			ads := discovery.NewAggregatedDiscoveryServiceClient(cc)
			var responses atomic.Int64
			versions := make(chan string, 100)
			done := make(chan struct{})
			nack := &status.Status{Code: 3, Message: "listener outbound_greeter: bad config"}
			switch kind {
			case StreamSotW:
				st, err := ads.StreamAggregatedResources(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if err := st.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: sidecarNode}, TypeUrl: resource.ListenerType}); err != nil {
					t.Fatal(err)
				}
				go func() {
					defer close(done)
					for {
						r, err := st.Recv()
						if err != nil {
							return
						}
						responses.Add(1)
						versions <- r.GetVersionInfo()
						_ = st.Send(&discovery.DiscoveryRequest{TypeUrl: resource.ListenerType, ResponseNonce: r.GetNonce(), ErrorDetail: nack})
					}
				}()
			case StreamDelta:
				st, err := ads.DeltaAggregatedResources(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if err := st.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: sidecarNode}, TypeUrl: resource.ListenerType}); err != nil {
					t.Fatal(err)
				}
				go func() {
					defer close(done)
					for {
						r, err := st.Recv()
						if err != nil {
							return
						}
						responses.Add(1)
						versions <- r.GetSystemVersionInfo()
						_ = st.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.ListenerType, ResponseNonce: r.GetNonce(), ErrorDetail: nack})
					}
				}()
			}
			time.Sleep(window)
			if n := responses.Load(); n != 1 {
				t.Errorf("%d responses in %v to a client NACKing every one; want 1", n, window)
			}
			st := waitStatus(t, s, func(st Status) bool {
				return len(st.Streams) == 1 && st.Streams[0].Types[resource.ListenerType].LastNACK != nil
			})
			if got := st.Streams[0].Types[resource.ListenerType].LastNACK; got.Version != "v1" || !strings.Contains(got.Error, "bad config") {
				t.Errorf("last NACK = %+v, want version v1 with the error_detail", got)
			}
			if got := s.metrics.nacks.Value(); got != 1 {
				t.Errorf("xds_nacks = %d, want 1", got)
			}

			// A new version is pushed (and NACKed) once.
			next := testResult(t, "v2", 50051)
			next.Nodes[sidecarNode].Listeners = movedListener(t)
			if err := s.Publish(next, nil); err != nil {
				t.Fatal(err)
			}
			deadline := time.After(testTimeout)
			for got := ""; got != "v2"; {
				select {
				case got = <-versions:
				case <-deadline:
					t.Fatalf("v2 not pushed within %v", testTimeout)
				}
			}
			time.Sleep(window / 4)
			if n := responses.Load(); n != 2 {
				t.Errorf("%d responses after a second version; want 2", n)
			}
			cancel()
			select {
			case <-done:
			case <-time.After(testTimeout):
				t.Fatal("client did not stop")
			}
		})
	}
}

// movedListener is the sidecar listener on another port: a change of the
// listener resource only.
func movedListener(t testing.TB) []types.Resource {
	return sidecarResources(t, 15002).Listeners
}

// TestPublishRejectsInconsistent: an inconsistent translation is refused
// with a reason, and the last good snapshot stays.
func TestPublishRejectsInconsistent(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*translate.Result)
		want   string
	}{
		{"dangling rds", func(r *translate.Result) {
			r.Nodes[sidecarNode].Routes = nil
		}, `node "client.demo"`},
		{"dangling api_listener rds", func(r *translate.Result) {
			r.Proxyless.Routes = nil
		}, `listener "greeter.demo:50051" api_listener: rds.route_config_name "greeter.demo:50051": no such RouteConfiguration`},
		{"unreferenced proxyless route", func(r *translate.Result) {
			r.Proxyless.Routes = append(r.Proxyless.Routes, routeConfig("orphan", "xds|greeter.demo"))
		}, `route_config "orphan": not referenced`},
		{"missing endpoints", func(r *translate.Result) {
			r.Proxyless.Endpoints = nil
		}, `cluster "xds|greeter.demo": eds service "xds|greeter.demo": no such ClusterLoadAssignment`},
		{"route to missing cluster", func(r *translate.Result) {
			r.Proxyless.Routes[0] = routeConfig(apiListener, "nowhere")
		}, `cluster "nowhere": no such Cluster`},
		{"duplicate names", func(r *translate.Result) {
			r.Proxyless.Clusters = append(r.Proxyless.Clusters, edsCluster("xds|greeter.demo"))
		}, `Cluster "xds|greeter.demo": duplicate name`},
		{"empty version", func(r *translate.Result) { r.Version = "" }, "empty version"},
		{"reserved node", func(r *translate.Result) {
			r.Nodes[ProxylessKey] = r.Nodes[sidecarNode]
		}, "reserved node ID"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := New(Options{})
			if err := s.Publish(testResult(t, "good", 50051), nil); err != nil {
				t.Fatal(err)
			}
			bad := testResult(t, "bad", 50051)
			tc.mutate(bad)
			err := s.Publish(bad, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Publish: %v, want an error containing %q", err, tc.want)
			}
			st := s.Status()
			if st.Version != "good" {
				t.Errorf("version after a rejected publish = %q, want good", st.Version)
			}
			if st.LastError == nil || st.LastError.Message != err.Error() {
				t.Errorf("status last_error = %+v, want %q", st.LastError, err)
			}
			snap, gerr := s.cache.GetSnapshot(ProxylessKey)
			if gerr != nil || snap.GetVersion(resource.ListenerType) != "good" {
				t.Errorf("proxyless snapshot after a rejected publish: %v, %v", snap, gerr)
			}
			if got := s.metrics.rejected.Value(); got != 1 {
				t.Errorf("snapshots_rejected = %d, want 1", got)
			}
		})
	}
}

// TestAdminHandler checks every admin path.
func TestAdminHandler(t *testing.T) {
	s := New(Options{})
	h := s.AdminHandler()
	get := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		body, _ := io.ReadAll(rec.Result().Body)
		return rec.Code, string(body)
	}
	if code, _ := get("/healthz"); code != http.StatusServiceUnavailable {
		t.Errorf("/healthz before serving: %d, want 503", code)
	}
	warn := []model.Warning{{Source: "mesh.yaml", Document: "document 3 (TrafficPolicy demo/greeter)", Field: "spec.http2.keepalive.interval", Message: "below serverLimits.minPingInterval"}}
	if err := s.Publish(testResult(t, "v1", 50051), warn); err != nil {
		t.Fatal(err)
	}
	startServer(t, s)
	deadline := time.Now().Add(testTimeout)
	for !s.Serving() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	tests := []struct {
		path     string
		code     int
		contains string
	}{
		{"/healthz", 200, "ok"},
		{"/readyz", 200, "ok"},
		{"/status", 200, `"version": "v1"`},
		{"/warnings", 200, `"Field": "spec.http2.keepalive.interval"`},
		{"/metrics", 200, "envoy_control_plane_snapshots_published 1"},
		{"/nope", 404, ""},
	}
	for _, tc := range tests {
		code, body := get(tc.path)
		if code != tc.code || !strings.Contains(body, tc.contains) {
			t.Errorf("GET %s: %d %q, want %d containing %q", tc.path, code, body, tc.code, tc.contains)
		}
	}
}

// TestConcurrentPublishes hammers the server: delta and SotW clients ACK
// every push while versions are published back to back and /status is
// read; every client ends on the last version. Run it with -race.
func TestConcurrentPublishes(t *testing.T) {
	testutil.CheckGoroutines(t)
	const (
		clients  = 40
		versions = 20
	)
	s := New(Options{})
	if err := s.Publish(testResult(t, "v0", 50000), nil); err != nil {
		t.Fatal(err)
	}
	cc := startServer(t, s)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	acks := make(chan ack, clients*8)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // this test reads /status, not the ACK reports
		defer wg.Done()
		for {
			select {
			case <-acks:
			case <-ctx.Done():
				return
			}
		}
	}()
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i%2 == 0 {
				runDeltaClient(ctx, cc, sidecarNode, acks)
			} else {
				runSotWClient(ctx, cc, sidecarNode, acks)
			}
		}()
	}
	defer func() {
		cancel()
		wg.Wait()
	}()
	// Every client is subscribed before the first publish.
	waitStatus(t, s, func(st Status) bool {
		if len(st.Streams) != clients {
			return false
		}
		for _, ss := range st.Streams {
			if len(ss.Types) != 4 || !allAcked(ss, "v0") {
				return false
			}
		}
		return true
	})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 1; i <= versions; i++ {
			if err := s.Publish(testResult(t, fmt.Sprintf("v%d", i), uint32(50000+i)), nil); err != nil {
				t.Errorf("publish v%d: %v", i, err)
			}
			_ = s.Status()
		}
	}()
	select {
	case <-done:
	case <-time.After(testTimeout):
		t.Fatal("publishes did not finish")
	}
	// SotW resends every type on a new version; delta sends only the
	// changed resources (the endpoints).
	final := fmt.Sprintf("v%d", versions)
	waitStatus(t, s, func(st Status) bool {
		if len(st.Streams) != clients {
			return false
		}
		for _, ss := range st.Streams {
			if len(ss.Types) != 4 {
				return false
			}
			if ss.Stream == StreamSotW && !allAcked(ss, final) {
				return false
			}
			if ss.Stream == StreamDelta && ss.Types[resource.EndpointType].AckedVersion != final {
				return false
			}
		}
		return true
	})
}

// runSotWClient subscribes like a sidecar over SotW and ACKs every
// response, reporting each ACK when the channel has room, until ctx ends.
func runSotWClient(ctx context.Context, cc *grpc.ClientConn, node string, acks chan<- ack) {
	st, err := discovery.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		return
	}
	names := map[string][]string{
		resource.ClusterType:  nil,
		resource.EndpointType: {"outbound|greeter.demo"},
		resource.ListenerType: nil,
		resource.RouteType:    {"outbound_greeter"},
	}
	first := true
	for _, typ := range typeNames[1:] {
		req := &discovery.DiscoveryRequest{TypeUrl: typ, ResourceNames: names[typ]}
		if first {
			req.Node, first = &core.Node{Id: node}, false
		}
		if st.Send(req) != nil {
			return
		}
	}
	for {
		r, err := st.Recv()
		if err != nil {
			return
		}
		ackReq := &discovery.DiscoveryRequest{TypeUrl: r.GetTypeUrl(), ResourceNames: names[r.GetTypeUrl()], VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce()}
		if st.Send(ackReq) != nil {
			return
		}
		select {
		case acks <- ack{r.GetVersionInfo(), time.Now()}:
		case <-ctx.Done():
			return
		default: // the test does not read every ACK
		}
	}
}
