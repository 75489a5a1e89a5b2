package localratelimit

import (
	"context"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	lrlv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	"google.golang.org/protobuf/encoding/protojson"

	"meshd.dev/meshd/filters"
	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/proxy/route"
	"meshd.dev/meshd/proxy/stats"
)

// fakeClock is a settable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestBucket(t *testing.T) {
	type step struct {
		advance   time.Duration
		consume   int // tokens to draw
		ok        int // of which granted
		remaining uint32
		reset     time.Duration
	}
	tests := []struct {
		name         string
		max, perFill uint32
		interval     time.Duration
		steps        []step
	}{
		{name: "starts full, then empty", max: 3, perFill: 1, interval: time.Second, steps: []step{
			{consume: 5, ok: 3, remaining: 0, reset: time.Second},
		}},
		{name: "fills per interval", max: 3, perFill: 2, interval: time.Second, steps: []step{
			{consume: 3, ok: 3},
			{advance: 999 * time.Millisecond, consume: 1, ok: 0, reset: time.Millisecond},
			{advance: time.Millisecond, consume: 1, ok: 1, remaining: 1, reset: time.Second},
			{advance: 500 * time.Millisecond, consume: 2, ok: 1, remaining: 0, reset: 500 * time.Millisecond},
		}},
		{name: "capped at max after a long idle", max: 4, perFill: 3, interval: 100 * time.Millisecond, steps: []step{
			{consume: 4, ok: 4},
			{advance: time.Hour, consume: 6, ok: 4, reset: 100 * time.Millisecond},
		}},
		{name: "several intervals add several fills", max: 10, perFill: 2, interval: 100 * time.Millisecond, steps: []step{
			{consume: 10, ok: 10},
			{advance: 350 * time.Millisecond, consume: 7, ok: 6, reset: 50 * time.Millisecond},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := &fakeClock{t: time.Unix(1000, 0)}
			b := NewBucket(tt.max, tt.perFill, tt.interval, clk.now)
			for i, s := range tt.steps {
				clk.advance(s.advance)
				got := 0
				var rem uint32
				var reset time.Duration
				for range s.consume {
					ok, r, rs := b.Consume()
					if ok {
						got++
					}
					rem, reset = r, rs
				}
				if got != s.ok || rem != s.remaining || (s.reset != 0 && reset != s.reset) {
					t.Errorf("step %d: granted %d remaining %d reset %v, want %d %d %v", i, got, rem, reset, s.ok, s.remaining, s.reset)
				}
				if b.Remaining() != rem {
					t.Errorf("step %d: Remaining() = %d, want %d", i, b.Remaining(), rem)
				}
			}
		})
	}
}

// TestBucketHammer draws from one bucket on many goroutines while the clock
// moves: the grants must equal the initial tokens plus the fills exactly.
func TestBucketHammer(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	const max, perFill, fills = 50, 10, 20
	b := NewBucket(max, perFill, time.Second, clk.now)
	var granted atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if ok, _, _ := b.Consume(); ok {
					granted.Add(1)
				}
			}
		}()
	}
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; i <= fills; i++ {
		for b.Remaining() > 0 && time.Now().Before(deadline) {
			time.Sleep(100 * time.Microsecond)
		}
		if i < fills {
			clk.advance(time.Second)
		}
	}
	close(stop)
	wg.Wait()
	if want := int64(max + fills*perFill); granted.Load() != want {
		t.Fatalf("granted %d tokens, want %d", granted.Load(), want)
	}
}

