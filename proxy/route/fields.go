package route

import (
	"fmt"
	"strings"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// supported lists, per message type, the fields Compile understands. A
// field that is set but not listed is a compile error naming its path, so
// nothing in a RouteConfiguration is silently ignored. Message types not in
// the table are leaves: the compiler reads them field by field.
//
// Fields marked "accepted and ignored" below are documented as such: they
// carry no behaviour meshd's data path could honour differently (metadata is
// opaque to routing; names are labels).
var supported = map[protoreflect.FullName]map[protoreflect.Name]bool{
	"envoy.config.route.v3.RouteConfiguration": set(
		"name", "virtual_hosts", "request_headers_to_add", "request_headers_to_remove",
		"response_headers_to_add", "response_headers_to_remove",
		"most_specific_header_mutations_wins", "validate_clusters",
		"max_direct_response_body_size_bytes", "ignore_port_in_host_matching",
		"metadata", // accepted and ignored
	),
	"envoy.config.route.v3.VirtualHost": set(
		"name", "domains", "routes", "request_headers_to_add", "request_headers_to_remove",
		"response_headers_to_add", "response_headers_to_remove", "retry_policy",
		"per_request_buffer_limit_bytes", "request_body_buffer_limit",
		"metadata", // accepted and ignored
	),
	"envoy.config.route.v3.Route": set(
		"name", "match", "route", "redirect", "direct_response", "request_headers_to_add",
		"request_headers_to_remove", "response_headers_to_add", "response_headers_to_remove",
		"per_request_buffer_limit_bytes", "request_body_buffer_limit",
		"metadata", // accepted and ignored
	),
	"envoy.config.route.v3.RouteMatch": set(
		"prefix", "path", "safe_regex", "path_separated_prefix", "case_sensitive",
		"headers", "query_parameters", "grpc",
	),
	"envoy.config.route.v3.RouteMatch.GrpcRouteMatchOptions": set(),
	"envoy.config.route.v3.RouteAction": set(
		"cluster", "weighted_clusters", "cluster_not_found_response_code",
		"prefix_rewrite", "regex_rewrite", "host_rewrite_literal", "auto_host_rewrite",
		"timeout", "idle_timeout", "retry_policy", "max_grpc_timeout", "grpc_timeout_offset",
		"max_stream_duration",
	),
	"envoy.config.route.v3.RouteAction.MaxStreamDuration": set(
		"max_stream_duration", "grpc_timeout_header_max", "grpc_timeout_header_offset",
	),
	"envoy.config.route.v3.WeightedCluster": set("clusters", "total_weight"),
	"envoy.config.route.v3.WeightedCluster.ClusterWeight": set(
		"name", "weight", "request_headers_to_add", "request_headers_to_remove",
		"response_headers_to_add", "response_headers_to_remove", "host_rewrite_literal",
	),
	"envoy.config.route.v3.DirectResponseAction": set("status", "body"),
	"envoy.config.route.v3.RedirectAction": set(
		"https_redirect", "scheme_redirect", "host_redirect", "port_redirect",
		"path_redirect", "prefix_rewrite", "regex_rewrite", "response_code", "strip_query",
	),
	"envoy.config.route.v3.HeaderMatcher": set(
		"name", "exact_match", "safe_regex_match", "range_match", "present_match",
		"prefix_match", "suffix_match", "contains_match", "string_match",
		"invert_match", "treat_missing_header_as_empty",
	),
	"envoy.config.route.v3.QueryParameterMatcher": set("name", "string_match", "present_match"),
	"envoy.config.route.v3.RetryPolicy": set(
		"retry_on", "num_retries", "per_try_timeout", "per_try_idle_timeout",
		"retriable_status_codes", "retry_back_off", "host_selection_retry_max_attempts",
	),
	"envoy.config.route.v3.RetryPolicy.RetryBackOff": set("base_interval", "max_interval"),
	"envoy.type.matcher.v3.StringMatcher":            set("exact", "prefix", "suffix", "safe_regex", "contains", "ignore_case"),
	"envoy.type.matcher.v3.RegexMatcher":             set("google_re2", "regex"),
	"envoy.type.matcher.v3.RegexMatcher.GoogleRE2":   set(), // deprecated and empty in effect
	"envoy.type.matcher.v3.RegexMatchAndSubstitute":  set("pattern", "substitution"),
	"envoy.config.core.v3.HeaderValueOption":         set("header", "append", "append_action", "keep_empty_value"),
	"envoy.config.core.v3.HeaderValue":               set("key", "value", "raw_value"),
	"envoy.config.core.v3.DataSource":                set("inline_bytes", "inline_string"),
}

func set(names ...protoreflect.Name) map[protoreflect.Name]bool {
	m := make(map[protoreflect.Name]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}

// checkSupported walks every set field of m and returns an error naming the
// path of the first one Compile does not implement.
func checkSupported(m protoreflect.Message, path string) error {
	allowed, known := supported[m.Descriptor().FullName()]
	if !known {
		return nil
	}
	var err error
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		p := joinPath(path, string(fd.Name()))
		if !allowed[fd.Name()] {
			err = fmt.Errorf("%s: not supported by meshd", p)
			return false
		}
		if fd.Kind() != protoreflect.MessageKind && fd.Kind() != protoreflect.GroupKind {
			return true
		}
		switch {
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len() && err == nil; i++ {
				err = checkSupported(l.Get(i).Message(), fmt.Sprintf("%s[%d]", p, i))
			}
		case fd.IsMap():
			// Maps of messages are not in any allow-list above.
		default:
			err = checkSupported(v.Message(), p)
		}
		return err == nil
	})
	return err
}

func joinPath(parent, field string) string {
	if parent == "" {
		return field
	}
	var b strings.Builder
	b.WriteString(parent)
	b.WriteByte('.')
	b.WriteString(field)
	return b.String()
}
