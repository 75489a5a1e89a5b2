package hcm

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/proxy/http/h2"
	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// Time limits the timeout tests assert, with their tolerance.
const (
	shortTimeout = 150 * time.Millisecond
	// slack is how late a timeout may end an exchange (scheduling, -race).
	slack = 2 * time.Second
	// hang is how long a hanging upstream handler waits at most.
	hang = 5 * time.Second
)

func TestLocalReplies(t *testing.T) {
	testutil.CheckGoroutines(t)
	routes := `{"match":{"prefix":"/direct"},"direct_response":{"status":200,"body":{"inline_string":"hi"}}},
	{"match":{"prefix":"/redirect"},"redirect":{"host_redirect":"example.com"}},
	{"match":{"prefix":"/missing"},"route":{"cluster":"nowhere"}}`
	e := newEnv(t, hcmJSON(routes, ""), "")
	tests := []struct {
		name       string
		path       string
		hdr        header.Header
		wantStatus int
		wantBody   string
		wantHeader map[string]string
	}{
		{name: "no route", path: "/else", hdr: header.Make(0), wantStatus: 404},
		{name: "direct response", path: "/direct", hdr: header.Make(0), wantStatus: 200, wantBody: "hi"},
		{name: "redirect", path: "/redirect/x", hdr: header.Make(0), wantStatus: 301,
			wantHeader: map[string]string{"location": "http://example.com/redirect/x"}},
		{name: "cluster not found", path: "/missing", hdr: header.Make(0), wantStatus: 503},
		{name: "gRPC no route is trailers-only UNIMPLEMENTED", path: "/else", hdr: grpcHeaders(), wantStatus: 200,
			wantHeader: map[string]string{"grpc-status": "12", "content-type": "application/grpc"}},
		{name: "gRPC cluster not found is UNAVAILABLE", path: "/missing", hdr: grpcHeaders(), wantStatus: 200,
			wantHeader: map[string]string{"grpc-status": "14"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fs := newFakeStream("GET", tc.path, tc.hdr, nil)
			e.serve(t, fs)
			r := fs.result()
			if r.status != tc.wantStatus || r.body != tc.wantBody {
				t.Fatalf("got %d %q, want %d %q", r.status, r.body, tc.wantStatus, tc.wantBody)
			}
			for k, v := range tc.wantHeader {
				if got := r.header.Get(k); got != v {
					t.Errorf("header %s = %q, want %q", k, got, v)
				}
			}
			if tc.hdr.Has("content-type") && !r.end {
				t.Errorf("gRPC local reply is not trailers-only (END_STREAM on HEADERS)")
			}
		})
	}
}

