// Package hcm is meshd's HTTP connection manager: it receives downstream
// streams from any codec, routes them, and proxies them to upstream
// clusters (Envoy's envoy.filters.network.http_connection_manager with the
// router filter at the end of its chain).
package hcm

import (
	"fmt"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	"meshd.dev/meshd/otel/tracing"
	"meshd.dev/meshd/proxy/http/h2"
	"meshd.dev/meshd/proxy/route"
	"meshd.dev/meshd/proxy/stats"
)

// Codec is the downstream codec_type.
type Codec int

// Downstream codecs.
const (
	CodecAuto Codec = iota
	CodecHTTP1
	CodecHTTP2
	// CodecHTTP3 serves HTTP/3 on a QUIC listener (proxy/http/h3).
	CodecHTTP3
)

// UnderscoreAction is what to do with request headers whose names contain
// an underscore (common_http_protocol_options.headers_with_underscores_action).
type UnderscoreAction int

// Underscore actions, Envoy's.
const (
	UnderscoreAllow UnderscoreAction = iota
	UnderscoreReject
	UnderscoreDrop
)

// Config is a compiled, immutable HttpConnectionManager.
type Config struct {
	StatPrefix string
	Codec      Codec
	// Routes is the route table: compiled from route_config, or, when the
	// HCM uses rds, bound by the snapshot compiler from the
	// RouteConfiguration named RDSName before the config is published.
	Routes *route.Table
	// RDSName is rds.route_config_name; "" for an inline route_config.
	RDSName string
	// HTTP2 is the downstream HTTP/2 server config (SETTINGS and timeouts).
	HTTP2 h2.ServerConfig
	// IdleTimeout closes downstream connections with no streams (default 1h).
	IdleTimeout time.Duration
	// StreamIdleTimeout resets a stream with no activity (default 5m).
	StreamIdleTimeout time.Duration
	// RequestTimeout bounds receiving the whole request (0 = none).
	RequestTimeout time.Duration
	// MaxStreamDuration bounds a stream's life (0 = none).
	MaxStreamDuration time.Duration
	// MaxConnectionDuration drains a downstream connection gracefully once
	// it is this old (common_http_protocol_options.max_connection_duration;
	// 0 = never).
	MaxConnectionDuration time.Duration
	// MaxRequestsPerConnection drains a downstream connection gracefully
	// after this many requests
	// (common_http_protocol_options.max_requests_per_connection; 0 = no limit).
	MaxRequestsPerConnection uint32
	Underscores              UnderscoreAction
	// ServerName is the "server" response header value.
	ServerName        string
	GenerateRequestID bool
	// MaxRequestHeadersBytes limits the request header section.
	MaxRequestHeadersBytes int
	// Filters are the http_filters before the router, in order; empty
	// when the router is the only filter.
	Filters []FilterEntry
	// ForwardClientCert is forward_client_cert_details.
	ForwardClientCert ForwardClientCert
	// XFCCDetails is set_current_client_cert_details.
	XFCCDetails XFCCDetails
	// LocalPrincipal is the SPIFFE ID of the listener's own certificate,
	// XFCC's By field; "" when it has none. The snapshot compiler sets it.
	LocalPrincipal string
	// Tracing is the compiled tracing config, nil when the connection
	// manager does not trace.
	Tracing *tracing.Config
}

