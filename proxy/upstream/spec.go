// Package upstream holds meshd's clusters: their compiled settings (Spec),
// their endpoints and load balancer, and the connection pools per (cluster,
// endpoint, protocol) that carry upstream streams.
//
// A Spec is immutable and compiled from an Envoy v3 Cluster. The Manager owns
// the live clusters; applying a new set of specs keeps the hosts and pools of
// clusters whose spec did not change, so a config swap drops no connection.
package upstream

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"strconv"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/proto"

	"meshd.dev/meshd/proxy/datasource"
	"meshd.dev/meshd/proxy/lb"
)

// Protocol is the HTTP version a cluster speaks to its endpoints.
type Protocol int

// Upstream protocols.
const (
	HTTP1 Protocol = iota
	HTTP2
)

func (p Protocol) String() string {
	if p == HTTP2 {
		return "HTTP/2"
	}
	return "HTTP/1.1"
}

// Discovery is how a cluster finds its endpoints.
type Discovery int

// Supported discovery types.
const (
	Static Discovery = iota
	StrictDNS
)

// Endpoint is one configured endpoint: an IP (STATIC) or a host name
// (STRICT_DNS) with a port.
type Endpoint struct {
	Host   string
	Port   int
	Weight uint32
}

// HTTP2Options are the HTTP/2 settings a cluster uses on its connections.
type HTTP2Options struct {
	MaxConcurrentStreams        uint32
	InitialStreamWindowSize     uint32
	InitialConnectionWindowSize uint32
	KeepaliveInterval           time.Duration
	KeepaliveTimeout            time.Duration
}

// Spec is a compiled, immutable cluster.
type Spec struct {
	Name           string
	Discovery      Discovery
	Endpoints      []Endpoint
	DNSRefreshRate time.Duration
	LBPolicy       string // lb registry name: ROUND_ROBIN, LEAST_REQUEST, RANDOM
	ConnectTimeout time.Duration
	Protocol       Protocol
	HTTP2          HTTP2Options
	// IdleTimeout closes upstream connections idle this long (Envoy default 1h).
	IdleTimeout time.Duration
	// MaxConnections is circuit_breakers max_connections (default 1024).
	MaxConnections int
	// TLS is the client TLS config, nil for plaintext.
	TLS *tls.Config

	raw *clusterv3.Cluster
}

// Equal reports whether two specs come from the same cluster config.
func (s *Spec) Equal(o *Spec) bool { return proto.Equal(s.raw, o.raw) }

// Raw returns the cluster proto the spec was compiled from. Callers must not
// modify it.
func (s *Spec) Raw() *clusterv3.Cluster { return s.raw }

const httpProtocolOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

// CompileCluster validates c's semantics meshd needs and compiles it.
// Errors name the field.
func CompileCluster(c *clusterv3.Cluster) (*Spec, error) {
	s := &Spec{
		Name:           c.GetName(),
		DNSRefreshRate: 5 * time.Second,
		LBPolicy:       "ROUND_ROBIN",
		ConnectTimeout: 5 * time.Second,
		IdleTimeout:    time.Hour,
		MaxConnections: 1024,
		raw:            c,
	}
	if s.Name == "" {
		return nil, fmt.Errorf("name: must not be empty")
	}
	switch t := c.GetType(); t {
	case clusterv3.Cluster_STATIC:
		s.Discovery = Static
	case clusterv3.Cluster_STRICT_DNS:
		s.Discovery = StrictDNS
	default:
		return nil, fmt.Errorf("type: %s is not supported (STATIC, STRICT_DNS)", t)
	}
	switch p := c.GetLbPolicy(); p {
	case clusterv3.Cluster_ROUND_ROBIN, clusterv3.Cluster_LEAST_REQUEST, clusterv3.Cluster_RANDOM:
		s.LBPolicy = p.String()
		if _, ok := lb.Get(s.LBPolicy); !ok {
			return nil, fmt.Errorf("lb_policy: %s has no registered load balancer", p)
		}
	default:
		return nil, fmt.Errorf("lb_policy: %s is not supported (ROUND_ROBIN, LEAST_REQUEST, RANDOM)", p)
	}
	if d := c.GetConnectTimeout(); d != nil {
		s.ConnectTimeout = d.AsDuration()
		if s.ConnectTimeout <= 0 {
			return nil, fmt.Errorf("connect_timeout: must be positive")
		}
	}
	if d := c.GetDnsRefreshRate(); d != nil {
		s.DNSRefreshRate = d.AsDuration()
	}
	for _, t := range c.GetCircuitBreakers().GetThresholds() {
		if t.GetPriority() == corev3.RoutingPriority_DEFAULT && t.GetMaxConnections() != nil {
			s.MaxConnections = int(t.GetMaxConnections().GetValue())
		}
	}
	if err := s.compileEndpoints(c); err != nil {
		return nil, err
	}
	if err := s.compileProtocol(c); err != nil {
		return nil, err
	}
	if ts := c.GetTransportSocket(); ts != nil {
		var utc tlsv3.UpstreamTlsContext
		if err := ts.GetTypedConfig().UnmarshalTo(&utc); err != nil {
			return nil, fmt.Errorf("transport_socket.typed_config: %w", err)
		}
		cfg, err := clientTLS(&utc, s.Protocol)
		if err != nil {
			return nil, fmt.Errorf("transport_socket.typed_config: %w", err)
		}
		s.TLS = cfg
	}
	return s, nil
}

