package config

import (
	"crypto/tls"
	"fmt"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"meshd.dev/meshd/mtls/mtlstest"
)

// staticSecretsBootstrap is a listener and a cluster taking their
// certificates and validation contexts from static_resources.secrets; the
// %[1]s, %[2]s and %[3]s are the certificate, key and CA bundle files.
// edits replace substrings to make variants.
const staticSecretsBootstrap = `
static_resources:
  secrets:
  - name: server_cert
    tls_certificate:
      certificate_chain: {filename: %[1]q}
      private_key: {filename: %[2]q}
  - name: peers
    validation_context:
      trusted_ca: {filename: %[3]q}
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
            tls_certificate_sds_secret_configs: [{name: server_cert}]
            validation_context_sds_secret_config: {name: peers}
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
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          tls_certificate_sds_secret_configs: [{name: server_cert}]
          combined_validation_context:
            default_validation_context:
              match_typed_subject_alt_names: [{san_type: URI, matcher: {prefix: "spiffe://test.example/"}}]
            validation_context_sds_secret_config: {name: peers}
    load_assignment:
      cluster_name: app
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 8080}}}}]}]
`

// TestStaticSecrets: an SdsSecretConfig without sds_config names a
// static_resources.secrets entry, which serves the listener's and the
// cluster's TLS contexts as if written inline; bad secrets and bad
// references are rejected with the field and the reason.
func TestStaticSecrets(t *testing.T) {
	ca := mtlstest.NewCA(t, "test.example")
	cert, key, bundle := mtlstest.WriteFiles(t, t.TempDir(), ca.Issue(t, "spiffe://test.example/ns/a/sa/b"), ca.Bundle())
	base := fmt.Sprintf(staticSecretsBootstrap, cert, key, bundle)
	const listenerRef = "tls_certificate_sds_secret_configs: [{name: server_cert}]\n            validation"
	for _, tc := range []struct {
		name     string
		old, new string
		want     string // "" means valid
	}{
		{name: "listener and cluster from static secrets"},
		{"unknown certificate secret", listenerRef, "tls_certificate_sds_secret_configs: [{name: nope}]\n            validation",
			`static_resources.listeners[0].filter_chains[0].transport_socket.typed_config.common_tls_context.tls_certificate_sds_secret_configs[0].name: no static_resources.secrets entry is named "nope"`},
		{"certificate reference to a validation secret", listenerRef, "tls_certificate_sds_secret_configs: [{name: peers}]\n            validation",
			`static_resources.listeners[0].filter_chains[0].transport_socket.typed_config.common_tls_context.tls_certificate_sds_secret_configs[0].name: static secret "peers" has no tls_certificate`},
		{"validation reference to a certificate secret", "validation_context_sds_secret_config: {name: peers}\n      filters",
			"validation_context_sds_secret_config: {name: server_cert}\n      filters",
			`static_resources.listeners[0].filter_chains[0].transport_socket.typed_config.common_tls_context.validation_context_sds_secret_config.name: static secret "server_cert" has no validation_context`},
		{"combined validation reference to a missing secret", "validation_context_sds_secret_config: {name: peers}\n    load_assignment",
			"validation_context_sds_secret_config: {name: gone}\n    load_assignment",
			`static_resources.clusters[0].transport_socket.typed_config.common_tls_context.combined_validation_context.validation_context_sds_secret_config.name: no static_resources.secrets entry is named "gone"`},
		{"duplicate secret name", "- name: peers\n", "- name: server_cert\n",
			`static_resources.secrets[1].name: duplicate secret name "server_cert" (first at static_resources.secrets[0])`},
		{"secret without a type", "    validation_context:\n      trusted_ca: {filename: " + fmt.Sprintf("%q", bundle) + "}\n", "",
			"static_resources.secrets[1]: one of tls_certificate or validation_context is required"},
		{"certificate secret without a key", "      private_key: {filename: " + fmt.Sprintf("%q", key) + "}\n", "",
			"static_resources.secrets[0].tls_certificate.private_key: required"},
		{"unsupported secret field", "  - name: peers\n", "  - name: tickets\n    session_ticket_keys: {keys: [{inline_string: x}]}\n  - name: peers\n",
			"static_resources.secrets[1].session_ticket_keys"},
		{"secret without a name", "  - name: peers\n", "  - name: peers\n  - validation_context: {trusted_ca: {inline_string: x}}\n  - name: other\n",
			"static_resources.secrets[2].name: required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc := base
			if tc.old != "" {
				if !strings.Contains(doc, tc.old) {
					t.Fatalf("edit %q not found in the bootstrap", tc.old)
				}
				doc = strings.Replace(doc, tc.old, tc.new, 1)
			}
			b, err := ParseBootstrap([]byte(doc), "secrets.yaml")
			if tc.want != "" {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("ParseBootstrap error = %v, want it to contain %q", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseBootstrap: %v", err)
			}
			written := proto.Clone(b)
			snap, err := Compile(b)
			if err != nil {
				t.Fatalf("Compile: %v", err)
			}
			if !proto.Equal(snap.Bootstrap, written) {
				t.Error("Compile changed the bootstrap it was given (/config_dump must show the references as written)")
			}
			l := snap.Listeners[0].TLS
			if l == nil || len(l.Certificates) != 1 || l.ClientAuth != tls.RequireAndVerifyClientCert || l.ClientCAs == nil {
				t.Fatalf("listener TLS = %+v, want the secret's certificate, client certificates required and verified against the secret's CA", l)
			}
			c := snap.Clusters[0].TLS
			if c == nil || len(c.Certificates) != 1 || c.VerifyConnection == nil {
				t.Fatalf("cluster TLS = %+v, want the secret's certificate and a SAN verifier over the secret's CA", c)
			}
			leaf := ca.Issue(t, "spiffe://test.example/ns/a/sa/b")
			other := mtlstest.NewCA(t, "test.example").Issue(t, "spiffe://test.example/ns/a/sa/b")
			for _, p := range []struct {
				name string
				cs   tls.ConnectionState
				ok   bool
			}{
				{"peer issued by the secret's CA", tls.ConnectionState{PeerCertificates: leaf.Certificates}, true},
				{"peer from another CA", tls.ConnectionState{PeerCertificates: other.Certificates}, false},
			} {
				if err := c.VerifyConnection(p.cs); (err == nil) != p.ok {
					t.Errorf("cluster VerifyConnection(%s) = %v, want ok %v", p.name, err, p.ok)
				}
			}
		})
	}
}

