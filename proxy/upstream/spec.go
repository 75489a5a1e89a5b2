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
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"meshd.dev/meshd/mtls"
	"meshd.dev/meshd/proxy/http/h3"
	"meshd.dev/meshd/proxy/lb"
	"meshd.dev/meshd/proxy/tlscontext"
)

// Protocol is the HTTP version a cluster speaks to its endpoints.
type Protocol int

// Upstream protocols.
const (
	HTTP1 Protocol = iota
	HTTP2
	// HTTP3 is HTTP/3 over QUIC (h3pool.go).
	HTTP3
)

// String returns the protocol's name, e.g. "HTTP/2".
func (p Protocol) String() string {
	switch p {
	case HTTP2:
		return "HTTP/2"
	case HTTP3:
		return "HTTP/3"
	}
	return "HTTP/1.1"
}

// Discovery is how a cluster finds its endpoints.
type Discovery int

// Supported discovery types.
const (
	Static Discovery = iota
	StrictDNS
	// EDS clusters take their endpoints from ClusterLoadAssignment updates
	// (xDS); the snapshot compiler fills Spec.Endpoints from the assignment.
	EDS
	// OriginalDst clusters (ORIGINAL_DST) have no configured endpoints: a
	// host is created on demand for each original destination of the
	// downstream connections (or override header) picked through, and
	// removed after a cleanup_interval without use (origdst.go).
	OriginalDst
)

// OriginalDstSpec is the configuration of an ORIGINAL_DST cluster.
type OriginalDstSpec struct {
	// HTTPHeader, when not empty, is the request header
	// (original_dst_lb_config.use_http_header with http_header_name,
	// default x-envoy-original-dst-host) whose IP:port overrides the
	// connection's original destination for HTTP requests.
	HTTPHeader string
	// PortOverride, when not zero, replaces the port of every destination
	// (original_dst_lb_config.upstream_port_override).
	PortOverride uint16
	// CleanupInterval is how often unused hosts are removed
	// (cleanup_interval, default 5s): a host not picked during a whole
	// interval and with no request or connection open is removed.
	CleanupInterval time.Duration
}

// DefaultOriginalDstHeader is the override header of an ORIGINAL_DST
// cluster with use_http_header and no http_header_name.
const DefaultOriginalDstHeader = "x-envoy-original-dst-host"

// Endpoint is one configured endpoint: an IP (STATIC) or a host name
// (STRICT_DNS) with a port.
type Endpoint struct {
	Host   string
	Port   int
	Weight uint32
}

// HTTP2Options are the HTTP/2 settings a cluster uses on its connections
// (http2_protocol_options).
type HTTP2Options struct {
	// MaxConcurrentStreams caps the streams meshd opens per connection, on
	// top of the peer's SETTINGS_MAX_CONCURRENT_STREAMS; 0 = no own cap.
	MaxConcurrentStreams        uint32
	InitialStreamWindowSize     uint32
	InitialConnectionWindowSize uint32
	// Keepalive is connection_keepalive; Interval 0 means no PINGs.
	Keepalive Keepalive
}

// Keepalive is http2_protocol_options.connection_keepalive.
type Keepalive struct {
	Interval time.Duration
	Timeout  time.Duration
	// JitterPercent is interval_jitter (Envoy's default 15).
	JitterPercent float64
	// ConnectionIdleInterval, when set, sends a PING before using a
	// connection that has been idle this long.
	ConnectionIdleInterval time.Duration
}

// Thresholds are the DEFAULT-priority circuit_breakers thresholds, with
// Envoy's defaults for unset fields.
type Thresholds struct {
	MaxConnections     int // default 1024
	MaxPendingRequests int // default 1024
	MaxRequests        int // default 1024
	MaxRetries         int // default 3
	// RetryBudget, when set, replaces MaxRetries: active retries may be at
	// most BudgetPercent of active plus pending requests, and never fewer
	// than MinRetryConcurrency.
	RetryBudget *RetryBudget
}

// RetryBudget is circuit_breakers.thresholds.retry_budget.
type RetryBudget struct {
	BudgetPercent       float64 // default 20
	MinRetryConcurrency int     // default 3
}