func TestEncodeGRPCMessage(t *testing.T) {
	tests := []struct{ in, want string }{
		{"plain text", "plain text"},
		{"100%", "100%25"},
		{"héllo", "h%C3%A9llo"},
		{"a\nb", "a%0Ab"},
	}
	for _, tc := range tests {
		if got := encodeGRPCMessage(tc.in); got != tc.want {
			t.Errorf("encodeGRPCMessage(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// upstreamTimeoutReply checks a gRPC local reply with a percent-encoded
// message through the real path: route timeout on a hanging upstream.
func TestTimeouts(t *testing.T) {
	testutil.CheckGoroutines(t)
	var cancelled atomic.Int64
	up := startH2Upstream(t, h2.ServerConfig{}, func(s stream.ServerStream) {
		select {
		case <-s.Context().Done():
			cancelled.Add(1)
		case <-time.After(hang):
		}
		respond(s, 200, "", header.Header{})
	})
	ms := strconv.Itoa(int(shortTimeout / time.Millisecond))
	routes := `{"match":{"prefix":"/route"},"route":{"cluster":"backend","timeout":"0.15s"}},
	{"match":{"prefix":"/grpc"},"route":{"cluster":"backend","timeout":"10s","max_stream_duration":{"grpc_timeout_header_max":"0s"}}},
	{"match":{"prefix":"/idle"},"route":{"cluster":"backend","timeout":"0s","idle_timeout":"0.15s"}},
	{"match":{"prefix":"/maxdur"},"route":{"cluster":"backend","timeout":"0s","max_stream_duration":{"max_stream_duration":"0.15s"}}},
	{"match":{"prefix":"/pertry"},"route":{"cluster":"backend","timeout":"0s","retry_policy":{"per_try_timeout":"0.15s","num_retries":0}}}`
	e := newEnv(t, hcmJSON(routes, `"request_timeout":"0.15s"`), clusterJSON([]string{up.addr}, ""))
	tests := []struct {
		name        string
		path        string
		hdr         header.Header
		body        io.Reader
		wantStatus  int
		wantGRPC    string
		wantCounter string
	}{
		{name: "route timeout", path: "/route", hdr: header.Make(0), wantStatus: 504, wantCounter: "cluster.backend.upstream_rq_timeout"},
		{name: "route timeout gRPC", path: "/route", hdr: grpcHeaders(), wantStatus: 200, wantGRPC: "4", wantCounter: "cluster.backend.upstream_rq_timeout"},
		{name: "grpc-timeout honoured", path: "/grpc", hdr: grpcHeaders("grpc-timeout", ms+"m"), wantStatus: 200, wantGRPC: "4", wantCounter: "cluster.backend.upstream_rq_timeout"},
		{name: "stream idle timeout", path: "/idle", hdr: header.Make(0), wantStatus: 504, wantCounter: "http.test.downstream_rq_idle_timeout"},
		{name: "max stream duration", path: "/maxdur", hdr: header.Make(0), wantStatus: 504, wantCounter: "http.test.downstream_rq_max_duration_reached"},
		{name: "per-try timeout", path: "/pertry", hdr: header.Make(0), wantStatus: 504, wantCounter: "cluster.backend.upstream_rq_per_try_timeout"},
		{name: "request timeout", path: "/idle", hdr: header.Make(0), body: blockingReader{}, wantStatus: 408, wantCounter: "http.test.downstream_rq_timeout"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := e.counter(tc.wantCounter)
			beforeCancelled := cancelled.Load()
			fs := newFakeStream("POST", tc.path, tc.hdr, tc.body)
			took := e.serve(t, fs)
			r := fs.result()
			if r.status != tc.wantStatus {
				t.Fatalf("status %d, want %d (body %q, reset %v)", r.status, tc.wantStatus, r.body, r.reset)
			}
			if got := r.header.Get("grpc-status"); got != tc.wantGRPC {
				t.Errorf("grpc-status %q, want %q", got, tc.wantGRPC)
			}
			if tc.wantGRPC != "" && (!r.end || r.header.Get("grpc-message") != "upstream request timeout") {
				t.Errorf("gRPC reply: END_STREAM %v, grpc-message %q; want a trailers-only reply with \"upstream request timeout\"", r.end, r.header.Get("grpc-message"))
			}
			if took < shortTimeout || took > shortTimeout+slack {
				t.Errorf("took %v, want %v (+%v)", took, shortTimeout, slack)
			}
			if got := e.counter(tc.wantCounter); got != before+1 {
				t.Errorf("%s = %d, want %d", tc.wantCounter, got, before+1)
			}
			if tc.body != nil {
				return // the request never reached the upstream handler... or did, unfinished
			}
			// The upstream handler sees the reset (RST_STREAM CANCEL).
			deadline := time.Now().Add(slack)
			for cancelled.Load() == beforeCancelled && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			if cancelled.Load() == beforeCancelled {
				t.Errorf("upstream handler's context was not cancelled")
			}
		})
	}
}

// blockingReader is a request body that never ends (until the stream is
// reset).
type blockingReader struct{}

func (blockingReader) Read([]byte) (int, error) {
	time.Sleep(hang)
	return 0, io.ErrUnexpectedEOF
}

func TestCancellationTravelsUpstream(t *testing.T) {
	testutil.CheckGoroutines(t)
	started := make(chan struct{}, 1)
	gotCancel := make(chan struct{}, 1)
	up := startH2Upstream(t, h2.ServerConfig{}, func(s stream.ServerStream) {
		started <- struct{}{}
		select {
		case <-s.Context().Done():
			gotCancel <- struct{}{}
		case <-time.After(hang):
		}
		respond(s, 200, "", header.Header{})
	})
	e := newEnv(t, hcmJSON(`{"match":{"prefix":"/"},"route":{"cluster":"backend"}}`, ""), clusterJSON([]string{up.addr}, ""))
	fs := newFakeStream("GET", "/", header.Make(0), nil)
	go func() {
		select {
		case <-started:
			fs.Reset(stream.ErrCodeCancel)
		case <-time.After(hang):
		}
	}()
	e.serve(t, fs)
	select {
	case <-gotCancel:
	case <-time.After(slack):
		t.Fatal("upstream handler did not see the cancellation")
	}
	if got := e.counter("cluster.backend.upstream_rq_cancelled"); got != 1 {
		t.Errorf("upstream_rq_cancelled = %d, want 1", got)
	}
}

// scriptedUpstream answers its n-th stream (from 0) with script[n], and the
// last entry for every later one. It returns the upstream and the number
// of streams it has seen.
type action struct {
	refuse bool // RST_STREAM REFUSED_STREAM without reading
	hang   bool // wait for the stream to be reset
	status int
	grpc   string // grpc-status of a trailers-only response
	echo   bool   // read the body, answer its length and SHA-256
}

func scriptedUpstream(t *testing.T, script ...action) (*h2Upstream, *atomic.Int64) {
	var n atomic.Int64
	up := startH2Upstream(t, h2.ServerConfig{}, func(s stream.ServerStream) {
		i := int(n.Add(1) - 1)
		a := script[min(i, len(script)-1)]
		switch {
		case a.refuse:
			s.Reset(stream.ErrCodeRefusedStream)
		case a.hang:
			select {
			case <-s.Context().Done():
			case <-time.After(hang):
			}
			respond(s, 200, "", header.Header{})
		case a.grpc != "":
			_, _ = io.Copy(io.Discard, s)
			h := header.Make(2)
			h.Add("content-type", "application/grpc")
			h.Add("grpc-status", a.grpc)
			_ = s.WriteHeader(&stream.Response{Status: 200, Header: h, ContentLength: -1}, true)
		case a.echo:
			b, err := io.ReadAll(s)
			if err != nil {
				s.Reset(stream.ErrCodeInternal)
				return
			}
			sum := sha256.Sum256(b)
			respond(s, 200, strconv.Itoa(len(b))+" "+hex.EncodeToString(sum[:]), header.Header{})
		default:
			respond(s, a.status, "status "+strconv.Itoa(a.status), header.Header{})
		}
	})
	return up, &n
}

func TestRetries(t *testing.T) {
	body := bytes.Repeat([]byte("0123456789abcdef"), 2048) // 32 KiB
	sum := sha256.Sum256(body)
	echoed := strconv.Itoa(len(body)) + " " + hex.EncodeToString(sum[:])
	big := bytes.Repeat([]byte("x"), 200<<10)
	tests := []struct {
		name        string
		script      []action
		retryPolicy string // JSON, "" for none
		routeExtra  string
		cluster     string
		grpc        bool
		body        []byte
		wantStatus  int
		wantBody    string
		wantGRPC    string
		wantStreams int64
		wantStats   map[string]uint64
	}{
		{
			name:        "REFUSED_STREAM retried transparently without retry_policy",
			script:      []action{{refuse: true}, {refuse: true}, {status: 200}},
			wantStatus:  200,
			wantBody:    "status 200",
			wantStreams: 3,
			wantStats:   map[string]uint64{"cluster.backend.upstream_rq_transparent_retry": 2, "cluster.backend.upstream_rq_retry": 0},
		},
		{
			name:        "refused request body replayed",
			script:      []action{{refuse: true}, {echo: true}},
			body:        body,
			wantStatus:  200,
			wantBody:    echoed,
			wantStreams: 2,
			wantStats:   map[string]uint64{"cluster.backend.upstream_rq_transparent_retry": 1},
		},
		{
			name:        "5xx retried up to num_retries",
			script:      []action{{status: 503}, {status: 500}, {status: 200}},
			retryPolicy: `{"retry_on":"5xx","num_retries":2,"retry_back_off":{"base_interval":"0.001s"}}`,
			wantStatus:  200,
			wantBody:    "status 200",
			wantStreams: 3,
			wantStats: map[string]uint64{
				"cluster.backend.upstream_rq_retry": 2, "cluster.backend.upstream_rq_retry_success": 1,
				"cluster.backend.upstream_rq_503": 1, "cluster.backend.upstream_rq_200": 1,
			},
		},
		{
			name:        "5xx forwarded after num_retries",
			script:      []action{{status: 503}},
			retryPolicy: `{"retry_on":"5xx","num_retries":1,"retry_back_off":{"base_interval":"0.001s"}}`,
			wantStatus:  503,
			wantBody:    "status 503",
			wantStreams: 2,
			wantStats:   map[string]uint64{"cluster.backend.upstream_rq_retry": 1, "cluster.backend.upstream_rq_retry_limit_exceeded": 1},
		},
		{
			name:        "retry body replayed",
			script:      []action{{status: 503}, {echo: true}},
			retryPolicy: `{"retry_on":"5xx","num_retries":1,"retry_back_off":{"base_interval":"0.001s"}}`,
			body:        body,
			wantStatus:  200,
			wantBody:    echoed,
			wantStreams: 2,
		},
		{
			name:        "gRPC unavailable in trailers-only response retried",
			script:      []action{{grpc: "14"}, {grpc: "0"}},
			retryPolicy: `{"retry_on":"unavailable","num_retries":1,"retry_back_off":{"base_interval":"0.001s"}}`,
			grpc:        true,
			wantStatus:  200,
			wantGRPC:    "0",
			wantStreams: 2,
		},
		{
			name:        "gRPC code not in retry_on forwarded",
			script:      []action{{grpc: "13"}, {grpc: "0"}},
			retryPolicy: `{"retry_on":"unavailable","num_retries":1}`,
			grpc:        true,
			wantStatus:  200,
			wantGRPC:    "13",
			wantStreams: 1,
		},
		{
			name:        "per_try_timeout retried",
			script:      []action{{hang: true}, {status: 200}},
			retryPolicy: `{"retry_on":"5xx","num_retries":1,"per_try_timeout":"0.1s","retry_back_off":{"base_interval":"0.001s"}}`,
			wantStatus:  200,
			wantBody:    "status 200",
			wantStreams: 2,
			wantStats:   map[string]uint64{"cluster.backend.upstream_rq_per_try_timeout": 1, "cluster.backend.upstream_rq_retry": 1},
		},
		{
			name:        "per_try_idle_timeout retried",
			script:      []action{{hang: true}, {status: 200}},
			retryPolicy: `{"retry_on":"reset","num_retries":1,"per_try_idle_timeout":"0.1s","retry_back_off":{"base_interval":"0.001s"}}`,
			wantStatus:  200,
			wantBody:    "status 200",
			wantStreams: 2,
			wantStats:   map[string]uint64{"cluster.backend.upstream_rq_per_try_idle_timeout": 1, "cluster.backend.upstream_rq_retry": 1},
		},
		{
			name:        "retriable-4xx retries 409",
			script:      []action{{status: 409}, {status: 200}},
			retryPolicy: `{"retry_on":"retriable-4xx","num_retries":1,"retry_back_off":{"base_interval":"0.001s"}}`,
			wantStatus:  200,
			wantBody:    "status 200",
			wantStreams: 2,
		},
		{
			name:        "5xx policy does not retry 4xx",
			script:      []action{{status: 404}, {status: 200}},
			retryPolicy: `{"retry_on":"5xx","num_retries":1}`,
			wantStatus:  404,
			wantBody:    "status 404",
			wantStreams: 1,
		},
		{
			name:        "reset retried on retry_on reset",
			script:      []action{{hang: true}, {status: 200}},
			retryPolicy: `{"retry_on":"reset","num_retries":1,"per_try_timeout":"0.1s","retry_back_off":{"base_interval":"0.001s"}}`,
			wantStatus:  200,
			wantStreams: 2,
			wantBody:    "status 200",
		},
		{
			name:        "circuit breaker max_retries overflow forwards the response",
			script:      []action{{status: 503}, {status: 200}},
			retryPolicy: `{"retry_on":"5xx","num_retries":3}`,
			cluster:     `"circuit_breakers":{"thresholds":[{"max_retries":0}]}`,
			wantStatus:  503,
			wantBody:    "status 503",
			wantStreams: 1,
			wantStats:   map[string]uint64{"cluster.backend.upstream_rq_retry_overflow": 1, "cluster.backend.upstream_rq_retry": 0},
		},
		{
			name:        "retry_budget with no room overflows",
			script:      []action{{status: 503}, {status: 200}},
			retryPolicy: `{"retry_on":"5xx","num_retries":3}`,
			cluster:     `"circuit_breakers":{"thresholds":[{"retry_budget":{"budget_percent":{"value":0},"min_retry_concurrency":0}}]}`,
			wantStatus:  503,
			wantBody:    "status 503",
			wantStreams: 1,
			wantStats:   map[string]uint64{"cluster.backend.upstream_rq_retry_overflow": 1},
		},
		{
			name:        "retry_budget with room retries",
			script:      []action{{status: 503}, {status: 200}},
			retryPolicy: `{"retry_on":"5xx","num_retries":3,"retry_back_off":{"base_interval":"0.001s"}}`,
			cluster:     `"circuit_breakers":{"thresholds":[{"retry_budget":{"budget_percent":{"value":20},"min_retry_concurrency":1}}]}`,
			wantStatus:  200,
			wantBody:    "status 200",
			wantStreams: 2,
			wantStats:   map[string]uint64{"cluster.backend.upstream_rq_retry": 1, "cluster.backend.upstream_rq_retry_success": 1},
		},
		{
			name:        "retriable-status-codes",
			script:      []action{{status: 409}, {status: 200}},
			retryPolicy: `{"retry_on":"retriable-status-codes","retriable_status_codes":[409],"retry_back_off":{"base_interval":"0.001s"}}`,
			wantStatus:  200,
			wantBody:    "status 200",
			wantStreams: 2,
		},
		{
			name:        "cluster max_stream_duration ends the upstream stream",
			script:      []action{{hang: true}},
			cluster:     `"typed_extension_protocol_options":{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions":{"@type":"type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions","common_http_protocol_options":{"max_stream_duration":"0.1s"},"explicit_http_config":{"http2_protocol_options":{}}}}`,
			wantStatus:  504,
			wantBody:    "upstream max stream duration reached",
			wantStreams: 1,
			wantStats:   map[string]uint64{"cluster.backend.upstream_rq_max_duration_reached": 1},
		},
		{
			name:        "body over the buffer limit is streamed whole",
			script:      []action{{echo: true}},
			routeExtra:  `,"per_request_buffer_limit_bytes":1024`,
			body:        big,
			wantStatus:  200,
			wantBody:    strconv.Itoa(len(big)) + " " + sha(big),
			wantStreams: 1,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			up, streams := scriptedUpstream(t, tc.script...)
			rp := ""
			if tc.retryPolicy != "" {
				rp = `,"retry_policy":` + tc.retryPolicy
			}
			routes := `{"match":{"prefix":"/"},"route":{"cluster":"backend","timeout":"5s"` + rp + `}` + tc.routeExtra + `}`
			e := newEnv(t, hcmJSON(routes, ""), clusterJSON([]string{up.addr}, tc.cluster))
			hdr := header.Make(0)
			if tc.grpc {
				hdr = grpcHeaders()
			}
			var br io.Reader
			if tc.body != nil {
				br = bytes.NewReader(tc.body)
			}
			fs := newFakeStream("POST", "/", hdr, br)
			e.serve(t, fs)
			r := fs.result()
			if r.status != tc.wantStatus || r.body != tc.wantBody {
				t.Fatalf("got %d %q (reset %v), want %d %q", r.status, r.body, r.reset, tc.wantStatus, tc.wantBody)
			}
			if got := r.header.Get("grpc-status"); got != tc.wantGRPC {
				t.Errorf("grpc-status %q, want %q", got, tc.wantGRPC)
			}
			if got := streams.Load(); got != tc.wantStreams {
				t.Errorf("upstream saw %d streams, want %d", got, tc.wantStreams)
			}
			for name, want := range tc.wantStats {
				if got := e.counter(name); got != want {
					t.Errorf("%s = %d, want %d", name, got, want)
				}
			}
		})
	}
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// TestBodyBufferLimitReplay: an upstream reads the whole 100 KiB request
// body and then refuses the stream, and accepts the next one. The refused
// attempt is retried transparently when the body fits the route's buffer
// limit; otherwise the client gets 503 with the reason, and
// retry_or_shadow_abandoned counts it. The table covers Envoy's precedence
// between request_body_buffer_limit, per_request_buffer_limit_bytes, the
// listener's per_connection_buffer_limit_bytes and meshd's default.
func TestBodyBufferLimitReplay(t *testing.T) {
	const notReplayable = "upstream reset: request body exceeds the route's request body buffer limit, cannot retry"
	body := bytes.Repeat([]byte("y"), 100<<10)
	tests := []struct {
		name       string
		routeExtra string // extra fields of the route
		perConn    uint32 // the listener's per_connection_buffer_limit_bytes; 0: unset
		replayed   bool
	}{
		{name: "per_request_buffer_limit_bytes below the body", routeExtra: `,"per_request_buffer_limit_bytes":1024`},
		{name: "request_body_buffer_limit below the body", routeExtra: `,"request_body_buffer_limit":"1024"`},
		{name: "request_body_buffer_limit above the body", routeExtra: `,"request_body_buffer_limit":"204800"`, replayed: true},
		{name: "both: request_body_buffer_limit wins", routeExtra: `,"per_request_buffer_limit_bytes":1024,"request_body_buffer_limit":"204800"`, replayed: true},
		{name: "per_request_buffer_limit_bytes capped by the listener", routeExtra: `,"per_request_buffer_limit_bytes":204800`, perConn: 32 << 10},
		{name: "per_request_buffer_limit_bytes under the listener's limit", routeExtra: `,"per_request_buffer_limit_bytes":204800`, perConn: 1 << 20, replayed: true},
		{name: "request_body_buffer_limit not capped by the listener", routeExtra: `,"request_body_buffer_limit":"204800"`, perConn: 32 << 10, replayed: true},
		{name: "no limit: meshd's 64 KiB default"},
		{name: "no limit: the listener's limit", perConn: 1 << 20, replayed: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			var n atomic.Int64
			up := startH2Upstream(t, h2.ServerConfig{}, func(s stream.ServerStream) {
				if n.Add(1) == 1 {
					_, _ = io.Copy(io.Discard, s)
					s.Reset(stream.ErrCodeRefusedStream)
					return
				}
				got, _ := io.ReadAll(s)
				respond(s, 200, strconv.Itoa(len(got)), header.Header{})
			})
			routes := `{"match":{"prefix":"/"},"route":{"cluster":"backend","timeout":"5s"}` + tc.routeExtra + `}`
			e := newEnv(t, hcmJSON(routes, ""), clusterJSON([]string{up.addr}, ""),
				func(c *Config) { c.PerConnectionBufferLimit = tc.perConn })
			fs := newFakeStream("POST", "/", header.Make(0), bytes.NewReader(body))
			e.serve(t, fs)
			r := fs.result()
			wantStatus, wantBody, wantStreams, wantAbandoned := 503, notReplayable, int64(1), uint64(1)
			if tc.replayed {
				wantStatus, wantBody, wantStreams, wantAbandoned = 200, strconv.Itoa(len(body)), 2, 0
			}
			if r.status != wantStatus || r.body != wantBody {
				t.Fatalf("got %d %q, want %d %q", r.status, r.body, wantStatus, wantBody)
			}
			if got := n.Load(); got != wantStreams {
				t.Errorf("upstream saw %d streams, want %d", got, wantStreams)
			}
			if got := e.counter("cluster.backend.retry_or_shadow_abandoned"); got != wantAbandoned {
				t.Errorf("retry_or_shadow_abandoned = %d, want %d", got, wantAbandoned)
			}
		})
	}
}

// TestRetryPrefersOtherHost: with two hosts, a retry goes to the host not
// tried yet.
func TestRetryPrefersOtherHost(t *testing.T) {
	testutil.CheckGoroutines(t)
	var bad, good atomic.Int64
	upBad := startH2Upstream(t, h2.ServerConfig{}, func(s stream.ServerStream) {
		bad.Add(1)
		respond(s, 503, "", header.Header{})
	})
	upGood := startH2Upstream(t, h2.ServerConfig{}, func(s stream.ServerStream) {
		good.Add(1)
		respond(s, 200, "", header.Header{})
	})
	routes := `{"match":{"prefix":"/"},"route":{"cluster":"backend","retry_policy":{"retry_on":"5xx","num_retries":1,"retry_back_off":{"base_interval":"0.001s"}}}}`
	e := newEnv(t, hcmJSON(routes, ""), clusterJSON([]string{upBad.addr, upGood.addr}, ""))
	for i := range 10 {
		fs := newFakeStream("GET", "/", header.Make(0), nil)
		e.serve(t, fs)
		if r := fs.result(); r.status != 200 {
			t.Fatalf("request %d: status %d, want 200", i, r.status)
		}
	}
	if bad.Load() == 0 || good.Load() != 10 {
		t.Errorf("bad host saw %d, good host %d; want every request answered by the good host", bad.Load(), good.Load())
	}
}

// TestOverflowNotRetried: a request the cluster's circuit breaker refuses
// (upstream.ErrOverflow) gets 503 with x-envoy-overloaded (gRPC
// UNAVAILABLE) at once, and is not retried even with a retry_policy.
func TestOverflowNotRetried(t *testing.T) {
	testutil.CheckGoroutines(t)
	up, streams := scriptedUpstream(t, action{hang: true})
	routes := `{"match":{"prefix":"/"},"route":{"cluster":"backend","timeout":"5s","retry_policy":{"retry_on":"5xx,reset,refused-stream","num_retries":3}}}`
	e := newEnv(t, hcmJSON(routes, ""), clusterJSON([]string{up.addr}, `"circuit_breakers":{"thresholds":[{"max_requests":1}]}`))
	hung := newFakeStream("GET", "/", header.Make(0), nil)
	hungDone := make(chan struct{})
	go func() {
		defer close(hungDone)
		e.h.ServeStream(hung)
	}()
	deadline := time.Now().Add(slack)
	for streams.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if streams.Load() != 1 {
		t.Fatal("the first request did not reach the upstream")
	}
	for _, tc := range []struct {
		name     string
		hdr      header.Header
		status   int
		grpcCode string
	}{
		{name: "HTTP", hdr: header.Make(0), status: 503},
		{name: "gRPC", hdr: grpcHeaders(), status: 200, grpcCode: "14"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := newFakeStream("GET", "/", tc.hdr, nil)
			e.serve(t, fs)
			r := fs.result()
			if r.status != tc.status || r.header.Get("x-envoy-overloaded") != "true" || r.header.Get("grpc-status") != tc.grpcCode {
				t.Fatalf("got %d x-envoy-overloaded=%q grpc-status=%q, want %d true %q",
					r.status, r.header.Get("x-envoy-overloaded"), r.header.Get("grpc-status"), tc.status, tc.grpcCode)
			}
		})
	}
	if got := streams.Load(); got != 1 {
		t.Errorf("upstream saw %d streams, want 1 (overflow is not retried)", got)
	}
	if got := e.counter("cluster.backend.upstream_rq_retry"); got != 0 {
		t.Errorf("upstream_rq_retry = %d, want 0", got)
	}
	hung.Reset(stream.ErrCodeCancel)
	<-hungDone
}

// TestTimeoutsAfterResponseStarted: activity keeps the idle timer from
// firing, and a timeout that fires once the response started resets the
// downstream stream instead of answering it.
func TestTimeoutsAfterResponseStarted(t *testing.T) {
	testutil.CheckGoroutines(t)
	const chunks = 8
	const gap = 50 * time.Millisecond // well under the 150 ms idle timeout
	up := startH2Upstream(t, h2.ServerConfig{}, func(s stream.ServerStream) {
		if err := s.WriteHeader(&stream.Response{Status: 200, Header: header.Make(0), ContentLength: -1}, false); err != nil {
			return
		}
		if s.Request().Path == "/hang" {
			select {
			case <-s.Context().Done():
			case <-time.After(hang):
			}
			return
		}
		for range chunks {
			time.Sleep(gap)
			if _, err := io.WriteString(s, "x"); err != nil {
				return
			}
		}
		_ = s.CloseWrite()
	})
	routes := `{"match":{"path":"/hang"},"route":{"cluster":"backend","timeout":"0.15s"}},
	{"match":{"prefix":"/"},"route":{"cluster":"backend","timeout":"0s","idle_timeout":"0.15s"}}`
	e := newEnv(t, hcmJSON(routes, ""), clusterJSON([]string{up.addr}, ""))

	t.Run("activity re-arms the idle timer", func(t *testing.T) {
		fs := newFakeStream("GET", "/stream", header.Make(0), nil)
		e.serve(t, fs)
		r := fs.result()
		if r.status != 200 || r.body != strings.Repeat("x", chunks) || r.reset != nil {
			t.Fatalf("got %d %q reset %v, want 200 %q and no reset", r.status, r.body, r.reset, strings.Repeat("x", chunks))
		}
		if got := e.counter("http.test.downstream_rq_idle_timeout"); got != 0 {
			t.Errorf("downstream_rq_idle_timeout = %d, want 0", got)
		}
	})
	t.Run("route timeout after headers resets downstream", func(t *testing.T) {
		fs := newFakeStream("GET", "/hang", header.Make(0), nil)
		e.serve(t, fs)
		r := fs.result()
		if r.status != 200 || r.reset == nil {
			t.Fatalf("got %d reset %v, want 200 headers then a reset", r.status, r.reset)
		}
		if got := e.counter("cluster.backend.upstream_rq_timeout"); got != 1 {
			t.Errorf("upstream_rq_timeout = %d, want 1", got)
		}
	})
}

// deadAddr returns a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// TestConnectFailure: a connect failure is retried transparently only on
// an endpoint not tried yet; with none left the client gets 503 at once
// ("connection failure"), not a hundred retries against the same address.
func TestConnectFailure(t *testing.T) {
	testutil.CheckGoroutines(t)
	up, streams := scriptedUpstream(t, action{status: 200})
	dead := deadAddr(t)
	routes := `{"match":{"prefix":"/"},"route":{"cluster":"backend","timeout":"5s"}}`
	tests := []struct {
		name       string
		addrs      []string
		requests   int
		wantStatus int
		wantBody   string
	}{
		{name: "fails over to the live endpoint", addrs: []string{dead, up.addr}, requests: 4, wantStatus: 200, wantBody: "status 200"},
		{name: "single dead endpoint answers 503", addrs: []string{dead}, requests: 1, wantStatus: 503,
			wantBody: "upstream connect error or disconnect/reset before headers. reset reason: connection failure"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, hcmJSON(routes, ""), clusterJSON(tc.addrs, ""))
			for i := range tc.requests {
				fs := newFakeStream("GET", "/", header.Make(0), nil)
				if took := e.serve(t, fs); took > slack {
					t.Errorf("request %d took %v, want under %v", i, took, slack)
				}
				if r := fs.result(); r.status != tc.wantStatus || r.body != tc.wantBody {
					t.Fatalf("request %d: got %d %q, want %d %q", i, r.status, r.body, tc.wantStatus, tc.wantBody)
				}
			}
			if got := e.counter("cluster.backend.upstream_rq_transparent_retry"); got > uint64(tc.requests) {
				t.Errorf("upstream_rq_transparent_retry = %d, want at most one per request (%d)", got, tc.requests)
			}
		})
	}
	if streams.Load() == 0 {
		t.Error("the live endpoint saw no stream")
	}
}
