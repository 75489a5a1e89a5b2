package client

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/proxy/config"
	"meshd.dev/meshd/proxy/upstream"
)

const (
	nodeID      = "client.test"
	waitTimeout = 10 * time.Second
)

// request is what the test control plane saw from the client: a SotW or
// delta request, normalised.
type request struct {
	typeURL, version, nonce string
	names                   []string
	initial                 map[string]string
	errorDetail             string
}

// controlPlane is go-control-plane's ADS server over its SnapshotCache on a
// loopback port, recording every request.
type controlPlane struct {
	t     *testing.T
	cache cachev3.SnapshotCache
	addr  string
	srv   *grpc.Server
	done  chan struct{}

	mu   sync.Mutex
	reqs []request
}

func startControlPlane(t *testing.T, addr string) *controlPlane {
	t.Helper()
	cp := &controlPlane{t: t, cache: cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)}
	cp.listen(addr)
	return cp
}

func (cp *controlPlane) listen(addr string) {
	cp.t.Helper()
	var lis net.Listener
	var err error
	for range 50 { // the old listener's port may take a moment to free
		if lis, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		cp.t.Fatalf("listen %s: %v", addr, err)
	}
	cp.addr = lis.Addr().String()
	cb := serverv3.CallbackFuncs{
		StreamRequestFunc: func(_ int64, r *discoveryv3.DiscoveryRequest) error {
			cp.record(request{typeURL: r.GetTypeUrl(), version: r.GetVersionInfo(), nonce: r.GetResponseNonce(),
				names: r.GetResourceNames(), errorDetail: r.GetErrorDetail().GetMessage()})
			return nil
		},
		StreamDeltaRequestFunc: func(_ int64, r *discoveryv3.DeltaDiscoveryRequest) error {
			cp.record(request{typeURL: r.GetTypeUrl(), nonce: r.GetResponseNonce(), names: r.GetResourceNamesSubscribe(),
				initial: r.GetInitialResourceVersions(), errorDetail: r.GetErrorDetail().GetMessage()})
			return nil
		},
	}
	cp.srv = grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(cp.srv, serverv3.NewServer(context.Background(), cp.cache, cb))
	cp.done = make(chan struct{})
	go func() {
		defer close(cp.done)
		_ = cp.srv.Serve(lis)
	}()
}

func (cp *controlPlane) stop() {
	cp.srv.Stop()
	<-cp.done
}

func (cp *controlPlane) record(r request) {
	cp.mu.Lock()
	cp.reqs = append(cp.reqs, r)
	cp.mu.Unlock()
}

// waitRequest waits for a request matching ok and returns it.
func (cp *controlPlane) waitRequest(what string, ok func(request) bool) request {
	cp.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for time.Now().Before(deadline) {
		cp.mu.Lock()
		for _, r := range cp.reqs {
			if ok(r) {
				cp.mu.Unlock()
				return r
			}
		}
		cp.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
	cp.t.Fatalf("no %s within %v", what, waitTimeout)
	return request{}
}

func (cp *controlPlane) set(version string, res map[resourcev3.Type][]types.Resource) {
	cp.t.Helper()
	snap, err := cachev3.NewSnapshot(version, res)
	if err != nil {
		cp.t.Fatal(err)
	}
	if err := cp.cache.SetSnapshot(context.Background(), nodeID, snap); err != nil {
		cp.t.Fatal(err)
	}
}

// resources returns listener l1 (rds r1) -> route r1 -> cluster c1 (EDS)
// with one endpoint on port, leaving out the types in omit.
func resources(t *testing.T, port uint32, omit ...string) map[resourcev3.Type][]types.Resource {
	t.Helper()
	router, _ := anypb.New(&routerv3.Router{})
	hcm, err := anypb.New(&hcmv3.HttpConnectionManager{
		StatPrefix: "l1",
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			RouteConfigName: "r1",
			ConfigSource:    &corev3.ConfigSource{ResourceApiVersion: corev3.ApiVersion_V3, ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}},
		}},
		HttpFilters: []*hcmv3.HttpFilter{{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	l := &listenerv3.Listener{
		Name:         "l1",
		Address:      sockAddr("127.0.0.1", 0),
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{Name: "envoy.filters.network.http_connection_manager", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcm}}}}},
	}
	r := &routev3.RouteConfiguration{Name: "r1", VirtualHosts: []*routev3.VirtualHost{{
		Name: "all", Domains: []string{"*"},
		Routes: []*routev3.Route{{
			Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "c1"}}},
		}},
	}}}
	c := &clusterv3.Cluster{
		Name:                 "c1",
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{EdsConfig: &corev3.ConfigSource{
			ResourceApiVersion: corev3.ApiVersion_V3, ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		}},
		ConnectTimeout: durationpb.New(time.Second),
	}
	e := &endpointv3.ClusterLoadAssignment{ClusterName: "c1", Endpoints: []*endpointv3.LocalityLbEndpoints{{
		LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: sockAddr("127.0.0.1", port)}}}},
	}}}
	out := map[resourcev3.Type][]types.Resource{
		resourcev3.ListenerType: {l}, resourcev3.RouteType: {r}, resourcev3.ClusterType: {c}, resourcev3.EndpointType: {e},
	}
	for _, o := range omit {
		delete(out, o)
	}
	return out
}