// Lifetimes are common_http_protocol_options limits on connections and
// streams.
type Lifetimes struct {
	// IdleTimeout closes connections idle this long (Envoy default 1h;
	// 0 = never).
	IdleTimeout time.Duration
	// MaxConnectionDuration drains a connection this long after it opened
	// (0 = never).
	MaxConnectionDuration time.Duration
	// MaxRequestsPerConnection drains a connection after this many streams
	// (0 = unlimited).
	MaxRequestsPerConnection uint32
	// MaxStreamDuration bounds an upstream stream (0 = none).
	MaxStreamDuration time.Duration
}

// Spec is a compiled, immutable cluster.
type Spec struct {
	Name           string
	Discovery      Discovery
	Endpoints      []Endpoint
	DNSRefreshRate time.Duration
	// EDSServiceName is the ClusterLoadAssignment name an EDS cluster
	// subscribes to (eds_cluster_config.service_name, else the cluster
	// name); "" for other discovery types.
	EDSServiceName string
	LBPolicy       string // lb registry name: ROUND_ROBIN, LEAST_REQUEST, RANDOM
	ConnectTimeout time.Duration
	Protocol       Protocol
	HTTP2          HTTP2Options
	// HTTP3 holds the QUIC settings of an HTTP/3 cluster
	// (http3_protocol_options.quic_protocol_options).
	HTTP3 h3.QUICOptions
	// HTTP3Fallback is set for auto_config with HTTP/3: an endpoint whose
	// QUIC handshake fails is marked broken for a while and reached over
	// HTTP/2 on TCP meanwhile (TLSFallback, HTTP2 options).
	HTTP3Fallback bool
	Lifetimes     Lifetimes
	Thresholds    Thresholds
	// PreconnectRatio is preconnect_policy.per_upstream_preconnect_ratio:
	// connections are kept so that capacity is at least this multiple of
	// the streams in use (1 = off, Envoy's default).
	PreconnectRatio float64
	// TCPKeepalive is upstream_connection_options.tcp_keepalive; nil when
	// unset (no TCP keepalive, as in Envoy).
	TCPKeepalive *net.KeepAliveConfig
	// PerConnectionBufferLimit is per_connection_buffer_limit_bytes; 0 when
	// unset, leaving buffering bounded by the HTTP/2 windows alone.
	PerConnectionBufferLimit uint32
	// TLS is the client TLS config, nil for plaintext.
	TLS *tls.Config
	// TLSFallback is the TLS config (ALPN h2) of the HTTP/2 fallback of an
	// HTTP3Fallback cluster.
	TLSFallback *tls.Config
	// Identity is the SVID source of an SDS-fed UpstreamTlsContext (the
	// SVID the cluster presents), nil otherwise; for the admin's /certs.
	Identity mtls.Source
	// Outlier is outlier_detection, nil when unset; HealthCheck is
	// health_checks[0], nil when unset (outlier.go, health.go).
	Outlier     *OutlierSpec
	HealthCheck *HealthCheckSpec
	// OriginalDst is set for ORIGINAL_DST clusters only.
	OriginalDst *OriginalDstSpec

	raw *clusterv3.Cluster
}

// Equal reports whether two specs come from the same cluster config. For
// EDS clusters the endpoints are not compared: a new assignment updates the
// live cluster's hosts in place (Manager.Apply).
func (s *Spec) Equal(o *Spec) bool { return proto.Equal(s.raw, o.raw) }

// WithEndpoints returns a copy of the EDS spec s with eps as its endpoints;
// s is not modified.
func (s *Spec) WithEndpoints(eps []Endpoint) *Spec {
	c := *s
	c.Endpoints = slices.Clone(eps)
	return &c
}

// CompileAssignment compiles an EDS ClusterLoadAssignment into endpoints
// (IP addresses; weight 1 when load_balancing_weight is unset). Errors name
// the field below the assignment.
func CompileAssignment(cla *endpointv3.ClusterLoadAssignment) ([]Endpoint, error) {
	var eps []Endpoint
	for i, lep := range cla.GetEndpoints() {
		for j, lbe := range lep.GetLbEndpoints() {
			path := fmt.Sprintf("endpoints[%d].lb_endpoints[%d].endpoint.address", i, j)
			e, err := compileLbEndpoint(lbe, true)
			if err != nil {
				return nil, fmt.Errorf("%s.%w", path, err)
			}
			eps = append(eps, e)
		}
	}
	return eps, nil
}