func TestCompileErrors(t *testing.T) {
	const bucket = `"token_bucket":{"max_tokens":10,"fill_interval":"1s"}`
	tests := []struct{ cfg, want string }{
		{`{` + bucket + `}`, "stat_prefix: required"},
		{`{"stat_prefix":"a"}`, "token_bucket: required"},
		{`{"stat_prefix":"a","token_bucket":{"max_tokens":0,"fill_interval":"1s"}}`, "token_bucket.max_tokens"},
		{`{"stat_prefix":"a","token_bucket":{"max_tokens":1,"tokens_per_fill":0,"fill_interval":"1s"}}`, "token_bucket.tokens_per_fill"},
		{`{"stat_prefix":"a","token_bucket":{"max_tokens":1}}`, "token_bucket.fill_interval: required"},
		{`{"stat_prefix":"a","token_bucket":{"max_tokens":1,"fill_interval":"0.01s"}}`, "token_bucket.fill_interval: 10ms is below"},
		{`{"stat_prefix":"a",` + bucket + `,"descriptors":[{"entries":[{"key":"k","value":"v"}],"token_bucket":{"max_tokens":1,"fill_interval":"1s"}}]}`, "descriptors: not supported"},
		{`{"stat_prefix":"a",` + bucket + `,"stage":1}`, "stage:"},
		{`{"stat_prefix":"a",` + bucket + `,"response_headers_to_add":[{"header":{"key":"bad key","value":"v"}}]}`, "response_headers_to_add[0].header.key"},
	}
	for _, tt := range tests {
		var m lrlv3.LocalRateLimit
		if err := protojson.Unmarshal([]byte(tt.cfg), &m); err != nil {
			t.Fatalf("%s: %v", tt.cfg, err)
		}
		_, err := Compile(&m, nil)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want it to contain %q", tt.cfg, err, tt.want)
		}
	}
}

// fakeCallbacks records the local reply of one stream.
type fakeCallbacks struct {
	conn   *stream.ConnInfo
	store  *stats.Store
	status int
}

func (f *fakeCallbacks) SendLocalReply(status int, _, _ string) { f.status = status }
func (f *fakeCallbacks) Conn() *stream.ConnInfo                 { return f.conn }
func (f *fakeCallbacks) PeerPrincipal() (string, bool)          { return "", false }
func (f *fakeCallbacks) Route() *route.Route                    { return nil }
func (f *fakeCallbacks) ClearRouteCache()                       {}
func (f *fakeCallbacks) Stats() *stats.Scope                    { return f.store.Root().Scope("http").Scope("ingress") }
func (f *fakeCallbacks) Logger() *slog.Logger                   { return slog.New(slog.DiscardHandler) }
func (f *fakeCallbacks) Context() context.Context               { return context.Background() }

// run passes one request through a filter of fac and returns the status
// (0: passed), the request and the response headers the filter produced.
func run(fac *Factory, cb *fakeCallbacks, grpc bool) (int, *stream.Request, *stream.Response) {
	cb.status = 0
	req := &stream.Request{Method: "GET", Path: "/", Header: header.Make(2)}
	f := fac.NewFilter()
	resp := &stream.Response{Status: 200, Header: header.Make(2)}
	st := f.OnRequestHeaders(cb, req, true)
	if cb.status != 0 {
		resp.Status = cb.status
		if grpc {
			resp.Status = 200
			resp.Header.Set("grpc-status", "14")
		}
	} else if st != filters.Continue {
		panic("Stop without reply")
	}
	f.OnResponseHeaders(cb, resp, true)
	return cb.status, req, resp
}