func sockAddr(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

func bootstrap(addr string, delta bool) *bootstrapv3.Bootstrap {
	host, p, _ := net.SplitHostPort(addr)
	var port uint32
	fmt.Sscan(p, &port)
	api := corev3.ApiConfigSource_GRPC
	if delta {
		api = corev3.ApiConfigSource_DELTA_GRPC
	}
	ads := &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}
	return &bootstrapv3.Bootstrap{
		Node: &corev3.Node{Id: nodeID, Cluster: "test"},
		DynamicResources: &bootstrapv3.Bootstrap_DynamicResources{
			AdsConfig: &corev3.ApiConfigSource{ApiType: api, TransportApiVersion: corev3.ApiVersion_V3, GrpcServices: []*corev3.GrpcService{{
				TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: "xds"}},
			}}},
			LdsConfig: ads, CdsConfig: ads,
		},
		StaticResources: &bootstrapv3.Bootstrap_StaticResources{Clusters: []*clusterv3.Cluster{{
			Name:                 "xds",
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
			LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: "xds", Endpoints: []*endpointv3.LocalityLbEndpoints{{
				LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: sockAddr(host, port)}}}},
			}}},
		}}},
	}
}

// sink records the snapshots the client applies.
type sink struct {
	mu    sync.Mutex
	snaps []*config.Snapshot
	fail  error // returned by Apply when set
}

func (s *sink) apply(snap *config.Snapshot) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return s.fail
	}
	s.snaps = append(s.snaps, snap)
	return nil
}

func (s *sink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.snaps)
}

func (s *sink) last() *config.Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.snaps) == 0 {
		return nil
	}
	return s.snaps[len(s.snaps)-1]
}

