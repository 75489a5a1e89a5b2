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

// Names used by the bootstrap Bootstrap renders.
const (
	// DefaultListenerName is the listener name when BootstrapParams leaves
	// it empty.
	DefaultListenerName = "ingress"
	// BackendCluster is the name of the one cluster, as stats name it
	// (cluster.backend.upstream_rq_total).
	BackendCluster = "backend"
)

// Upstream protocols for BootstrapParams.UpstreamProtocol.
const (
	UpstreamHTTP1 = "http1"
	UpstreamHTTP2 = "http2"
)

// BootstrapParams describes the one-listener, one-cluster bootstrap of
// Bootstrap. The zero value of every field but BackendAddr has a default.
type BootstrapParams struct {
	// BackendAddr is the backend's "ip:port"; required.
	BackendAddr string
	// UpstreamProtocol is UpstreamHTTP1 or UpstreamHTTP2 (the default, for
	// gRPC): the cluster's explicit_http_config.
	UpstreamProtocol string
	// ListenerName names the listener (DefaultListenerName if empty).
	ListenerName string
	// StatPrefix is the HTTP connection manager's stat_prefix (the listener
	// name if empty), as in http.<stat_prefix>.downstream_rq_total.
	StatPrefix string
	// RouteTimeout is the route's timeout; 0 disables it, as streaming
	// calls need.
	RouteTimeout time.Duration
	// ConnectTimeout is the cluster's connect_timeout (1s if zero).
	ConnectTimeout time.Duration
}

// bootstrapParts are the template pieces every bootstrap of this package
// shares, each invoked at the indentation it is written with: the admin
// server on 127.0.0.1:0, the HTTP connection manager's name and type, a
// route of every path to .Cluster with timeout .RouteTimeout, the router
// filter, the upstream HttpProtocolOptions' key and type, and the
// load_assignment of .Cluster's one endpoint .BackendHost:.BackendPort.
var bootstrapParts = template.Must(template.New("parts").Funcs(template.FuncMap{
	"duration": protoDuration,
}).Parse(`{{define "admin"}}admin:
  address:
    socket_address: { address: 127.0.0.1, port_value: 0 }
{{- end}}
{{define "hcm"}}      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
{{- end}}
{{define "routeAll"}}            virtual_hosts:
            - name: backend
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route:
                  cluster: {{.Cluster}}
                  timeout: {{duration .RouteTimeout}}
{{- end}}
{{define "router"}}          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
{{- end}}
{{define "protocolOptions"}}    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
{{- end}}
{{define "loadAssignment"}}    load_assignment:
      cluster_name: {{.Cluster}}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: {{.BackendHost}}, port_value: {{.BackendPort}} }
{{- end}}`))

// bootstrapTemplate parses text with bootstrapParts' definitions.
func bootstrapTemplate(name, text string) *template.Template {
	return template.Must(template.Must(bootstrapParts.Clone()).New(name).Parse(text))
}

var bootstrapTmpl = bootstrapTemplate("bootstrap", `# One HTTP listener in front of one STATIC cluster; rendered by testutil.Bootstrap.
node:
  id: e2e-sidecar
  cluster: e2e
{{template "admin"}}
static_resources:
  listeners:
  - name: {{.ListenerName}}
    address:
      socket_address: { address: 127.0.0.1, port_value: 0 }
    filter_chains:
    - filters:
{{template "hcm"}}
          stat_prefix: {{.StatPrefix}}
          codec_type: AUTO
          route_config:
            name: local_route
{{template "routeAll" .}}
{{template "router"}}
  clusters:
  - name: {{.Cluster}}
    type: STATIC
    connect_timeout: {{duration .ConnectTimeout}}
    lb_policy: ROUND_ROBIN
{{template "protocolOptions"}}
        explicit_http_config:
{{- if .HTTP2}}
          http2_protocol_options: {}
{{- else}}
          http_protocol_options: {}
{{- end}}
{{template "loadAssignment" .}}
`)

// Bootstrap renders an Envoy v3 bootstrap (YAML) with admin on 127.0.0.1:0,
// one listener on 127.0.0.1:0 with an HTTP connection manager (codec AUTO)
// routing every path to cluster BackendCluster, a STATIC cluster with one
// endpoint at p.BackendAddr and an explicit upstream protocol. The same text
// is accepted by `envoy -c`.
func Bootstrap(p BootstrapParams) (string, error) {
	host, port, err := endpointAddr("bootstrap: BackendAddr", p.BackendAddr)
	if err != nil {
		return "", err
	}
	if p.RouteTimeout < 0 || p.ConnectTimeout < 0 {
		return "", fmt.Errorf("bootstrap: timeouts must not be negative (route %v, connect %v)", p.RouteTimeout, p.ConnectTimeout)
	}
	var http2 bool
	switch p.UpstreamProtocol {
	case "", UpstreamHTTP2:
		http2 = true
	case UpstreamHTTP1:
	default:
		return "", fmt.Errorf("bootstrap: UpstreamProtocol %q: want %q or %q", p.UpstreamProtocol, UpstreamHTTP1, UpstreamHTTP2)
	}
	listener := p.ListenerName
	if listener == "" {
		listener = DefaultListenerName
	}
	prefix := p.StatPrefix
	if prefix == "" {
		prefix = listener
	}
	connect := p.ConnectTimeout
	if connect == 0 {
		connect = time.Second
	}
	var b strings.Builder
	err = bootstrapTmpl.Execute(&b, map[string]any{
		"ListenerName":   listener,
		"StatPrefix":     prefix,
		"Cluster":        BackendCluster,
		"RouteTimeout":   p.RouteTimeout,
		"ConnectTimeout": connect,
		"HTTP2":          http2,
		"BackendHost":    host,
		"BackendPort":    port,
	})
	if err != nil {
		return "", fmt.Errorf("bootstrap: %w", err)
	}
	return b.String(), nil
}

// protoDuration formats d as the JSON mapping of google.protobuf.Duration
// ("1.5s").
func protoDuration(d time.Duration) string {
	return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) + "s"
}

// MustBootstrap is Bootstrap for tests: it fails the test on an error.
func MustBootstrap(t testing.TB, p BootstrapParams) string {
	t.Helper()
	return mustRender(t, Bootstrap, p)
}

// mustRender returns render(p), failing the test on an error.
func mustRender[P any](t testing.TB, render func(P) (string, error), p P) string {
	t.Helper()
	s, err := render(p)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// endpointAddr splits addr ("ip:port", a non-zero port) for a bootstrap's
// socket_address; errors start with field.
func endpointAddr(field, addr string) (host string, port uint64, err error) {
	host, portText, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("%s %q: %w", field, addr, err)
	}
	port, err = strconv.ParseUint(portText, 10, 16)
	if err != nil || port == 0 {
		return "", 0, fmt.Errorf("%s %q: port must be in [1, 65535]", field, addr)
	}
	return host, port, nil
}
