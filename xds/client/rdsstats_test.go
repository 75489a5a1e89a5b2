package client

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	"github.com/cespare/xxhash/v2"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"meshd.dev/meshd/proxy/config"
	"meshd.dev/meshd/proxy/stats"
)

// recordingTransport is a transport that records the ACKs and NACKs the
// state sends; the tests feed it responses directly.
type recordingTransport struct {
	acks []*statuspb.Status // nil: ACK
}

func (t *recordingTransport) recv() (*response, error) {
	panic("not used: responses are fed to handle")
}
func (t *recordingTransport) subscribe(*typeState, *corev3.Node) error { return nil }
func (t *recordingTransport) resubscribe(*typeState, map[string]bool) error {
	return nil
}
func (t *recordingTransport) ack(_ *typeState, _ *response, detail *statuspb.Status) error {
	t.acks = append(t.acks, detail)
	return nil
}

// rdsListener is a listener on an ephemeral loopback port whose one
// connection manager, stat prefix prefix, takes route configuration rc
// over ADS.
func rdsListener(t *testing.T, name, prefix, rc string) *listenerv3.Listener {
	t.Helper()
	router, err := anypb.New(&routerv3.Router{})
	if err != nil {
		t.Fatal(err)
	}
	hcm, err := anypb.New(&hcmv3.HttpConnectionManager{
		StatPrefix: prefix,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			RouteConfigName: rc,
			ConfigSource:    &corev3.ConfigSource{ResourceApiVersion: corev3.ApiVersion_V3, ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}},
		}},
		HttpFilters: []*hcmv3.HttpFilter{{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return &listenerv3.Listener{
		Name:         name,
		Address:      sockAddr("127.0.0.1", 0),
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{Name: "envoy.filters.network.http_connection_manager", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcm}}}}},
	}
}

// routeConfig is route configuration name sending every request to
// cluster; an empty cluster makes it invalid (a route action with no
// cluster).
func routeConfig(name, cluster string) *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{Name: name, VirtualHosts: []*routev3.VirtualHost{{
		Name: "all", Domains: []string{"*"},
		Routes: []*routev3.Route{{
			Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster}}},
		}},
	}}}
}

// sotw is a state-of-the-world response of typeURL carrying msgs.
func sotw(t *testing.T, typeURL, version string, msgs ...proto.Message) *response {
	t.Helper()
	r := &response{typeURL: typeURL, version: version, nonce: "n-" + version, complete: true}
	for _, m := range msgs {
		a, err := anypb.New(m)
		if err != nil {
			t.Fatal(err)
		}
		r.resources = append(r.resources, rawResource{version: version, any: a})
	}
	return r
}

// rdsCounts are one subscription's counters and version gauge.
type rdsCounts struct {
	reload, attempt, success, rejected uint64
	version                            string // the version_info whose hash the gauge holds; "" for 0
}

func countsOf(ss *rdsSubStats) rdsCounts {
	return rdsCounts{reload: ss.configReload.Value(), attempt: ss.attempt.Value(), success: ss.success.Value(), rejected: ss.rejected.Value()}
}

