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
	"meshd.dev/meshd/proxy/accesslog"
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
	// StatPrefix is stat_prefix: the connection manager's stats are
	// "http.<StatPrefix>.*".
	StatPrefix string
	// Codec is codec_type: which downstream codecs a connection may use.
	Codec Codec
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
	// PerConnectionBufferLimit is the listener's
	// per_connection_buffer_limit_bytes (0 when unset), set by the snapshot
	// compiler: as in Envoy, it caps a route's per_request_buffer_limit_bytes
	// and is the request body buffer limit of a route that sets none (see
	// route.BodyBufferLimit.Bytes).
	PerConnectionBufferLimit uint32
	// Underscores is headers_with_underscores_action (default: allow).
	Underscores UnderscoreAction
	// ServerName is the "server" response header value.
	ServerName string
	// GenerateRequestID is generate_request_id (default true): a request
	// forwarded without x-request-id gets a new one.
	GenerateRequestID bool
	// MaxRequestHeadersBytes limits the request header section.
	MaxRequestHeadersBytes int
	// MaxHeadersCount limits the fields of a request header section
	// (common_http_protocol_options.max_headers_count, default 100): more
	// get 431.
	MaxHeadersCount uint32
	// RequestHeadersTimeout bounds receiving a request's header section
	// (request_headers_timeout). 0 (Envoy's default) leaves HTTP/2 header
	// blocks unbounded and bounds an HTTP/1.1 header section by
	// StreamIdleTimeout: see HTTP1HeaderTimeout.
	RequestHeadersTimeout time.Duration
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
	// AccessLogs are the compiled access_log entries, written through the
	// handler's Observers.AccessLogs.
	AccessLogs []*accesslog.Logger
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
	if d := m.GetRequestHeadersTimeout(); d != nil {
		c.RequestHeadersTimeout = d.AsDuration()
		if c.RequestHeadersTimeout < 0 {
			return nil, fmt.Errorf("request_headers_timeout: must not be negative")
		}
	}
	c.MaxHeadersCount = 100
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
		if v := cp.GetMaxHeadersCount(); v != nil {
			if v.GetValue() == 0 {
				return nil, fmt.Errorf("common_http_protocol_options.max_headers_count: must be at least 1")
			}
			c.MaxHeadersCount = v.GetValue()
		}
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
	c.HTTP2.MaxHeadersCount = c.MaxHeadersCount
	c.HTTP2.RequestHeadersTimeout = c.RequestHeadersTimeout
	if o := m.GetHttp2ProtocolOptions(); o != nil {
		c.HTTP2.MaxConcurrentStreams = o.GetMaxConcurrentStreams().GetValue()
		c.HTTP2.InitialStreamWindowSize = o.GetInitialStreamWindowSize().GetValue()
		c.HTTP2.InitialConnectionWindowSize = o.GetInitialConnectionWindowSize().GetValue()
		if ka := o.GetConnectionKeepalive(); ka != nil {
			// Envoy's defaults: no PINGs without interval, 15% jitter.
			c.HTTP2.KeepaliveInterval = ka.GetInterval().AsDuration()
			c.HTTP2.KeepaliveTimeout = ka.GetTimeout().AsDuration()
			c.HTTP2.KeepaliveJitterPercent = 15
			if j := ka.GetIntervalJitter(); j != nil {
				c.HTTP2.KeepaliveJitterPercent = j.GetValue()
			}
			if c.HTTP2.KeepaliveInterval > 0 && c.HTTP2.KeepaliveTimeout <= 0 {
				return nil, fmt.Errorf("http2_protocol_options.connection_keepalive.timeout: required and positive when interval is set")
			}
		}
		fl, err := compileFloodLimits(o)
		if err != nil {
			return nil, fmt.Errorf("http2_protocol_options.%w", err)
		}
		c.HTTP2.Flood = fl
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
	if c.AccessLogs, err = accesslog.Compile(m.GetAccessLog()); err != nil {
		return nil, err
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

// compileFloodLimits reads the flood limits of o over Envoy's defaults.
// The error starts with the field name.
func compileFloodLimits(o *corev3.Http2ProtocolOptions) (*h2.FloodLimits, error) {
	fl := h2.DefaultFloodLimits()
	for _, f := range []struct {
		name    string
		v       interface{ GetValue() uint32 }
		set     bool
		dst     *uint32
		atLeast uint32
	}{
		{"max_outbound_frames", o.GetMaxOutboundFrames(), o.GetMaxOutboundFrames() != nil, &fl.MaxOutboundFrames, 1},
		{"max_outbound_control_frames", o.GetMaxOutboundControlFrames(), o.GetMaxOutboundControlFrames() != nil, &fl.MaxOutboundControlFrames, 1},
		{"max_consecutive_inbound_frames_with_empty_payload", o.GetMaxConsecutiveInboundFramesWithEmptyPayload(),
			o.GetMaxConsecutiveInboundFramesWithEmptyPayload() != nil, &fl.MaxConsecutiveEmptyFrames, 0},
		{"max_inbound_priority_frames_per_stream", o.GetMaxInboundPriorityFramesPerStream(),
			o.GetMaxInboundPriorityFramesPerStream() != nil, &fl.MaxPriorityFramesPerStream, 0},
		{"max_inbound_window_update_frames_per_data_frame_sent", o.GetMaxInboundWindowUpdateFramesPerDataFrameSent(),
			o.GetMaxInboundWindowUpdateFramesPerDataFrameSent() != nil, &fl.MaxWindowUpdatesPerDataFrame, 1},
	} {
		if !f.set {
			continue
		}
		if f.v.GetValue() < f.atLeast {
			return nil, fmt.Errorf("%s: must be at least %d", f.name, f.atLeast)
		}
		*f.dst = f.v.GetValue()
	}
	return &fl, nil
}

// HTTP1HeaderTimeout is how long an HTTP/1.1 client may take to send a
// request's header section: RequestHeadersTimeout when set, otherwise
// StreamIdleTimeout. net/http gives meshd no stream until the header
// section is complete, so a stream idle timer cannot cover a slowloris
// client as Envoy's does; bounding the whole header section by the same
// duration is the nearest equivalent. 0 means no bound.
func (c *Config) HTTP1HeaderTimeout() time.Duration {
	if c.RequestHeadersTimeout > 0 {
		return c.RequestHeadersTimeout
	}
	return c.StreamIdleTimeout
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
	// RqTime is downstream_rq_time: milliseconds from the request's
	// headers to the end of the stream, whatever ended it.
	RqTime *stats.Histogram
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
	// CxLengthMs is downstream_cx_length_ms: how long each downstream
	// connection was open, recorded when it closes.
	CxLengthMs *stats.Histogram
	// CxRxBytes and CxTxBytes are downstream_cx_rx_bytes_total and
	// downstream_cx_tx_bytes_total: HTTP/1.1 and HTTP/2 bytes read from
	// and written to downstream connections, after TLS decryption and
	// before encryption, as Envoy counts them (HTTP/3 is not counted).
	CxRxBytes, CxTxBytes *stats.Counter
	HTTP2                *h2.Stats
	// Underscores are headers_with_underscores_action's counters for
	// requests over HTTP/1.1, HTTP/2 and HTTP/3, in that order.
	Underscores [3]UnderscoreStats
}

// UnderscoreStats are the counters Envoy's codecs keep for
// headers_with_underscores_action, at "http1.", "http2." or "http3." of
// the listener's scope.
type UnderscoreStats struct {
	// Rejected counts requests refused for an underscore in a header
	// name (requests_rejected_with_underscores_in_headers).
	Rejected *stats.Counter
	// Dropped counts the header fields removed for one
	// (dropped_headers_with_underscores).
	Dropped *stats.Counter
}

// underscoreStats returns the UnderscoreStats under root scope codec.
func underscoreStats(store *stats.Store, codec string) UnderscoreStats {
	sc := store.Root().Scope(codec)
	return UnderscoreStats{
		Rejected: sc.Counter("requests_rejected_with_underscores_in_headers"),
		Dropped:  sc.Counter("dropped_headers_with_underscores"),
	}
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
	h2st.RequestHeadersTimeout = sc.Counter("downstream_rq_header_timeout")
	return &Stats{
		Underscores:          [3]UnderscoreStats{underscoreStats(store, "http1"), underscoreStats(store, "http2"), underscoreStats(store, "http3")},
		Scope:                sc,
		RqTotal:              sc.Counter("downstream_rq_total"),
		RqActive:             sc.Gauge("downstream_rq_active"),
		RqHTTP1:              sc.Counter("downstream_rq_http1_total"),
		RqHTTP2:              sc.Counter("downstream_rq_http2_total"),
		RqHTTP3:              sc.Counter("downstream_rq_http3_total"),
		RqTime:               sc.Histogram("downstream_rq_time"),
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
		CxLengthMs:           sc.Histogram("downstream_cx_length_ms"),
		CxRxBytes:            sc.Counter("downstream_cx_rx_bytes_total"),
		CxTxBytes:            sc.Counter("downstream_cx_tx_bytes_total"),
		HTTP2:                h2st,
	}
}
