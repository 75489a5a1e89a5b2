package wasm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	wasmfv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	"google.golang.org/protobuf/encoding/protojson"

	"meshd.dev/meshd/filters"
	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/proxy/route"
	"meshd.dev/meshd/proxy/stats"
	"meshd.dev/meshd/wasm"
)

// fakeVM is a plugin whose HTTP contexts run script.
type fakeVM struct {
	cfg    wasm.Config
	script func(s wasm.StreamHost) (wasm.Action, error)
	closed atomic.Bool
	done   atomic.Int32
}

func (v *fakeVM) NewHTTPContext(s wasm.StreamHost, _ *wasm.HTTPContext) httpContext {
	return &fakeContext{vm: v, host: s}
}
func (v *fakeVM) Close() { v.closed.Store(true) }

type fakeContext struct {
	vm   *fakeVM
	host wasm.StreamHost
	once sync.Once
}

func (c *fakeContext) OnRequestHeaders(int, bool) (wasm.Action, error) { return c.vm.script(c.host) }
func (c *fakeContext) OnRequestBody(int, bool) (wasm.Action, error)    { return wasm.Continue, nil }
func (c *fakeContext) OnRequestTrailers(int) (wasm.Action, error)      { return wasm.Continue, nil }
func (c *fakeContext) OnResponseHeaders(int, bool) (wasm.Action, error) {
	return wasm.Continue, nil
}
func (c *fakeContext) OnResponseBody(int, bool) (wasm.Action, error) { return wasm.Continue, nil }
func (c *fakeContext) OnResponseTrailers(int) (wasm.Action, error)   { return wasm.Continue, nil }
func (c *fakeContext) Done() error {
	c.once.Do(func() { c.vm.done.Add(1) })
	return nil
}

// fakeRuntime returns a Runtime whose plugins are fakeVMs running script.
func fakeRuntime(script func(s wasm.StreamHost) (wasm.Action, error)) (*Runtime, *[]*fakeVM) {
	r := NewRuntime(slog.New(slog.DiscardHandler))
	var mu sync.Mutex
	vms := &[]*fakeVM{}
	r.newPlugin = func(_ context.Context, cfg wasm.Config) (vm, error) {
		v := &fakeVM{cfg: cfg, script: script}
		mu.Lock()
		*vms = append(*vms, v)
		mu.Unlock()
		return v, nil
	}
	return r, vms
}

func parse(t *testing.T, js string) *wasmfv3.Wasm {
	t.Helper()
	var m wasmfv3.Wasm
	if err := protojson.Unmarshal([]byte(js), &m); err != nil {
		t.Fatalf("%s: %v", js, err)
	}
	return &m
}

// wasmJSON is a Wasm filter config with the given code and extra
// PluginConfig members.
func wasmJSON(code, extra string) string {
	if extra != "" {
		extra = "," + extra
	}
	return `{"config":{"name":"p","root_id":"r","vm_config":{"vm_id":"vm1","runtime":"envoy.wasm.runtime.v8","code":` + code + `}` + extra + `}}`
}

const inlineCode = `{"local":{"inline_string":"module"}}`

func TestCompileErrors(t *testing.T) {
	r, _ := fakeRuntime(nil)
	tests := []struct{ cfg, want string }{
		{`{}`, "config: required"},
		{`{"config":{"name":"p"}}`, "config.vm_config: required"},
		{`{"config":{"vm_config":{"runtime":"envoy.wasm.runtime.other","code":` + inlineCode + `}}}`, `config.vm_config.runtime: "envoy.wasm.runtime.other" is not supported`},
		{`{"config":{"vm_config":{"code":{}}}}`, "config.vm_config.code: local or remote is required"},
		{`{"config":{"vm_config":{"code":{"local":{"filename":"/nonexistent/x.wasm"}}}}}`, "config.vm_config.code.local.filename:"},
		{wasmJSON(`{"remote":{"http_uri":{"uri":"http://127.0.0.1:1/x","cluster":"c","timeout":"1s"}}}`, ""), "config.vm_config.code.remote.sha256: required"},
		{wasmJSON(`{"remote":{"http_uri":{"uri":"http://127.0.0.1:1/x","cluster":"c","timeout":"1s"},"sha256":"xyz"}}`, ""), "config.vm_config.code.remote.sha256: \"xyz\" is not a hex SHA-256"},
		{wasmJSON(inlineCode, `"configuration":{"@type":"type.googleapis.com/google.protobuf.Int32Value","value":1}`), "config.configuration: type type.googleapis.com/google.protobuf.Int32Value is not supported"},
		{wasmJSON(inlineCode, `"failure_policy":"FAIL_RELOAD"`), "config.failure_policy: not supported"},
	}
	for _, tt := range tests {
		_, err := r.Compile(parse(t, tt.cfg), filters.FactoryContext{})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s:\nerror %v\nwant it to contain %q", tt.cfg, err, tt.want)
		}
	}
}

