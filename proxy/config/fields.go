package config

import (
	"google.golang.org/protobuf/reflect/protoreflect"
)

// messageFields says which fields of one message type meshd honours.
type messageFields struct {
	// supported fields are implemented. Only their contents are walked further.
	supported []protoreflect.Name
	// ignored fields are accepted and have no effect; docs/bootstrap.md
	// lists them with the reason.
	ignored []protoreflect.Name
}

// supportedFields is the field-level contract of what meshd implements, for
// every message type with fields meshd does not implement. A set field not
// listed for its message type is a configuration error naming it: Envoy
// config that meshd would silently not honour must not start.
//
// Message types reachable through supported fields but absent here are
// honoured whole; TestSupportedFieldsCoverReachableTypes keeps that set to
// the explicit leafMessages list, so that widening the table is a conscious
// act. docs/bootstrap.md is generated from this table (see TestBootstrapDoc).
var supportedFields = map[protoreflect.FullName]messageFields{
	// Bootstrap.
	"envoy.config.bootstrap.v3.Bootstrap": {
		supported: names("node", "admin", "static_resources", "dynamic_resources"),
		ignored:   names("layered_runtime"),
	},
	"envoy.config.bootstrap.v3.Admin": {
		supported: names("address"),
		ignored:   names("access_log_path"),
	},
	"envoy.config.bootstrap.v3.Bootstrap.StaticResources":  {supported: names("listeners", "clusters")},
	"envoy.config.bootstrap.v3.Bootstrap.DynamicResources": {supported: names("ads_config", "lds_config", "cds_config")},
	"envoy.config.core.v3.Node":                            {supported: names("id", "cluster", "metadata", "locality")},
	"envoy.config.core.v3.ApiConfigSource":                 {supported: names("api_type", "transport_api_version", "grpc_services")},
	"envoy.config.core.v3.GrpcService":                     {supported: names("envoy_grpc", "timeout")},
	"envoy.config.core.v3.GrpcService.EnvoyGrpc":           {supported: names("cluster_name")},
	"envoy.config.core.v3.ConfigSource":                    {supported: names("ads", "resource_api_version")},

	// Addresses.
	"envoy.config.core.v3.Address":       {supported: names("socket_address")},
	"envoy.config.core.v3.SocketAddress": {supported: names("protocol", "address", "port_value")},

	// Listeners.
	"envoy.config.listener.v3.Listener":         {supported: names("name", "address", "filter_chains")},
	"envoy.config.listener.v3.FilterChain":      {supported: names("name", "filter_chain_match", "filters", "transport_socket")},
	"envoy.config.listener.v3.FilterChainMatch": {supported: names("server_names", "transport_protocol", "application_protocols")},
	"envoy.config.listener.v3.Filter":           {supported: names("name", "typed_config")},
	"envoy.config.core.v3.TransportSocket":      {supported: names("name", "typed_config")},

	// HTTP connection manager and HTTP filters.
	"envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager": {
		supported: names("codec_type", "stat_prefix", "route_config", "rds", "http_filters",
			"http2_protocol_options", "common_http_protocol_options", "stream_idle_timeout", "request_timeout"),
	},
	"envoy.extensions.filters.network.http_connection_manager.v3.Rds":        {supported: names("config_source", "route_config_name")},
	"envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter": {supported: names("name", "typed_config")},
	"envoy.extensions.filters.http.router.v3.Router":                         {},
	"envoy.config.core.v3.Http2ProtocolOptions": {
		supported: names("max_concurrent_streams", "initial_stream_window_size", "initial_connection_window_size"),
	},
	"envoy.config.core.v3.Http1ProtocolOptions": {},
	"envoy.config.core.v3.HttpProtocolOptions": {
		supported: names("idle_timeout", "max_connection_duration", "headers_with_underscores_action"),
	},

	// TCP proxy: not registered yet; listed so that registering it is all
	// that is needed to accept it.
	"envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy": {supported: names("stat_prefix", "cluster")},

	// Routes.
	"envoy.config.route.v3.RouteConfiguration": {
		supported: names("name", "virtual_hosts", "request_headers_to_add", "request_headers_to_remove",
			"response_headers_to_add", "response_headers_to_remove"),
	},
	"envoy.config.route.v3.VirtualHost": {
		supported: names("name", "domains", "routes", "request_headers_to_add", "request_headers_to_remove",
			"response_headers_to_add", "response_headers_to_remove"),
	},
	"envoy.config.route.v3.Route": {
		supported: names("name", "match", "route", "direct_response", "request_headers_to_add",
			"request_headers_to_remove", "response_headers_to_add", "response_headers_to_remove"),
	},
	"envoy.config.route.v3.RouteMatch":                       {supported: names("prefix", "path", "safe_regex", "headers", "grpc")},
	"envoy.config.route.v3.HeaderMatcher":                    {supported: names("name", "string_match", "present_match", "invert_match")},
	"envoy.type.matcher.v3.StringMatcher":                    {supported: names("exact", "prefix", "suffix", "safe_regex", "contains", "ignore_case")},
	"envoy.type.matcher.v3.RegexMatcher":                     {supported: names("regex")},
	"envoy.config.route.v3.RouteAction":                      {supported: names("cluster", "weighted_clusters", "timeout")},
	"envoy.config.route.v3.WeightedCluster":                  {supported: names("clusters")},
	"envoy.config.route.v3.WeightedCluster.ClusterWeight":    {supported: names("name", "weight")},
	"envoy.config.route.v3.DirectResponseAction":             {supported: names("status", "body")},
	"envoy.config.core.v3.DataSource":                        {supported: names("filename", "inline_bytes", "inline_string")},
	"envoy.config.core.v3.HeaderValueOption":                 {supported: names("header", "append_action")},
	"envoy.config.core.v3.HeaderValue":                       {supported: names("key", "value")},
	"envoy.config.route.v3.RouteMatch.GrpcRouteMatchOptions": {},
	"envoy.config.core.v3.AggregatedConfigSource":            {},
	"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {supported: names("explicit_http_config", "common_http_protocol_options")},
	"envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig": {
		supported: names("http_protocol_options", "http2_protocol_options"),
	},

	// Clusters and endpoints.
	"envoy.config.cluster.v3.Cluster": {
		supported: names("name", "type", "connect_timeout", "lb_policy", "load_assignment",
			"typed_extension_protocol_options", "transport_socket", "eds_cluster_config"),
	},
	"envoy.config.cluster.v3.Cluster.EdsClusterConfig": {supported: names("eds_config", "service_name")},
	"envoy.config.endpoint.v3.ClusterLoadAssignment":   {supported: names("cluster_name", "endpoints")},
	"envoy.config.endpoint.v3.LocalityLbEndpoints": {
		supported: names("lb_endpoints"),
		ignored:   names("locality"),
	},
	"envoy.config.endpoint.v3.LbEndpoint": {supported: names("endpoint")},
	"envoy.config.endpoint.v3.Endpoint":   {supported: names("address")},

	// TLS.
	"envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext": {
		supported: names("common_tls_context", "require_client_certificate"),
	},
	"envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext": {supported: names("common_tls_context", "sni")},
	"envoy.extensions.transport_sockets.tls.v3.CommonTlsContext": {
		supported: names("tls_certificates", "validation_context", "alpn_protocols"),
	},
	"envoy.extensions.transport_sockets.tls.v3.TlsCertificate":               {supported: names("certificate_chain", "private_key")},
	"envoy.extensions.transport_sockets.tls.v3.CertificateValidationContext": {supported: names("trusted_ca")},
}

// leafMessages are the message types honoured whole: every field they have
// is meaningful to meshd as it is (values, or data passed to the control
// plane untouched).
var leafMessages = map[protoreflect.FullName]bool{
	"google.protobuf.Duration":      true,
	"google.protobuf.Struct":        true,
	"google.protobuf.Value":         true,
	"google.protobuf.ListValue":     true,
	"google.protobuf.BoolValue":     true,
	"google.protobuf.UInt32Value":   true,
	"envoy.config.core.v3.Locality": true,
}

func names(ns ...string) []protoreflect.Name {
	out := make([]protoreflect.Name, len(ns))
	for i, n := range ns {
		out[i] = protoreflect.Name(n)
	}
	return out
}
