package main

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"text/template"
)

// listenerName is the name of every bench sidecar's one listener.
const listenerName = "bench"

// Hop protocols between a client sidecar and a server sidecar, and the
// listener kinds of a sidecar.
const (
	// protoH2C is cleartext HTTP/2 (prior knowledge; the listener's codec
	// is AUTO so it also takes HTTP/1.1).
	protoH2C = "h2c"
	// protoTLS is HTTP/2 over TLS with SPIFFE SVIDs on both sides.
	protoTLS = "tls"
	// protoH3 is HTTP/3 over QUIC with SPIFFE SVIDs on both sides.
	protoH3 = "h3"
)

// svidFiles are the PEM files of one sidecar's X.509-SVID and the trust
// bundle it verifies its peer with.
type svidFiles struct {
	Cert, Key, Bundle string
	// PeerID is the SPIFFE ID the peer must present (exact URI SAN match).
	PeerID string
}

// sidecarConfig describes one bench sidecar's bootstrap: a listener with
// routes splitting gRPC TestService calls (cluster "grpc") from the rest
// (cluster "http"), optional extra HTTP filters and tracing, and the two
// clusters, both with the same upstream protocol.
type sidecarConfig struct {
	// Node is the node id.
	Node string
	// Listen is protoH2C, protoTLS (client certificate required) or
	// protoH3 (UDP, QUIC).
	Listen string
	// ListenTLS is the listener's SVID when Listen is protoTLS or protoH3.
	ListenTLS svidFiles
	// GRPCAddr and HTTPAddr are the clusters' one endpoint each.
	GRPCAddr, HTTPAddr string
	// Upstream is protoH2C, protoTLS or protoH3.
	Upstream string
	// UpstreamTLS is the client SVID when Upstream is protoTLS or protoH3.
	UpstreamTLS svidFiles
	// Filters are rendered http_filters entries placed before the router,
	// indented for the list under http_filters (10 spaces).
	Filters []string
	// TraceCollector, when set, is the OTLP/gRPC receiver every request's
	// spans go to (random_sampling 100%).
	TraceCollector string
}

// clusterTmpl is one cluster's data for sidecarTemplate.
type clusterTmpl struct {
	Name, Host string
	Port       uint16
	H3         bool
	Transport  string // rendered transport_socket, indented 4, or ""
}

// maxStreams is every cluster's circuit-breaker limit on connections,
// pending and active requests. Envoy's defaults (1024 each) would reject
// (503, "overflow") the streams beyond 1024 of the streaming scenario's
// 1600 long-lived ones, which a peer proxy carries; a mesh carrying that
// many streams raises them the same way.
const maxStreams = 100000

// sidecarTemplate renders a sidecarConfig (see renderSidecar). The same
// file runs under `envoy -c`.
var sidecarTemplate = template.Must(template.New("bootstrap").Parse(`# Rendered by meshd's test/bench harness.
node: { id: {{.Node}}, cluster: bench }
admin:
  address:
    socket_address: { address: 127.0.0.1, port_value: 0 }
static_resources:
  listeners:
  - name: {{.Listener}}
    address:
      socket_address: { {{if .QUIC}}protocol: UDP, {{end}}address: 127.0.0.1, port_value: 0 }
{{- if .QUIC}}
    udp_listener_config:
      quic_options: {}
{{- end}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {{.Listener}}
{{- if .QUIC}}
          codec_type: HTTP3
          http3_protocol_options: {}
{{- else}}
          codec_type: AUTO
{{- end}}
{{- if .Collector}}
          tracing:
            random_sampling: { value: 100 }
            provider:
              name: envoy.tracers.opentelemetry
              typed_config:
                "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
                grpc_service: { envoy_grpc: { cluster_name: otlp } }
                service_name: {{.Node}}
{{- end}}
          route_config:
            name: bench
            virtual_hosts:
            - name: backend
              domains: ["*"]
              routes:
              - match: { prefix: "/grpc.testing.TestService/" }
                route: { cluster: grpc, timeout: 0s }
              - match: { prefix: "/" }
                route: { cluster: http, timeout: 0s }
          http_filters:
{{- range .Filters}}
{{.}}
{{- end}}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
{{- if .ListenTransport}}
{{.ListenTransport}}
{{- end}}
  clusters:
{{- range .Clusters}}
  - name: {{.Name}}
    type: STATIC
    connect_timeout: 1s
    lb_policy: ROUND_ROBIN
    circuit_breakers:
      thresholds:
      - { max_connections: {{$.MaxStreams}}, max_pending_requests: {{$.MaxStreams}}, max_requests: {{$.MaxStreams}} }
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
{{- if .H3}}
          http3_protocol_options: {}
{{- else}}
          http2_protocol_options: {}
{{- end}}
{{- if .Transport}}
{{.Transport}}
{{- end}}
    load_assignment:
      cluster_name: {{.Name}}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: {{.Host}}, port_value: {{.Port}} }
{{- end}}
`))