// TestRDSSubscriptionStats feeds a client's state LDS and RDS responses
// and checks Envoy's per-subscription RDS stats after each: an accepted
// update counts under every connection manager taking the route
// configuration (two share r1), an unchanged resend is a success without
// a reload, a rejected update is NACKed with the reason and counts
// update_rejected under every prefix, and a route configuration the
// response does not carry is not counted.
func TestRDSSubscriptionStats(t *testing.T) {
	store := stats.NewStore()
	c, err := New(Options{Bootstrap: bootstrap("127.0.0.1:1", false), Apply: func(*config.Snapshot) error { return nil }, Stats: store})
	if err != nil {
		t.Fatal(err)
	}
	st := newState(c)
	tr := &recordingTransport{}
	lds := sotw(t, resourcev3.ListenerType, "l1",
		rdsListener(t, "a", "in_a", "r1"), rdsListener(t, "b", "in_b", "r1"), rdsListener(t, "c", "in_c", "r2"))
	if err := st.handle(tr, lds); err != nil {
		t.Fatal(err)
	}
	global := store.Root().Scope("xds.rds")
	// Each subscription's stats exist, at 0, once its listener arrived.
	var before bytes.Buffer
	if err := store.WriteText(&before, stats.Filter{}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"http.in_a.rds.r1.update_attempt: 0", "http.in_b.rds.r1.config_reload: 0", "http.in_c.rds.r2.update_rejected: 0"} {
		if !strings.Contains(before.String(), want) {
			t.Errorf("before any RDS response, text stats lack %q", want)
		}
	}
	subs := map[rdsSub]*rdsSubStats{}
	for _, s := range []rdsSub{{"in_a", "r1"}, {"in_b", "r1"}, {"in_c", "r2"}} {
		subs[s] = newRDSSubStats(store, s)
	}

	steps := []struct {
		name string
		resp *response
		// nack is a substring of the NACK's error_detail; "" for an ACK.
		nack string
		want map[rdsSub]rdsCounts
	}{
		{
			name: "first update counts under both prefixes sharing r1",
			resp: sotw(t, resourcev3.RouteType, "v1", routeConfig("r1", "c1")),
			want: map[rdsSub]rdsCounts{
				{"in_a", "r1"}: {reload: 1, attempt: 1, success: 1, version: "v1"},
				{"in_b", "r1"}: {reload: 1, attempt: 1, success: 1, version: "v1"},
				{"in_c", "r2"}: {},
			},
		},
		{
			name: "unchanged resend under a new version is no reload",
			resp: sotw(t, resourcev3.RouteType, "v2", routeConfig("r1", "c1")),
			want: map[rdsSub]rdsCounts{
				{"in_a", "r1"}: {reload: 1, attempt: 2, success: 2, version: "v2"},
				{"in_b", "r1"}: {reload: 1, attempt: 2, success: 2, version: "v2"},
				{"in_c", "r2"}: {},
			},
		},
		{
			name: "rejected update counts under every prefix and keeps the version",
			resp: sotw(t, resourcev3.RouteType, "v3", routeConfig("r1", "")),
			nack: `route configuration "r1"`,
			want: map[rdsSub]rdsCounts{
				{"in_a", "r1"}: {reload: 1, attempt: 3, success: 2, rejected: 1, version: "v2"},
				{"in_b", "r1"}: {reload: 1, attempt: 3, success: 2, rejected: 1, version: "v2"},
				{"in_c", "r2"}: {},
			},
		},
		{
			name: "changed update reloads",
			resp: sotw(t, resourcev3.RouteType, "v4", routeConfig("r1", "c2"), routeConfig("r2", "c1")),
			want: map[rdsSub]rdsCounts{
				{"in_a", "r1"}: {reload: 2, attempt: 4, success: 3, rejected: 1, version: "v4"},
				{"in_b", "r1"}: {reload: 2, attempt: 4, success: 3, rejected: 1, version: "v4"},
				{"in_c", "r2"}: {reload: 1, attempt: 1, success: 1, version: "v4"},
			},
		},
	}
	var wantGlobal rdsCounts
	for _, step := range steps {
		n := len(tr.acks)
		if err := st.handle(tr, step.resp); err != nil {
			t.Fatalf("%s: handle: %v", step.name, err)
		}
		if len(tr.acks) != n+1 {
			t.Fatalf("%s: %d (N)ACKs sent, want 1", step.name, len(tr.acks)-n)
		}
		detail := tr.acks[n].GetMessage()
		switch {
		case step.nack == "" && detail != "":
			t.Errorf("%s: NACKed with %q, want an ACK", step.name, detail)
		case step.nack != "" && !strings.Contains(detail, step.nack):
			t.Errorf("%s: error_detail %q, want it to contain %q", step.name, detail, step.nack)
		}
		wantGlobal.attempt++
		if step.nack != "" {
			wantGlobal.rejected++
		} else {
			wantGlobal.success++
		}
		for s, want := range step.want {
			ss := subs[s]
			got := countsOf(ss)
			wantCounts := want
			wantCounts.version = ""
			if got != wantCounts {
				t.Errorf("%s: %s/%s counters = %+v, want %+v", step.name, s.prefix, s.routeConfig, got, wantCounts)
			}
			wantVersion := int64(0)
			if want.version != "" {
				wantVersion = int64(xxhash.Sum64String(want.version))
			}
			if v := ss.version.Value(); v != wantVersion {
				t.Errorf("%s: %s/%s version = %d, want the hash of %q (%d)", step.name, s.prefix, s.routeConfig, v, want.version, wantVersion)
			}
			if (want.success > 0) != (ss.updateTime.Value() > 0) {
				t.Errorf("%s: %s/%s update_time = %d with %d successes", step.name, s.prefix, s.routeConfig, ss.updateTime.Value(), want.success)
			}
			if (want.reload > 0) != (ss.configReloadTime.Value() > 0) {
				t.Errorf("%s: %s/%s config_reload_time_ms = %d with %d reloads", step.name, s.prefix, s.routeConfig, ss.configReloadTime.Value(), want.reload)
			}
		}
		gotGlobal := rdsCounts{attempt: global.Counter("update_attempt").Value(), success: global.Counter("update_success").Value(), rejected: global.Counter("update_rejected").Value()}
		if gotGlobal != wantGlobal {
			t.Errorf("%s: global xds.rds counters = %+v, want %+v", step.name, gotGlobal, wantGlobal)
		}
	}

	// Envoy's flat and Prometheus names.
	var text, prom bytes.Buffer
	if err := store.WriteText(&text, stats.Filter{}); err != nil {
		t.Fatal(err)
	}
	if err := store.WritePrometheus(&prom, stats.Filter{}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"http.in_a.rds.r1.config_reload: 2", "http.in_b.rds.r1.update_rejected: 1", "http.in_c.rds.r2.update_success: 1",
		"http.in_a.rds.r1.config_reload_time_ms: ", "http.in_a.rds.r1.update_time: ", "http.in_a.rds.r1.version: ",
	} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text stats lack %q", want)
		}
	}
	for _, want := range []string{
		`envoy_http_rds_config_reload{envoy_http_conn_manager_prefix="in_a",envoy_rds_route_config="r1"} 2`,
		`envoy_http_rds_update_rejected{envoy_http_conn_manager_prefix="in_b",envoy_rds_route_config="r1"} 1`,
		`envoy_http_rds_update_attempt{envoy_http_conn_manager_prefix="in_c",envoy_rds_route_config="r2"} 1`,
	} {
		if !strings.Contains(prom.String(), want) {
			t.Errorf("Prometheus stats lack %q", want)
		}
	}
}

