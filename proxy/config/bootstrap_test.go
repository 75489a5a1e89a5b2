package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// exampleFile reads a file under the repository's examples directory.
func exampleFile(t testing.TB, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "examples", name))
	if err != nil {
		t.Fatalf("read example: %v", err)
	}
	return data
}

// edit is one textual change to examples/sidecar.yaml.
type edit struct{ old, new string }

// mutate applies edits to base; each old text must occur exactly once.
func mutate(t testing.TB, base string, edits []edit) string {
	t.Helper()
	for _, e := range edits {
		if n := strings.Count(base, e.old); n != 1 {
			t.Fatalf("edit %q: found %d times in the base bootstrap, want 1", e.old, n)
		}
		base = strings.Replace(base, e.old, e.new, 1)
	}
	return base
}

// Paths used by several cases.
const (
	lis0    = "static_resources.listeners[0]"
	filter0 = lis0 + ".filter_chains[0].filters[0]"
	hcm     = filter0 + ".typed_config"
	route0  = hcm + ".route_config.virtual_hosts[0].routes[0]"
	clu0    = "static_resources.clusters[0]"
)

const (
	hcmTypedConfig = `        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network`
	routerFilter = `          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router`
	// wasmFilter is the Wasm filter as Envoy's documentation writes it
	// (the module file is only read when the filter is compiled).
	wasmFilter = `          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: headers
                root_id: headers
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{"x": "y"}'
                vm_config:
                  vm_id: headers
                  runtime: envoy.wasm.runtime.v8
                  code: { local: { filename: /nonexistent/headers.wasm } }
                  configuration:
                    "@type": type.googleapis.com/google.protobuf.BytesValue
                    value: AAE=
`
	corsFilter = `          - name: envoy.filters.http.cors
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors
`
	routeConfig = `          route_config:
            name: local
            virtual_hosts:
            - name: backend
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route:
                  cluster: backend
                  timeout: 0s   # no route timeout: long-lived gRPC streams
`
	secondCluster = `
  - name: backend
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: 127.0.0.2, port_value: 9000 }
`
	adsConfig = `dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services:
    - envoy_grpc: { cluster_name: backend }
static_resources:`
)