func TestCompilePassesConfiguration(t *testing.T) {
	r, vms := fakeRuntime(nil)
	cfg := wasmJSON(inlineCode, `"configuration":{"@type":"type.googleapis.com/google.protobuf.StringValue","value":"{\"a\":1}"},"fail_open":true`)
	cfg = strings.Replace(cfg, `"vm_id":"vm1"`, `"vm_id":"vm1","configuration":{"@type":"type.googleapis.com/google.protobuf.BytesValue","value":"dm0="}`, 1)
	f, err := r.Compile(parse(t, cfg), filters.FactoryContext{Name: "w"})
	if err != nil {
		t.Fatal(err)
	}
	got := (*vms)[0].cfg
	if string(got.Module) != "module" || string(got.PluginConfig) != `{"a":1}` || string(got.VMConfig) != "vm" ||
		got.RootID != "r" || got.VMID != "vm1" || got.PoolSize < 2 || got.Engine == nil || !f.failOpen {
		t.Fatalf("plugin config %+v, fail_open %v", got, f.failOpen)
	}
	runtime.KeepAlive(f)
}

func TestRemoteCode(t *testing.T) {
	testutil.CheckGoroutines(t)
	module := []byte("remote module bytes")
	sum := sha256.Sum256(module)
	var fetches atomic.Int32
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fetches.Add(1)
		_, _ = w.Write(module)
	}))
	srv.Listener = ln
	srv.Start()
	defer srv.Close()
	remote := func(sha string) string {
		return fmt.Sprintf(`{"remote":{"http_uri":{"uri":%q,"cluster":"wasm_repo","timeout":"2s"},"sha256":%q}}`, srv.URL+"/m.wasm", sha)
	}
	r, vms := fakeRuntime(nil)
	bad := strings.Repeat("0", 64)
	if _, err := r.Compile(parse(t, wasmJSON(remote(bad), "")), filters.FactoryContext{}); err == nil ||
		!strings.Contains(err.Error(), "config.vm_config.code.remote.sha256: module fetched from") {
		t.Fatalf("sha256 mismatch: error %v", err)
	}
	good := hex.EncodeToString(sum[:])
	f1, err := r.Compile(parse(t, wasmJSON(remote(good), "")), filters.FactoryContext{})
	if err != nil {
		t.Fatal(err)
	}
	f2, err := r.Compile(parse(t, wasmJSON(remote(strings.ToUpper(good)), "")), filters.FactoryContext{})
	if err != nil {
		t.Fatal(err)
	}
	if string((*vms)[0].cfg.Module) != string(module) || len(*vms) != 1 || f1.entry != f2.entry {
		t.Fatalf("plugins %d, module %q: the same config must share one plugin", len(*vms), (*vms)[0].cfg.Module)
	}
	if n := fetches.Load(); n != 2 {
		t.Errorf("fetched %d times, want 2 (the mismatch, then once for the good digest)", n)
	}
	srv.CloseClientConnections()
	http.DefaultClient.CloseIdleConnections()
	runtime.KeepAlive(f1)
	runtime.KeepAlive(f2)
}

// TestPluginSwapAndRelease checks that a changed configuration starts a
// new plugin, and that plugins close once no Factory uses them.
func TestPluginSwapAndRelease(t *testing.T) {
	r, vms := fakeRuntime(nil)
	conf := func(v string) string {
		return wasmJSON(inlineCode, `"configuration":{"@type":"type.googleapis.com/google.protobuf.StringValue","value":"`+v+`"}`)
	}
	func() {
		a, err := r.Compile(parse(t, conf("1")), filters.FactoryContext{})
		if err != nil {
			t.Fatal(err)
		}
		b, err := r.Compile(parse(t, conf("2")), filters.FactoryContext{})
		if err != nil {
			t.Fatal(err)
		}
		if a.entry == b.entry || r.Running() != 2 {
			t.Fatalf("a changed configuration must start a new plugin (running %d)", r.Running())
		}
	}()
	deadline := time.Now().Add(5 * time.Second)
	for r.Running() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d plugins still running after their factories were collected", r.Running())
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	for i, v := range *vms {
		if !v.closed.Load() {
			t.Errorf("plugin %d not closed", i)
		}
	}
}

