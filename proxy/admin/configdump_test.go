package admin

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"meshd.dev/meshd/proxy/stats"
)

// The credentials in testDump: none of them may appear in any answer.
var testSecrets = []string{
	"STATIC-LISTENER-KEY", "BOOTSTRAP-SECRET-KEY", "SDS-KEY", "UPSTREAM-KEY", "BOOTSTRAP-CLUSTER-KEY",
}

// tlsSocket is a transport socket whose TLS context holds an inline private
// key (a sensitive field), as JSON for protojson.
func tlsSocket(context, key string) string {
	return `{"name":"envoy.transport_sockets.tls","typed_config":{"@type":"type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.` + context + `",` +
		`"common_tls_context":{"tls_certificates":[{"certificate_chain":{"inline_string":"CHAIN"},"private_key":{"inline_string":"` + key + `"}}]}}}`
}

func listenerJSON(name, key string) string {
	return `{"name":"` + name + `","address":{"socket_address":{"address":"127.0.0.1","port_value":15001}},` +
		`"filter_chains":[{"filters":[{"name":"envoy.filters.network.http_connection_manager","typed_config":{` +
		`"@type":"type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",` +
		`"stat_prefix":"` + name + `","rds":{"route_config_name":"` + name + `-routes","config_source":{"ads":{}}},` +
		`"http_filters":[{"name":"envoy.filters.http.router","typed_config":{"@type":"type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]` +
		`,"transport_socket":` + tlsSocket("DownstreamTlsContext", key) + `}]}`
}

func clusterJSON(name, key string) string {
	c := `{"name":"` + name + `","type":"EDS","connect_timeout":"2s","eds_cluster_config":{"eds_config":{"ads":{}}}`
	if key != "" {
		c += `,"transport_socket":` + tlsSocket("UpstreamTlsContext", key)
	}
	return c + `}`
}

// parse is js as a new T, or the test fails.
func parse[T proto.Message](t testing.TB, js string, m T) T {
	t.Helper()
	if err := protojson.Unmarshal([]byte(js), m); err != nil {
		t.Fatalf("%T: %v\n%s", m, err, js)
	}
	return m
}