// Compile validates and compiles an HttpConnectionManager. Errors name the
// field.
func Compile(m *hcmv3.HttpConnectionManager) (*Config, error) {
	c := &Config{
		StatPrefix:             m.GetStatPrefix(),
		IdleTimeout:            time.Hour,
		StreamIdleTimeout:      5 * time.Minute,
		ServerName:             "meshd",
		GenerateRequestID:      true,
		MaxRequestHeadersBytes: 60 << 10,
	}
	switch ct := m.GetCodecType(); ct {
	case hcmv3.HttpConnectionManager_AUTO:
		c.Codec = CodecAuto
	case hcmv3.HttpConnectionManager_HTTP1:
		c.Codec = CodecHTTP1
	case hcmv3.HttpConnectionManager_HTTP2:
		c.Codec = CodecHTTP2
	case hcmv3.HttpConnectionManager_HTTP3:
		c.Codec = CodecHTTP3
	default:
		return nil, fmt.Errorf("codec_type: %s is not supported (AUTO, HTTP1, HTTP2, HTTP3)", ct)
	}
	if m.GetServerName() != "" {
		c.ServerName = m.GetServerName()
	}
	if v := m.GetGenerateRequestId(); v != nil {
		c.GenerateRequestID = v.GetValue()
	}
	if v := m.GetMaxRequestHeadersKb(); v != nil {
		c.MaxRequestHeadersBytes = int(v.GetValue()) << 10
	}
	if d := m.GetStreamIdleTimeout(); d != nil {
		c.StreamIdleTimeout = d.AsDuration()
	}
	if d := m.GetRequestTimeout(); d != nil {
		c.RequestTimeout = d.AsDuration()
	}
	if cp := m.GetCommonHttpProtocolOptions(); cp != nil {
		if d := cp.GetIdleTimeout(); d != nil {
			c.IdleTimeout = d.AsDuration()
		}
		if d := cp.GetMaxStreamDuration(); d != nil {
			c.MaxStreamDuration = d.AsDuration()
		}
		if d := cp.GetMaxConnectionDuration(); d != nil {
			c.MaxConnectionDuration = d.AsDuration()
		}
		c.MaxRequestsPerConnection = cp.GetMaxRequestsPerConnection().GetValue()
		switch cp.GetHeadersWithUnderscoresAction() {
		case corev3.HttpProtocolOptions_REJECT_REQUEST:
			c.Underscores = UnderscoreReject
		case corev3.HttpProtocolOptions_DROP_HEADER:
			c.Underscores = UnderscoreDrop
		}
	}
	c.HTTP2 = h2.ServerConfig{
		MaxHeaderListSize:        uint32(c.MaxRequestHeadersBytes),
		IdleTimeout:              c.IdleTimeout,
		MaxConnectionDuration:    c.MaxConnectionDuration,
		MaxRequestsPerConnection: c.MaxRequestsPerConnection,
	}
	if o := m.GetHttp2ProtocolOptions(); o != nil {
		c.HTTP2.MaxConcurrentStreams = o.GetMaxConcurrentStreams().GetValue()
		c.HTTP2.InitialStreamWindowSize = o.GetInitialStreamWindowSize().GetValue()
		c.HTTP2.InitialConnectionWindowSize = o.GetInitialConnectionWindowSize().GetValue()
	}
	fs, err := compileFilters(m.GetHttpFilters(), c.StatPrefix)
	if err != nil {
		return nil, err
	}
	c.Filters = fs
	if err := compileXFCC(m, c); err != nil {
		return nil, err
	}
	if c.Tracing, err = tracing.Compile(m.GetTracing()); err != nil {
		return nil, fmt.Errorf("tracing.%w", err)
	}
	if rds := m.GetRds(); rds != nil {
		if rds.GetRouteConfigName() == "" {
			return nil, fmt.Errorf("rds.route_config_name: required")
		}
		c.RDSName = rds.GetRouteConfigName()
		return c, nil
	}
	rc := m.GetRouteConfig()
	if rc == nil {
		return nil, fmt.Errorf("route_config: required (or rds)")
	}
	t, err := route.Compile(rc)
	if err != nil {
		return nil, fmt.Errorf("route_config: %w", err)
	}
	c.Routes = t
	return c, nil
}

// WithRoutes returns a copy of c using route table t; c is not modified.
// The snapshot compiler uses it to bind an RDS route configuration.
func (c *Config) WithRoutes(t *route.Table) *Config {
	n := *c
	n.Routes = t
	return &n
}

