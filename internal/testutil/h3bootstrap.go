package testutil

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
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

var h3BootstrapTemplate = bootstrapTemplate("h3", `# One HTTP/3 listener in front of one STATIC HTTP/2 cluster; rendered by testutil.H3Bootstrap.
node: { id: h3-sidecar, cluster: test }
{{template "admin"}}
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
{{template "hcm"}}
          stat_prefix: {{.Listener}}
          codec_type: HTTP3
          http3_protocol_options: {}
          route_config:
{{template "routeAll" .}}
{{template "router"}}
  clusters:
  - name: {{.Cluster}}
    type: STATIC
    connect_timeout: 1s
{{template "protocolOptions"}}
        explicit_http_config: { http2_protocol_options: {} }
{{template "loadAssignment" .}}
`)

// H3Bootstrap renders an Envoy v3 bootstrap (YAML) with admin on
// 127.0.0.1:0 and one listener, H3ListenerName, on UDP 127.0.0.1:p.Port: a
// QUIC transport socket with p's static certificate, an HTTP connection
// manager with codec HTTP3 routing every path, without a timeout, to a
// STATIC cluster BackendCluster of one HTTP/2 endpoint at p.BackendAddr.
// It returns an error naming the field when a required one is missing or
// out of range.
func H3Bootstrap(p H3BootstrapParams) (string, error) {
	host, port, err := endpointAddr("h3 bootstrap: BackendAddr", p.BackendAddr)
	if err != nil {
		return "", err
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
		RouteTimeout                   time.Duration
	}{p, H3ListenerName, BackendCluster, host, port, 0}); err != nil {
		return "", fmt.Errorf("h3 bootstrap: %w", err)
	}
	return b.String(), nil
}

// MustH3Bootstrap is H3Bootstrap for tests: it fails the test on an error.
func MustH3Bootstrap(t testing.TB, p H3BootstrapParams) string {
	t.Helper()
	return mustRender(t, H3Bootstrap, p)
}

// H3UpstreamParams describes the bootstrap of H3UpstreamBootstrap: an HTTP
// listener in front of one QUIC upstream. ListenerName, Cluster,
// UpstreamAddr, TrustedCA and PeerSAN are required.
type H3UpstreamParams struct {
	// ListenerName names the TCP listener on 127.0.0.1:0 (codec AUTO);
	// it is also the connection manager's stat_prefix.
	ListenerName string
	// Cluster names the STATIC cluster, as stats name it
	// (cluster.<Cluster>.upstream_cx_http3_total).
	Cluster string
	// UpstreamAddr is the "ip:port" of the one endpoint (UDP for HTTP/3,
	// TCP for the HTTP/2 fallback).
	UpstreamAddr string
	// TrustedCA is the PEM bundle the upstream's certificate must chain to,
	// and PeerSAN the URI SAN (a SPIFFE ID) it must carry.
	TrustedCA, PeerSAN string
	// CertFile and KeyFile, when set, are the client certificate offered
	// to the upstream.
	CertFile, KeyFile string
	// Fallback selects auto_config: HTTP/3 first, HTTP/2 over TCP while
	// HTTP/3 is marked broken. Otherwise explicit_http_config HTTP/3.
	Fallback bool
	// MaxConcurrentStreams, IdleTimeout and Keepalive are the upstream
	// HTTP/3 quic_protocol_options' max_concurrent_streams,
	// idle_network_timeout (0: unset) and connection_keepalive.max_interval
	// (nil: unset; 0 turns keepalive off).
	MaxConcurrentStreams int
	IdleTimeout          time.Duration
	Keepalive            *time.Duration
	// RouteTimeout is the route's timeout (0: none) and ConnectTimeout the
	// cluster's connect_timeout (0: 1s).
	RouteTimeout, ConnectTimeout time.Duration
}