// compileLbEndpoint compiles one endpoint; needIP requires an IP address.
// Errors name the field below endpoint.address.
func compileLbEndpoint(lbe *endpointv3.LbEndpoint, needIP bool) (Endpoint, error) {
	if p := lbe.GetEndpoint().GetAddress().GetPipe(); p != nil {
		return Endpoint{}, fmt.Errorf("pipe: %q is a Unix socket; a pipe cluster serves only as an SDS or Workload API source, not as an HTTP or TCP upstream", p.GetPath())
	}
	sa := lbe.GetEndpoint().GetAddress().GetSocketAddress()
	if sa == nil {
		return Endpoint{}, fmt.Errorf("socket_address: required")
	}
	port, ok := sa.GetPortSpecifier().(*corev3.SocketAddress_PortValue)
	if !ok || port.PortValue == 0 || port.PortValue > 65535 {
		return Endpoint{}, fmt.Errorf("socket_address.port_value: must be 1..65535")
	}
	if needIP && net.ParseIP(sa.GetAddress()) == nil {
		return Endpoint{}, fmt.Errorf("socket_address.address: %q is not an IP address (a STATIC or EDS cluster needs IPs; use STRICT_DNS for names)", sa.GetAddress())
	}
	w := uint32(1)
	if lbe.GetLoadBalancingWeight() != nil {
		w = lbe.GetLoadBalancingWeight().GetValue()
	}
	return Endpoint{Host: sa.GetAddress(), Port: int(port.PortValue), Weight: w}, nil
}

// Raw returns the cluster proto the spec was compiled from. Callers must not
// modify it.
func (s *Spec) Raw() *clusterv3.Cluster { return s.raw }

const httpProtocolOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

// CompileCluster validates c's semantics meshd needs and compiles it.
// Errors name the field. An UpstreamTlsContext with SDS secrets is an
// error here; CompileClusterWith resolves them.
func CompileCluster(c *clusterv3.Cluster) (*Spec, error) {
	return CompileClusterWith(c, nil)
}