func pack(t testing.TB, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// testDump is a config dump shaped like a meshd sidecar's with xDS and
// identities: a bootstrap with a static listener, clusters and a secret
// holding inline keys; static and dynamic listeners, clusters, routes and
// endpoints; and SDS secrets. Every private key in it is a real value
// here, to prove the admin server redacts on every path.
func testDump(t testing.TB) *adminv3.ConfigDump {
	t.Helper()
	at := timestamppb.New(time.Date(2026, 11, 22, 20, 0, 0, 0, time.UTC))
	boot := parse(t, `{"node":{"id":"greeter-client.demo","cluster":"greeter-client"},`+
		`"static_resources":{"listeners":[`+listenerJSON("ingress", "STATIC-LISTENER-KEY")+`],`+
		`"clusters":[`+clusterJSON("xds", "BOOTSTRAP-CLUSTER-KEY")+`],`+
		`"secrets":[{"name":"static-cert","tls_certificate":{"private_key":{"inline_bytes":"`+
		"Qk9PVFNUUkFQLVNFQ1JFVC1LRVk="+ /* BOOTSTRAP-SECRET-KEY */ `"}}}]},`+
		`"admin":{"address":{"socket_address":{"address":"127.0.0.1","port_value":15000}}}}`, &bootstrapv3.Bootstrap{})
	staticListener := parse(t, listenerJSON("ingress", "STATIC-LISTENER-KEY"), &listenerv3.Listener{})
	dynamic := func(js string, m proto.Message) *anypb.Any { return pack(t, parse(t, js, m)) }
	dumps := []proto.Message{
		&adminv3.BootstrapConfigDump{Bootstrap: boot, LastUpdated: at},
		&adminv3.ListenersConfigDump{
			VersionInfo:     "7",
			StaticListeners: []*adminv3.ListenersConfigDump_StaticListener{{Listener: pack(t, staticListener), LastUpdated: at}},
			DynamicListeners: []*adminv3.ListenersConfigDump_DynamicListener{
				{Name: "outbound", ActiveState: &adminv3.ListenersConfigDump_DynamicListenerState{
					VersionInfo: "7", LastUpdated: at, Listener: dynamic(listenerJSON("outbound", "STATIC-LISTENER-KEY"), &listenerv3.Listener{}),
				}},
				{Name: "inbound", ActiveState: &adminv3.ListenersConfigDump_DynamicListenerState{
					VersionInfo: "7", LastUpdated: at, Listener: dynamic(listenerJSON("inbound", "STATIC-LISTENER-KEY"), &listenerv3.Listener{}),
				}},
			},
		},
		&adminv3.ClustersConfigDump{
			VersionInfo:    "7",
			StaticClusters: []*adminv3.ClustersConfigDump_StaticCluster{{Cluster: dynamic(clusterJSON("xds", "BOOTSTRAP-CLUSTER-KEY"), &clusterv3.Cluster{}), LastUpdated: at}},
			DynamicActiveClusters: []*adminv3.ClustersConfigDump_DynamicCluster{
				{VersionInfo: "7", LastUpdated: at, Cluster: dynamic(clusterJSON("greeter-server", "UPSTREAM-KEY"), &clusterv3.Cluster{})},
				{VersionInfo: "7", LastUpdated: at, Cluster: dynamic(clusterJSON("greeter-client", ""), &clusterv3.Cluster{})},
			},
		},
		&adminv3.RoutesConfigDump{DynamicRouteConfigs: []*adminv3.RoutesConfigDump_DynamicRouteConfig{
			{VersionInfo: "7", LastUpdated: at, RouteConfig: dynamic(`{"name":"outbound-routes","virtual_hosts":[{"name":"greeter","domains":["*"],"routes":[{"match":{"prefix":"/"},"route":{"cluster":"greeter-server","timeout":"3s"}}]}]}`, &routev3.RouteConfiguration{})},
			{VersionInfo: "7", LastUpdated: at, RouteConfig: dynamic(`{"name":"inbound-routes"}`, &routev3.RouteConfiguration{})},
		}},
		&adminv3.EndpointsConfigDump{DynamicEndpointConfigs: []*adminv3.EndpointsConfigDump_DynamicEndpointConfig{
			{VersionInfo: "7", LastUpdated: at, EndpointConfig: dynamic(`{"cluster_name":"greeter-server","endpoints":[{"lb_endpoints":[{"endpoint":{"address":{"socket_address":{"address":"127.0.0.1","port_value":9000}}},"load_balancing_weight":3}]}]}`, &endpointv3.ClusterLoadAssignment{})},
		}},
		&adminv3.SecretsConfigDump{DynamicActiveSecrets: []*adminv3.SecretsConfigDump_DynamicSecret{
			{Name: "default", VersionInfo: "1", Secret: dynamic(`{"name":"default","tls_certificate":{"certificate_chain":{"inline_string":"SVID"},"private_key":{"inline_string":"SDS-KEY"}}}`, &tlsv3.Secret{})},
			{Name: "ROOTCA", VersionInfo: "1", Secret: dynamic(`{"name":"ROOTCA","validation_context":{"trusted_ca":{"inline_string":"ROOTS"}}}`, &tlsv3.Secret{})},
		}},
	}
	cd := &adminv3.ConfigDump{}
	for _, m := range dumps {
		cd.Configs = append(cd.Configs, pack(t, m))
	}
	return cd
}

// dumpTypes are the short type names of a /config_dump answer's configs,
// comma-separated ("ClustersConfigDump.DynamicCluster").
func dumpTypes(t *testing.T, body string) string {
	t.Helper()
	var doc struct {
		Configs []struct {
			Type string `json:"@type"`
		} `json:"configs"`
	}
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatalf("answer is not JSON: %v\n%s", err, body)
	}
	var types []string
	for _, c := range doc.Configs {
		types = append(types, strings.TrimPrefix(c.Type, "type.googleapis.com/envoy.admin.v3."))
	}
	return strings.Join(types, ",")
}

