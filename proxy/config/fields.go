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
		supported: names("node", "admin", "static_resources", "dynamic_resources", "cluster_manager", "overload_manager"),
		ignored:   names("layered_runtime"),
	},
	// load_stats_config: LRS reports with meshd's per-endpoint
	// observations (xds/observe), for the control plane's autoTune.
	"envoy.config.bootstrap.v3.ClusterManager": {supported: names("load_stats_config")},
	// Overload manager (proxy/overload): the fixed_heap monitor and the
	// stop_accepting_connections, stop_accepting_requests and shrink_heap
	// actions.
	"envoy.config.overload.v3.OverloadManager":                         {supported: names("refresh_interval", "resource_monitors", "actions")},
	"envoy.config.overload.v3.ResourceMonitor":                         {supported: names("name", "typed_config")},
	"envoy.config.overload.v3.OverloadAction":                          {supported: names("name", "triggers", "typed_config")},
	"envoy.config.overload.v3.Trigger":                                 {supported: names("name", "threshold", "scaled")},
	"envoy.config.overload.v3.ThresholdTrigger":                        {supported: names("value")},
	"envoy.config.overload.v3.ScaledTrigger":                           {supported: names("scaling_threshold", "saturation_threshold")},
	"envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig": {supported: names("max_heap_size_bytes")},
	"envoy.config.overload.v3.ShrinkHeapConfig":                        {supported: names("timer_interval")},
	"envoy.config.bootstrap.v3.Admin": {
		supported: names("address"),
		ignored:   names("access_log_path"),
	},
	// secrets: named by the static listeners' and clusters' SdsSecretConfig
	// without sds_config, and resolved into their TLS contexts (secrets.go).
	"envoy.config.bootstrap.v3.Bootstrap.StaticResources":  {supported: names("listeners", "clusters", "secrets")},
	"envoy.config.bootstrap.v3.Bootstrap.DynamicResources": {supported: names("ads_config", "lds_config", "cds_config")},
	"envoy.config.core.v3.Node":                            {supported: names("id", "cluster", "metadata", "locality")},
	"envoy.config.core.v3.ApiConfigSource":                 {supported: names("api_type", "transport_api_version", "grpc_services")},
	"envoy.config.core.v3.GrpcService":                     {supported: names("envoy_grpc", "timeout")},
	"envoy.config.core.v3.GrpcService.EnvoyGrpc":           {supported: names("cluster_name")},
	// api_config_source is honoured only in TLS contexts' sds_config
	// (validate.go); lds/cds/rds/eds config sources must be ads.
	"envoy.config.core.v3.ConfigSource":           {supported: names("ads", "api_config_source", "resource_api_version")},
	"envoy.config.core.v3.AggregatedConfigSource": {},

	// Addresses.
	// pipe only in a cluster naming an SDS or Workload API socket.
	"envoy.config.core.v3.Address":       {supported: names("socket_address", "pipe")},
	"envoy.config.core.v3.Pipe":          {supported: names("path")},
	"envoy.config.core.v3.SocketAddress": {supported: names("protocol", "address", "port_value")},

	// Listeners.
	"envoy.config.listener.v3.Listener": {
		supported: names("name", "address", "filter_chains", "per_connection_buffer_limit_bytes", "metadata",
			"listener_filters", "udp_listener_config", "use_original_dst", "bind_to_port", "access_log",
			// traffic_direction: POST /drain_listeners?inboundonly leaves
			// OUTBOUND listeners accepting, as Envoy does.
			"traffic_direction"),
	},
	// HTTP/3 (proxy/config/quic.go): a UDP listener serves QUIC only.
	"envoy.config.listener.v3.UdpListenerConfig": {supported: names("quic_options")},
	"envoy.config.listener.v3.QuicProtocolOptions": {
		supported: names("quic_protocol_options", "idle_timeout", "crypto_handshake_timeout", "enabled"),
	},
	"envoy.config.core.v3.QuicProtocolOptions": {
		supported: names("max_concurrent_streams", "initial_stream_window_size", "initial_connection_window_size",
			"connection_keepalive", "idle_network_timeout"),
	},
	// initial_interval: a server PINGs only when it is set (Envoy's
	// default); quic-go sends PINGs at one period, max_interval.
	"envoy.config.core.v3.QuicKeepAliveSettings":                         {supported: names("max_interval", "initial_interval")},
	"envoy.config.core.v3.Http3ProtocolOptions":                          {supported: names("quic_protocol_options")},
	"envoy.extensions.transport_sockets.quic.v3.QuicDownstreamTransport": {supported: names("downstream_tls_context", "enable_early_data")},
	"envoy.extensions.transport_sockets.quic.v3.QuicUpstreamTransport":   {supported: names("upstream_tls_context")},
	"envoy.config.core.v3.RuntimeFeatureFlag":                            {supported: names("default_value"), ignored: names("runtime_key")},
	// Listener metadata carries meshd's own HTTP/2 settings under
	// "meshd.http2" (see MeshdHTTP2MetadataKey); other keys are data.
	"envoy.config.core.v3.Metadata":        {supported: names("filter_metadata")},
	"envoy.config.listener.v3.FilterChain": {supported: names("name", "filters", "transport_socket", "filter_chain_match")},
	// Chains are selected on transport_protocol only (filterchain.go):
	// PERMISSIVE mTLS's tls chain and plaintext twin.
	"envoy.config.listener.v3.FilterChainMatch": {supported: names("transport_protocol")},
	"envoy.config.listener.v3.ListenerFilter":   {supported: names("name", "typed_config")},
	// tls_inspector detects TLS from the first byte; JA3/JA4 fingerprints
	// and the read buffer size are not implemented.
	"envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector": {},
	// original_dst recovers SO_ORIGINAL_DST (IPv4 and IPv6 on Linux);
	// traffic_type and the Windows redirect records are not implemented.
	"envoy.extensions.filters.listener.original_dst.v3.OriginalDst": {},
	"envoy.config.listener.v3.Filter":                               {supported: names("name", "typed_config")},
	"envoy.config.core.v3.TransportSocket":                          {supported: names("name", "typed_config")},

	// HTTP connection manager and HTTP filters. HttpProtocolOptions and
	// Http2ProtocolOptions are shared with clusters; the fields only a
	// cluster honours are rejected on the HCM by the semantic checks.
	"envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager": {
		supported: names("codec_type", "stat_prefix", "route_config", "rds", "http_filters",
			"http2_protocol_options", "http3_protocol_options", "common_http_protocol_options", "stream_idle_timeout", "request_timeout",
			"server_name", "generate_request_id", "max_request_headers_kb", "request_headers_timeout",
			"forward_client_cert_details", "set_current_client_cert_details", "tracing"),
	},
	// Tracing (otel/tracing): OpenTelemetry over gRPC to a cluster.
	// verbose (span logs) is not implemented.
	"envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.Tracing": {
		supported: names("client_sampling", "random_sampling", "overall_sampling", "custom_tags", "provider",
			"max_path_tag_length", "spawn_upstream_span"),
	},
	"envoy.config.trace.v3.Tracing.Http": {supported: names("name", "typed_config")},
	// Spans go to grpc_service.envoy_grpc's cluster; http_service (OTLP
	// over HTTP), custom exporters, samplers and resource detectors are
	// not implemented.
	"envoy.config.trace.v3.OpenTelemetryConfig":   {supported: names("grpc_service", "service_name")},
	"envoy.type.tracing.v3.CustomTag":             {supported: names("tag", "literal", "environment", "request_header")},
	"envoy.type.tracing.v3.CustomTag.Literal":     {supported: names("value")},
	"envoy.type.tracing.v3.CustomTag.Environment": {supported: names("name", "default_value")},
	"envoy.type.tracing.v3.CustomTag.Header":      {supported: names("name", "default_value")},
	// XFCC (proxy/http/hcm): cert and chain are not implemented.
	"envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.SetCurrentClientCertDetails": {
		supported: names("subject", "uri", "dns"),
	},
	"envoy.extensions.filters.network.http_connection_manager.v3.Rds":        {supported: names("config_source", "route_config_name")},
	"envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter": {supported: names("name", "typed_config")},
	"envoy.extensions.filters.http.router.v3.Router":                         {},
	// RBAC (filters/rbac).
	"envoy.extensions.filters.http.rbac.v3.RBAC": {supported: names("rules", "rules_stat_prefix")},
	"envoy.config.rbac.v3.RBAC":                  {supported: names("action", "policies")},
	"envoy.config.rbac.v3.Policy":                {supported: names("permissions", "principals")},
	"envoy.config.rbac.v3.Permission": {
		supported: names("any", "header", "url_path", "destination_port", "and_rules", "or_rules", "not_rule"),
	},
	"envoy.config.rbac.v3.Permission.Set": {supported: names("rules")},
	"envoy.config.rbac.v3.Principal": {
		supported: names("any", "authenticated", "direct_remote_ip", "and_ids", "or_ids", "not_id"),
	},
	"envoy.config.rbac.v3.Principal.Set":           {supported: names("ids")},
	"envoy.config.rbac.v3.Principal.Authenticated": {supported: names("principal_name")},
	"envoy.type.matcher.v3.PathMatcher":            {supported: names("path")},
	// Local rate limit (filters/localratelimit): descriptors and the other
	// route-keyed fields are rejected; runtime keys have no runtime to read.
	"envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit": {
		supported: names("stat_prefix", "status", "token_bucket", "filter_enabled", "filter_enforced",
			"request_headers_to_add_when_not_enforced", "response_headers_to_add",
			"local_rate_limit_per_downstream_connection", "enable_x_ratelimit_headers",
			"rate_limited_as_resource_exhausted", "enable_retry_after_header", "stage", "vh_rate_limits",
			"always_consume_default_token_bucket"),
	},
	"envoy.config.core.v3.RuntimeFractionalPercent": {supported: names("default_value"), ignored: names("runtime_key")},
	"envoy.type.v3.TokenBucket":                     {supported: names("max_tokens", "tokens_per_fill", "fill_interval")},
	"envoy.type.v3.HttpStatus":                      {supported: names("code")},
	"envoy.type.v3.FractionalPercent":               {supported: names("numerator", "denominator")},
	// Wasm (filters/wasm): every runtime name runs on wazero; remote code is
	// fetched from http_uri.uri directly (cluster is only named in errors).
	"envoy.extensions.filters.http.wasm.v3.Wasm": {supported: names("config")},
	"envoy.extensions.wasm.v3.PluginConfig": {
		supported: names("name", "root_id", "vm_config", "configuration", "fail_open"),
	},
	"envoy.extensions.wasm.v3.VmConfig":         {supported: names("vm_id", "runtime", "code", "configuration")},
	"envoy.config.core.v3.AsyncDataSource":      {supported: names("local", "remote")},
	"envoy.config.core.v3.RemoteDataSource":     {supported: names("http_uri", "sha256")},
	"envoy.config.core.v3.HttpUri":              {supported: names("uri", "timeout"), ignored: names("cluster")},
	"envoy.config.core.v3.CidrRange":            {supported: names("address_prefix", "prefix_len")},
	"envoy.config.core.v3.Http1ProtocolOptions": {},
	"envoy.config.core.v3.Http2ProtocolOptions": {
		// The flood limits are honoured on the HCM only (validate.go).
		supported: names("max_concurrent_streams", "initial_stream_window_size", "initial_connection_window_size",
			"connection_keepalive", "max_outbound_frames", "max_outbound_control_frames",
			"max_consecutive_inbound_frames_with_empty_payload", "max_inbound_priority_frames_per_stream",
			"max_inbound_window_update_frames_per_data_frame_sent"),
	},
	"envoy.config.core.v3.KeepaliveSettings": {
		supported: names("interval", "timeout", "interval_jitter", "connection_idle_interval"),
	},
	"envoy.config.core.v3.HttpProtocolOptions": {
		supported: names("idle_timeout", "max_connection_duration", "max_stream_duration",
			"max_requests_per_connection", "headers_with_underscores_action", "max_headers_count"),
	},

	// TCP proxy (proxy/tcpproxy). The other fields are not implemented
	// and are rejected.
	"envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy": {
		supported: names("stat_prefix", "cluster", "weighted_clusters", "idle_timeout", "max_connect_attempts",
			"access_log", "access_log_options"),
	},
	"envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.TcpAccessLogOptions": {
		supported: names("access_log_flush_interval", "flush_access_log_on_connected"),
	},
	"envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster":               {supported: names("clusters")},
	"envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster.ClusterWeight": {supported: names("name", "weight")},

	// Routes (what proxy/route compiles).
	"envoy.config.route.v3.RouteConfiguration": {
		supported: names("name", "virtual_hosts", "request_headers_to_add", "request_headers_to_remove",
			"response_headers_to_add", "response_headers_to_remove", "most_specific_header_mutations_wins",
			"validate_clusters", "max_direct_response_body_size_bytes", "ignore_port_in_host_matching"),
		ignored: names("metadata"),
	},
	"envoy.config.route.v3.VirtualHost": {
		supported: names("name", "domains", "routes", "request_headers_to_add", "request_headers_to_remove",
			"response_headers_to_add", "response_headers_to_remove", "retry_policy", "per_request_buffer_limit_bytes",
			"request_body_buffer_limit"),
		ignored: names("metadata"),
	},
	"envoy.config.route.v3.Route": {
		supported: names("name", "match", "route", "redirect", "direct_response", "request_headers_to_add",
			"request_headers_to_remove", "response_headers_to_add", "response_headers_to_remove",
			"per_request_buffer_limit_bytes", "request_body_buffer_limit"),
		ignored: names("metadata"),
	},
	"envoy.config.route.v3.RouteMatch": {
		supported: names("prefix", "path", "safe_regex", "path_separated_prefix", "case_sensitive",
			"headers", "query_parameters", "grpc"),
	},
	"envoy.config.route.v3.RouteMatch.GrpcRouteMatchOptions": {},
	"envoy.config.route.v3.RouteAction": {
		supported: names("cluster", "weighted_clusters", "cluster_not_found_response_code",
			"prefix_rewrite", "regex_rewrite", "host_rewrite_literal", "auto_host_rewrite",
			"timeout", "idle_timeout", "retry_policy", "max_grpc_timeout", "grpc_timeout_offset",
			"max_stream_duration"),
	},
	"envoy.config.route.v3.RouteAction.MaxStreamDuration": {
		supported: names("max_stream_duration", "grpc_timeout_header_max", "grpc_timeout_header_offset"),
	},
	"envoy.config.route.v3.WeightedCluster": {supported: names("clusters", "total_weight")},
	"envoy.config.route.v3.WeightedCluster.ClusterWeight": {
		supported: names("name", "weight", "request_headers_to_add", "request_headers_to_remove",
			"response_headers_to_add", "response_headers_to_remove", "host_rewrite_literal"),
	},
	"envoy.config.route.v3.DirectResponseAction": {supported: names("status", "body")},
	"envoy.config.route.v3.RedirectAction": {
		supported: names("https_redirect", "scheme_redirect", "host_redirect", "port_redirect",
			"path_redirect", "prefix_rewrite", "regex_rewrite", "response_code", "strip_query"),
	},
	"envoy.config.route.v3.HeaderMatcher": {
		supported: names("name", "exact_match", "safe_regex_match", "range_match", "present_match",
			"prefix_match", "suffix_match", "contains_match", "string_match",
			"invert_match", "treat_missing_header_as_empty"),
	},
	"envoy.config.route.v3.QueryParameterMatcher": {supported: names("name", "string_match", "present_match")},
	"envoy.config.route.v3.RetryPolicy": {
		supported: names("retry_on", "num_retries", "per_try_timeout", "per_try_idle_timeout",
			"retriable_status_codes", "retry_back_off", "host_selection_retry_max_attempts"),
	},
	"envoy.config.route.v3.RetryPolicy.RetryBackOff": {supported: names("base_interval", "max_interval")},
	"envoy.type.matcher.v3.StringMatcher":            {supported: names("exact", "prefix", "suffix", "safe_regex", "contains", "ignore_case")},
	"envoy.type.matcher.v3.RegexMatcher":             {supported: names("regex"), ignored: names("google_re2")},
	"envoy.type.matcher.v3.RegexMatchAndSubstitute":  {supported: names("pattern", "substitution")},
	"envoy.config.core.v3.HeaderValueOption":         {supported: names("header", "append", "append_action", "keep_empty_value")},
	"envoy.config.core.v3.HeaderValue":               {supported: names("key", "value", "raw_value")},
	"envoy.config.core.v3.DataSource":                {supported: names("filename", "inline_bytes", "inline_string")},
	"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
		supported: names("explicit_http_config", "auto_config", "common_http_protocol_options"),
	},
	"envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig": {
		supported: names("http_protocol_options", "http2_protocol_options", "http3_protocol_options"),
	},
	// auto_config is HTTP/3 first with HTTP/2 over TCP while an endpoint's
	// HTTP/3 is broken (proxy/upstream/h3pool.go): every endpoint is
	// treated as advertising h3, so the alternate protocols cache is named
	// only.
	"envoy.extensions.upstreams.http.v3.HttpProtocolOptions.AutoHttpConfig": {
		supported: names("http2_protocol_options", "http3_protocol_options", "alternate_protocols_cache_options"),
	},
	"envoy.config.core.v3.AlternateProtocolsCacheOptions": {supported: names("name")},

	// Clusters and endpoints (what proxy/upstream compiles).
	"envoy.config.cluster.v3.Cluster": {
		supported: names("name", "type", "connect_timeout", "lb_policy", "load_assignment",
			"typed_extension_protocol_options", "transport_socket", "eds_cluster_config",
			"dns_refresh_rate", "circuit_breakers", "preconnect_policy", "upstream_connection_options",
			"per_connection_buffer_limit_bytes", "outlier_detection", "health_checks",
			// ORIGINAL_DST clusters (proxy/upstream/origdst.go).
			"cleanup_interval", "original_dst_lb_config",
			// Deprecated in Envoy in favour of typed_extension_protocol_options,
			// still honoured by Envoy and by meshd.
			"http2_protocol_options", "common_http_protocol_options", "max_requests_per_connection"),
	},
	"envoy.config.cluster.v3.Cluster.EdsClusterConfig": {supported: names("eds_config", "service_name")},
	// metadata_key (a dynamic-metadata override) has no producer in meshd.
	"envoy.config.cluster.v3.Cluster.OriginalDstLbConfig": {supported: names("use_http_header", "http_header_name", "upstream_port_override")},
	"envoy.config.cluster.v3.Cluster.PreconnectPolicy":    {supported: names("per_upstream_preconnect_ratio")},
	"envoy.config.cluster.v3.UpstreamConnectionOptions":   {supported: names("tcp_keepalive")},
	"envoy.config.core.v3.TcpKeepalive":                   {supported: names("keepalive_probes", "keepalive_time", "keepalive_interval")},
	"envoy.config.cluster.v3.CircuitBreakers":             {supported: names("thresholds")},
	"envoy.config.cluster.v3.CircuitBreakers.Thresholds": {
		supported: names("priority", "max_connections", "max_pending_requests", "max_requests", "max_retries", "retry_budget"),
	},
	"envoy.config.cluster.v3.CircuitBreakers.Thresholds.RetryBudget": {
		supported: names("budget_percent", "min_retry_concurrency"),
	},
	"envoy.config.cluster.v3.OutlierDetection": {
		supported: names("consecutive_5xx", "consecutive_gateway_failure", "consecutive_local_origin_failure",
			"enforcing_consecutive_5xx", "enforcing_consecutive_gateway_failure",
			"enforcing_consecutive_local_origin_failure", "split_external_local_origin_errors",
			"interval", "base_ejection_time", "max_ejection_time", "max_ejection_time_jitter",
			"max_ejection_percent", "always_eject_one_host", "successful_active_health_check_uneject_host"),
	},
	"envoy.config.core.v3.HealthCheck": {
		supported: names("timeout", "interval", "unhealthy_interval", "healthy_edge_interval",
			"unhealthy_edge_interval", "no_traffic_interval", "no_traffic_healthy_interval",
			"initial_jitter", "interval_jitter", "interval_jitter_percent", "reuse_connection",
			"unhealthy_threshold", "healthy_threshold", "http_health_check", "grpc_health_check"),
	},
	"envoy.config.core.v3.HealthCheck.HttpHealthCheck": {
		supported: names("host", "path", "method", "codec_client_type", "request_headers_to_add",
			"request_headers_to_remove", "expected_statuses", "retriable_statuses"),
	},
	"envoy.config.core.v3.HealthCheck.GrpcHealthCheck": {supported: names("service_name", "authority", "initial_metadata")},
	"envoy.config.endpoint.v3.ClusterLoadAssignment":   {supported: names("cluster_name", "endpoints")},
	"envoy.config.endpoint.v3.LocalityLbEndpoints": {
		supported: names("lb_endpoints"),
		ignored:   names("locality", "load_balancing_weight"),
	},
	"envoy.config.endpoint.v3.LbEndpoint": {supported: names("endpoint", "load_balancing_weight")},
	"envoy.config.endpoint.v3.Endpoint":   {supported: names("address")},

	// TLS.
	"envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext": {
		supported: names("common_tls_context", "require_client_certificate"),
	},
	"envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext": {supported: names("common_tls_context", "sni")},
	"envoy.extensions.transport_sockets.tls.v3.CommonTlsContext": {
		supported: names("tls_certificates", "validation_context", "alpn_protocols",
			"tls_certificate_sds_secret_configs", "validation_context_sds_secret_config", "combined_validation_context"),
	},
	"envoy.extensions.transport_sockets.tls.v3.SdsSecretConfig": {supported: names("name", "sds_config")},
	// A static secret holds a certificate or a validation context; session
	// ticket keys and generic secrets have no user in meshd.
	"envoy.extensions.transport_sockets.tls.v3.Secret": {supported: names("name", "tls_certificate", "validation_context")},
	"envoy.extensions.transport_sockets.tls.v3.CommonTlsContext.CombinedCertificateValidationContext": {
		supported: names("default_validation_context", "validation_context_sds_secret_config"),
	},
	"envoy.extensions.transport_sockets.tls.v3.SubjectAltNameMatcher":        {supported: names("san_type", "matcher")},
	"envoy.extensions.transport_sockets.tls.v3.TlsCertificate":               {supported: names("certificate_chain", "private_key")},
	"envoy.extensions.transport_sockets.tls.v3.CertificateValidationContext": {supported: names("trusted_ca", "match_typed_subject_alt_names")},
}

// leafMessages are the message types honoured whole: every field they have
// is meaningful to meshd as it is (values, or data passed to the control
// plane untouched).
var leafMessages = map[protoreflect.FullName]bool{
	"google.protobuf.Duration":      true,
	"google.protobuf.Struct":        true,
	"google.protobuf.BoolValue":     true,
	"google.protobuf.StringValue":   true, // wasm configuration
	"google.protobuf.BytesValue":    true, // wasm configuration
	"google.protobuf.UInt32Value":   true,
	"google.protobuf.UInt64Value":   true, // request_body_buffer_limit
	"google.protobuf.DoubleValue":   true,
	"envoy.type.v3.Int64Range":      true,
	"envoy.type.v3.Percent":         true,
	"envoy.config.core.v3.Locality": true,
}

func names(ns ...string) []protoreflect.Name {
	out := make([]protoreflect.Name, len(ns))
	for i, n := range ns {
		out[i] = protoreflect.Name(n)
	}
	return out
}