// TestRDSSubsOf checks which connection managers' RDS subscriptions a
// listener yields: every filter chain's, the default one's included, and
// none for inline route configurations.
func TestRDSSubsOf(t *testing.T) {
	two := rdsListener(t, "two", "p1", "r1")
	second := rdsListener(t, "x", "p2", "r1").GetFilterChains()[0]
	second.FilterChainMatch = &listenerv3.FilterChainMatch{ServerNames: []string{"b.example"}}
	two.FilterChains = append(two.FilterChains, second)
	def := rdsListener(t, "def", "p1", "r1")
	def.DefaultFilterChain = rdsListener(t, "y", "p3", "r:2").GetFilterChains()[0]
	inline := rdsListener(t, "inline", "p1", "r1")
	hcm := &hcmv3.HttpConnectionManager{StatPrefix: "p1", RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: routeConfig("r1", "c1")}}
	a, err := anypb.New(hcm)
	if err != nil {
		t.Fatal(err)
	}
	inline.FilterChains[0].Filters[0].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: a}
	for _, tc := range []struct {
		name string
		l    *listenerv3.Listener
		want []rdsSub
	}{
		{"two chains", two, []rdsSub{{"p1", "r1"}, {"p2", "r1"}}},
		{"default chain", def, []rdsSub{{"p1", "r1"}, {"p3", "r:2"}}},
		{"inline route config", inline, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := rdsSubsOf(tc.l)
			if len(got) != len(tc.want) {
				t.Fatalf("rdsSubsOf = %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Errorf("rdsSubsOf = %v, want %v", got, tc.want)
				}
			}
		})
	}
}

// TestRDSStatNameSanitised checks that ':' in a route configuration's name
// becomes '_' in the stat name, as in Envoy.
func TestRDSStatNameSanitised(t *testing.T) {
	store := stats.NewStore()
	newRDSSubStats(store, rdsSub{prefix: "in", routeConfig: "outbound|80||svc:x"}).attempt.Inc()
	var text bytes.Buffer
	if err := store.WriteText(&text, stats.Filter{}); err != nil {
		t.Fatal(err)
	}
	if want := "http.in.rds.outbound|80||svc_x.update_attempt: 1"; !strings.Contains(text.String(), want) {
		t.Errorf("text stats lack %q:\n%s", want, text.String())
	}
}

// TestRoutesReady: a listener whose filter chains (the default one
// included) take different route configurations over RDS needs every one
// of them before it leaves warming, and subscribes to each once.
func TestRoutesReady(t *testing.T) {
	l := rdsListener(t, "l", "in_a", "r1")
	l.FilterChains = append(l.FilterChains, rdsListener(t, "x", "in_b", "r2").GetFilterChains()[0])
	l.DefaultFilterChain = rdsListener(t, "y", "in_c", "r1").GetFilterChains()[0]
	if got, want := rdsNames(l), []string{"r1", "r2"}; !slices.Equal(got, want) {
		t.Fatalf("rdsNames = %v, want %v", got, want)
	}
	for _, tc := range []struct {
		accepted []string
		want     bool
	}{
		{nil, false},
		{[]string{"r1"}, false},
		{[]string{"r2"}, false},
		{[]string{"r1", "r2"}, true},
	} {
		acc := map[string]config.XDSResource{}
		for _, n := range tc.accepted {
			acc[n] = config.XDSResource{}
		}
		if got := routesReady(l, acc); got != tc.want {
			t.Errorf("routesReady with %v accepted = %v, want %v", tc.accepted, got, tc.want)
		}
	}
	if !routesReady(&listenerv3.Listener{Name: "no rds"}, nil) {
		t.Error("a listener taking no route configuration over RDS is not ready")
	}
}
