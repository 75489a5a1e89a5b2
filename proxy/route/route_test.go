package route

import (
	"math/rand/v2"
	"net"
	"strings"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

func parseYAML(t testing.TB, y string) *routev3.RouteConfiguration {
	t.Helper()
	j, err := yaml.YAMLToJSON([]byte(y))
	if err != nil {
		t.Fatalf("yaml: %v", err)
	}
	rc := &routev3.RouteConfiguration{}
	if err := protojson.Unmarshal(j, rc); err != nil {
		t.Fatalf("protojson: %v", err)
	}
	return rc
}

func compileYAML(t testing.TB, y string) *Table {
	t.Helper()
	tbl, err := Compile(parseYAML(t, y))
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return tbl
}

// req builds a request; hdrs are name, value pairs.
func req(authority, path string, hdrs ...string) *stream.Request {
	r := &stream.Request{Method: "GET", Scheme: "http", Authority: authority, Path: path, ContentLength: -1}
	for i := 0; i+1 < len(hdrs); i += 2 {
		r.Header.Add(hdrs[i], hdrs[i+1])
	}
	return r
}

const domainsConfig = `
name: rc
virtual_hosts:
- {name: exact, domains: ["foo.com"], routes: [{match: {prefix: "/"}, route: {cluster: c}}]}
- {name: exact-port, domains: ["foo.com:8080"], routes: [{match: {prefix: "/"}, route: {cluster: c}}]}
- {name: suffix-short, domains: ["*.com"], routes: [{match: {prefix: "/"}, route: {cluster: c}}]}
- {name: suffix, domains: ["*.foo.com"], routes: [{match: {prefix: "/"}, route: {cluster: c}}]}
- {name: suffix-dash, domains: ["*-bar.foo.com"], routes: [{match: {prefix: "/"}, route: {cluster: c}}]}
- {name: suffix-long, domains: ["*.bar.foo.com"], routes: [{match: {prefix: "/"}, route: {cluster: c}}]}
- {name: prefix, domains: ["api.*"], routes: [{match: {prefix: "/"}, route: {cluster: c}}]}
- {name: prefix-long, domains: ["api.internal.*"], routes: [{match: {prefix: "/"}, route: {cluster: c}}]}
- {name: default, domains: ["*"], routes: [{match: {prefix: "/"}, route: {cluster: c}}]}
`

func TestVirtualHostSelection(t *testing.T) {
	tbl := compileYAML(t, domainsConfig)
	tests := []struct {
		authority, want string
	}{
		{"foo.com", "exact"},
		{"FOO.Com", "exact"},
		{"foo.com:8080", "exact-port"},
		{"foo.com:9090", "default"}, // port is part of the authority; no "foo.com:*"
		{"x.foo.com", "suffix"},
		{"a.b.foo.com", "suffix"},
		{"baz-bar.foo.com", "suffix-dash"},
		{"-bar.foo.com", "suffix"}, // "*-bar" needs a non-empty wildcard part
		{"x.bar.foo.com", "suffix-long"},
		{".foo.com", "suffix-short"}, // "*.foo.com" does not match an empty part
		{"other.com", "suffix-short"},
		{"api.example.org", "prefix"},
		{"api.internal.x", "prefix-long"},
		{"api.", "default"},
		{"example.org", "default"},
		{"", "default"},
	}
	for _, tc := range tests {
		t.Run(tc.authority, func(t *testing.T) {
			r, vh := tbl.Match(req(tc.authority, "/"))
			if vh == nil || r == nil {
				t.Fatalf("no match, want %s", tc.want)
			}
			if vh.Name != tc.want {
				t.Errorf("virtual host %q, want %q", vh.Name, tc.want)
			}
		})
	}
}

func TestVirtualHostNoDefault(t *testing.T) {
	tbl := compileYAML(t, `
virtual_hosts:
- {name: a, domains: ["a.com"], routes: [{match: {path: "/x"}, route: {cluster: c}}]}`)
	if r, vh := tbl.Match(req("b.com", "/x")); r != nil || vh != nil {
		t.Errorf("unknown host matched %v %v", r, vh)
	}
	if r, vh := tbl.Match(req("a.com", "/y")); r != nil || vh == nil {
		t.Errorf("want (nil route, vhost a), got %v %v", r, vh)
	}
}

func TestIgnorePortInHostMatching(t *testing.T) {
	tbl := compileYAML(t, `
ignore_port_in_host_matching: true
virtual_hosts:
- {name: a, domains: ["a.com"], routes: [{match: {prefix: "/"}, route: {cluster: c}}]}
- {name: v6, domains: ["[::1]"], routes: [{match: {prefix: "/"}, route: {cluster: c}}]}`)
	for _, tc := range []struct{ authority, want string }{
		{"a.com:443", "a"}, {"a.com", "a"}, {"[::1]:80", "v6"}, {"[::1]", "v6"}, {"a.com:x", ""},
	} {
		_, vh := tbl.Match(req(tc.authority, "/"))
		got := ""
		if vh != nil {
			got = vh.Name
		}
		if got != tc.want {
			t.Errorf("%q: virtual host %q, want %q", tc.authority, got, tc.want)
		}
	}
}

func TestRouteMatch(t *testing.T) {
	tests := []struct {
		name  string
		match string // YAML of the RouteMatch
		req   *stream.Request
		want  bool
	}{
		{"prefix", `{prefix: /api}`, req("h", "/api/v1"), true},
		{"prefix miss", `{prefix: /api}`, req("h", "/ap"), false},
		{"prefix case sensitive", `{prefix: /api}`, req("h", "/API/v1"), false},
		{"prefix case insensitive", `{prefix: /api, case_sensitive: false}`, req("h", "/API/v1"), true},
		{"prefix ignores query", `{prefix: "/a?b"}`, req("h", "/a?b"), false},
		{"path", `{path: /exact}`, req("h", "/exact"), true},
		{"path with query", `{path: /exact}`, req("h", "/exact?x=1"), true},
		{"path with fragment", `{path: /exact}`, req("h", "/exact#f"), true},
		{"path longer", `{path: /exact}`, req("h", "/exact/"), false},
		{"path case insensitive", `{path: /Exact, case_sensitive: false}`, req("h", "/eXACT"), true},
		{"regex whole path", `{safe_regex: {regex: "/v[0-9]+/.*"}}`, req("h", "/v12/x?q"), true},
		{"regex is anchored", `{safe_regex: {regex: "/v[0-9]+"}}`, req("h", "/v12/x"), false},
		{"regex anchored at start", `{safe_regex: {regex: "v1"}}`, req("h", "/v1"), false},
		{"regex ignores case_sensitive", `{safe_regex: {regex: "/a"}, case_sensitive: false}`, req("h", "/A"), false},
		{"regex alternation is anchored as a whole", `{safe_regex: {regex: "/a|/b"}}`, req("h", "/b"), true},
		{"regex alternation no partial", `{safe_regex: {regex: "/a|/b"}}`, req("h", "/bc"), false},
		{"regex case folding", `{safe_regex: {regex: "(?i)/api/.*"}}`, req("h", "/API/x"), true},
		{"regex literal prefix mismatch", `{safe_regex: {regex: "/svc/[0-9]+"}}`, req("h", "/svx/1"), false},
		{"separated prefix exact", `{path_separated_prefix: /api}`, req("h", "/api"), true},
		{"separated prefix slash", `{path_separated_prefix: /api}`, req("h", "/api/x"), true},
		{"separated prefix query", `{path_separated_prefix: /api}`, req("h", "/api?x"), true},
		{"separated prefix no separator", `{path_separated_prefix: /api}`, req("h", "/apix"), false},
		{"grpc", `{prefix: /, grpc: {}}`, req("h", "/s/M", "content-type", "application/grpc"), true},
		{"grpc+proto", `{prefix: /, grpc: {}}`, req("h", "/s/M", "content-type", "application/grpc+proto"), true},
		{"grpc-web is not grpc", `{prefix: /, grpc: {}}`, req("h", "/s/M", "content-type", "application/grpc-web"), false},
		{"grpc missing", `{prefix: /, grpc: {}}`, req("h", "/s/M"), false},
		{"header exact", `{prefix: /, headers: [{name: x-a, string_match: {exact: v}}]}`, req("h", "/", "x-a", "v"), true},
		{"header name case", `{prefix: /, headers: [{name: X-A, string_match: {exact: v}}]}`, req("h", "/", "x-a", "v"), true},
		{"header exact miss", `{prefix: /, headers: [{name: x-a, string_match: {exact: v}}]}`, req("h", "/", "x-a", "V"), false},
		{"header exact ignore case", `{prefix: /, headers: [{name: x-a, string_match: {exact: v, ignore_case: true}}]}`, req("h", "/", "x-a", "V"), true},
		{"header prefix", `{prefix: /, headers: [{name: x-a, string_match: {prefix: ab}}]}`, req("h", "/", "x-a", "abc"), true},
		{"header suffix", `{prefix: /, headers: [{name: x-a, string_match: {suffix: bc}}]}`, req("h", "/", "x-a", "abc"), true},
		{"header contains", `{prefix: /, headers: [{name: x-a, string_match: {contains: b}}]}`, req("h", "/", "x-a", "abc"), true},
		{"header regex", `{prefix: /, headers: [{name: x-a, string_match: {safe_regex: {regex: "\\d{3}"}}}]}`, req("h", "/", "x-a", "123"), true},
		{"header regex full", `{prefix: /, headers: [{name: x-a, string_match: {safe_regex: {regex: "\\d{3}"}}}]}`, req("h", "/", "x-a", "1234"), false},
		{"header regex inverted", `{prefix: /, headers: [{name: x-a, invert_match: true, string_match: {safe_regex: {regex: "\\d{3}"}}}]}`, req("h", "/", "x-a", "1234"), true},
		{"legacy exact_match", `{prefix: /, headers: [{name: x-a, exact_match: v}]}`, req("h", "/", "x-a", "v"), true},
		{"legacy safe_regex_match", `{prefix: /, headers: [{name: x-a, safe_regex_match: {regex: "v+"}}]}`, req("h", "/", "x-a", "vvv"), true},
		{"multiple values joined", `{prefix: /, headers: [{name: x-a, string_match: {exact: "1,2"}}]}`, req("h", "/", "x-a", "1", "x-a", "2"), true},
		{"present", `{prefix: /, headers: [{name: x-a, present_match: true}]}`, req("h", "/", "x-a", ""), true},
		{"present missing", `{prefix: /, headers: [{name: x-a, present_match: true}]}`, req("h", "/"), false},
		{"absent", `{prefix: /, headers: [{name: x-a, present_match: false}]}`, req("h", "/"), true},
		{"present inverted", `{prefix: /, headers: [{name: x-a, present_match: true, invert_match: true}]}`, req("h", "/"), true},
		{"no specifier means present", `{prefix: /, headers: [{name: x-a}]}`, req("h", "/", "x-a", "1"), true},
		{"missing never matches value", `{prefix: /, headers: [{name: x-a, invert_match: true, string_match: {exact: v}}]}`, req("h", "/"), false},
		{"missing as empty inverted", `{prefix: /, headers: [{name: x-a, invert_match: true, treat_missing_header_as_empty: true, string_match: {exact: v}}]}`, req("h", "/"), true},
		{"range in", `{prefix: /, headers: [{name: x-n, range_match: {start: -10, end: 0}}]}`, req("h", "/", "x-n", "-1"), true},
		{"range end exclusive", `{prefix: /, headers: [{name: x-n, range_match: {start: -10, end: 0}}]}`, req("h", "/", "x-n", "0"), false},
		{"range not a number", `{prefix: /, headers: [{name: x-n, range_match: {start: -10, end: 0}}]}`, req("h", "/", "x-n", "-1x"), false},
		{"range inverted", `{prefix: /, headers: [{name: x-n, invert_match: true, range_match: {start: -10, end: 0}}]}`, req("h", "/", "x-n", "-1"), false},
		{"pseudo :method", `{prefix: /, headers: [{name: ":method", string_match: {exact: POST}}]}`, &stream.Request{Method: "POST", Path: "/"}, true},
		{"pseudo :authority", `{prefix: /, headers: [{name: ":authority", string_match: {suffix: ".com"}}]}`, req("a.com", "/"), true},
		{"all headers must match", `{prefix: /, headers: [{name: x-a, present_match: true}, {name: x-b, present_match: true}]}`, req("h", "/", "x-a", "1"), false},
		{"query present", `{prefix: /, query_parameters: [{name: debug, present_match: true}]}`, req("h", "/p?a=1&debug"), true},
		{"query missing", `{prefix: /, query_parameters: [{name: debug, present_match: true}]}`, req("h", "/p?a=1"), false},
		{"query value", `{prefix: /, query_parameters: [{name: v, string_match: {exact: "a b"}}]}`, req("h", "/p?v=a%20b"), true},
		{"query first value", `{prefix: /, query_parameters: [{name: v, string_match: {exact: "2"}}]}`, req("h", "/p?v=1&v=2"), false},
		{"query ignores fragment", `{prefix: /, query_parameters: [{name: v, string_match: {exact: "1"}}]}`, req("h", "/p?v=1#x"), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tbl := compileYAML(t, `virtual_hosts: [{name: v, domains: ["*"], routes: [{match: `+tc.match+`, route: {cluster: c}}]}]`)
			if tc.req.Authority == "" {
				tc.req.Authority = "h"
			}
			r, _ := tbl.Match(tc.req)
			if got := r != nil; got != tc.want {
				t.Errorf("match = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestFirstRouteWins(t *testing.T) {
	tbl := compileYAML(t, `
virtual_hosts:
- name: v
  domains: ["*"]
  routes:
  - {name: grpc, match: {prefix: /, grpc: {}}, route: {cluster: grpc}}
  - {name: api, match: {prefix: /api}, route: {cluster: api}}
  - {name: all, match: {prefix: /}, route: {cluster: all}}`)
	for _, tc := range []struct{ path, ct, want string }{
		{"/api/x", "application/grpc", "grpc"},
		{"/api/x", "", "api"},
		{"/x", "", "all"},
	} {
		r := req("h", tc.path)
		if tc.ct != "" {
			r.Header.Add("content-type", tc.ct)
		}
		got, _ := tbl.Match(r)
		if got == nil || got.Name != tc.want {
			t.Errorf("%s %s: route %v, want %s", tc.path, tc.ct, got, tc.want)
		}
	}
}

func TestCompileErrors(t *testing.T) {
	tests := []struct {
		name, cfg, want string
	}{
		{"duplicate domain", `
virtual_hosts:
- {name: a, domains: ["x.com"], routes: []}
- {name: b, domains: ["y.com", "X.com"], routes: []}`, `virtual_hosts[1].domains[1]: domain "x.com" is also in virtual_hosts[0] ("a")`},
		{"two defaults", `
virtual_hosts:
- {name: a, domains: ["*"]}
- {name: b, domains: ["*"]}`, `virtual_hosts[1].domains[0]: domain "*" is also in virtual_hosts[0]`},
		{"bad regex", `
virtual_hosts:
- {name: a, domains: [a]}
- {name: b, domains: [b], routes: [{match: {safe_regex: {regex: "(["}}, route: {cluster: c}}]}`, `virtual_hosts[1].routes[0].match.safe_regex: invalid RE2: `},
		{"regex escaping the anchors", `
virtual_hosts:
- {name: b, domains: [b], routes: [{match: {safe_regex: {regex: "a)|(b"}}, route: {cluster: c}}]}`, `virtual_hosts[0].routes[0].match.safe_regex: invalid RE2`},
		{"bad header regex", `
virtual_hosts:
- {name: b, domains: [b], routes: [{match: {prefix: /, headers: [{name: x, string_match: {safe_regex: {regex: "a("}}}]}, route: {cluster: c}}]}`, `virtual_hosts[0].routes[0].match.headers[0].string_match.safe_regex: invalid RE2`},
		{"runtime_fraction", `
virtual_hosts:
- {name: b, domains: [b], routes: [{match: {prefix: /, runtime_fraction: {default_value: {numerator: 1}}}, route: {cluster: c}}]}`, `virtual_hosts[0].routes[0].match.runtime_fraction: not supported`},
		{"non-forwarding action", `
virtual_hosts:
- {name: b, domains: [b], routes: [{match: {prefix: /}, non_forwarding_action: {}}]}`, `virtual_hosts[0].routes[0].non_forwarding_action: not supported`},
		{"redirect path without slash", `
virtual_hosts:
- {name: b, domains: [b], routes: [{match: {prefix: /}, redirect: {path_redirect: x}}]}`, `virtual_hosts[0].routes[0].redirect.path_redirect: "x" must start with '/'`},
		{"hedge policy", `
virtual_hosts:
- {name: b, domains: [b], hedge_policy: {}, routes: []}`, `virtual_hosts[0].hedge_policy: not supported`},
		{"cluster_header", `
virtual_hosts:
- {name: b, domains: [b], routes: [{match: {prefix: /}, route: {cluster_header: x-c}}]}`, `virtual_hosts[0].routes[0].route.cluster_header: not supported`},
		{"retry host predicate", `
virtual_hosts:
- {name: b, domains: [b], routes: [{match: {prefix: /}, route: {cluster: c, retry_policy: {retry_host_predicate: [{name: x}]}}}]}`, `virtual_hosts[0].routes[0].route.retry_policy.retry_host_predicate: not supported`},
		{"unknown operator", `
request_headers_to_add: [{header: {key: x-a, value: "%START_TIME%"}}]
virtual_hosts: []`, `request_headers_to_add[0].header.value: command operator %START_TIME% not supported`},
		{"unterminated operator", `
virtual_hosts:
- {name: b, domains: [b], response_headers_to_add: [{header: {key: x-a, value: "100%"}}]}`, `virtual_hosts[0].response_headers_to_add[0].header.value: unterminated %`},
		{"add host", `
virtual_hosts:
- {name: b, domains: [b], routes: [{match: {prefix: /}, route: {cluster: c}, request_headers_to_add: [{header: {key: Host, value: x}}]}]}`, `virtual_hosts[0].routes[0].request_headers_to_add[0].header.key: "host" cannot be added`},
		{"remove pseudo", `
virtual_hosts:
- {name: b, domains: [b], request_headers_to_remove: [":path"]}`, `virtual_hosts[0].request_headers_to_remove[0]: pseudo-header ":path"`},
		{"append and append_action", `
virtual_hosts:
- {name: b, domains: [b], request_headers_to_add: [{header: {key: a, value: b}, append: true, append_action: OVERWRITE_IF_EXISTS}]}`, `virtual_hosts[0].request_headers_to_add[0]: append and append_action are both set`},
		{"zero weights", `
virtual_hosts:
- {name: b, domains: [b], routes: [{match: {prefix: /}, route: {weighted_clusters: {clusters: [{name: a, weight: 0}]}}}]}`, `virtual_hosts[0].routes[0].route.weighted_clusters.clusters: the sum of weights must be greater than 0`},
		{"total weight mismatch", `
virtual_hosts:
- {name: b, domains: [b], routes: [{match: {prefix: /}, route: {weighted_clusters: {total_weight: 10, clusters: [{name: a, weight: 3}]}}}]}`, `virtual_hosts[0].routes[0].route.weighted_clusters.total_weight: 10 does not equal the sum of weights 3`},
		{"unknown retry_on", `
virtual_hosts:
- {name: b, domains: [b], routes: [{match: {prefix: /}, route: {cluster: c, retry_policy: {retry_on: "5xx,sometimes"}}}]}`, `virtual_hosts[0].routes[0].route.retry_policy.retry_on: unknown condition "sometimes"`},
		{"back-off max below base", `
virtual_hosts:
- {name: b, domains: [b], retry_policy: {retry_on: 5xx, retry_back_off: {base_interval: 1s, max_interval: 0.5s}}}`, `virtual_hosts[0].retry_policy.retry_back_off.max_interval: 500ms is less than base_interval 1s`},
		{"prefix_rewrite with regex", `
virtual_hosts:
- {name: b, domains: [b], routes: [{match: {safe_regex: {regex: "/.*"}}, route: {cluster: c, prefix_rewrite: /x}}]}`, `virtual_hosts[0].routes[0].route.prefix_rewrite: cannot be used with a safe_regex match`},
		{"regex_rewrite bad group", `
virtual_hosts:
- {name: b, domains: [b], routes: [{match: {prefix: /}, route: {cluster: c, regex_rewrite: {pattern: {regex: "^/(a)"}, substitution: "/\\2"}}}]}`, `virtual_hosts[0].routes[0].route.regex_rewrite.substitution: \2 refers to a group`},
		{"direct body too large", `
max_direct_response_body_size_bytes: 4
virtual_hosts:
- {name: b, domains: [b], routes: [{match: {prefix: /}, direct_response: {status: 200, body: {inline_string: "hello"}}}]}`, `virtual_hosts[0].routes[0].direct_response.body: 5 bytes exceed max_direct_response_body_size_bytes 4`},
		{"direct body from file", `
virtual_hosts:
- {name: b, domains: [b], routes: [{match: {prefix: /}, direct_response: {status: 200, body: {filename: /etc/passwd}}}]}`, `virtual_hosts[0].routes[0].direct_response.body.filename: not supported`},
		{"negative timeout", `
virtual_hosts:
- {name: b, domains: [b], routes: [{match: {prefix: /}, route: {cluster: c, timeout: -1s}}]}`, `virtual_hosts[0].routes[0].route.timeout: -1s is negative`},
		{"separated prefix trailing slash", `
virtual_hosts:
- {name: b, domains: [b], routes: [{match: {path_separated_prefix: /a/}, route: {cluster: c}}]}`, `PathSeparatedPrefix`},
		{"typed_per_filter_config", `
virtual_hosts:
- {name: b, domains: [b], typed_per_filter_config: {x: {"@type": type.googleapis.com/google.protobuf.Empty}}}`, `virtual_hosts[0].typed_per_filter_config: not supported`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Compile(parseYAML(t, tc.cfg))
			if err == nil {
				t.Fatalf("Compile succeeded, want error containing %q", tc.want)
			}
			t.Log(err)
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q\nwant it to contain %q", err, tc.want)
			}
		})
	}
	if _, err := Compile(nil); err == nil {
		t.Error("Compile(nil) succeeded")
	}
}

func TestRouteSettings(t *testing.T) {
	tbl := compileYAML(t, `
name: rc
validate_clusters: false
virtual_hosts:
- name: v
  domains: ["*"]
  per_request_buffer_limit_bytes: 1000
  retry_policy: {retry_on: "connect-failure,refused-stream"}
  routes:
  - name: defaults
    match: {path: /defaults}
    route: {cluster: c}
  - name: set
    match: {path: /set}
    per_request_buffer_limit_bytes: 5
    route:
      cluster: c
      cluster_not_found_response_code: NOT_FOUND
      timeout: 0s
      idle_timeout: 3s
      max_grpc_timeout: 1s
      grpc_timeout_offset: 0.1s
      max_stream_duration: {max_stream_duration: 60s, grpc_timeout_header_max: 2s}
      retry_policy:
        retry_on: "5xx,reset,unavailable,retriable-status-codes"
        num_retries: 3
        per_try_timeout: 0.25s
        retriable_status_codes: [409]
        retry_back_off: {base_interval: 0.01s}
  - name: direct
    match: {path: /direct}
    direct_response: {status: 418, body: {inline_string: "teapot"}}
`)
	if tbl.Name != "rc" || tbl.ValidateClusters == nil || *tbl.ValidateClusters {
		t.Errorf("table name %q validate_clusters %v", tbl.Name, tbl.ValidateClusters)
	}
	get := func(path string) *Route {
		r, _ := tbl.Match(req("h", path))
		if r == nil {
			t.Fatalf("%s: no route", path)
		}
		return r
	}
	d := get("/defaults")
	if d.Timeout != DefaultTimeout || d.IdleTimeout != nil || d.MaxGRPCTimeout != nil || d.MaxStreamDuration != nil {
		t.Errorf("defaults: timeout %v idle %v maxgrpc %v msd %v", d.Timeout, d.IdleTimeout, d.MaxGRPCTimeout, d.MaxStreamDuration)
	}
	if d.BodyBufferLimit != (BodyBufferLimit{Set: true, Value: 1000, Legacy: true}) || d.ClusterNotFoundStatus != 503 || d.Cluster != "c" {
		t.Errorf("defaults: buffer %+v notfound %d cluster %q", d.BodyBufferLimit, d.ClusterNotFoundStatus, d.Cluster)
	}
	if d.Retry == nil || d.Retry.On != RetryConnectFailure|RetryRefusedStream || d.Retry.NumRetries != 1 ||
		d.Retry.BaseInterval != 25*time.Millisecond || d.Retry.MaxInterval != 250*time.Millisecond {
		t.Errorf("defaults: virtual host retry policy not inherited with Envoy defaults: %+v", d.Retry)
	}
	s := get("/set")
	if s.Timeout != 0 || *s.IdleTimeout != 3*time.Second || *s.MaxGRPCTimeout != 2*time.Second ||
		s.GRPCTimeoutOffset != 100*time.Millisecond || *s.MaxStreamDuration != time.Minute {
		t.Errorf("set: timeout %v idle %v maxgrpc %v offset %v msd %v", s.Timeout, *s.IdleTimeout, *s.MaxGRPCTimeout, s.GRPCTimeoutOffset, *s.MaxStreamDuration)
	}
	if s.BodyBufferLimit != (BodyBufferLimit{Set: true, Value: 5, Legacy: true}) || s.ClusterNotFoundStatus != 404 {
		t.Errorf("set: buffer %+v notfound %d", s.BodyBufferLimit, s.ClusterNotFoundStatus)
	}
	rp := s.Retry
	if rp.NumRetries != 3 || rp.PerTryTimeout != 250*time.Millisecond || rp.BaseInterval != 10*time.Millisecond ||
		rp.MaxInterval != 100*time.Millisecond || len(rp.RetriableStatusCodes) != 1 || rp.RetriableStatusCodes[0] != 409 {
		t.Errorf("set: retry %+v", rp)
	}
	for _, c := range []RetryOn{Retry5xx, RetryReset, RetryGRPCUnavailable, RetryRetriableStatusCodes} {
		if !rp.Has(c) {
			t.Errorf("set: retry_on lacks %b", c)
		}
	}
	if rp.Has(RetryConnectFailure) {
		t.Error("set: route retry policy merged with the virtual host's; Envoy replaces it")
	}
	dr := get("/direct")
	if dr.Direct == nil || dr.Direct.Status != 418 || string(dr.Direct.Body) != "teapot" || dr.PickCluster(0) != "" {
		t.Errorf("direct: %+v", dr.Direct)
	}
}

func TestParseGRPCTimeout(t *testing.T) {
	tests := []struct {
		in      string
		want    time.Duration
		wantErr bool
	}{
		{"1H", time.Hour, false},
		{"2M", 2 * time.Minute, false},
		{"3S", 3 * time.Second, false},
		{"100m", 100 * time.Millisecond, false},
		{"5u", 5 * time.Microsecond, false},
		{"7n", 7, false},
		{"0S", 0, false},
		{"12345678m", 12345678 * time.Millisecond, false},
		{"99999999H", time.Duration(1<<63 - 1), false},
		{"123456789m", 0, true},
		{"", 0, true},
		{"S", 0, true},
		{"10", 0, true},
		{"10s", 0, true},
		{"-1S", 0, true},
		{"+1S", 0, true},
		{" 1S", 0, true},
		{"1.5S", 0, true},
		{"1SS", 0, true},
	}
	for _, tc := range tests {
		got, err := ParseGRPCTimeout(tc.in)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("ParseGRPCTimeout(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestEffectiveTimeout(t *testing.T) {
	dur := func(d time.Duration) *time.Duration { return &d }
	grpcReq := func(timeout string) *stream.Request {
		r := req("h", "/s/M", "content-type", "application/grpc")
		if timeout != "" {
			r.Header.Add("grpc-timeout", timeout)
		}
		return r
	}
	tests := []struct {
		name  string
		route Route
		req   *stream.Request
		want  time.Duration
	}{
		{"route timeout", Route{Timeout: 15 * time.Second}, grpcReq("1S"), 15 * time.Second},
		{"not grpc keeps route timeout", Route{Timeout: 5 * time.Second, MaxGRPCTimeout: dur(0)}, req("h", "/", "grpc-timeout", "1S"), 5 * time.Second},
		{"header, no cap", Route{Timeout: 5 * time.Second, MaxGRPCTimeout: dur(0)}, grpcReq("30S"), 30 * time.Second},
		{"header capped", Route{MaxGRPCTimeout: dur(10 * time.Second)}, grpcReq("30S"), 10 * time.Second},
		{"header under cap", Route{MaxGRPCTimeout: dur(10 * time.Second)}, grpcReq("3S"), 3 * time.Second},
		{"missing header, no cap: none", Route{Timeout: 5 * time.Second, MaxGRPCTimeout: dur(0)}, grpcReq(""), 0},
		{"missing header: the cap", Route{MaxGRPCTimeout: dur(10 * time.Second)}, grpcReq(""), 10 * time.Second},
		{"malformed header: the cap", Route{MaxGRPCTimeout: dur(10 * time.Second)}, grpcReq("soon"), 10 * time.Second},
		{"offset", Route{MaxGRPCTimeout: dur(0), GRPCTimeoutOffset: 100 * time.Millisecond}, grpcReq("1S"), 900 * time.Millisecond},
		{"offset larger than header ignored", Route{MaxGRPCTimeout: dur(0), GRPCTimeoutOffset: 2 * time.Second}, grpcReq("1S"), time.Second},
	}
	for _, tc := range tests {
		if got := EffectiveTimeout(&tc.route, tc.req); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestPickCluster(t *testing.T) {
	tbl := compileYAML(t, `
virtual_hosts:
- name: v
  domains: ["*"]
  routes:
  - match: {prefix: /}
    route: {weighted_clusters: {clusters: [{name: a, weight: 10}, {name: zero, weight: 0}, {name: b, weight: 30}, {name: c, weight: 60}]}}`)
	r, _ := tbl.Match(req("h", "/"))
	// Every value of rnd modulo the total selects exactly its share.
	exact := map[string]int{}
	for rnd := range uint64(100 * 7) {
		exact[r.PickCluster(rnd)]++
	}
	if exact["a"] != 70 || exact["b"] != 210 || exact["c"] != 420 || exact["zero"] != 0 {
		t.Errorf("cumulative weights: %v", exact)
	}
	// A random sample lands within tolerance (6 standard deviations).
	const n = 60000
	got := map[string]int{}
	for range n {
		got[r.PickCluster(rand.Uint64())]++
	}
	for name, w := range map[string]float64{"a": .1, "b": .3, "c": .6} {
		sd := n * w * (1 - w)
		if d := float64(got[name]) - n*w; d*d > 36*sd {
			t.Errorf("%s: %d picks, want about %.0f", name, got[name], n*w)
		}
	}
}

func TestHeaderMutations(t *testing.T) {
	const levels = `
request_headers_to_add:
- {header: {key: x-level, value: global}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}
- {header: {key: x-global, value: g}}
request_headers_to_remove: [x-drop-global]
response_headers_to_add:
- {header: {key: x-level, value: global}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}
virtual_hosts:
- name: v
  domains: ["*"]
  request_headers_to_add:
  - {header: {key: x-level, value: vhost}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}
  response_headers_to_add:
  - {header: {key: x-level, value: vhost}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}
  routes:
  - match: {prefix: /}
    request_headers_to_add:
    - {header: {key: x-level, value: route}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}
    - {header: {key: x-append, value: r}}
    - {header: {key: x-absent, value: r}, append_action: ADD_IF_ABSENT}
    - {header: {key: x-absent2, value: r}, append_action: ADD_IF_ABSENT}
    - {header: {key: x-over, value: r}, append_action: OVERWRITE_IF_EXISTS}
    - {header: {key: x-over2, value: r}, append_action: OVERWRITE_IF_EXISTS}
    - {header: {key: x-legacy, value: r}, append: false}
    - {header: {key: x-empty, value: ""}}
    - {header: {key: x-keep, value: ""}, keep_empty_value: true}
    - {header: {key: x-client, value: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}}
    - {header: {key: x-fmt, value: "%%%PROTOCOL% to %UPSTREAM_CLUSTER% from %DOWNSTREAM_REMOTE_ADDRESS% at %DOWNSTREAM_LOCAL_ADDRESS%"}}
    request_headers_to_remove: [x-drop]
    response_headers_to_add:
    - {header: {key: x-level, value: route}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}
    response_headers_to_remove: [server]
    route:
      weighted_clusters:
        clusters:
        - name: a
          weight: 1
          request_headers_to_add: [{header: {key: x-level, value: cluster-a}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}]
          response_headers_to_add: [{header: {key: x-level, value: cluster-a}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}]
        - {name: b, weight: 1}
`
	info := &stream.ConnInfo{
		RemoteAddr: &net.TCPAddr{IP: net.ParseIP("10.0.0.7"), Port: 5555},
		LocalAddr:  &net.TCPAddr{IP: net.ParseIP("::1"), Port: 80},
		Proto:      "HTTP/2",
	}
	incoming := func() *stream.Request {
		return req("h", "/", "x-append", "client", "x-absent2", "client", "x-over2", "client",
			"x-legacy", "client", "x-drop", "1", "x-drop-global", "1", "x-level", "client")
	}
	tests := []struct {
		name         string
		mostSpecific bool
		cluster      string
		wantLevel    string
	}{
		{"least specific wins by default", false, "a", "global"},
		{"most specific wins when asked", true, "a", "cluster-a"},
		{"route wins without cluster headers", true, "b", "route"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := levels
			if tc.mostSpecific {
				cfg = "most_specific_header_mutations_wins: true\n" + cfg
			}
			tbl := compileYAML(t, cfg)
			r := incoming()
			rt, _ := tbl.Match(r)
			rt.RequestHeaders(r, tc.cluster, info)
			want := map[string][]string{
				"x-level":       {tc.wantLevel},
				"x-global":      {"g"},
				"x-append":      {"client", "r"},
				"x-absent":      {"r"},
				"x-absent2":     {"client"},
				"x-over":        nil,
				"x-over2":       {"r"},
				"x-legacy":      {"r"},
				"x-empty":       nil,
				"x-keep":        {""},
				"x-drop":        nil,
				"x-drop-global": nil,
				"x-client":      {"10.0.0.7"},
				"x-fmt":         {"%HTTP/2 to " + tc.cluster + " from 10.0.0.7:5555 at [::1]:80"},
			}
			for name, vs := range want {
				if got := r.Header.Values(name); strings.Join(got, "|") != strings.Join(vs, "|") || len(got) != len(vs) {
					t.Errorf("%s = %q, want %q", name, got, vs)
				}
			}
			resp := header.FromFields([]header.Field{{Name: "server", Value: "upstream"}})
			rt.ResponseHeaders(&resp, tc.cluster, info)
			if resp.Has("server") || resp.Get("x-level") != tc.wantLevel || resp.Len() != 1 {
				t.Errorf("response headers %v, want only x-level: %s", resp.Fields(), tc.wantLevel)
			}
		})
	}
}

func TestRewrite(t *testing.T) {
	tests := []struct {
		name, route, path, wantPath, wantHost string
		cluster                               string
	}{
		{"prefix", `{match: {prefix: /api/}, route: {cluster: c, prefix_rewrite: /}}`, "/api/v1?x=1", "/v1?x=1", "h", "c"},
		{"prefix case insensitive", `{match: {prefix: /api, case_sensitive: false}, route: {cluster: c, prefix_rewrite: /v2}}`, "/API/x", "/v2/x", "h", "c"},
		{"path", `{match: {path: /old}, route: {cluster: c, prefix_rewrite: /new}}`, "/old?q", "/new?q", "h", "c"},
		{"regex", `{match: {prefix: /}, route: {cluster: c, regex_rewrite: {pattern: {regex: "^/svc/([^/]+)/(.*)$"}, substitution: "/\\2/\\1$"}}}`, "/svc/a/b/c?q", "/b/c/a$?q", "h", "c"},
		{"host literal", `{match: {prefix: /}, route: {cluster: c, host_rewrite_literal: up.internal}}`, "/x", "/x", "up.internal", "c"},
		{"weighted host literal", `{match: {prefix: /}, route: {host_rewrite_literal: route.host, weighted_clusters: {clusters: [{name: a, weight: 1, host_rewrite_literal: a.host}, {name: b, weight: 1}]}}}`, "/x", "/x", "a.host", "a"},
		{"weighted falls back to route host", `{match: {prefix: /}, route: {host_rewrite_literal: route.host, weighted_clusters: {clusters: [{name: a, weight: 1, host_rewrite_literal: a.host}, {name: b, weight: 1}]}}}`, "/x", "/x", "route.host", "b"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tbl := compileYAML(t, `virtual_hosts: [{name: v, domains: ["*"], routes: [`+tc.route+`]}]`)
			r := req("h", tc.path)
			rt, _ := tbl.Match(r)
			if rt == nil {
				t.Fatal("no route")
			}
			changed := rt.Rewrite(r, tc.cluster)
			if r.Path != tc.wantPath || r.Authority != tc.wantHost {
				t.Errorf("path %q host %q, want %q %q", r.Path, r.Authority, tc.wantPath, tc.wantHost)
			}
			if changed != (tc.path != tc.wantPath) {
				t.Errorf("Rewrite reported changed=%v", changed)
			}
		})
	}
}

func TestConcurrentMatch(t *testing.T) {
	tbl := compileYAML(t, domainsConfig)
	done := make(chan struct{})
	for range 8 {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := range 2000 {
				r := req("x.foo.com", "/p", "x-i", "1")
				rt, _ := tbl.Match(r)
				rt.RequestHeaders(r, rt.PickCluster(uint64(i)), nil)
			}
		}()
	}
	timeout := time.After(30 * time.Second)
	for range 8 {
		select {
		case <-done:
		case <-timeout:
			t.Fatal("concurrent Match did not finish in 30s")
		}
	}
}

func TestRedirect(t *testing.T) {
	tests := []struct {
		name, route, scheme, authority, path, want string
		status                                     int
	}{
		{"https keeps path and query", `{match: {prefix: /}, redirect: {https_redirect: true}}`, "http", "a.com", "/x?q=1", "https://a.com/x?q=1", 301},
		{"https drops default port", `{match: {prefix: /}, redirect: {https_redirect: true}}`, "http", "a.com:80", "/", "https://a.com/", 301},
		{"https keeps other port", `{match: {prefix: /}, redirect: {https_redirect: true}}`, "http", "a.com:8080", "/", "https://a.com:8080/", 301},
		{"scheme to http drops 443", `{match: {prefix: /}, redirect: {scheme_redirect: http, response_code: FOUND}}`, "https", "a.com:443", "/", "http://a.com/", 302},
		{"host and port", `{match: {prefix: /}, redirect: {host_redirect: b.com, port_redirect: 8443, response_code: TEMPORARY_REDIRECT}}`, "http", "a.com:80", "/p", "http://b.com:8443/p", 307},
		{"ipv6 port", `{match: {prefix: /}, redirect: {port_redirect: 9}}`, "http", "[::1]:80", "/", "http://[::1]:9/", 301},
		{"path redirect keeps query", `{match: {path: /old}, redirect: {path_redirect: /new}}`, "http", "a.com", "/old?bar=1", "http://a.com/new?bar=1", 301},
		{"path redirect strip query", `{match: {path: /old}, redirect: {path_redirect: /new, strip_query: true}}`, "http", "a.com", "/old?bar=1", "http://a.com/new", 301},
		{"path redirect own query wins", `{match: {path: /old}, redirect: {path_redirect: "/new?foo=1", strip_query: true}}`, "http", "a.com", "/old?bar=1", "http://a.com/new?foo=1", 301},
		{"prefix rewrite", `{match: {prefix: /v1/}, redirect: {prefix_rewrite: /v2/, response_code: PERMANENT_REDIRECT}}`, "http", "a.com", "/v1/x?y", "http://a.com/v2/x?y", 308},
		{"regex rewrite", `{match: {prefix: /}, redirect: {regex_rewrite: {pattern: {regex: "^/u/([0-9]+)$"}, substitution: "/users/\\1"}, response_code: SEE_OTHER}}`, "http", "a.com", "/u/42", "http://a.com/users/42", 303},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tbl := compileYAML(t, `virtual_hosts: [{name: v, domains: ["*"], routes: [`+tc.route+`]}]`)
			r := req(tc.authority, tc.path)
			r.Scheme = tc.scheme
			rt, _ := tbl.Match(r)
			if rt == nil || rt.Redirect == nil {
				t.Fatalf("route %v is not a redirect", rt)
			}
			if got := rt.RedirectLocation(r); got != tc.want {
				t.Errorf("Location %q, want %q", got, tc.want)
			}
			if rt.Redirect.Status != tc.status {
				t.Errorf("status %d, want %d", rt.Redirect.Status, tc.status)
			}
			if rt.PickCluster(1) != "" {
				t.Error("redirect route has a cluster")
			}
		})
	}
}
