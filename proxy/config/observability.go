package config

import (
	"fmt"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	otelsinkv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/stat_sinks/open_telemetry/v3"
	"google.golang.org/protobuf/reflect/protoreflect"

	"meshd.dev/meshd/proxy/accesslog"
)

// StatsSink is envoy.config.metrics.v3.StatsSink.typed_config.
const StatsSink ExtensionPoint = "stats sink"

// OpenTelemetrySinkType is Envoy's envoy.stat_sinks.open_telemetry.
const OpenTelemetrySinkType = "type.googleapis.com/envoy.extensions.stat_sinks.open_telemetry.v3.SinkConfig"

// The access loggers (proxy/accesslog) and the OpenTelemetry stats sink
// (otel/metrics): their types and the fields meshd honours. Kept here, next
// to what compiles them, rather than in the big tables, so the access-log
// and metrics work stays in one place; the tables are complete once init
// has run.
func init() {
	for _, t := range []string{accesslog.FileType, accesslog.StdoutType, accesslog.StderrType, accesslog.OpenTelemetryType} {
		RegisterType(AccessLogger, t)
	}
	RegisterType(StatsSink, OpenTelemetrySinkType)
	addSupported("envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager", "access_log")
	addSupported("envoy.config.bootstrap.v3.Bootstrap", "stats_sinks", "stats_flush_interval")
	for name, f := range map[protoreflect.FullName]messageFields{
		"envoy.config.accesslog.v3.AccessLog": {supported: names("name", "filter", "typed_config")},
		"envoy.config.accesslog.v3.AccessLogFilter": {
			supported: names("status_code_filter", "duration_filter", "not_health_check_filter",
				"response_flag_filter", "and_filter", "or_filter"),
		},
		"envoy.config.accesslog.v3.StatusCodeFilter":     {supported: names("comparison")},
		"envoy.config.accesslog.v3.DurationFilter":       {supported: names("comparison")},
		"envoy.config.accesslog.v3.ComparisonFilter":     {supported: names("op", "value")},
		"envoy.config.accesslog.v3.NotHealthCheckFilter": {},
		"envoy.config.accesslog.v3.ResponseFlagFilter":   {supported: names("flags")},
		"envoy.config.accesslog.v3.AndFilter":            {supported: names("filters")},
		"envoy.config.accesslog.v3.OrFilter":             {supported: names("filters")},
		// No runtime: the default value is the threshold.
		"envoy.config.core.v3.RuntimeUInt32": {supported: names("default_value"), ignored: names("runtime_key")},
		"envoy.extensions.access_loggers.file.v3.FileAccessLog": {
			supported: names("path", "log_format", "format", "json_format"),
		},
		"envoy.extensions.access_loggers.stream.v3.StdoutAccessLog": {supported: names("log_format")},
		"envoy.extensions.access_loggers.stream.v3.StderrAccessLog": {supported: names("log_format")},
		// OTLP logs over gRPC to a cluster; body and attribute values are
		// string formats. stat_prefix names stats meshd does not keep.
		"envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig": {
			supported: names("common_config", "grpc_service", "log_name", "body", "attributes",
				"resource_attributes", "disable_builtin_labels"),
			ignored: names("stat_prefix"),
		},
		"envoy.extensions.access_loggers.grpc.v3.CommonGrpcAccessLogConfig": {
			supported: names("log_name", "grpc_service", "buffer_flush_interval", "buffer_size_bytes"),
			ignored:   names("transport_api_version"),
		},
		"opentelemetry.proto.common.v1.KeyValueList": {supported: names("values")},
		"opentelemetry.proto.common.v1.KeyValue":     {supported: names("key", "value")},
		"opentelemetry.proto.common.v1.AnyValue":     {supported: names("string_value")},
		"envoy.config.core.v3.SubstitutionFormatString": {
			supported: names("text_format", "json_format", "text_format_source", "omit_empty_values"),
		},
		"envoy.config.metrics.v3.StatsSink": {supported: names("name", "typed_config")},
		// Counters and histograms are cumulative; the export is OTLP over
		// gRPC to a static cluster.
		"envoy.extensions.stat_sinks.open_telemetry.v3.SinkConfig": {
			supported: names("grpc_service", "emit_tags_as_attributes", "use_tag_extracted_name", "prefix"),
		},
	} {
		supportedFields[name] = f
	}
}

