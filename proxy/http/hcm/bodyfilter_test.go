package hcm

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"meshd.dev/meshd/filters"
	_ "meshd.dev/meshd/filters/localratelimit"
	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/proxy/http/h2"
	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// bodyRecorder is a test filter with body and trailer hooks, configured by
// a google.protobuf.BytesValue "label:mode". Modes: "upper" upper-cases
// body bytes in place; "buffer" returns StopAndBuffer until the end of
// each body; "deny" answers 403 from the first request data hook;
// "trailers" adds x-t: label to both directions' trailers. Every hook
// call is logged as "<hook>:<label>:<len>[:end]".
type bodyRecorder struct {
	filters.PassThrough
	label, mode string
}

var bodyLog = &callLog{}

func init() {
	filters.Register("type.googleapis.com/google.protobuf.BytesValue", func(m proto.Message, _ filters.FactoryContext) (filters.Factory, error) {
		label, mode, _ := strings.Cut(string(m.(*wrapperspb.BytesValue).GetValue()), ":")
		return &bodyRecorder{label: label, mode: mode}, nil
	})
}

var (
	_ filters.RequestBodyFilter      = (*bodyRecorder)(nil)
	_ filters.RequestTrailersFilter  = (*bodyRecorder)(nil)
	_ filters.ResponseBodyFilter     = (*bodyRecorder)(nil)
	_ filters.ResponseTrailersFilter = (*bodyRecorder)(nil)
)

func (r *bodyRecorder) NewFilter() filters.Filter { return r }

func (r *bodyRecorder) data(hook string, cb filters.Callbacks, data []byte, end bool) filters.Status {
	e := ""
	if end {
		e = ":end"
	}
	bodyLog.add(fmt.Sprintf("%s:%s:%d%s", hook, r.label, len(data), e))
	switch r.mode {
	case "upper":
		copy(data, bytes.ToUpper(data))
	case "buffer":
		return filters.StopAndBuffer
	case "deny":
		if hook == "reqdata" {
			cb.SendLocalReply(403, "denied in body by "+r.label, "test")
			return filters.Stop
		}
	}
	return filters.Continue
}

func (r *bodyRecorder) OnRequestData(cb filters.Callbacks, data []byte, end bool) filters.Status {
	return r.data("reqdata", cb, data, end)
}

func (r *bodyRecorder) OnResponseData(cb filters.Callbacks, data []byte, end bool) filters.Status {
	return r.data("respdata", cb, data, end)
}

func (r *bodyRecorder) trailers(hook string, t *header.Header) filters.Status {
	bodyLog.add(hook + ":" + r.label)
	if r.mode == "trailers" {
		t.Add("x-t", r.label)
	}
	return filters.Continue
}

func (r *bodyRecorder) OnRequestTrailers(_ filters.Callbacks, t *header.Header) filters.Status {
	return r.trailers("reqtrailers", t)
}

func (r *bodyRecorder) OnResponseTrailers(_ filters.Callbacks, t *header.Header) filters.Status {
	return r.trailers("resptrailers", t)
}

func bodyFilter(v string) string {
	return fmt.Sprintf(`{"name":"body","typed_config":{"@type":"type.googleapis.com/google.protobuf.BytesValue","value":%q}}`,
		base64.StdEncoding.EncodeToString([]byte(v)))
}

// chunkReader returns its chunks one Read at a time.
type chunkReader struct{ chunks []string }

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.chunks) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.chunks[0])
	c.chunks[0] = c.chunks[0][n:]
	if c.chunks[0] == "" {
		c.chunks = c.chunks[1:]
	}
	return n, nil
}