// badCases are bootstraps that must be rejected; each names the field path
// and a piece of the reason. They also seed FuzzParseBootstrap.
var badCases = []struct {
	name       string
	edits      []edit
	wantPath   string
	wantReason string
}{
	{
		name:       "unknown field",
		edits:      []edit{{hcmTypedConfig, strings.Replace(hcmTypedConfig, "typed_config", "typed_confg", 1)}},
		wantPath:   filter0,
		wantReason: `unknown field "typed_confg"`,
	},
	{
		name:       "unknown top-level field suggests",
		edits:      []edit{{"static_resources:", "statc_resources:"}},
		wantPath:   "",
		wantReason: `unknown field "statc_resources" in envoy.config.bootstrap.v3.Bootstrap (did you mean "static_resources"?)`,
	},
	{
		name:       "unknown filter type",
		edits:      []edit{{"filters.http.router.v3.Router", "filters.http.nope.v3.Nope"}},
		wantPath:   hcm + ".http_filters[0].typed_config",
		wantReason: `unknown type "type.googleapis.com/envoy.extensions.filters.http.nope.v3.Nope"`,
	},
	{
		name:       "Envoy http filter type meshd does not link",
		edits:      []edit{{"filters.http.router.v3.Router", "filters.http.lua.v3.Lua"}},
		wantPath:   hcm + ".http_filters[0].typed_config",
		wantReason: `unsupported typed_config type "` + luaTypeURL + `": meshd does not implement this Envoy type`,
	},
	{
		name:       "unsupported http filter type",
		edits:      []edit{{routerFilter, corsFilter + routerFilter}},
		wantPath:   hcm + ".http_filters[0].typed_config",
		wantReason: `unsupported typed_config type "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors" for extension point "http filter"`,
	},
	{
		name:       "wasm configuration not a string or bytes",
		edits:      []edit{{routerFilter, strings.Replace(wasmFilter, "google.protobuf.StringValue\n                  value: '{\"x\": \"y\"}'", "envoy.extensions.filters.http.router.v3.Router", 1) + routerFilter}},
		wantPath:   hcm + ".http_filters[0].typed_config.config.configuration",
		wantReason: `unsupported typed_config type "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" for extension point "wasm configuration" (meshd supports: google.protobuf.BytesValue, google.protobuf.StringValue)`,
	},
	{
		name: "downstream TLS context on a cluster",
		edits: []edit{{"    lb_policy: ROUND_ROBIN\n", `    lb_policy: ROUND_ROBIN
    transport_socket:
      name: tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
`}},
		wantPath:   clu0 + ".transport_socket.typed_config",
		wantReason: `for extension point "upstream transport socket"`,
	},
	{
		name:       "missing cluster",
		edits:      []edit{{"cluster: backend", "cluster: nope"}},
		wantPath:   route0 + ".route.cluster",
		wantReason: `unknown cluster "nope"`,
	},
	{
		name: "missing weighted cluster",
		edits: []edit{{"cluster: backend", `weighted_clusters:
                    clusters:
                    - { name: backend, weight: 1 }
                    - { name: gone, weight: 1 }`}},
		wantPath:   route0 + ".route.weighted_clusters.clusters[1].name",
		wantReason: `unknown cluster "gone"`,
	},
	{
		name:       "negative route timeout",
		edits:      []edit{{"timeout: 0s", "timeout: -1s"}},
		wantPath:   route0 + ".route.timeout",
		wantReason: "negative duration -1s",
	},
	{
		name:       "negative connect timeout",
		edits:      []edit{{"connect_timeout: 1s", "connect_timeout: -0.5s"}},
		wantPath:   clu0 + ".connect_timeout",
		wantReason: "greater than 0s",
	},
	{
		name:       "port out of range",
		edits:      []edit{{"port_value: 10000", "port_value: 70000"}},
		wantPath:   lis0 + ".address.socket_address.port_value",
		wantReason: "less than or equal to 65535",
	},
	{
		name:       "port not a number",
		edits:      []edit{{"port_value: 10000", "port_value: ten"}},
		wantPath:   lis0 + ".address.socket_address.port_value",
		wantReason: "invalid value for uint32 field",
	},
	{
		name:       "listener address not an IP",
		edits:      []edit{{"address: 127.0.0.1, port_value: 10000", "address: localhost, port_value: 10000"}},
		wantPath:   lis0 + ".address.socket_address.address",
		wantReason: `must be an IP address to listen on, got "localhost"`,
	},
	{
		name:       "duplicate cluster names",
		edits:      []edit{{"port_value: 9000 }\n", "port_value: 9000 }\n" + secondCluster}},
		wantPath:   "static_resources.clusters[1].name",
		wantReason: `duplicate cluster name "backend" (first at static_resources.clusters[0])`,
	},
	{
		name: "duplicate listener names",
		edits: []edit{{"  clusters:\n", `  - name: ingress
    address:
      socket_address: { address: 127.0.0.1, port_value: 10001 }
    filter_chains:
    - filters:
      - name: tcp
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
          cluster: backend
  clusters:
`}},
		wantPath:   "static_resources.listeners[1].name",
		wantReason: `duplicate listener name "ingress"`,
	},
	{
		name:       "router not last",
		edits:      []edit{{routerFilter, routerFilter + "\n" + routerFilter}},
		wantPath:   hcm + ".http_filters[0]",
		wantReason: "the router must be the last http filter",
	},
	{
		name:       "no http filters",
		edits:      []edit{{routerFilter, "          []"}, {"http_filters:\n", "http_filters:"}},
		wantPath:   hcm + ".http_filters",
		wantReason: "must end with the router",
	},
	{
		name:       "unsupported cluster type",
		edits:      []edit{{"type: STATIC", "type: LOGICAL_DNS"}},
		wantPath:   clu0 + ".type",
		wantReason: "cluster type LOGICAL_DNS is not supported",
	},
	{
		name:       "EDS without ADS",
		edits:      []edit{{"type: STATIC", "type: EDS\n    eds_cluster_config: { eds_config: { ads: {} } }"}},
		wantPath:   clu0 + ".type",
		wantReason: "EDS requires dynamic_resources.ads_config",
	},
	{
		name:       "ORIGINAL_DST with ROUND_ROBIN",
		edits:      []edit{{"type: STATIC", "type: ORIGINAL_DST"}},
		wantPath:   clu0 + ".lb_policy",
		wantReason: "an ORIGINAL_DST cluster needs CLUSTER_PROVIDED (got ROUND_ROBIN)",
	},
	{
		name:       "ORIGINAL_DST with endpoints",
		edits:      []edit{{"type: STATIC", "type: ORIGINAL_DST"}, {"lb_policy: ROUND_ROBIN", "lb_policy: CLUSTER_PROVIDED"}},
		wantPath:   clu0 + ".load_assignment",
		wantReason: "an ORIGINAL_DST cluster takes its hosts from the downstream connections and must have no endpoints",
	},
	{
		name:       "CLUSTER_PROVIDED on STATIC",
		edits:      []edit{{"lb_policy: ROUND_ROBIN", "lb_policy: CLUSTER_PROVIDED"}},
		wantPath:   clu0 + ".lb_policy",
		wantReason: "CLUSTER_PROVIDED needs type ORIGINAL_DST (type is STATIC)",
	},
	{
		name:       "original_dst_lb_config on STATIC",
		edits:      []edit{{"lb_policy: ROUND_ROBIN", "lb_policy: ROUND_ROBIN\n    original_dst_lb_config: { use_http_header: true }"}},
		wantPath:   clu0 + ".original_dst_lb_config",
		wantReason: "applies to ORIGINAL_DST clusters only (type is STATIC)",
	},
	{
		name:       "unsupported lb policy",
		edits:      []edit{{"lb_policy: ROUND_ROBIN", "lb_policy: MAGLEV"}},
		wantPath:   clu0 + ".lb_policy",
		wantReason: "MAGLEV is not supported",
	},
	{
		name:       "STATIC cluster with a host name",
		edits:      []edit{{"address: 127.0.0.1, port_value: 9000", "address: backend.local, port_value: 9000"}},
		wantPath:   clu0 + ".load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address",
		wantReason: `a STATIC cluster needs IP addresses, got "backend.local"`,
	},
	{
		name:       "endpoint port 0",
		edits:      []edit{{"port_value: 9000", "port_value: 0"}},
		wantPath:   clu0 + ".load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value",
		wantReason: "an endpoint needs a port",
	},
	{
		name:       "route_config and rds",
		edits:      []edit{{"          route_config:\n            name: local\n", "          rds: { route_config_name: local, config_source: { ads: {} } }\n          route_config:\n            name: local\n"}},
		wantPath:   hcm + ".route_config",
		wantReason: `only one of the oneof "route_specifier" may be set, "rds" is set too`,
	},
	{
		name:       "rds without ADS",
		edits:      []edit{{routeConfig, "          rds: { route_config_name: local, config_source: { ads: {} } }\n"}},
		wantPath:   hcm + ".rds",
		wantReason: "requires dynamic_resources.ads_config",
	},
	{
		name:       "listener filter without typed_config",
		edits:      []edit{{"    filter_chains:\n", "    listener_filters:\n    - name: envoy.filters.listener.tls_inspector\n    filter_chains:\n"}},
		wantPath:   lis0 + ".listener_filters[0].typed_config",
		wantReason: "required",
	},
	{
		name:       "transparent not supported",
		edits:      []edit{{"    filter_chains:\n", "    transparent: true\n    filter_chains:\n"}},
		wantPath:   lis0 + ".transparent",
		wantReason: "field not supported by meshd",
	},
	{
		name:       "use_original_dst without original_dst",
		edits:      []edit{{"    filter_chains:\n", "    use_original_dst: true\n    filter_chains:\n"}},
		wantPath:   lis0 + ".use_original_dst",
		wantReason: "needs listener_filters with envoy.filters.listener.original_dst",
	},
	{
		name:       "transport_socket_matches not supported",
		edits:      []edit{{"    lb_policy: ROUND_ROBIN\n", "    lb_policy: ROUND_ROBIN\n    transport_socket_matches: [{name: m}]\n"}},
		wantPath:   clu0 + ".transport_socket_matches",
		wantReason: "field not supported by meshd",
	},
	{
		name:       "downstream keepalive idle interval",
		edits:      []edit{{"codec_type: AUTO", "codec_type: AUTO\n          http2_protocol_options: { connection_keepalive: { interval: 1s, timeout: 1s, connection_idle_interval: 5s } }"}},
		wantPath:   hcm + ".http2_protocol_options.connection_keepalive.connection_idle_interval",
		wantReason: "applies to upstream connections only",
	},
	{
		name:       "underscores on a cluster",
		edits:      []edit{{"        explicit_http_config:", "        common_http_protocol_options: { headers_with_underscores_action: DROP_HEADER }\n        explicit_http_config:"}},
		wantPath:   clu0 + `.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].common_http_protocol_options.headers_with_underscores_action`,
		wantReason: "applies to downstream connections only",
	},
	{
		name:       "max_headers_count on a cluster",
		edits:      []edit{{"        explicit_http_config:", "        common_http_protocol_options: { max_headers_count: 10 }\n        explicit_http_config:"}},
		wantPath:   clu0 + `.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].common_http_protocol_options.max_headers_count`,
		wantReason: "applies to downstream connections only",
	},
	{
		name:       "flood limit on a cluster",
		edits:      []edit{{"          http2_protocol_options: {}", "          http2_protocol_options: { max_outbound_frames: 10 }"}},
		wantPath:   clu0 + `.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].explicit_http_config.http2_protocol_options.max_outbound_frames`,
		wantReason: "flood limits apply to downstream connections only",
	},
	{
		name:       "two filter chains",
		edits:      []edit{{"    filter_chains:\n    - filters:\n", "    filter_chains:\n    - filters: []\n    - filters:\n"}},
		wantPath:   lis0 + ".filter_chains",
		wantReason: "two chains are supported only as a transport_protocol \"tls\" chain and a plaintext chain",
	},
	{
		name:       "HTTP3 codec",
		edits:      []edit{{"codec_type: AUTO", "codec_type: HTTP3"}},
		wantPath:   hcm + ".codec_type",
		wantReason: "HTTP3 needs a UDP listener with udp_listener_config.quic_options",
	},
	{
		name:       "unknown enum value",
		edits:      []edit{{"codec_type: AUTO", "codec_type: HTTP9"}},
		wantPath:   hcm + ".codec_type",
		wantReason: `invalid value for enum field codecType: "HTTP9"`,
	},
	{
		name:       "bad regex",
		edits:      []edit{{`match: { prefix: "/" }`, `match: { safe_regex: { regex: "(" } }`}},
		wantPath:   route0 + ".match.safe_regex.regex",
		wantReason: "invalid regex",
	},
	{
		name:       "two path specifiers",
		edits:      []edit{{`match: { prefix: "/" }`, `match: { prefix: "/", path: "/x" }`}},
		wantPath:   route0 + ".match.prefix",
		wantReason: `only one of the oneof "path_specifier" may be set, "path" is set too`,
	},
	{
		name:       "admin pipe address",
		edits:      []edit{{"socket_address: { address: 127.0.0.1, port_value: 9901 }", "pipe: { path: /tmp/admin.sock }"}},
		wantPath:   "admin.address",
		wantReason: "a socket_address is required",
	},
	{
		name:       "protocol options under the wrong key",
		edits:      []edit{{"      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:", "      http:"}},
		wantPath:   clu0 + `.typed_extension_protocol_options["http"]`,
		wantReason: `key must be the type name of its value, "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"`,
	},
	{
		name:       "HTTP/3 upstream options unsupported",
		edits:      []edit{{"http2_protocol_options: {}", "http3_protocol_options: { allow_extended_connect: true }"}},
		wantPath:   clu0 + `.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].explicit_http_config.http3_protocol_options.allow_extended_connect`,
		wantReason: "field not supported by meshd",
	},
	{
		name:       "ADS cluster must be static",
		edits:      []edit{{"static_resources:", strings.Replace(adsConfig, "cluster_name: backend", "cluster_name: xds", 1)}},
		wantPath:   "dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name",
		wantReason: `cluster "xds" is not a static cluster`,
	},
	{
		name: "load reports to a cluster that is not static",
		edits: []edit{{"static_resources:", `cluster_manager:
  load_stats_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services:
      - envoy_grpc: { cluster_name: lrs }
static_resources:`}},
		wantPath:   "cluster_manager.load_stats_config.grpc_services[0].envoy_grpc.cluster_name",
		wantReason: `cluster "lrs" is not a static cluster`,
	},
	{
		name: "load reports over REST",
		edits: []edit{{"static_resources:", `cluster_manager:
  load_stats_config:
    api_type: REST
    transport_api_version: V3
    grpc_services:
      - envoy_grpc: { cluster_name: backend }
static_resources:`}},
		wantPath:   "cluster_manager.load_stats_config.api_type",
		wantReason: "REST is not supported (GRPC)",
	},
	{
		name:       "CDS must use ADS",
		edits:      []edit{{"static_resources:", adsConfig[:len(adsConfig)-len("static_resources:")] + "  cds_config: { path: /etc/cds.yaml }\nstatic_resources:"}},
		wantPath:   "dynamic_resources.cds_config",
		wantReason: "must be {ads: {}}",
	},
	{
		name:       "wrong kind for a message",
		edits:      []edit{{routeConfig, "          route_config: local\n"}},
		wantPath:   hcm + ".route_config",
		wantReason: "expected an object (envoy.config.route.v3.RouteConfiguration), got a string",
	},
}