// TestConfigDumpFilters runs Envoy's /config_dump parameters against a real
// dump: which configs come back, in which order, with which resources and
// fields, and that every credential in the dump stays redacted on every
// path.
func TestConfigDumpFilters(t *testing.T) {
	const (
		all      = "BootstrapConfigDump,ListenersConfigDump,ClustersConfigDump,RoutesConfigDump,SecretsConfigDump"
		dynCl    = "ClustersConfigDump.DynamicCluster"
		dynL     = "ListenersConfigDump.DynamicListener"
		dynS     = "SecretsConfigDump.DynamicSecret"
		redacted = `"[redacted]"`
	)
	tests := []struct {
		name   string
		query  string
		code   int
		types  string   // for 200: the configs' types, in order
		has    []string // substrings of the compacted answer
		hasNot []string
	}{
		{"whole dump", "", 200, all,
			[]string{`"name":"greeter-server"`, `"name":"static-cert"`, `"private_key":{"inline_string":"[redacted]"}`, `"inline_bytes":"W3JlZGFjdGVkXQ=="`, `"certificate_chain":{"inline_string":"CHAIN"}`},
			[]string{"EndpointsConfigDump", "load_balancing_weight"}},
		{"include_eds", "?include_eds", 200, "BootstrapConfigDump,ListenersConfigDump,ClustersConfigDump,RoutesConfigDump,EndpointsConfigDump,SecretsConfigDump",
			[]string{`"load_balancing_weight":3`}, nil},
		{"include_eds with a value", "?include_eds=false", 200, "BootstrapConfigDump,ListenersConfigDump,ClustersConfigDump,RoutesConfigDump,EndpointsConfigDump,SecretsConfigDump", nil, nil},
		{"resource", "?resource=dynamic_active_clusters", 200, dynCl + "," + dynCl,
			[]string{`"name":"greeter-server"`, `"name":"greeter-client"`, `"version_info":"7"`, redacted}, []string{`"name":"xds"`, "BootstrapConfigDump"}},
		{"resource static", "?resource=static_clusters", 200, "ClustersConfigDump.StaticCluster",
			[]string{`"name":"xds"`, redacted}, []string{"greeter"}},
		{"resource static listeners", "?resource=static_listeners", 200, "ListenersConfigDump.StaticListener", []string{`"name":"ingress"`, redacted}, nil},
		{"resource secrets", "?resource=dynamic_active_secrets", 200, dynS + "," + dynS,
			[]string{`"name":"default"`, `"name":"ROOTCA"`, `"private_key":{"inline_string":"[redacted]"}`, `"trusted_ca":{"inline_string":"ROOTS"}`}, nil},
		{"resource empty", "?resource=dynamic_warming_clusters", 200, "", []string{`{"configs":[]}`}, nil},
		{"resource endpoints without include_eds", "?resource=dynamic_endpoint_configs", 404, "",
			[]string{"config_dump: resource=dynamic_endpoint_configs: dynamic_endpoint_configs not found in config dump"}, nil},
		{"resource endpoints", "?resource=dynamic_endpoint_configs&include_eds", 200, "EndpointsConfigDump.DynamicEndpointConfig",
			[]string{`"cluster_name":"greeter-server"`}, nil},
		{"resource unknown", "?resource=dynamic_clusters", 404, "", []string{"config_dump: resource=dynamic_clusters: dynamic_clusters not found in config dump"}, nil},
		{"resource not repeated", "?resource=version_info", 400, "",
			[]string{"config_dump: resource=version_info: version_info is not a repeated field. Use ?mask=version_info to get only this field"}, nil},
		{"resource bootstrap", "?resource=bootstrap", 400, "", []string{"bootstrap is not a repeated field"}, nil},
		{"resource mask into Any", "?resource=dynamic_active_clusters&mask=cluster.name,version_info", 200, dynCl + "," + dynCl,
			[]string{`"version_info":"7","cluster":{"@type":"type.googleapis.com/envoy.config.cluster.v3.Cluster","name":"greeter-server"}}`},
			[]string{"connect_timeout", "last_updated", "transport_socket"}},
		{"resource mask keeps Any whole", "?resource=static_clusters&mask=cluster", 200, "ClustersConfigDump.StaticCluster",
			[]string{`"connect_timeout":"2s"`, redacted}, []string{"last_updated"}},
		{"resource mask reveals no key", "?resource=dynamic_active_secrets&mask=secret.tls_certificate.private_key", 200, dynS + "," + dynS,
			[]string{`"tls_certificate":{"private_key":{"inline_string":"[redacted]"}}`}, []string{"SVID", "ROOTS", `"name"`}},
		{"resource mask outer", "?resource=dynamic_active_secrets&mask=name", 200, dynS + "," + dynS,
			[]string{`{"@type":"type.googleapis.com/envoy.admin.v3.SecretsConfigDump.DynamicSecret","name":"default"}`}, []string{"secret"}},
		{"resource mask through listener's Any", "?resource=static_listeners&mask=listener.filter_chains", 200, "ListenersConfigDump.StaticListener",
			[]string{`"transport_socket"`, redacted}, []string{`"address"`}},
		{"resource mask bad field", "?resource=dynamic_active_clusters&mask=cluster.nope", 400, "",
			[]string{`config_dump: mask=cluster.nope: in cluster (envoy.config.cluster.v3.Cluster): path "nope": envoy.config.cluster.v3.Cluster has no field "nope"`}, nil},
		{"resource mask bad outer field", "?resource=dynamic_active_clusters&mask=name", 400, "",
			[]string{`config_dump: mask=name: path "name": envoy.admin.v3.ClustersConfigDump.DynamicCluster has no field "name"`}, nil},
		{"resource mask through nested Any", "?resource=dynamic_listeners&mask=active_state.listener.name", 400, "",
			[]string{`config_dump: mask=active_state.listener.name: path "active_state.listener.name": google.protobuf.Any has no field "name"`}, nil},
		{"resource mask through repeated", "?resource=dynamic_active_clusters&mask=cluster.transport_socket_matches.name", 400, "",
			[]string{`transport_socket_matches is not a singular message field, so it has no field "name"`}, nil},
		{"name_regex", "?name_regex=greeter-server", 200, all,
			// The bootstrap is not filtered: its ingress and xds stay.
			[]string{`"name":"greeter-server"`, `"name":"ingress"`, `"name":"xds"`, `{"@type":"type.googleapis.com/envoy.admin.v3.RoutesConfigDump"}`},
			[]string{`"name":"greeter-client"`, `"name":"outbound"`, `"name":"default"`, `"name":"outbound-routes"`}},
		{"name_regex is a full match", "?resource=dynamic_active_clusters&name_regex=greeter", 200, "", []string{`{"configs":[]}`}, nil},
		{"name_regex on dynamic listeners", "?resource=dynamic_listeners&name_regex=out.*", 200, dynL, []string{`"name":"outbound"`}, []string{`"name":"inbound"`}},
		{"name_regex on routes", "?resource=dynamic_route_configs&name_regex=in.*", 200, "RoutesConfigDump.DynamicRouteConfig",
			[]string{`"name":"inbound-routes"`}, []string{"outbound-routes"}},
		{"name_regex on endpoints", "?resource=dynamic_endpoint_configs&include_eds&name_regex=greeter-.*", 200, "EndpointsConfigDump.DynamicEndpointConfig", nil, nil},
		{"name_regex on secrets", "?resource=dynamic_active_secrets&name_regex=def.*", 200, dynS, []string{`"name":"default"`, redacted}, []string{"ROOTCA"}},
		{"name_regex empty", "?resource=dynamic_active_clusters&name_regex=", 200, dynCl + "," + dynCl, nil, nil},
		{"name_regex bad", "?name_regex=(greeter", 400, "", []string{"config_dump: invalid name_regex=\"(greeter\": error parsing regexp: missing closing ): `^(?:(greeter)$`"}, nil},
		{"all three", "?resource=dynamic_active_clusters&mask=cluster.name,cluster.transport_socket&name_regex=greeter-.*r", 200, dynCl,
			[]string{`"name":"greeter-server"`, redacted}, []string{"greeter-client", "connect_timeout", "version_info"}},
		{"all three and bad regex", "?resource=dynamic_active_clusters&mask=nope&name_regex=[", 400, "", []string{"invalid name_regex"}, nil},
		{"mask", "?mask=static_clusters", 200, "ClustersConfigDump", []string{`"name":"xds"`, redacted}, []string{"greeter", "version_info"}},
		{"mask fits two configs", "?mask=version_info", 200, "ListenersConfigDump,ClustersConfigDump",
			[]string{`{"@type":"type.googleapis.com/envoy.admin.v3.ListenersConfigDump","version_info":"7"}`}, []string{"name"}},
		{"mask into bootstrap", "?mask=bootstrap.static_resources.secrets", 200, "BootstrapConfigDump",
			[]string{`"secrets":[{"name":"static-cert","tls_certificate":{"private_key":{"inline_bytes":"W3JlZGFjdGVkXQ=="}}}]`}, []string{"node", "listeners"}},
		{"mask with name_regex", "?mask=dynamic_active_clusters&name_regex=greeter-client", 200, "ClustersConfigDump",
			[]string{`"name":"greeter-client"`}, []string{"greeter-server"}},
		{"mask fits nothing", "?mask=nope", 400, "", []string{"config_dump: mask=nope: FieldMask could not be successfully applied to any configs"}, nil},
		{"mask through repeated", "?mask=static_clusters.cluster", 400, "", []string{"could not be successfully applied to any configs"}, nil},
		{"mask empty", "?mask=", 200, all, nil, nil},
	}
	h := start(t, newFakeBackend(), stats.NewStore())
	h.backend.set(func(b *fakeBackend) { b.dump = testDump(t) })
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := h.do(t, "GET", "/config_dump"+tc.query)
			if r.code != tc.code {
				t.Fatalf("status %d, want %d: %s", r.code, tc.code, r.body)
			}
			body := r.body
			if tc.code == 200 {
				if ct := r.hdr.Get("Content-Type"); ct != contentJSON {
					t.Errorf("Content-Type = %q", ct)
				}
				if got := dumpTypes(t, body); got != tc.types {
					t.Errorf("configs = %s\nwant      %s", got, tc.types)
				}
				var c bytes.Buffer
				if err := json.Compact(&c, []byte(body)); err != nil {
					t.Fatal(err)
				}
				body = c.String()
			} else if ct := r.hdr.Get("Content-Type"); ct != contentText {
				t.Errorf("Content-Type = %q", ct)
			}
			for _, s := range tc.has {
				if !strings.Contains(body, s) {
					t.Errorf("answer lacks %s:\n%s", s, body)
				}
			}
			for _, s := range append(tc.hasNot, testSecrets...) {
				if strings.Contains(body, s) {
					t.Errorf("answer shows %s:\n%s", s, body)
				}
			}
		})
	}
	// The backend's dump is not changed by filtering or redaction.
	if b, err := proto.Marshal(h.backend.dump); err != nil || !bytes.Contains(b, []byte("SDS-KEY")) {
		t.Errorf("the backend's dump was modified (%v)", err)
	}
}