func TestBodyHooks(t *testing.T) {
	testutil.CheckGoroutines(t)
	type upSeen struct{ body, trailers string }
	var seen sync.Map
	up := startH2Upstream(t, h2.ServerConfig{}, func(s stream.ServerStream) {
		body, _ := io.ReadAll(s)
		tr := s.Trailers()
		seen.Store(s.Request().Path, upSeen{string(body), strings.Join(tr.Values("x-t"), ",")})
		var rt header.Header
		if tr.Len() > 0 {
			rt = header.Make(1)
			rt.Add("x-up", "1")
		}
		respond(s, 200, "echo:"+string(body), rt)
	})
	tests := []struct {
		name        string
		chain       []string
		chunks      []string // request body; nil: none
		trailers    bool     // the request ends with trailers
		routeExtra  string   // extra fields of the route (buffer limits)
		perConn     uint32   // the listener's per_connection_buffer_limit_bytes; 0: unset
		wantStatus  int
		wantBody    string
		wantUp      *upSeen // nil: the upstream must not receive the whole body
		wantTrailer string  // x-t of the downstream response trailers
		wantCalls   string
	}{
		{name: "data in order, response reversed, bytes changed in place", chain: []string{"a:upper", "b"},
			chunks: []string{"hi"}, wantStatus: 200, wantBody: "ECHO:HI", wantUp: &upSeen{body: "HI"},
			wantCalls: "reqdata:a:2 reqdata:b:2 reqdata:a:0:end reqdata:b:0:end respdata:b:7 respdata:a:7 respdata:b:0:end respdata:a:0:end"},
		{name: "StopAndBuffer holds until end of stream", chain: []string{"a", "b:buffer"},
			chunks: []string{"abc", "de", "f"}, wantStatus: 200, wantBody: "echo:abcdef", wantUp: &upSeen{body: "abcdef"},
			wantCalls: "reqdata:a:3 reqdata:b:3 reqdata:a:2 reqdata:b:5 reqdata:a:1 reqdata:b:6 reqdata:a:0:end reqdata:b:6:end " +
				"respdata:b:11 respdata:b:11:end respdata:a:11:end"},
		{name: "local reply from a request data hook", chain: []string{"a:deny", "b"},
			chunks: []string{"x", "y"}, wantStatus: 403, wantBody: "denied in body by a",
			wantCalls: "reqdata:a:1"},
		{name: "buffer over the limit is 413", chain: []string{"a:buffer"}, routeExtra: `"per_request_buffer_limit_bytes":4`,
			chunks: []string{"abc", "def"}, wantStatus: 413, wantBody: "Payload Too Large",
			wantCalls: "reqdata:a:3 reqdata:a:6"},
		{name: "buffer over request_body_buffer_limit is 413", chain: []string{"a:buffer"}, routeExtra: `"request_body_buffer_limit":"4"`,
			chunks: []string{"abc", "def"}, wantStatus: 413, wantBody: "Payload Too Large",
			wantCalls: "reqdata:a:3 reqdata:a:6"},
		{name: "request_body_buffer_limit wins over per_request_buffer_limit_bytes",
			chain: []string{"a:buffer"}, routeExtra: `"per_request_buffer_limit_bytes":4,"request_body_buffer_limit":"16"`,
			chunks: []string{"abc", "def"}, wantStatus: 200, wantBody: "echo:abcdef", wantUp: &upSeen{body: "abcdef"},
			wantCalls: "reqdata:a:3 reqdata:a:6 reqdata:a:6:end respdata:a:11 respdata:a:11:end"},
		{name: "per_request_buffer_limit_bytes capped by the listener's limit",
			chain: []string{"a:buffer"}, routeExtra: `"per_request_buffer_limit_bytes":16`, perConn: 4,
			chunks: []string{"abc", "def"}, wantStatus: 413, wantBody: "Payload Too Large",
			wantCalls: "reqdata:a:3 reqdata:a:6"},
		{name: "request_body_buffer_limit above the listener's limit",
			chain: []string{"a:buffer"}, routeExtra: `"request_body_buffer_limit":"16"`, perConn: 4,
			chunks: []string{"abc", "def"}, wantStatus: 200, wantBody: "echo:abcdef", wantUp: &upSeen{body: "abcdef"},
			wantCalls: "reqdata:a:3 reqdata:a:6 reqdata:a:6:end respdata:a:11 respdata:a:11:end"},
		{name: "no route limit: the listener's limit",
			chain: []string{"a:buffer"}, perConn: 4,
			chunks: []string{"abc", "def"}, wantStatus: 413, wantBody: "Payload Too Large",
			wantCalls: "reqdata:a:3 reqdata:a:6"},
		{name: "trailers both ways, held data released first", chain: []string{"a:trailers", "b:buffer"},
			chunks: []string{"ab", "c"}, trailers: true, wantStatus: 200, wantBody: "echo:abc",
			wantUp: &upSeen{body: "abc", trailers: "a"}, wantTrailer: "a",
			wantCalls: "reqdata:a:2 reqdata:b:2 reqdata:a:1 reqdata:b:3 reqtrailers:a reqtrailers:b " +
				"respdata:b:8 respdata:a:8 resptrailers:b resptrailers:a"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var fs []string
			for _, c := range tc.chain {
				fs = append(fs, bodyFilter(c))
			}
			fs = append(fs, routerFilter)
			route := `{"match":{"prefix":"/"},"route":{"cluster":"backend"}`
			if tc.routeExtra != "" {
				route += "," + tc.routeExtra
			}
			route += `}`
			e := newEnv(t, hcmJSON(route, `"http_filters":[`+strings.Join(fs, ",")+`]`), clusterJSON([]string{up.addr}, ""),
				func(c *Config) { c.PerConnectionBufferLimit = tc.perConn })
			path := fmt.Sprintf("/b%d", i)
			s := newFakeStream("POST", path, header.Make(0), &chunkReader{chunks: tc.chunks})
			if tc.trailers {
				s.reqTrailers = header.Make(1)
				s.reqTrailers.Add("x-client", "1")
			}
			e.serve(t, s)
			r := s.result()
			if r.status != tc.wantStatus || r.body != tc.wantBody {
				t.Fatalf("got %d %q, want %d %q", r.status, r.body, tc.wantStatus, tc.wantBody)
			}
			if got := strings.Join(r.trailers.Values("x-t"), ","); got != tc.wantTrailer {
				t.Errorf("response trailers x-t %q, want %q", got, tc.wantTrailer)
			}
			got, _ := seen.Load(path)
			if tc.wantUp != nil && got != *tc.wantUp {
				t.Errorf("upstream saw %+v, want %+v", got, *tc.wantUp)
			}
			if u, ok := got.(upSeen); tc.wantUp == nil && ok && u.body == strings.Join(tc.chunks, "") {
				t.Errorf("upstream received the whole request body %q", u.body)
			}
			if calls := bodyLog.take(); calls != tc.wantCalls {
				t.Errorf("calls\n%s\nwant\n%s", calls, tc.wantCalls)
			}
		})
	}
}