func TestParseBootstrapRejects(t *testing.T) {
	base := string(exampleFile(t, "sidecar.yaml"))
	for _, tc := range badCases {
		t.Run(tc.name, func(t *testing.T) {
			doc := mutate(t, base, tc.edits)
			b, err := ParseBootstrap([]byte(doc), "bad.yaml")
			if err == nil {
				t.Fatalf("ParseBootstrap accepted the bootstrap")
			}
			if b != nil {
				t.Errorf("ParseBootstrap returned a bootstrap with an error")
			}
			t.Log(err)
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("error %v is not a *ValidationError", err)
			}
			if !strings.HasPrefix(err.Error(), "bootstrap bad.yaml: ") {
				t.Errorf("error does not name the file: %v", err)
			}
			for _, p := range ve.Problems {
				if p.Path == tc.wantPath && strings.Contains(p.Reason, tc.wantReason) {
					return
				}
			}
			t.Errorf("no problem at %q containing %q; got:\n%v", tc.wantPath, tc.wantReason, err)
		})
	}
}

func TestParseBootstrapReportsAllProblems(t *testing.T) {
	doc := mutate(t, string(exampleFile(t, "sidecar.yaml")), []edit{
		{"cluster: backend", "cluster: nope"},
		{"lb_policy: ROUND_ROBIN", "lb_policy: RING_HASH"},
		{"port_value: 10000", "port_value: 65536"},
	})
	_, err := ParseBootstrap([]byte(doc), "multi.yaml")
	if err == nil {
		t.Fatal("ParseBootstrap accepted the bootstrap")
	}
	lines := strings.Split(err.Error(), "\n")
	if !strings.HasPrefix(lines[0], "bootstrap multi.yaml: 3 problems") || len(lines) != 4 {
		t.Fatalf("want a header and 3 problem lines, got:\n%v", err)
	}
	for _, want := range []string{route0 + ".route.cluster: ", clu0 + ".lb_policy: ", lis0 + ".address.socket_address.port_value: "} {
		if !strings.Contains(err.Error(), "\n  "+want) {
			t.Errorf("missing a line starting with %q in:\n%v", want, err)
		}
	}
}