// waitSnapshot waits until the last applied snapshot satisfies ok.
func (s *sink) waitSnapshot(t *testing.T, what string, ok func(*config.Snapshot) bool) *config.Snapshot {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for time.Now().Before(deadline) {
		if snap := s.last(); snap != nil && ok(snap) {
			return snap
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no applied snapshot with %s within %v (last: %+v)", what, waitTimeout, s.last())
	return nil
}

// startClient runs a client against cp until the test ends.
func startClient(t *testing.T, cp *controlPlane, delta bool, initialFetch time.Duration) (*Client, *sink) {
	t.Helper()
	s := &sink{}
	c, err := New(Options{
		Bootstrap:           bootstrap(cp.addr, delta),
		Apply:               s.apply,
		InitialFetchTimeout: initialFetch,
		BackoffBase:         50 * time.Millisecond,
		BackoffMax:          200 * time.Millisecond,
		Logger:              slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = c.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(waitTimeout):
			t.Errorf("Run did not return within %v of cancel", waitTimeout)
		}
	})
	return c, s
}

func modes() []struct {
	name  string
	delta bool
} {
	return []struct {
		name  string
		delta bool
	}{{"sotw", false}, {"delta", true}}
}

func clusterHosts(snap *config.Snapshot, name string) []upstream.Endpoint {
	for _, c := range snap.Clusters {
		if c.Name == name {
			return c.Endpoints
		}
	}
	return nil
}

func hasListener(snap *config.Snapshot, name string) bool {
	for _, l := range snap.Listeners {
		if l.Name == name {
			return l.HCM != nil && l.HCM.Routes != nil
		}
	}
	return false
}

// TestWarmApplyACK: the first snapshot is applied once every type arrived,
// with RDS bound and EDS endpoints filled, and every type is ACKed with
// the snapshot's version.
func TestWarmApplyACK(t *testing.T) {
	for _, m := range modes() {
		t.Run(m.name, func(t *testing.T) {
			defer testutil.CheckGoroutines(t)
			cp := startControlPlane(t, "127.0.0.1:0")
			defer cp.stop()
			cp.set("v1", resources(t, 9001))
			c, s := startClient(t, cp, m.delta, time.Minute)
			select {
			case <-c.Warmed():
			case <-time.After(waitTimeout):
				t.Fatal("not warmed")
			}
			snap := s.last()
			if !hasListener(snap, "l1") {
				t.Errorf("listener l1 with bound routes missing: %+v", snap.Listeners)
			}
			if eps := clusterHosts(snap, "c1"); len(eps) != 1 || eps[0].Port != 9001 {
				t.Errorf("cluster c1 endpoints = %+v, want one on port 9001", eps)
			}
			// No TLS context names an ADS secret: Secret is not subscribed.
			for _, tu := range slices.DeleteFunc(slices.Clone(allTypes), func(tu string) bool { return tu == resourcev3.SecretType }) {
				cp.waitRequest("ACK of "+tu, func(r request) bool {
					return r.typeURL == tu && r.nonce != "" && r.errorDetail == "" && (m.delta || r.version == "v1")
				})
			}
			st := c.Status()
			if !st.Connected || st.Accepted[resourcev3.ListenerType] != "v1" {
				t.Errorf("status = %+v, want connected with LDS v1", st)
			}
			if got := snap.Dynamic.Versions[resourcev3.ClusterType]; got != "v1" {
				t.Errorf("snapshot CDS version = %q, want v1", got)
			}
			// An endpoint change is applied in place.
			cp.set("v2", resources(t, 9002))
			s.waitSnapshot(t, "c1 on port 9002", func(sn *config.Snapshot) bool {
				eps := clusterHosts(sn, "c1")
				return len(eps) == 1 && eps[0].Port == 9002
			})
		})
	}
}

// TestNACK: a bad resource is NACKed with error_detail naming it, field
// and reason; nothing is applied; the next good version is.
func TestNACK(t *testing.T) {
	tests := []struct {
		name      string
		mutate    func(map[resourcev3.Type][]types.Resource)
		typeURL   string
		wantInMsg []string
	}{
		{
			name: "cluster lb_policy",
			mutate: func(r map[resourcev3.Type][]types.Resource) {
				r[resourcev3.ClusterType][0].(*clusterv3.Cluster).LbPolicy = clusterv3.Cluster_MAGLEV
			},
			typeURL:   resourcev3.ClusterType,
			wantInMsg: []string{`cluster "c1"`, "lb_policy", "MAGLEV"},
		},
		{
			name: "route to a regex that does not compile",
			mutate: func(r map[resourcev3.Type][]types.Resource) {
				rt := r[resourcev3.RouteType][0].(*routev3.RouteConfiguration)
				rt.VirtualHosts[0].Routes[0].Match.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: nil}
			},
			typeURL:   resourcev3.RouteType,
			wantInMsg: []string{`route configuration "r1"`, "virtual_hosts[0].routes[0].match"},
		},
		{
			name: "endpoint without port",
			mutate: func(r map[resourcev3.Type][]types.Resource) {
				e := r[resourcev3.EndpointType][0].(*endpointv3.ClusterLoadAssignment)
				e.Endpoints[0].LbEndpoints[0].GetEndpoint().Address = sockAddr("127.0.0.1", 0)
			},
			typeURL:   resourcev3.EndpointType,
			wantInMsg: []string{`cluster load assignment "c1"`, "port_value"},
		},
	}
	for _, m := range modes() {
		for _, tc := range tests {
			t.Run(m.name+"/"+tc.name, func(t *testing.T) {
				defer testutil.CheckGoroutines(t)
				cp := startControlPlane(t, "127.0.0.1:0")
				defer cp.stop()
				cp.set("v1", resources(t, 9001))
				c, s := startClient(t, cp, m.delta, time.Minute)
				s.waitSnapshot(t, "v1", func(sn *config.Snapshot) bool { return sn.Dynamic.Versions[resourcev3.ListenerType] == "v1" })
				applied := s.count()

				bad := resources(t, 9002)
				tc.mutate(bad)
				cp.set("v2", bad)
				nack := cp.waitRequest("NACK", func(r request) bool { return r.typeURL == tc.typeURL && r.errorDetail != "" })
				for _, want := range tc.wantInMsg {
					if !strings.Contains(nack.errorDetail, want) {
						t.Errorf("error_detail %q does not contain %q", nack.errorDetail, want)
					}
				}
				if !m.delta && nack.version != "v1" {
					t.Errorf("NACK version_info = %q, want the last accepted v1", nack.version)
				}
				if got := c.Status().LastNACK[tc.typeURL]; got != nack.errorDetail {
					t.Errorf("Status().LastNACK = %q, want %q", got, nack.errorDetail)
				}
				// ACK and NACK are per type (as in Envoy): the other
				// types may move to v2, the rejected one stays at v1.
				for _, sn := range s.snapsSince(applied) {
					if v := sn.Dynamic.Versions[tc.typeURL]; v != "v1" {
						t.Fatalf("a NACKed update reached the data plane: %s at %q", tc.typeURL, v)
					}
				}
				cp.set("v3", resources(t, 9003))
				s.waitSnapshot(t, "v3's endpoint", func(sn *config.Snapshot) bool {
					eps := clusterHosts(sn, "c1")
					return len(eps) == 1 && eps[0].Port == 9003
				})
			})
		}
	}
}