// CompileClusterWith is CompileCluster with the SDS secrets of an
// UpstreamTlsContext resolved through secrets (nil: SDS is an error).
func CompileClusterWith(c *clusterv3.Cluster, secrets tlscontext.Secrets) (*Spec, error) {
	s := &Spec{
		Name:           c.GetName(),
		DNSRefreshRate: 5 * time.Second,
		LBPolicy:       "ROUND_ROBIN",
		ConnectTimeout: 5 * time.Second,
		Lifetimes:      Lifetimes{IdleTimeout: time.Hour},
		Thresholds: Thresholds{
			MaxConnections:     1024,
			MaxPendingRequests: 1024,
			MaxRequests:        1024,
			MaxRetries:         3,
		},
		PreconnectRatio: 1,
		raw:             c,
	}
	if s.Name == "" {
		return nil, fmt.Errorf("name: must not be empty")
	}
	switch t := c.GetType(); t {
	case clusterv3.Cluster_STATIC:
		s.Discovery = Static
	case clusterv3.Cluster_STRICT_DNS:
		s.Discovery = StrictDNS
	case clusterv3.Cluster_EDS:
		s.Discovery = EDS
		s.EDSServiceName = c.GetEdsClusterConfig().GetServiceName()
		if s.EDSServiceName == "" {
			s.EDSServiceName = s.Name
		}
	case clusterv3.Cluster_ORIGINAL_DST:
		s.Discovery = OriginalDst
		od, err := compileOriginalDst(c)
		if err != nil {
			return nil, err
		}
		s.OriginalDst = od
	default:
		return nil, fmt.Errorf("type: %s is not supported (STATIC, STRICT_DNS, EDS, ORIGINAL_DST)", t)
	}
	if c.GetOriginalDstLbConfig() != nil && s.Discovery != OriginalDst {
		return nil, fmt.Errorf("original_dst_lb_config: applies to ORIGINAL_DST clusters only (type is %s)", c.GetType())
	}
	switch p := c.GetLbPolicy(); p {
	case clusterv3.Cluster_CLUSTER_PROVIDED:
		if s.Discovery != OriginalDst {
			return nil, fmt.Errorf("lb_policy: CLUSTER_PROVIDED needs type ORIGINAL_DST (type is %s)", c.GetType())
		}
		s.LBPolicy = p.String()
	case clusterv3.Cluster_ROUND_ROBIN, clusterv3.Cluster_LEAST_REQUEST, clusterv3.Cluster_RANDOM:
		if s.Discovery == OriginalDst {
			return nil, fmt.Errorf("lb_policy: an ORIGINAL_DST cluster needs CLUSTER_PROVIDED (got %s)", p)
		}
		s.LBPolicy = p.String()
		if _, ok := lb.Get(s.LBPolicy); !ok {
			return nil, fmt.Errorf("lb_policy: %s has no registered load balancer", p)
		}
	default:
		return nil, fmt.Errorf("lb_policy: %s is not supported (ROUND_ROBIN, LEAST_REQUEST, RANDOM; CLUSTER_PROVIDED with ORIGINAL_DST)", p)
	}
	if d := c.GetConnectTimeout(); d != nil {
		s.ConnectTimeout = d.AsDuration()
		if s.ConnectTimeout <= 0 {
			return nil, fmt.Errorf("connect_timeout: must be positive")
		}
	}
	//lint:ignore SA1019 deprecated in Envoy's API but still honoured by Envoy; the sidecar honours it for control planes that send it
	if d := c.GetDnsRefreshRate(); d != nil {
		s.DNSRefreshRate = d.AsDuration()
	}
	if err := s.compileThresholds(c.GetCircuitBreakers()); err != nil {
		return nil, err
	}
	if p := c.GetPreconnectPolicy(); p != nil {
		if r := p.GetPerUpstreamPreconnectRatio(); r != nil {
			s.PreconnectRatio = r.GetValue()
		}
		if p.GetPredictivePreconnectRatio() != nil {
			return nil, fmt.Errorf("preconnect_policy.predictive_preconnect_ratio: not supported (per_upstream_preconnect_ratio is)")
		}
	}
	if ka := c.GetUpstreamConnectionOptions().GetTcpKeepalive(); ka != nil {
		kc := &net.KeepAliveConfig{Enable: true, Idle: -1, Interval: -1, Count: -1}
		if v := ka.GetKeepaliveTime(); v != nil {
			kc.Idle = time.Duration(v.GetValue()) * time.Second
		}
		if v := ka.GetKeepaliveInterval(); v != nil {
			kc.Interval = time.Duration(v.GetValue()) * time.Second
		}
		if v := ka.GetKeepaliveProbes(); v != nil {
			kc.Count = int(v.GetValue())
		}
		s.TCPKeepalive = kc
	}
	if v := c.GetPerConnectionBufferLimitBytes(); v != nil {
		s.PerConnectionBufferLimit = v.GetValue()
	}
	if err := s.compileEndpoints(c); err != nil {
		return nil, err
	}
	if err := s.compileProtocol(c); err != nil {
		return nil, err
	}
	if ts := c.GetTransportSocket(); ts != nil {
		utc, where, err := s.upstreamTLSContext(ts)
		if err != nil {
			return nil, err
		}
		cfg, id, err := s.clientTLS(utc, s.Protocol, secrets)
		if err != nil {
			return nil, fmt.Errorf("%s.%w", where, err)
		}
		s.TLS, s.Identity = cfg, id
		if s.HTTP3Fallback {
			if s.TLSFallback, _, err = s.clientTLS(utc, HTTP2, secrets); err != nil {
				return nil, fmt.Errorf("%s.%w", where, err)
			}
		}
	} else if s.Protocol == HTTP3 {
		return nil, fmt.Errorf("transport_socket: HTTP/3 needs %s with an upstream_tls_context", quicUpstreamType)
	}
	if err := s.compileHealth(c); err != nil {
		return nil, err
	}
	return s, nil
}

// compileOriginalDst compiles the settings of an ORIGINAL_DST cluster:
// Envoy's constraints (no load_assignment) and original_dst_lb_config.
func compileOriginalDst(c *clusterv3.Cluster) (*OriginalDstSpec, error) {
	if len(c.GetLoadAssignment().GetEndpoints()) > 0 {
		return nil, fmt.Errorf("load_assignment: an ORIGINAL_DST cluster takes its hosts from the downstream connections and must have no endpoints")
	}
	od := &OriginalDstSpec{CleanupInterval: 5 * time.Second}
	if d := c.GetCleanupInterval(); d != nil {
		od.CleanupInterval = d.AsDuration()
		if od.CleanupInterval <= 0 {
			return nil, fmt.Errorf("cleanup_interval: must be positive")
		}
	}
	cfg := c.GetOriginalDstLbConfig()
	if cfg.GetUseHttpHeader() {
		od.HTTPHeader = DefaultOriginalDstHeader
		if n := cfg.GetHttpHeaderName(); n != "" {
			od.HTTPHeader = strings.ToLower(n)
		}
	} else if cfg.GetHttpHeaderName() != "" {
		return nil, fmt.Errorf("original_dst_lb_config.http_header_name: set without use_http_header")
	}
	if v := cfg.GetUpstreamPortOverride(); v != nil {
		if v.GetValue() == 0 || v.GetValue() > 65535 {
			return nil, fmt.Errorf("original_dst_lb_config.upstream_port_override: %d is not in 1..65535", v.GetValue())
		}
		od.PortOverride = uint16(v.GetValue())
	}
	if cfg.GetMetadataKey() != nil {
		return nil, fmt.Errorf("original_dst_lb_config.metadata_key: not supported (the connection's original destination and use_http_header are)")
	}
	return od, nil
}