// TestNoBodyHooksNoChain checks that a chain without body or trailer hooks
// leaves the exchange on the unfiltered path.
func TestNoBodyHooksNoChain(t *testing.T) {
	ex := &exchange{filters: []filters.Filter{&recorder{label: "a"}}}
	ex.buildBodyChains()
	if ex.hooks != nil || ex.reqChain() != nil || ex.respChain() != nil || ex.hooksShared() {
		t.Fatalf("chains built for a filter without body hooks")
	}
}

// selectingRecorder is a bodyRecorder that asks for some of its hooks only.
type selectingRecorder struct {
	bodyRecorder
	use filters.Hooks
}

func (r *selectingRecorder) BodyHooks() filters.Hooks { return r.use }

// TestHookSelector checks that buildBodyChains leaves out the hooks a
// filters.HookSelector does not ask for, and builds no chain for a filter
// that asks for none.
func TestHookSelector(t *testing.T) {
	tests := []struct {
		name                   string
		use                    filters.Hooks
		reqData, reqTrailers   int
		respData, respTrailers int
	}{
		{"none", 0, 0, 0, 0, 0},
		{"all", filters.AllHooks, 1, 1, 1, 1},
		{"request data", filters.HookRequestData, 1, 0, 0, 0},
		{"response side", filters.HookResponseData | filters.HookResponseTrailers, 0, 0, 1, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ex := &exchange{filters: []filters.Filter{&selectingRecorder{use: tc.use}}}
			ex.buildBodyChains()
			var got [4]int
			if c := ex.reqChain(); c != nil {
				got[0], got[1] = len(c.data), len(c.trailers)
			}
			if c := ex.respChain(); c != nil {
				got[2], got[3] = len(c.data), len(c.trailers)
			}
			if want := [4]int{tc.reqData, tc.reqTrailers, tc.respData, tc.respTrailers}; got != want {
				t.Fatalf("hooks (request data, trailers, response data, trailers) = %v, want %v", got, want)
			}
			if tc.use == 0 && ex.hooks != nil {
				t.Fatal("hook state allocated for a filter that asks for no hooks")
			}
		})
	}
}