func TestParseBootstrapAccepts(t *testing.T) {
	sidecar := exampleFile(t, "sidecar.yaml")
	sidecarJSON, err := yaml.YAMLToJSON(sidecar)
	if err != nil {
		t.Fatal(err)
	}
	ads := mutate(t, string(sidecar), []edit{
		{"static_resources:", adsConfig},
		{routeConfig, "          rds: { route_config_name: local, config_source: { ads: {} } }\n"},
	})
	ads += `  - name: from_eds
    type: EDS
    connect_timeout: 1s
    eds_cluster_config: { eds_config: { ads: {}, resource_api_version: V3 } }
`
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"examples/sidecar.yaml", sidecar},
		{"examples/sidecar-tls.yaml", exampleFile(t, "sidecar-tls.yaml")},
		{"sidecar as JSON", append([]byte("\n  "), sidecarJSON...)},
		{"ADS with RDS and EDS", []byte(ads)},
		{"wasm filter as Envoy documents it", []byte(mutate(t, string(sidecar), []edit{{routerFilter, wasmFilter + routerFilter}}))},
		{"accepted and ignored fields", []byte(mutate(t, string(sidecar), []edit{
			{"admin:\n", "layered_runtime: { layers: [{ name: static, static_layer: {} }] }\nadmin:\n  access_log_path: /dev/null\n"},
			{"      - lb_endpoints:", "      - locality: { zone: a }\n        lb_endpoints:"},
		}))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := ParseBootstrap(tc.data, tc.name)
			if err != nil {
				t.Fatalf("ParseBootstrap: %v", err)
			}
			if got := len(b.GetStaticResources().GetListeners()); got != 1 {
				t.Errorf("got %d listeners, want 1", got)
			}
			if b.GetNode().GetId() == "" {
				t.Errorf("node.id not decoded")
			}
		})
	}
}