// tlsContext renders the common_tls_context of f (SVID, trusted bundle,
// peer's SPIFFE ID), each line prefixed by indent.
func tlsContext(f svidFiles, indent string) string {
	s := fmt.Sprintf(`common_tls_context:
  tls_certificates:
  - certificate_chain: { filename: %q }
    private_key: { filename: %q }
  validation_context:
    trusted_ca: { filename: %q }
    match_typed_subject_alt_names:
    - san_type: URI
      matcher: { exact: %q }`, f.Cert, f.Key, f.Bundle, f.PeerID)
	return indent + strings.ReplaceAll(s, "\n", "\n"+indent)
}

// listenTransport renders the listener's transport_socket (indented for a
// filter chain entry), "" for cleartext.
func listenTransport(proto string, f svidFiles) (string, error) {
	switch proto {
	case protoH2C:
		return "", nil
	case protoTLS:
		return `      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
` + tlsContext(f, "          "), nil
	case protoH3:
		return `      transport_socket:
        name: envoy.transport_sockets.quic
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.quic.v3.QuicDownstreamTransport
          downstream_tls_context:
            require_client_certificate: true
` + tlsContext(f, "            "), nil
	}
	return "", fmt.Errorf("listener protocol %q: want %s, %s or %s", proto, protoH2C, protoTLS, protoH3)
}

// upstreamTransport renders a cluster's transport_socket (indented for a
// cluster), "" for cleartext.
func upstreamTransport(proto string, f svidFiles) (string, error) {
	switch proto {
	case protoH2C:
		return "", nil
	case protoTLS:
		return `    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
` + tlsContext(f, "        "), nil
	case protoH3:
		return `    transport_socket:
      name: envoy.transport_sockets.quic
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.quic.v3.QuicUpstreamTransport
        upstream_tls_context:
` + tlsContext(f, "          "), nil
	}
	return "", fmt.Errorf("upstream protocol %q: want %s, %s or %s", proto, protoH2C, protoTLS, protoH3)
}

// splitAddr parses "host:port" with a port in [1, 65535].
func splitAddr(what, addr string) (string, uint16, error) {
	host, portText, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("%s address %q: %w", what, addr, err)
	}
	port, err := strconv.ParseUint(portText, 10, 16)
	if err != nil || port == 0 {
		return "", 0, fmt.Errorf("%s address %q: port must be in [1, 65535]", what, addr)
	}
	return host, uint16(port), nil
}

// renderSidecar returns the Envoy v3 bootstrap of c.
func renderSidecar(c sidecarConfig) (string, error) {
	lt, err := listenTransport(c.Listen, c.ListenTLS)
	if err != nil {
		return "", fmt.Errorf("bootstrap %s: %w", c.Node, err)
	}
	ut, err := upstreamTransport(c.Upstream, c.UpstreamTLS)
	if err != nil {
		return "", fmt.Errorf("bootstrap %s: %w", c.Node, err)
	}
	var cs []clusterTmpl
	for _, e := range []struct{ name, addr string }{{"grpc", c.GRPCAddr}, {"http", c.HTTPAddr}} {
		host, port, err := splitAddr("bootstrap "+c.Node+": cluster "+e.name, e.addr)
		if err != nil {
			return "", err
		}
		cs = append(cs, clusterTmpl{Name: e.name, Host: host, Port: port, H3: c.Upstream == protoH3, Transport: ut})
	}
	if c.TraceCollector != "" {
		host, port, err := splitAddr("bootstrap "+c.Node+": trace collector", c.TraceCollector)
		if err != nil {
			return "", err
		}
		cs = append(cs, clusterTmpl{Name: "otlp", Host: host, Port: port})
	}
	var b strings.Builder
	err = sidecarTemplate.Execute(&b, struct {
		Node, Listener, Collector string
		QUIC                      bool
		MaxStreams                int
		Filters                   []string
		ListenTransport           string
		Clusters                  []clusterTmpl
	}{c.Node, listenerName, c.TraceCollector, c.Listen == protoH3, maxStreams, c.Filters, lt, cs})
	if err != nil {
		return "", fmt.Errorf("bootstrap %s: %w", c.Node, err)
	}
	return b.String(), nil
}

// rateLimitFilter is the http_filters entry running the token-bucket rate
// limit guest (filters/ratelimit/guest) from file with one global bucket of
// perSecond requests, so nothing is rejected at bench rates; Envoy's Wasm
// filter configuration as its documentation writes it.
func rateLimitFilter(file string, perSecond int64) string {
	return fmt.Sprintf(`          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: ratelimit
                root_id: ratelimit
                fail_open: false
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{"requests_per_unit": %[2]d, "unit": "second", "key": "global"}'
                vm_config:
                  vm_id: ratelimit
                  runtime: envoy.wasm.runtime.v8
                  code:
                    local:
                      filename: %[1]q`, file, perSecond)
}