func (s *Spec) compileEndpoints(c *clusterv3.Cluster) error {
	for i, lep := range c.GetLoadAssignment().GetEndpoints() {
		for j, lbe := range lep.GetLbEndpoints() {
			path := fmt.Sprintf("load_assignment.endpoints[%d].lb_endpoints[%d].endpoint.address", i, j)
			e, err := compileLbEndpoint(lbe, s.Discovery == Static)
			if err != nil {
				return fmt.Errorf("%s.%w", path, err)
			}
			s.Endpoints = append(s.Endpoints, e)
		}
	}
	return nil
}

// deprecatedHTTPOptions returns the Cluster's http2_protocol_options,
// common_http_protocol_options and max_requests_per_connection: fields
// Envoy deprecated in favour of typed_extension_protocol_options but still
// honours, so the sidecar honours them too for control planes that send
// them. The typed options win where both are set.
func deprecatedHTTPOptions(c *clusterv3.Cluster) (*corev3.Http2ProtocolOptions, *corev3.HttpProtocolOptions, *wrapperspb.UInt32Value) {
	//lint:ignore SA1019 deprecated in Envoy's API but still honoured by Envoy (see above)
	return c.GetHttp2ProtocolOptions(), c.GetCommonHttpProtocolOptions(), c.GetMaxRequestsPerConnection()
}

func (s *Spec) compileProtocol(c *clusterv3.Cluster) error {
	var h2 *corev3.Http2ProtocolOptions
	var common *corev3.HttpProtocolOptions
	oldH2, oldCommon, oldMaxRequests := deprecatedHTTPOptions(c)
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
				s.Protocol = HTTP3
				if err := s.compileHTTP3(e.GetHttp3ProtocolOptions()); err != nil {
					return fmt.Errorf("%s.explicit_http_config.http3_protocol_options.%w", path, err)
				}
			}
		case o.GetAutoConfig() != nil:
			a := o.GetAutoConfig()
			if a.GetHttp3ProtocolOptions() == nil {
				return fmt.Errorf("%s.auto_config.http3_protocol_options: required (meshd's auto_config is HTTP/3 with HTTP/2 fallback)", path)
			}
			s.Protocol, s.HTTP3Fallback = HTTP3, true
			if err := s.compileHTTP3(a.GetHttp3ProtocolOptions()); err != nil {
				return fmt.Errorf("%s.auto_config.http3_protocol_options.%w", path, err)
			}
			h2 = a.GetHttp2ProtocolOptions()
		case o.GetUpstreamProtocolOptions() != nil:
			return fmt.Errorf("%s: only explicit_http_config is supported", path)
		}
	} else if oldH2 != nil {
		s.Protocol = HTTP2
		h2 = oldH2
	}
	if common == nil {
		common = oldCommon
	}
	if d := common.GetIdleTimeout(); d != nil {
		s.Lifetimes.IdleTimeout = d.AsDuration()
	}
	if d := common.GetMaxConnectionDuration(); d != nil {
		s.Lifetimes.MaxConnectionDuration = d.AsDuration()
	}
	if d := common.GetMaxStreamDuration(); d != nil {
		s.Lifetimes.MaxStreamDuration = d.AsDuration()
	}
	if v := common.GetMaxRequestsPerConnection(); v != nil {
		s.Lifetimes.MaxRequestsPerConnection = v.GetValue()
	} else if oldMaxRequests != nil {
		s.Lifetimes.MaxRequestsPerConnection = oldMaxRequests.GetValue()
	}
	if h2 != nil {
		s.HTTP2.MaxConcurrentStreams = h2.GetMaxConcurrentStreams().GetValue()
		s.HTTP2.InitialStreamWindowSize = h2.GetInitialStreamWindowSize().GetValue()
		s.HTTP2.InitialConnectionWindowSize = h2.GetInitialConnectionWindowSize().GetValue()
		if ka := h2.GetConnectionKeepalive(); ka != nil {
			s.HTTP2.Keepalive = Keepalive{
				Interval:               ka.GetInterval().AsDuration(),
				Timeout:                ka.GetTimeout().AsDuration(),
				JitterPercent:          15,
				ConnectionIdleInterval: ka.GetConnectionIdleInterval().AsDuration(),
			}
			if j := ka.GetIntervalJitter(); j != nil {
				s.HTTP2.Keepalive.JitterPercent = j.GetValue()
			}
			if s.HTTP2.Keepalive.Interval > 0 && s.HTTP2.Keepalive.Timeout <= 0 {
				return fmt.Errorf("http2_protocol_options.connection_keepalive.timeout: required and positive when interval is set")
			}
		}
	}
	return nil
}

