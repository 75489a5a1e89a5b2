package config

import (
	"strings"
	"testing"
)

// sdsBootstrap is a listener and a cluster taking their secrets from the
// pipe cluster spire_agent; edits replace substrings to make variants.
const sdsBootstrap = `
static_resources:
  listeners:
  - name: inbound
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificate_sds_secret_configs:
            - name: default
              sds_config: {api_config_source: {api_type: GRPC, transport_api_version: V3, grpc_services: [{envoy_grpc: {cluster_name: spire_agent}}]}}
            combined_validation_context:
              default_validation_context:
                match_typed_subject_alt_names: [{san_type: URI, matcher: {prefix: "spiffe://td/ns/demo/"}}]
              validation_context_sds_secret_config:
                name: ROOTCA
                sds_config: {api_config_source: {api_type: GRPC, transport_api_version: V3, grpc_services: [{envoy_grpc: {cluster_name: spire_agent}}]}}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: in
          route_config:
            virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: "/"}, route: {cluster: app}}]}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: app
    type: STATIC
    load_assignment:
      cluster_name: app
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 8080}}}}]}]
  - name: spire_agent
    type: STATIC
    load_assignment:
      cluster_name: spire_agent
      endpoints: [{lb_endpoints: [{endpoint: {address: {pipe: {path: /run/spire/agent.sock}}}}]}]
`

// TestValidateSDS: SDS secret configs and pipe identity clusters are
// accepted; misuses are rejected with the field and the reason.
func TestValidateSDS(t *testing.T) {
	for _, tc := range []struct {
		name     string
		old, new string
		want     string // "" means valid
	}{
		{"valid", "", "", ""},
		{"client certificate not required", "require_client_certificate: true", "require_client_certificate: false",
			"transport_socket.typed_config.require_client_certificate: must be true with SDS secrets"},
		{"pipe cluster as a route target", "route: {cluster: app}", "route: {cluster: spire_agent}",
			`cluster "spire_agent" has pipe endpoints: it serves only as an SDS or Workload API source`},
		{"REST sds_config", "{api_type: GRPC, transport_api_version: V3, grpc_services: [{envoy_grpc: {cluster_name: spire_agent}}]}}\n            combined",
			"{api_type: REST, transport_api_version: V3, grpc_services: [{envoy_grpc: {cluster_name: spire_agent}}]}}\n            combined",
			"tls_certificate_sds_secret_configs[0]: sds_config.api_config_source.api_type: REST is not supported"},
		{"pipe endpoint in a STRICT_DNS cluster", "  - name: spire_agent\n    type: STATIC", "  - name: spire_agent\n    type: STRICT_DNS",
			"pipe endpoints need a STATIC cluster"},
		{"pipe listener", "address: {socket_address: {address: 127.0.0.1, port_value: 0}}", "address: {pipe: {path: /tmp/l.sock}}",
			"static_resources.listeners[0].address: a socket_address is required (listeners on pipes are not supported)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			y := sdsBootstrap
			if tc.old != "" {
				if !strings.Contains(y, tc.old) {
					t.Fatalf("edit %q does not apply", tc.old)
				}
				y = strings.Replace(y, tc.old, tc.new, 1)
			}
			_, err := ParseBootstrap([]byte(y), "sds.yaml")
			if tc.want == "" {
				if err != nil {
					t.Fatalf("valid bootstrap rejected: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v\nwant it to contain %q", err, tc.want)
			}
		})
	}
}

// TestCompileSDSWithoutSecrets: compiling an SDS context without an
// identity manager fails naming the field, and the pipe cluster is not
// compiled as an upstream.
func TestCompileSDSWithoutSecrets(t *testing.T) {
	b, err := ParseBootstrap([]byte(sdsBootstrap), "sds.yaml")
	if err != nil {
		t.Fatal(err)
	}
	_, err = Compile(b)
	if err == nil || !strings.Contains(err.Error(), "static_resources.listeners[0]: filter_chains[0].transport_socket.typed_config.common_tls_context: SDS secrets are not available") {
		t.Fatalf("err = %v", err)
	}
	if IsIdentityCluster(b.GetStaticResources().GetClusters()[0]) || !IsIdentityCluster(b.GetStaticResources().GetClusters()[1]) {
		t.Error("IsIdentityCluster: want only spire_agent")
	}
}