func compile(t *testing.T, js string, clk *fakeClock) *Factory {
	t.Helper()
	var m lrlv3.LocalRateLimit
	if err := protojson.Unmarshal([]byte(js), &m); err != nil {
		t.Fatal(err)
	}
	f, err := Compile(&m, clk.now)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

const full = `"filter_enabled":{"default_value":{"numerator":100}},"filter_enforced":{"default_value":{"numerator":100}}`

func TestFilter(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	store := stats.NewStore()
	cb := &fakeCallbacks{conn: &stream.ConnInfo{ID: 1}, store: store}
	fac := compile(t, `{"stat_prefix":"rl","token_bucket":{"max_tokens":2,"tokens_per_fill":2,"fill_interval":"10s"},`+full+`,
		"enable_x_ratelimit_headers":"DRAFT_VERSION_03","enable_retry_after_header":true,
		"response_headers_to_add":[{"append_action":"OVERWRITE_IF_EXISTS_OR_ADD","header":{"key":"x-local-rate-limit","value":"true"}}]}`, clk)

	for i, want := range []struct {
		status    int
		remaining string
	}{{0, "1"}, {0, "0"}, {429, "0"}} {
		st, _, resp := run(fac, cb, false)
		if st != want.status || resp.Header.Get("x-ratelimit-remaining") != want.remaining ||
			resp.Header.Get("x-ratelimit-limit") != "2" || resp.Header.Get("x-ratelimit-reset") != "10" {
			t.Errorf("request %d: status %d headers %v, want %d remaining %s", i, st, resp.Header.Fields(), want.status, want.remaining)
		}
		limited := want.status != 0
		if got := resp.Header.Get("x-local-rate-limit") == "true"; got != limited {
			t.Errorf("request %d: response_headers_to_add applied = %v, want %v", i, got, limited)
		}
		if got := resp.Header.Get("x-envoy-ratelimited"); (got == "true") != limited {
			t.Errorf("request %d: x-envoy-ratelimited = %q", i, got)
		}
		if limited && resp.Header.Get("retry-after") != "10" {
			t.Errorf("request %d: retry-after = %q, want 10", i, resp.Header.Get("retry-after"))
		}
	}
	clk.advance(10 * time.Second)
	if st, _, _ := run(fac, cb, false); st != 0 {
		t.Errorf("after a fill: status %d, want pass", st)
	}
	want := map[string]uint64{"rl.http_local_rate_limit.enabled": 4, "rl.http_local_rate_limit.ok": 3,
		"rl.http_local_rate_limit.rate_limited": 1, "rl.http_local_rate_limit.enforced": 1}
	for name, v := range want {
		if got := store.Root().Counter(name).Value(); got != v {
			t.Errorf("%s = %d, want %d", name, got, v)
		}
	}
	// Envoy's tag extraction moves the stat_prefix into a label.
	var prom strings.Builder
	if err := store.WritePrometheus(&prom, stats.Filter{}); err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		"# TYPE envoy_http_local_rate_limit_ok counter\n",
		`envoy_http_local_rate_limit_ok{envoy_local_http_ratelimit_prefix="rl"} 3` + "\n",
		`envoy_http_local_rate_limit_rate_limited{envoy_local_http_ratelimit_prefix="rl"} 1` + "\n",
	} {
		if !strings.Contains(prom.String(), line) {
			t.Errorf("/stats/prometheus lacks %q:\n%s", line, prom.String())
		}
	}
}

func TestFilterModes(t *testing.T) {
	const bucket = `"stat_prefix":"rl","token_bucket":{"max_tokens":1,"fill_interval":"1s"}`
	tests := []struct {
		name       string
		cfg        string
		grpc       bool
		wantStatus int    // of the second request
		wantGRPC   string // grpc-status of the second response
		wantReqHdr string // x-limited on the second request
	}{
		{name: "disabled by default", cfg: `{` + bucket + `}`},
		{name: "enabled not enforced adds request headers", cfg: `{` + bucket + `,"filter_enabled":{"default_value":{"numerator":100}},
			"request_headers_to_add_when_not_enforced":[{"header":{"key":"x-limited","value":"yes"}}]}`, wantReqHdr: "yes"},
		{name: "custom status", cfg: `{` + bucket + `,` + full + `,"status":{"code":"ServiceUnavailable"}}`, wantStatus: 503},
		{name: "status below 400 is 429", cfg: `{` + bucket + `,` + full + `,"status":{"code":"OK"}}`, wantStatus: 429},
		{name: "gRPC default UNAVAILABLE", cfg: `{` + bucket + `,` + full + `}`, grpc: true, wantStatus: 429, wantGRPC: "14"},
		{name: "gRPC RESOURCE_EXHAUSTED", cfg: `{` + bucket + `,` + full + `,"rate_limited_as_resource_exhausted":true}`, grpc: true, wantStatus: 429, wantGRPC: "8"},
		{name: "ten thousand denominator", cfg: `{` + bucket + `,"filter_enabled":{"default_value":{"numerator":10000,"denominator":"TEN_THOUSAND"}},"filter_enforced":{"default_value":{"numerator":1000000,"denominator":"MILLION"}}}`, wantStatus: 429},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := &fakeClock{t: time.Unix(1000, 0)}
			cb := &fakeCallbacks{conn: &stream.ConnInfo{ID: 1}, store: stats.NewStore()}
			fac := compile(t, tt.cfg, clk)
			if st, _, _ := run(fac, cb, tt.grpc); st != 0 {
				t.Fatalf("first request: status %d", st)
			}
			st, req, resp := run(fac, cb, tt.grpc)
			if st != tt.wantStatus {
				t.Errorf("second request: status %d, want %d", st, tt.wantStatus)
			}
			if g := resp.Header.Get("grpc-status"); g != tt.wantGRPC {
				t.Errorf("grpc-status %q, want %q", g, tt.wantGRPC)
			}
			if h := req.Header.Get("x-limited"); h != tt.wantReqHdr {
				t.Errorf("x-limited %q, want %q", h, tt.wantReqHdr)
			}
		})
	}
}