func (s *Spec) compileEndpoints(c *clusterv3.Cluster) error {
	for i, lep := range c.GetLoadAssignment().GetEndpoints() {
		for j, lb := range lep.GetLbEndpoints() {
			path := fmt.Sprintf("load_assignment.endpoints[%d].lb_endpoints[%d]", i, j)
			sa := lb.GetEndpoint().GetAddress().GetSocketAddress()
			if sa == nil {
				return fmt.Errorf("%s.endpoint.address: a socket_address is required", path)
			}
			port, ok := sa.GetPortSpecifier().(*corev3.SocketAddress_PortValue)
			if !ok || port.PortValue == 0 || port.PortValue > 65535 {
				return fmt.Errorf("%s.endpoint.address.socket_address.port_value: must be 1..65535", path)
			}
			if s.Discovery == Static && net.ParseIP(sa.GetAddress()) == nil {
				return fmt.Errorf("%s.endpoint.address.socket_address.address: %q is not an IP address (a STATIC cluster needs IPs; use STRICT_DNS for names)", path, sa.GetAddress())
			}
			w := uint32(1)
			if lb.GetLoadBalancingWeight() != nil {
				w = lb.GetLoadBalancingWeight().GetValue()
			}
			s.Endpoints = append(s.Endpoints, Endpoint{Host: sa.GetAddress(), Port: int(port.PortValue), Weight: w})
		}
	}
	return nil
}

func (s *Spec) compileProtocol(c *clusterv3.Cluster) error {
	var h2 *corev3.Http2ProtocolOptions
	var common *corev3.HttpProtocolOptions
	if anyOpt, ok := c.GetTypedExtensionProtocolOptions()[httpProtocolOptionsKey]; ok {
		var o httpv3.HttpProtocolOptions
		path := "typed_extension_protocol_options[" + strconv.Quote(httpProtocolOptionsKey) + "]"
		if err := anyOpt.UnmarshalTo(&o); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		common = o.GetCommonHttpProtocolOptions()
		switch {
		case o.GetExplicitHttpConfig() != nil:
			e := o.GetExplicitHttpConfig()
			if e.GetHttp2ProtocolOptions() != nil {
				s.Protocol = HTTP2
				h2 = e.GetHttp2ProtocolOptions()
			} else if e.GetHttp3ProtocolOptions() != nil {
				return fmt.Errorf("%s.explicit_http_config.http3_protocol_options: HTTP/3 upstreams are not supported yet", path)
			}
		case o.GetUpstreamProtocolOptions() != nil:
			return fmt.Errorf("%s: only explicit_http_config is supported", path)
		}
	} else if c.GetHttp2ProtocolOptions() != nil { //nolint:staticcheck // deprecated field still accepted by Envoy
		s.Protocol = HTTP2
		h2 = c.GetHttp2ProtocolOptions() //nolint:staticcheck
	}
	if common == nil {
		common = c.GetCommonHttpProtocolOptions() //nolint:staticcheck
	}
	if d := common.GetIdleTimeout(); d != nil {
		s.IdleTimeout = d.AsDuration()
	}
	if h2 != nil {
		s.HTTP2.MaxConcurrentStreams = h2.GetMaxConcurrentStreams().GetValue()
		s.HTTP2.InitialStreamWindowSize = h2.GetInitialStreamWindowSize().GetValue()
		s.HTTP2.InitialConnectionWindowSize = h2.GetInitialConnectionWindowSize().GetValue()
		if ka := h2.GetConnectionKeepalive(); ka != nil {
			s.HTTP2.KeepaliveInterval = ka.GetInterval().AsDuration()
			s.HTTP2.KeepaliveTimeout = ka.GetTimeout().AsDuration()
		}
	}
	return nil
}

// clientTLS builds a client tls.Config from static certificate files in an
// UpstreamTlsContext. SDS-delivered secrets arrive with the mTLS issue.
func clientTLS(utc *tlsv3.UpstreamTlsContext, p Protocol) (*tls.Config, error) {
	ctx := utc.GetCommonTlsContext()
	cfg := &tls.Config{ServerName: utc.GetSni(), MinVersion: tls.VersionTLS12}
	if p == HTTP2 {
		cfg.NextProtos = []string{"h2"}
	} else {
		cfg.NextProtos = []string{"http/1.1"}
	}
	if len(ctx.GetAlpnProtocols()) > 0 {
		cfg.NextProtos = ctx.GetAlpnProtocols()
	}
	for i, tc := range ctx.GetTlsCertificates() {
		certPEM, err := datasource.Read(tc.GetCertificateChain())
		if err != nil {
			return nil, fmt.Errorf("common_tls_context.tls_certificates[%d].certificate_chain: %w", i, err)
		}
		keyPEM, err := datasource.Read(tc.GetPrivateKey())
		if err != nil {
			return nil, fmt.Errorf("common_tls_context.tls_certificates[%d].private_key: %w", i, err)
		}
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("common_tls_context.tls_certificates[%d]: %w", i, err)
		}
		cfg.Certificates = append(cfg.Certificates, cert)
	}
	if vc := ctx.GetValidationContext(); vc != nil && vc.GetTrustedCa() != nil {
		caPEM, err := datasource.Read(vc.GetTrustedCa())
		if err != nil {
			return nil, fmt.Errorf("common_tls_context.validation_context.trusted_ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return nil, fmt.Errorf("common_tls_context.validation_context.trusted_ca: no PEM certificates found")
		}
		cfg.RootCAs = pool
	} else {
		// Envoy does not verify the upstream without a validation context.
		cfg.InsecureSkipVerify = true //nolint:gosec // matches Envoy: no validation_context, no verification
	}
	return cfg, nil
}