func (s *sink) snapsSince(i int) []*config.Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*config.Snapshot(nil), s.snaps[i:]...)
}

// TestWarming: nothing is applied while a cluster waits for its endpoints
// or a listener for its routes; the initial fetch timeout publishes what
// has arrived, without the listener still waiting for routes.
func TestWarming(t *testing.T) {
	for _, m := range modes() {
		t.Run(m.name, func(t *testing.T) {
			defer testutil.CheckGoroutines(t)
			cp := startControlPlane(t, "127.0.0.1:0")
			defer cp.stop()
			cp.set("v1", resources(t, 9001, resourcev3.EndpointType))
			c, s := startClient(t, cp, m.delta, time.Minute)
			cp.waitRequest("EDS subscription", func(r request) bool {
				return r.typeURL == resourcev3.EndpointType && len(r.names) == 1 && r.names[0] == "c1"
			})
			cp.waitRequest("RDS ACK", func(r request) bool { return r.typeURL == resourcev3.RouteType && r.nonce != "" })
			select {
			case <-c.Warmed():
				t.Fatal("warmed without the cluster's endpoints")
			case <-time.After(200 * time.Millisecond):
			}
			if n := s.count(); n != 0 {
				t.Fatalf("%d snapshots applied while warming", n)
			}
			cp.set("v2", resources(t, 9001))
			select {
			case <-c.Warmed():
			case <-time.After(waitTimeout):
				t.Fatal("not warmed after the endpoints arrived")
			}
			if snap := s.last(); !hasListener(snap, "l1") || len(clusterHosts(snap, "c1")) != 1 {
				t.Errorf("first snapshot incomplete: listeners %+v clusters %+v", snap.Listeners, snap.Clusters)
			}
		})
		t.Run(m.name+"/initial fetch timeout", func(t *testing.T) {
			defer testutil.CheckGoroutines(t)
			cp := startControlPlane(t, "127.0.0.1:0")
			defer cp.stop()
			cp.set("v1", resources(t, 9001, resourcev3.RouteType))
			c, s := startClient(t, cp, m.delta, 300*time.Millisecond)
			select {
			case <-c.Warmed():
			case <-time.After(waitTimeout):
				t.Fatal("not warmed after the initial fetch timeout")
			}
			snap := s.last()
			if len(snap.Listeners) != 0 {
				t.Errorf("listener waiting for routes went live: %+v", snap.Listeners)
			}
			if len(clusterHosts(snap, "c1")) != 1 {
				t.Errorf("cluster c1 missing: %+v", snap.Clusters)
			}
			cp.set("v2", resources(t, 9001))
			s.waitSnapshot(t, "listener l1", func(sn *config.Snapshot) bool { return hasListener(sn, "l1") })
		})
	}
}