var h3UpstreamTemplate = bootstrapTemplate("h3up", `# One HTTP listener in front of one STATIC HTTP/3 cluster; rendered by testutil.H3UpstreamBootstrap.
node: { id: h3-client, cluster: test }
{{template "admin"}}
static_resources:
  listeners:
  - name: {{.ListenerName}}
    address:
      socket_address: { address: 127.0.0.1, port_value: 0 }
    filter_chains:
    - filters:
{{template "hcm"}}
          stat_prefix: {{.ListenerName}}
          codec_type: AUTO
          route_config:
{{template "routeAll" .}}
{{template "router"}}
  clusters:
  - name: {{.Cluster}}
    type: STATIC
    connect_timeout: {{duration .ConnectTimeout}}
{{template "protocolOptions"}}
{{- if .Fallback}}
        auto_config:
          http2_protocol_options: {}
          http3_protocol_options: {{.HTTP3Options}}
          alternate_protocols_cache_options: { name: {{.Cluster}} }
{{- else}}
        explicit_http_config:
          http3_protocol_options: {{.HTTP3Options}}
{{- end}}
    transport_socket:
      name: envoy.transport_sockets.quic
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.quic.v3.QuicUpstreamTransport
        upstream_tls_context:
          common_tls_context:
{{- if .CertFile}}
            tls_certificates:
            - certificate_chain: { filename: {{printf "%q" .CertFile}} }
              private_key: { filename: {{printf "%q" .KeyFile}} }
{{- end}}
            validation_context:
              trusted_ca: { filename: {{printf "%q" .TrustedCA}} }
              match_typed_subject_alt_names:
              - san_type: URI
                matcher: { exact: {{printf "%q" .PeerSAN}} }
{{template "loadAssignment" .}}
`)

// H3UpstreamBootstrap renders an Envoy v3 bootstrap (YAML) with admin on
// 127.0.0.1:0 and one HTTP listener, p.ListenerName on 127.0.0.1:0 (codec
// AUTO), routing every path to the STATIC cluster p.Cluster: one endpoint
// at p.UpstreamAddr reached over a QUIC transport socket that verifies the
// peer against p.TrustedCA and p.PeerSAN, over HTTP/3 only or, with
// p.Fallback, HTTP/3 with HTTP/2 as Envoy's auto_config falls back. It
// returns an error naming the field when a required one is missing or out
// of range.
func H3UpstreamBootstrap(p H3UpstreamParams) (string, error) {
	host, port, err := endpointAddr("h3 upstream bootstrap: UpstreamAddr", p.UpstreamAddr)
	if err != nil {
		return "", err
	}
	switch {
	case p.ListenerName == "" || p.Cluster == "":
		return "", fmt.Errorf("h3 upstream bootstrap: ListenerName %q and Cluster %q are both required", p.ListenerName, p.Cluster)
	case p.TrustedCA == "" || p.PeerSAN == "":
		return "", fmt.Errorf("h3 upstream bootstrap: TrustedCA %q and PeerSAN %q are both required", p.TrustedCA, p.PeerSAN)
	case (p.CertFile == "") != (p.KeyFile == ""):
		return "", fmt.Errorf("h3 upstream bootstrap: CertFile %q and KeyFile %q go together", p.CertFile, p.KeyFile)
	case p.MaxConcurrentStreams < 0:
		return "", fmt.Errorf("h3 upstream bootstrap: MaxConcurrentStreams %d must not be negative", p.MaxConcurrentStreams)
	case p.RouteTimeout < 0 || p.ConnectTimeout < 0 || p.IdleTimeout < 0 || (p.Keepalive != nil && *p.Keepalive < 0):
		return "", fmt.Errorf("h3 upstream bootstrap: RouteTimeout %v, ConnectTimeout %v, IdleTimeout %v and Keepalive must not be negative", p.RouteTimeout, p.ConnectTimeout, p.IdleTimeout)
	}
	var quicOpts []string
	if p.MaxConcurrentStreams > 0 {
		quicOpts = append(quicOpts, "max_concurrent_streams: "+strconv.Itoa(p.MaxConcurrentStreams))
	}
	if p.IdleTimeout > 0 {
		quicOpts = append(quicOpts, "idle_network_timeout: "+protoDuration(p.IdleTimeout))
	}
	if p.Keepalive != nil {
		quicOpts = append(quicOpts, "connection_keepalive: { max_interval: "+protoDuration(*p.Keepalive)+" }")
	}
	http3Options := "{}"
	if len(quicOpts) > 0 {
		http3Options = "{ quic_protocol_options: { " + strings.Join(quicOpts, ", ") + " } }"
	}
	if p.ConnectTimeout == 0 {
		p.ConnectTimeout = time.Second
	}
	var b strings.Builder
	if err := h3UpstreamTemplate.Execute(&b, struct {
		H3UpstreamParams
		HTTP3Options, BackendHost string
		BackendPort               uint64
	}{p, http3Options, host, port}); err != nil {
		return "", fmt.Errorf("h3 upstream bootstrap: %w", err)
	}
	return b.String(), nil
}

// MustH3UpstreamBootstrap is H3UpstreamBootstrap for tests: it fails the
// test on an error.
func MustH3UpstreamBootstrap(t testing.TB, p H3UpstreamParams) string {
	t.Helper()
	return mustRender(t, H3UpstreamBootstrap, p)
}