// compileThresholds reads the DEFAULT-priority thresholds; HIGH priority is
// accepted for Envoy compatibility but meshd routes everything at DEFAULT.
func (s *Spec) compileThresholds(cb *clusterv3.CircuitBreakers) error {
	for i, t := range cb.GetThresholds() {
		if t.GetPriority() != corev3.RoutingPriority_DEFAULT {
			continue
		}
		th := &s.Thresholds
		if v := t.GetMaxConnections(); v != nil {
			th.MaxConnections = int(v.GetValue())
		}
		if v := t.GetMaxPendingRequests(); v != nil {
			th.MaxPendingRequests = int(v.GetValue())
		}
		if v := t.GetMaxRequests(); v != nil {
			th.MaxRequests = int(v.GetValue())
		}
		if v := t.GetMaxRetries(); v != nil {
			th.MaxRetries = int(v.GetValue())
		}
		if rb := t.GetRetryBudget(); rb != nil {
			b := &RetryBudget{BudgetPercent: 20, MinRetryConcurrency: 3}
			if p := rb.GetBudgetPercent(); p != nil {
				b.BudgetPercent = p.GetValue()
			}
			if m := rb.GetMinRetryConcurrency(); m != nil {
				b.MinRetryConcurrency = int(m.GetValue())
			}
			if b.BudgetPercent < 0 || b.BudgetPercent > 100 {
				return fmt.Errorf("circuit_breakers.thresholds[%d].retry_budget.budget_percent: %v is outside 0..100", i, b.BudgetPercent)
			}
			th.RetryBudget = b
		}
	}
	return nil
}

// defaultALPN is the ALPN a cluster offers when alpn_protocols is unset:
// the one protocol it speaks.
func defaultALPN(p Protocol) []string {
	switch p {
	case HTTP2:
		return []string{"h2"}
	case HTTP3:
		return []string{h3.NextProto}
	}
	return []string{"http/1.1"}
}

// clientTLS builds a client tls.Config from static certificate files in an
// UpstreamTlsContext (SDS secrets go through tlscontext.SDSClientConfig).
func clientTLS(utc *tlsv3.UpstreamTlsContext, p Protocol) (*tls.Config, error) {
	ctx := utc.GetCommonTlsContext()
	cfg := &tls.Config{ServerName: utc.GetSni(), MinVersion: tls.VersionTLS12}
	cfg.NextProtos = defaultALPN(p)
	if len(ctx.GetAlpnProtocols()) > 0 {
		cfg.NextProtos = ctx.GetAlpnProtocols()
	}
	certs, err := tlscontext.Certificates(ctx)
	if err != nil {
		return nil, err
	}
	cfg.Certificates = certs
	pool, err := tlscontext.TrustedCA(ctx)
	if err != nil {
		return nil, err
	}
	if verify, err := tlscontext.PeerSANVerifier(ctx.GetValidationContext(), pool); err != nil {
		return nil, err
	} else if verify != nil {
		// Envoy checks the SAN matchers instead of the host name.
		cfg.InsecureSkipVerify, cfg.VerifyConnection = true, verify //nolint:gosec // VerifyConnection verifies the chain
	} else if pool != nil {
		cfg.RootCAs = pool
	} else {
		// Envoy does not verify the upstream without a validation context.
		cfg.InsecureSkipVerify = true //nolint:gosec // matches Envoy: no validation_context, no verification
	}
	return cfg, nil
}