// Stats are the connection manager's Envoy-named stats
// ("http.<stat_prefix>.downstream_rq_total", ...).
type Stats struct {
	Scope    *stats.Scope
	RqTotal  *stats.Counter
	RqActive *stats.Gauge
	RqHTTP1  *stats.Counter
	RqHTTP2  *stats.Counter
	RqHTTP3  *stats.Counter
	// RqTimeout counts request_timeout expiries (downstream_rq_timeout).
	RqTimeout *stats.Counter
	// RqIdleTimeout counts streams reset by the stream idle timeout.
	RqIdleTimeout *stats.Counter
	// RqMaxDurationReached counts streams ended by max_stream_duration.
	RqMaxDurationReached *stats.Counter
	RqRxReset            *stats.Counter
	RqTxReset            *stats.Counter
	NoRoute              *stats.Counter
	NoCluster            *stats.Counter
	RqDirect             *stats.Counter
	RqRedirect           *stats.Counter
	CxTotal              *stats.Counter
	CxActive             *stats.Gauge
	CxHTTP1Total         *stats.Counter
	CxHTTP2Total         *stats.Counter
	CxHTTP1Active        *stats.Gauge
	CxHTTP2Active        *stats.Gauge
	CxHTTP3Total         *stats.Counter
	CxHTTP3Active        *stats.Gauge
	CxDestroy            *stats.Counter
	HTTP2                *h2.Stats
}

// NewStats returns the stats for stat prefix p.
func NewStats(store *stats.Store, p string) *Stats {
	sc := store.Root().Scope("http").Tagged("envoy_http_conn_manager_prefix", p)
	// Envoy keeps codec stats at "http2.*" of the listener's scope, and the
	// connection-level limits the codec enforces under the manager's prefix.
	h2st := h2.NewStats(store.Root().Scope("http2"))
	h2st.CxIdleTimeout = sc.Counter("downstream_cx_idle_timeout")
	h2st.CxMaxDurationReached = sc.Counter("downstream_cx_max_duration_reached")
	h2st.CxMaxRequestsReached = sc.Counter("downstream_cx_max_requests_reached")
	h2st.DownstreamPrematureResets = sc.Counter("downstream_rq_too_many_premature_resets")
	return &Stats{
		Scope:                sc,
		RqTotal:              sc.Counter("downstream_rq_total"),
		RqActive:             sc.Gauge("downstream_rq_active"),
		RqHTTP1:              sc.Counter("downstream_rq_http1_total"),
		RqHTTP2:              sc.Counter("downstream_rq_http2_total"),
		RqHTTP3:              sc.Counter("downstream_rq_http3_total"),
		RqTimeout:            sc.Counter("downstream_rq_timeout"),
		RqIdleTimeout:        sc.Counter("downstream_rq_idle_timeout"),
		RqMaxDurationReached: sc.Counter("downstream_rq_max_duration_reached"),
		RqRxReset:            sc.Counter("downstream_rq_rx_reset"),
		RqTxReset:            sc.Counter("downstream_rq_tx_reset"),
		NoRoute:              sc.Counter("no_route"),
		NoCluster:            sc.Counter("no_cluster"),
		RqDirect:             sc.Counter("rq_direct_response"),
		RqRedirect:           sc.Counter("rq_redirect"),
		CxTotal:              sc.Counter("downstream_cx_total"),
		CxActive:             sc.Gauge("downstream_cx_active"),
		CxHTTP1Total:         sc.Counter("downstream_cx_http1_total"),
		CxHTTP2Total:         sc.Counter("downstream_cx_http2_total"),
		CxHTTP1Active:        sc.Gauge("downstream_cx_http1_active"),
		CxHTTP2Active:        sc.Gauge("downstream_cx_http2_active"),
		CxHTTP3Total:         sc.Counter("downstream_cx_http3_total"),
		CxHTTP3Active:        sc.Gauge("downstream_cx_http3_active"),
		CxDestroy:            sc.Counter("downstream_cx_destroy"),
		HTTP2:                h2st,
	}
}