// TestParseConfigDumpQuery: the first value of each parameter counts, mask
// paths are trimmed and empty ones dropped, and name_regex is anchored.
func TestParseConfigDumpQuery(t *testing.T) {
	tests := []struct {
		query    string
		resource string
		mask     string
		name     string
		eds      bool
	}{
		{"", "", "", "", false},
		{"resource=a&resource=b", "a", "", "", false},
		{"mask=a.b,,c%20,&mask=d", "", "a.b|c", "", false},
		{"mask=,", "", "", "", false},
		{"name_regex=x|y&include_eds", "", "", "^(?:x|y)$", true},
	}
	for _, tc := range tests {
		q, err := url.ParseQuery(tc.query)
		if err != nil {
			t.Fatal(err)
		}
		got, err := parseConfigDumpQuery(q)
		if err != nil {
			t.Fatalf("%q: %v", tc.query, err)
		}
		name := ""
		if got.name != nil {
			name = got.name.String()
		}
		if got.resource != tc.resource || strings.Join(got.mask, "|") != tc.mask || name != tc.name || got.includeEDS != tc.eds {
			t.Errorf("%q: got resource %q mask %q name %q eds %v", tc.query, got.resource, got.mask, name, got.includeEDS)
		}
	}
}

// TestConfigDumpUnknownType: a config the admin server cannot unpack is a
// 500 naming its type, not a partial dump.
func TestConfigDumpUnknownType(t *testing.T) {
	h := start(t, newFakeBackend(), stats.NewStore())
	h.backend.set(func(b *fakeBackend) {
		b.dump = &adminv3.ConfigDump{Configs: []*anypb.Any{{TypeUrl: "type.googleapis.com/meshd.test.Nope"}}}
	})
	r := h.do(t, "GET", "/config_dump")
	if r.code != 500 || !strings.Contains(r.body, "config 0 (type.googleapis.com/meshd.test.Nope)") {
		t.Errorf("/config_dump = %d %q", r.code, r.body)
	}
}