// TestLocalRateLimitInChain runs envoy.filters.http.local_ratelimit in
// front of an upstream: the bucket's third request is answered locally,
// over HTTP and gRPC, with the rate limit headers on every response.
func TestLocalRateLimitInChain(t *testing.T) {
	testutil.CheckGoroutines(t)
	up := startH2Upstream(t, h2.ServerConfig{}, func(s stream.ServerStream) { respond(s, 200, "ok", header.Header{}) })
	lrl := `{"name":"envoy.filters.http.local_ratelimit","typed_config":{
		"@type":"type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
		"stat_prefix":"lrl","token_bucket":{"max_tokens":2,"tokens_per_fill":2,"fill_interval":"60s"},
		"filter_enabled":{"default_value":{"numerator":100}},"filter_enforced":{"default_value":{"numerator":100}},
		"enable_x_ratelimit_headers":"DRAFT_VERSION_03","rate_limited_as_resource_exhausted":true}}`
	routes := `{"match":{"prefix":"/"},"route":{"cluster":"backend"}}`
	e := newEnv(t, hcmJSON(routes, `"http_filters":[`+lrl+`,`+routerFilter+`]`), clusterJSON([]string{up.addr}, ""))
	tests := []struct {
		grpc       bool
		wantStatus int
		wantGRPC   string
		remaining  string
		limited    bool
	}{
		{wantStatus: 200, remaining: "1"},
		{grpc: true, wantStatus: 200, remaining: "0"},
		{wantStatus: 429, remaining: "0", limited: true},
		{grpc: true, wantStatus: 200, wantGRPC: "8", remaining: "0", limited: true},
	}
	for i, tc := range tests {
		hdr := header.Make(0)
		if tc.grpc {
			hdr = grpcHeaders()
		}
		s := newFakeStream("POST", "/svc/M", hdr, nil)
		e.serve(t, s)
		r := s.result()
		if r.status != tc.wantStatus || r.header.Get("grpc-status") != tc.wantGRPC {
			t.Errorf("request %d: status %d grpc-status %q, want %d %q", i, r.status, r.header.Get("grpc-status"), tc.wantStatus, tc.wantGRPC)
		}
		if r.header.Get("x-ratelimit-limit") != "2" || r.header.Get("x-ratelimit-remaining") != tc.remaining {
			t.Errorf("request %d: rate limit headers %v", i, r.header.Fields())
		}
		if got := r.header.Get("x-envoy-ratelimited") == "true"; got != tc.limited {
			t.Errorf("request %d: x-envoy-ratelimited %v, want %v", i, got, tc.limited)
		}
	}
	if got := e.counter("lrl.http_local_rate_limit.rate_limited"); got != 2 {
		t.Errorf("lrl.http_local_rate_limit.rate_limited = %d, want 2", got)
	}
}