// fakeCallbacks records one stream's local reply.
type fakeCallbacks struct {
	ctx    context.Context
	conn   stream.ConnInfo
	store  *stats.Store
	status int
	body   string
}

func (f *fakeCallbacks) SendLocalReply(status int, body, _ string) {
	if f.status == 0 {
		f.status, f.body = status, body
	}
}
func (f *fakeCallbacks) Conn() *stream.ConnInfo        { return &f.conn }
func (f *fakeCallbacks) PeerPrincipal() (string, bool) { return "spiffe://example.org/ns/a/sa/b", true }
func (f *fakeCallbacks) Route() *route.Route           { return nil }
func (f *fakeCallbacks) ClearRouteCache()              {}
func (f *fakeCallbacks) Stats() *stats.Scope           { return f.store.Root().Scope("http").Scope("in") }
func (f *fakeCallbacks) Logger() *slog.Logger          { return slog.New(slog.DiscardHandler) }
func (f *fakeCallbacks) Context() context.Context      { return f.ctx }

func TestStreamDecisions(t *testing.T) {
	testutil.CheckGoroutines(t)
	after := func(d time.Duration, f func()) { go func() { time.Sleep(d); f() }() }
	tests := []struct {
		name       string
		failOpen   bool
		script     func(s wasm.StreamHost) (wasm.Action, error)
		wantStatus filters.Status
		wantReply  int
		wantHeader string // x-a on the response
		wantStats  map[string]uint64
		wantPath   string // request path after the hook
	}{
		{name: "continue and header edits", script: func(s wasm.StreamHost) (wasm.Action, error) {
			h := s.Headers(wasm.MapRequestHeaders)
			p, _ := h.Get(":path")
			h.Set(":path", p+"/rewritten")
			return wasm.Continue, nil
		}, wantStatus: filters.Continue, wantPath: "/x/rewritten"},
		{name: "VM failure fail_open passes", failOpen: true, script: func(wasm.StreamHost) (wasm.Action, error) {
			return wasm.Continue, fmt.Errorf("proxy_on_request_headers: %w", wasm.ErrUnavailable)
		}, wantStatus: filters.Continue, wantStats: map[string]uint64{"wasm.vm1.vm_failed": 1, "wasm.vm1.fail_open": 1}},
		{name: "VM failure fail closed answers 503", script: func(wasm.StreamHost) (wasm.Action, error) {
			return wasm.Continue, errors.New("trap")
		}, wantStatus: filters.Stop, wantReply: 503, wantStats: map[string]uint64{"wasm.vm1.vm_failed": 1, "wasm.vm1.fail_closed": 1}},
		{name: "pause then resume from another goroutine", script: func(s wasm.StreamHost) (wasm.Action, error) {
			after(10*time.Millisecond, func() { s.Resume(wasm.StreamRequest) })
			return wasm.Pause, nil
		}, wantStatus: filters.Continue},
		{name: "pause then local response with headers", script: func(s wasm.StreamHost) (wasm.Action, error) {
			after(10*time.Millisecond, func() { _ = s.SendLocalResponse(429, "limited", []byte("slow down"), [][2]string{{"x-a", "1"}}, -1) })
			return wasm.Pause, nil
		}, wantStatus: filters.Stop, wantReply: 429, wantHeader: "1"},
		{name: "properties", script: func(s wasm.StreamHost) (wasm.Action, error) {
			p, ok := s.Property([]string{"source", "principal"})
			m, _ := s.Property([]string{"request", "method"})
			port, _ := s.Property([]string{"destination", "port"})
			if !ok || string(p) != "spiffe://example.org/ns/a/sa/b" || string(m) != "GET" || len(port) != 8 || port[0] != 0x50 {
				return wasm.Continue, fmt.Errorf("properties %q %q %v", p, m, port)
			}
			return wasm.Continue, nil
		}, wantStatus: filters.Continue},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, vms := fakeRuntime(tt.script)
			extra := ""
			if tt.failOpen {
				extra = `"fail_open":true`
			}
			fac, err := r.Compile(parse(t, wasmJSON(inlineCode, extra)), filters.FactoryContext{})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			cb := &fakeCallbacks{ctx: ctx, store: stats.NewStore(), conn: stream.ConnInfo{ID: 1, Proto: "HTTP/2",
				LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 80}, RemoteAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5000}}}
			f := fac.NewFilter()
			req := &stream.Request{Method: "GET", Path: "/x", Authority: "a", Scheme: "http", Header: header.Make(1)}
			st := f.OnRequestHeaders(cb, req, true)
			if st != tt.wantStatus || cb.status != tt.wantReply {
				t.Fatalf("status %v reply %d, want %v %d", st, cb.status, tt.wantStatus, tt.wantReply)
			}
			resp := &stream.Response{Status: 200, Header: header.Make(1)}
			if cb.status != 0 {
				resp.Status = cb.status
			}
			f.OnResponseHeaders(cb, resp, true)
			if got := resp.Header.Get("x-a"); got != tt.wantHeader {
				t.Errorf("x-a %q, want %q", got, tt.wantHeader)
			}
			if tt.wantPath != "" && req.Path != tt.wantPath {
				t.Errorf("path %q, want %q", req.Path, tt.wantPath)
			}
			for name, want := range tt.wantStats {
				if got := cb.store.Root().Counter(name).Value(); got != want {
					t.Errorf("%s = %d, want %d", name, got, want)
				}
			}
			if !tt.failOpen && tt.wantReply != 503 {
				if n := (*vms)[0].done.Load(); n != 1 {
					t.Errorf("Done ran %d times, want 1", n)
				}
			}
			runtime.KeepAlive(fac)
		})
	}
}