// FuzzConfigDumpQuery: whatever the query, /config_dump answers 200 with a
// JSON dump, 400 or 404 with a text reason, never panics, and never shows
// a credential of the dump.
func FuzzConfigDumpQuery(f *testing.F) {
	for _, q := range []string{
		"", "include_eds", "resource=dynamic_active_clusters", "resource=static_listeners&mask=listener.filter_chains",
		"resource=dynamic_active_secrets&mask=secret.tls_certificate.private_key", "mask=bootstrap.static_resources",
		"mask=static_clusters.cluster", "name_regex=greeter-.*", "name_regex=(", "resource=version_info",
		"resource=dynamic_listeners&mask=active_state.listener,name&name_regex=out.*",
		"resource=static_clusters&mask=cluster,cluster.name", "mask=.,..,bootstrap..node",
	} {
		f.Add(q)
	}
	b := newFakeBackend()
	b.dump = testDump(f)
	s := New(b, stats.NewStore(), nil)
	f.Cleanup(func() { s.Close() })
	f.Fuzz(func(t *testing.T, query string) {
		r := httptest.NewRequest(http.MethodGet, "/config_dump", nil)
		r.URL.RawQuery = query
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)
		body := w.Body.String()
		switch w.Code {
		case 200:
			if !json.Valid([]byte(body)) {
				t.Fatalf("200 with a body that is not JSON: %s", body)
			}
		case 400, 404:
			if !strings.HasPrefix(body, "config_dump: ") {
				t.Fatalf("%d without a reason: %q", w.Code, body)
			}
		default:
			t.Fatalf("status %d for %q: %s", w.Code, query, body)
		}
		for _, secret := range testSecrets {
			if strings.Contains(body, secret) {
				t.Fatalf("%q shows %s: %s", query, secret, body)
			}
		}
	})
}
