package testutil

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"text/template"
	"time"
)

// H3ListenerName is the name of the HTTP/3 listener H3Bootstrap renders
// (Sidecar.ListenerAddr(t, H3ListenerName) is its UDP address); its
// connection manager's stat_prefix is the same ("http.h3.*" stats).
const H3ListenerName = "h3"

// H3BootstrapParams describes the one-HTTP/3-listener bootstrap of
// H3Bootstrap. CertFile, KeyFile and BackendAddr are required; every other
// field's zero value leaves the field out of the bootstrap, so the
// sidecar's default applies.
type H3BootstrapParams struct {
	// Port is the UDP port to bind on 127.0.0.1 (0: one the OS picks).
	Port int
	// CertFile and KeyFile are the server certificate chain and its key
	// (PEM), the QUIC transport socket's static tls_certificates.
	CertFile, KeyFile string
	// BackendAddr is the "ip:port" of the HTTP/2 backend every request is
	// routed to (cluster BackendCluster, no route timeout).
	BackendAddr string
	// MaxConcurrentStreams is quic_protocol_options.max_concurrent_streams.
	MaxConcurrentStreams int
	// IdleTimeout and HandshakeTimeout are quic_options.idle_timeout and
	// crypto_handshake_timeout.
	IdleTimeout, HandshakeTimeout time.Duration
	// Retry is the listener's meshd.quic retry policy ("always", "never",
	// "under_load") and RetryThreshold its attempts per second.
	Retry          string
	RetryThreshold int
	// StatelessResetSecretFile is meshd.quic's
	// stateless_reset_secret_file.
	StatelessResetSecretFile string
}

var h3BootstrapTemplate = template.Must(template.New("h3").Funcs(template.FuncMap{
	"duration": protoDuration,
}).Parse(`# One HTTP/3 listener in front of one STATIC HTTP/2 cluster; rendered by testutil.H3Bootstrap.
node: { id: h3-sidecar, cluster: test }
admin:
  address:
    socket_address: { address: 127.0.0.1, port_value: 0 }
static_resources:
  listeners:
  - name: {{.Listener}}
    address:
      socket_address: { protocol: UDP, address: 127.0.0.1, port_value: {{.Port}} }
    udp_listener_config:
{{- if not (or .IdleTimeout .HandshakeTimeout .MaxConcurrentStreams)}}
      quic_options: {}
{{- else}}
      quic_options:
{{- end}}
{{- if .IdleTimeout}}
        idle_timeout: {{duration .IdleTimeout}}
{{- end}}
{{- if .HandshakeTimeout}}
        crypto_handshake_timeout: {{duration .HandshakeTimeout}}
{{- end}}
{{- if .MaxConcurrentStreams}}
        quic_protocol_options: { max_concurrent_streams: {{.MaxConcurrentStreams}} }
{{- end}}
{{- if or .Retry .RetryThreshold .StatelessResetSecretFile}}
    metadata:
      filter_metadata:
        meshd.quic:
{{- if .Retry}}
          retry: {{.Retry}}
{{- end}}
{{- if .RetryThreshold}}
          retry_threshold: {{.RetryThreshold}}
{{- end}}
{{- if .StatelessResetSecretFile}}
          stateless_reset_secret_file: {{printf "%q" .StatelessResetSecretFile}}
{{- end}}
{{- end}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.quic
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.quic.v3.QuicDownstreamTransport
          downstream_tls_context:
            common_tls_context:
              tls_certificates:
              - certificate_chain: { filename: {{printf "%q" .CertFile}} }
                private_key: { filename: {{printf "%q" .KeyFile}} }
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {{.Listener}}
          codec_type: HTTP3
          http3_protocol_options: {}
          route_config:
            virtual_hosts:
            - name: backend
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: {{.Cluster}}, timeout: 0s }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: {{.Cluster}}
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    load_assignment:
      cluster_name: {{.Cluster}}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: {{.BackendHost}}, port_value: {{.BackendPort}} }
`))

// H3Bootstrap renders an Envoy v3 bootstrap (YAML) with admin on
// 127.0.0.1:0 and one listener, H3ListenerName, on UDP 127.0.0.1:p.Port: a
// QUIC transport socket with p's static certificate, an HTTP connection
// manager with codec HTTP3 routing every path, without a timeout, to a
// STATIC cluster BackendCluster of one HTTP/2 endpoint at p.BackendAddr.
// It returns an error naming the field when a required one is missing or
// out of range.
func H3Bootstrap(p H3BootstrapParams) (string, error) {
	host, portText, err := net.SplitHostPort(p.BackendAddr)
	if err != nil {
		return "", fmt.Errorf("h3 bootstrap: BackendAddr %q: %w", p.BackendAddr, err)
	}
	port, err := strconv.ParseUint(portText, 10, 16)
	if err != nil || port == 0 {
		return "", fmt.Errorf("h3 bootstrap: BackendAddr %q: port must be in [1, 65535]", p.BackendAddr)
	}
	switch {
	case p.CertFile == "" || p.KeyFile == "":
		return "", fmt.Errorf("h3 bootstrap: CertFile %q and KeyFile %q are both required", p.CertFile, p.KeyFile)
	case p.Port < 0 || p.Port > 65535:
		return "", fmt.Errorf("h3 bootstrap: Port %d: must be in [0, 65535]", p.Port)
	case p.MaxConcurrentStreams < 0 || p.RetryThreshold < 0:
		return "", fmt.Errorf("h3 bootstrap: MaxConcurrentStreams %d and RetryThreshold %d must not be negative", p.MaxConcurrentStreams, p.RetryThreshold)
	case p.IdleTimeout < 0 || p.HandshakeTimeout < 0:
		return "", fmt.Errorf("h3 bootstrap: IdleTimeout %v and HandshakeTimeout %v must not be negative", p.IdleTimeout, p.HandshakeTimeout)
	}
	var b strings.Builder
	if err := h3BootstrapTemplate.Execute(&b, struct {
		H3BootstrapParams
		Listener, Cluster, BackendHost string
		BackendPort                    uint64
	}{p, H3ListenerName, BackendCluster, host, port}); err != nil {
		return "", fmt.Errorf("h3 bootstrap: %w", err)
	}
	return b.String(), nil
}

// MustH3Bootstrap is H3Bootstrap for tests: it fails the test on an error.
func MustH3Bootstrap(t testing.TB, p H3BootstrapParams) string {
	t.Helper()
	s, err := H3Bootstrap(p)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