func TestParseBootstrapSyntax(t *testing.T) {
	for _, tc := range []struct {
		name, doc, want string
	}{
		{"empty", "  \n", "empty document"},
		{"not a mapping", "- a\n- b\n", "not a mapping"},
		{"bad JSON", `{"node": }`, "invalid JSON"},
		{"duplicate YAML key", "node: {id: a}\nnode: {id: b}\n", "invalid YAML"},
		{"duplicate top-level JSON key", `{"node": {"id": "a"}, "node": {}}`, `duplicate key "node" in the top level`},
		{"duplicate nested JSON key", `{"static_resources": {"listeners": [{}, {"name": "a", "name": "b"}]}}`, `duplicate key "name" in static_resources.listeners[1]`},
		{"duplicate key after an array", `{"a": [1, [2, {"x": 1}]], "b": {"y": {"z": 1}, "y": 2}}`, `duplicate key "y" in b`},
		{"bad YAML", "node: [\n", "invalid YAML"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseBootstrap([]byte(tc.doc), "x")
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "bootstrap x: ") {
				t.Fatalf("got %v, want an error about %q naming the input", err, tc.want)
			}
		})
	}
}

func TestLoadBootstrap(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	if err := os.WriteFile(good, exampleFile(t, "sidecar.yaml"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadBootstrap(good); err != nil {
		t.Errorf("LoadBootstrap(%s): %v", good, err)
	}
	missing := filepath.Join(dir, "missing.yaml")
	if _, err := LoadBootstrap(missing); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("LoadBootstrap(missing) = %v, want an error naming the file", err)
	}
	big := filepath.Join(dir, "big.yaml")
	if err := os.WriteFile(big, make([]byte, MaxBootstrapSize+1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadBootstrap(big); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("LoadBootstrap(big) = %v, want a size error", err)
	}
}