func TestPerConnection(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	store := stats.NewStore()
	fac := compile(t, `{"stat_prefix":"rl","token_bucket":{"max_tokens":1,"fill_interval":"1s"},`+full+`,
		"local_rate_limit_per_downstream_connection":true}`, clk)
	a := &fakeCallbacks{conn: &stream.ConnInfo{ID: 1}, store: store}
	b := &fakeCallbacks{conn: &stream.ConnInfo{ID: 2}, store: store}
	for i, tc := range []struct {
		cb   *fakeCallbacks
		want int
	}{{a, 0}, {b, 0}, {a, 429}, {b, 429}} {
		if st, _, _ := run(fac, tc.cb, false); st != tc.want {
			t.Errorf("request %d on conn %d: status %d, want %d", i, tc.cb.conn.ID, st, tc.want)
		}
	}
}

// TestPerConnectionBucketReleased checks that a connection's bucket goes
// away once the connection's info is collected.
func TestPerConnectionBucketReleased(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	fac := compile(t, `{"stat_prefix":"rl","token_bucket":{"max_tokens":1,"fill_interval":"1s"},`+full+`,
		"local_rate_limit_per_downstream_connection":true}`, clk)
	func() {
		cb := &fakeCallbacks{conn: &stream.ConnInfo{ID: 7}, store: stats.NewStore()}
		run(fac, cb, false)
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		runtime.GC()
		if _, ok := fac.perConn.Load(uint64(7)); !ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("bucket of a collected connection still held after 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestPerConnectionBucketsBounded is the native counterpart of the WASM
// guest's distinct-keys test: the only per-key buckets of the native filter
// are per connection, so 100 000 short connections, one request each, must
// leave no bucket behind once they are collected, while a long-lived
// connection sending throughout stays limited.
func TestPerConnectionBucketsBounded(t *testing.T) {
	const conns = 100_000
	clk := &fakeClock{t: time.Unix(1000, 0)}
	store := stats.NewStore()
	fac := compile(t, `{"stat_prefix":"rl","token_bucket":{"max_tokens":2,"fill_interval":"1s"},`+full+`,
		"local_rate_limit_per_downstream_connection":true}`, clk)
	hammer := &fakeCallbacks{conn: &stream.ConnInfo{ID: 1}, store: store}
	admitted := 0
	for i := range conns {
		cb := &fakeCallbacks{conn: &stream.ConnInfo{ID: uint64(i) + 2}, store: store}
		if st, _, _ := run(fac, cb, false); st != 0 {
			t.Fatalf("first request on connection %d: status %d", cb.conn.ID, st)
		}
		if i%100 == 0 {
			if st, _, _ := run(fac, hammer, false); st == 0 {
				admitted++
			}
		}
	}
	// The clock never moved: the long-lived connection got its 2 tokens.
	if admitted != 2 {
		t.Fatalf("long-lived connection: %d requests admitted, want 2", admitted)
	}
	count := func() int {
		n := 0
		fac.perConn.Range(func(any, any) bool { n++; return true })
		return n
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		runtime.GC()
		n := count()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d per-connection buckets held 10s after %d connections were dropped, want 1 (the live one)", n, conns)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, ok := fac.perConn.Load(hammer.conn.ID); !ok {
		t.Fatal("the live connection's bucket was dropped")
	}
	runtime.KeepAlive(hammer)
}