// TestReconnect: the control plane goes away and comes back on the same
// address; the client keeps its config, re-subscribes with what it
// accepted, and applies nothing new for an unchanged version.
func TestReconnect(t *testing.T) {
	for _, m := range modes() {
		t.Run(m.name, func(t *testing.T) {
			defer testutil.CheckGoroutines(t)
			cp := startControlPlane(t, "127.0.0.1:0")
			cp.set("v1", resources(t, 9001))
			c, s := startClient(t, cp, m.delta, time.Minute)
			s.waitSnapshot(t, "v1", func(sn *config.Snapshot) bool { return hasListener(sn, "l1") })
			applied := s.count()
			addr := cp.addr
			cp.stop()

			cp2 := startControlPlane(t, addr)
			defer cp2.stop()
			cp2.set("v1", resources(t, 9001))
			resumed := cp2.waitRequest("resumed LDS subscription", func(r request) bool {
				if r.typeURL != resourcev3.ListenerType || r.nonce != "" {
					return false
				}
				if m.delta {
					return r.initial["l1"] != ""
				}
				return r.version == "v1"
			})
			_ = resumed
			cp2.waitRequest("resumed EDS subscription", func(r request) bool {
				if r.typeURL != resourcev3.EndpointType || len(r.names) != 1 || r.names[0] != "c1" {
					return false
				}
				return m.delta || r.version == "v1"
			})
			if st := c.Status(); st.Reconnects < 1 || st.Accepted[resourcev3.ListenerType] != "v1" {
				t.Errorf("status = %+v, want a reconnect and LDS still v1", st)
			}
			// An unchanged version must not reach the data plane again in
			// a way that changes it; a change does.
			for _, sn := range s.snapsSince(applied) {
				if !hasListener(sn, "l1") {
					t.Fatalf("listener l1 lost across the reconnect")
				}
			}
			cp2.set("v2", resources(t, 9002))
			s.waitSnapshot(t, "v2 endpoints", func(sn *config.Snapshot) bool {
				eps := clusterHosts(sn, "c1")
				return len(eps) == 1 && eps[0].Port == 9002
			})
		})
	}
}

// TestApplyFailureNACKs: when the data plane refuses a snapshot (a bind
// failure, say), the update is NACKed with the reason.
func TestApplyFailureNACKs(t *testing.T) {
	defer testutil.CheckGoroutines(t)
	cp := startControlPlane(t, "127.0.0.1:0")
	defer cp.stop()
	cp.set("v1", resources(t, 9001))
	_, s := startClient(t, cp, false, time.Minute)
	s.waitSnapshot(t, "v1", func(sn *config.Snapshot) bool { return hasListener(sn, "l1") })
	s.mu.Lock()
	s.fail = fmt.Errorf("listener %q: address already in use", "l1")
	s.mu.Unlock()
	cp.set("v2", resources(t, 9002))
	nack := cp.waitRequest("NACK", func(r request) bool { return r.errorDetail != "" })
	if !strings.Contains(nack.errorDetail, "address already in use") || nack.version != "v1" {
		t.Errorf("NACK = %+v, want the apply error and version_info v1", nack)
	}
}

// TestNewErrors: New names what is wrong with the bootstrap.
func TestNewErrors(t *testing.T) {
	good := bootstrap("127.0.0.1:1", false)
	noCluster := bootstrap("127.0.0.1:1", false)
	noCluster.StaticResources.Clusters[0].Name = "other"
	tests := []struct {
		name string
		b    *bootstrapv3.Bootstrap
		want string
	}{
		{"no ads_config", &bootstrapv3.Bootstrap{}, "dynamic_resources.ads_config"},
		{"no static cluster", noCluster, `no static cluster "xds"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(Options{Bootstrap: tc.b, Apply: (&sink{}).apply})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New() error = %v, want it to contain %q", err, tc.want)
			}
		})
	}
	if c, err := New(Options{Bootstrap: good, Apply: (&sink{}).apply}); err != nil || c.target != "127.0.0.1:1" {
		t.Errorf("New(good) = %v, %v; want target 127.0.0.1:1", c, err)
	}
}