// TestStaticSecretsFromXDS: a listener from xDS naming a secret without
// sds_config is NACKed with the reason: static secrets serve the
// bootstrap's own listeners and clusters only.
func TestStaticSecretsFromXDS(t *testing.T) {
	b, err := ParseBootstrap([]byte(sdsBootstrap), "sds.yaml")
	if err != nil {
		t.Fatal(err)
	}
	l := proto.Clone(b.GetStaticResources().GetListeners()[0]).(*listenerv3.Listener)
	if err := ValidateListener(l, ResourceOptions{Dynamic: true}); err != nil {
		t.Fatalf("the SDS listener from xDS: %v", err)
	}
	ts := l.GetFilterChains()[0].GetTransportSocket()
	dtc, ok := unpack(ts.GetTypedConfig()).(*tlsv3.DownstreamTlsContext)
	if !ok {
		t.Fatal("transport socket is not a DownstreamTlsContext")
	}
	dtc.GetCommonTlsContext().GetTlsCertificateSdsSecretConfigs()[0].SdsConfig = nil
	a, err := anypb.New(dtc)
	if err != nil {
		t.Fatal(err)
	}
	ts.ConfigType = &corev3.TransportSocket_TypedConfig{TypedConfig: a}
	err = ValidateListener(l, ResourceOptions{Dynamic: true})
	const want = "transport_socket.typed_config.common_tls_context.tls_certificate_sds_secret_configs[0].sds_config: required: a secret without sds_config is one of static_resources.secrets, which only the bootstrap's static listeners and clusters can name"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("ValidateListener = %v, want it to contain %q", err, want)
	}
}