// addSupported adds fields to the supported list of message name.
func addSupported(name protoreflect.FullName, fields ...string) {
	e := supportedFields[name]
	e.supported = append(e.supported, names(fields...)...)
	supportedFields[name] = e
}

// StatsSinkConfig is the bootstrap's envoy.stat_sinks.open_telemetry sink:
// where and how often the sidecar exports its metrics.
type StatsSinkConfig struct {
	// Cluster is grpc_service.envoy_grpc.cluster_name; Endpoint is its
	// (first) endpoint's address.
	Cluster  string
	Endpoint string
	// Interval is stats_flush_interval (Envoy's default 5 s).
	Interval time.Duration
	// Envoy's SinkConfig fields, with Envoy's defaults (true, true, "").
	UseTagExtractedName  bool
	EmitTagsAsAttributes bool
	Prefix               string
}

// CompileStatsSinks returns the bootstrap's OpenTelemetry stats sink, or nil
// when it has none. The sink's grpc_service must name a static cluster
// with a socket address; only one OpenTelemetry sink is supported. Errors
// name the field.
func CompileStatsSinks(b *bootstrapv3.Bootstrap) (*StatsSinkConfig, error) {
	var out *StatsSinkConfig
	for k, s := range b.GetStatsSinks() {
		path := fmt.Sprintf("stats_sinks[%d]", k)
		var sc otelsinkv3.SinkConfig
		if err := s.GetTypedConfig().UnmarshalTo(&sc); err != nil {
			return nil, fmt.Errorf("%s.typed_config: %w (meshd supports %s)", path, err, OpenTelemetrySinkType)
		}
		if out != nil {
			return nil, fmt.Errorf("%s: only one envoy.stat_sinks.open_telemetry sink is supported", path)
		}
		name := sc.GetGrpcService().GetEnvoyGrpc().GetClusterName()
		if name == "" {
			return nil, fmt.Errorf("%s.typed_config.grpc_service.envoy_grpc.cluster_name: required", path)
		}
		addr, err := staticClusterAddress(b, name)
		if err != nil {
			return nil, fmt.Errorf("%s.typed_config.grpc_service.envoy_grpc.cluster_name: %w", path, err)
		}
		out = &StatsSinkConfig{
			Cluster: name, Endpoint: addr, Interval: 5 * time.Second,
			UseTagExtractedName: true, EmitTagsAsAttributes: true, Prefix: sc.GetPrefix(),
		}
		if v := sc.GetUseTagExtractedName(); v != nil {
			out.UseTagExtractedName = v.GetValue()
		}
		if v := sc.GetEmitTagsAsAttributes(); v != nil {
			out.EmitTagsAsAttributes = v.GetValue()
		}
	}
	if out != nil {
		if d := b.GetStatsFlushInterval(); d != nil {
			if d.AsDuration() < time.Millisecond {
				return nil, fmt.Errorf("stats_flush_interval: %v is below 1ms", d.AsDuration())
			}
			out.Interval = d.AsDuration()
		}
	}
	return out, nil
}

// staticClusterAddress returns the address of the first endpoint of the
// bootstrap's static cluster name.
func staticClusterAddress(b *bootstrapv3.Bootstrap, name string) (string, error) {
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() != name {
			continue
		}
		if c.GetTransportSocket() != nil {
			return "", fmt.Errorf("cluster %q: TLS to the collector is not supported", name)
		}
		for _, lle := range c.GetLoadAssignment().GetEndpoints() {
			eps := lle.GetLbEndpoints()
			if len(eps) == 0 {
				continue
			}
			a, err := socketAddress(eps[0].GetEndpoint().GetAddress())
			if err != nil {
				return "", fmt.Errorf("cluster %q: %w", name, err)
			}
			return a, nil
		}
		return "", fmt.Errorf("cluster %q has no endpoint", name)
	}
	return "", fmt.Errorf("no static cluster %q", name)
}