func TestMetricBindsLate(t *testing.T) {
	var env hostEnv
	h := &hostServices{env: &env}
	c := h.Metric("reqs", wasm.MetricCounter)
	g := h.Metric("level", wasm.MetricGauge)
	c.Add(3)
	g.Record(7)
	store := stats.NewStore()
	env.bind(&fakeCallbacks{store: store})
	c.Add(2)
	if got := store.Root().Counter("wasmcustom.reqs").Value(); got != 5 || c.Value() != 5 {
		t.Errorf("wasmcustom.reqs = %d (handle %d), want 5", got, c.Value())
	}
	if got := store.Root().Gauge("wasmcustom.level").Value(); got != 7 {
		t.Errorf("wasmcustom.level = %d, want 7", got)
	}
}

// selectiveContext is a fakeContext that reports which callbacks its
// guest implements.
type selectiveContext struct {
	fakeContext
	cbs wasm.StreamCallbacks
}

func (c *selectiveContext) BodyCallbacks() wasm.StreamCallbacks { return c.cbs }

// TestBodyHooks checks the hooks the filter asks the connection manager
// for: those of the guest's callbacks, response hooks also for an end
// callback, none once the stream failed open, all for a context that
// cannot tell.
func TestBodyHooks(t *testing.T) {
	tests := []struct {
		name   string
		hc     httpContext
		bypass bool
		want   filters.Hooks
	}{
		{"guest implements none", &selectiveContext{}, false, 0},
		{"request body", &selectiveContext{cbs: wasm.StreamCallbacks{RequestBody: true}}, false, filters.HookRequestData},
		{"trailers", &selectiveContext{cbs: wasm.StreamCallbacks{RequestTrailers: true, ResponseTrailers: true}}, false,
			filters.HookRequestTrailers | filters.HookResponseTrailers},
		{"end callback", &selectiveContext{cbs: wasm.StreamCallbacks{End: true}}, false, filters.HookResponseData | filters.HookResponseTrailers},
		{"unknown", &fakeContext{}, false, filters.AllHooks},
		{"failed open", &selectiveContext{cbs: wasm.StreamCallbacks{RequestBody: true}}, true, 0},
		{"no context", nil, false, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := &streamFilter{hc: tc.hc, bypass: tc.bypass}
			if got := s.BodyHooks(); got != tc.want {
				t.Fatalf("BodyHooks = %04b, want %04b", got, tc.want)
			}
		})
	}
}
