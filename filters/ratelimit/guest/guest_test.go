package main

import (
	"crypto/sha256"
	"encoding/hex"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/proxytest"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"
)

// fakeClock is a manual clock for the guest's vmContext.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() int64              { return c.t.UnixNano() }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

// newHost starts the plugin in the SDK's host emulator with config.
func newHost(t *testing.T, config string, clock *fakeClock, props map[string]string) proxytest.HostEmulator {
	t.Helper()
	opt := proxytest.NewEmulatorOption().
		WithVMContext(&vmContext{now: clock.now}).
		WithPluginConfiguration([]byte(config))
	for k, v := range props {
		opt = opt.WithProperty(strings.Split(k, "."), []byte(v))
	}
	host, reset := proxytest.NewHostEmulator(opt)
	t.Cleanup(reset)
	if st := host.StartPlugin(); st != types.OnPluginStartStatusOK {
		t.Fatalf("StartPlugin = %v, logs: %v", st, host.GetCriticalLogs())
	}
	return host
}

// request runs one request through a new HTTP context and returns the
// request-headers action, the local response (nil if none) and the response
// headers the filter left.
func request(host proxytest.HostEmulator, hdrs [][2]string) (types.Action, *proxytest.LocalHttpResponse, [][2]string) {
	id := host.InitializeHttpContext()
	act := host.CallOnRequestHeaders(id, hdrs, false)
	local := host.GetSentLocalResponse(id)
	var resp [][2]string
	if local == nil {
		host.CallOnResponseHeaders(id, [][2]string{{":status", "200"}}, false)
		resp = host.GetCurrentResponseHeaders(id)
	}
	host.CompleteHttpContext(id)
	return act, local, resp
}

func header(hdrs [][2]string, name string) string {
	for _, kv := range hdrs {
		if kv[0] == name {
			return kv[1]
		}
	}
	return ""
}

func counter(t *testing.T, host proxytest.HostEmulator, name string) uint64 {
	t.Helper()
	v, err := host.GetCounterMetric(name)
	if err != nil {
		t.Fatalf("counter %s: %v", name, err)
	}
	return v
}

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name, config, wantErr string
		wantKind              keyKind
		wantCap               float64
		wantMaxKeys           int // DefaultMaxKeys when 0
	}{
		{name: "global default burst", config: `{"requests_per_unit":100}`, wantKind: keyGlobal, wantCap: 100},
		{name: "header", config: `{"requests_per_unit":5,"unit":"minute","burst":2,"key":"header:X-User"}`, wantKind: keyHeader, wantCap: 2},
		{name: "identity", config: `{"requests_per_unit":5,"key":"source-identity"}`, wantKind: keySourceIdentity, wantCap: 5},
		{name: "path", config: `{"requests_per_unit":5,"key":"path"}`, wantKind: keyPath, wantCap: 5},
		{name: "zero rate", config: `{"requests_per_unit":0}`, wantErr: "requests_per_unit"},
		{name: "bad unit", config: `{"requests_per_unit":1,"unit":"hour"}`, wantErr: "unit"},
		{name: "bad key", config: `{"requests_per_unit":1,"key":"cookie"}`, wantErr: "key"},
		{name: "empty header", config: `{"requests_per_unit":1,"key":"header:"}`, wantErr: "key"},
		{name: "negative burst", config: `{"requests_per_unit":1,"burst":-1}`, wantErr: "burst"},
		{name: "headers on", config: `{"requests_per_unit":1,"enable_x_ratelimit_headers":"DRAFT_VERSION_03"}`, wantKind: keyGlobal, wantCap: 1},
		{name: "headers off", config: `{"requests_per_unit":1,"enable_x_ratelimit_headers":"OFF"}`, wantKind: keyGlobal, wantCap: 1},
		{name: "bad headers version", config: `{"requests_per_unit":1,"enable_x_ratelimit_headers":"DRAFT_VERSION_02"}`, wantErr: "enable_x_ratelimit_headers"},
		{name: "negative max_keys", config: `{"requests_per_unit":1,"max_keys":-1}`, wantErr: "max_keys"},
		{name: "max_keys", config: `{"requests_per_unit":1,"max_keys":7}`, wantKind: keyGlobal, wantCap: 1, wantMaxKeys: 7},
		{name: "unknown field", config: `{"requests_per_unit":1,"rate":2}`, wantErr: "rate"},
		{name: "not json", config: `{`, wantErr: "plugin configuration"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := parseConfig([]byte(tc.config))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			wantMax := tc.wantMaxKeys
			if wantMax == 0 {
				wantMax = DefaultMaxKeys
			}
			if s.kind != tc.wantKind || s.capacity != tc.wantCap || s.maxKeys != wantMax {
				t.Fatalf("kind %v capacity %v max_keys %d, want %v %v %d", s.kind, s.capacity, s.maxKeys, tc.wantKind, tc.wantCap, wantMax)
			}
		})
	}
}

func TestLimit(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	host := newHost(t, `{"requests_per_unit":10,"unit":"second","burst":3,"key":"global","enable_x_ratelimit_headers":"DRAFT_VERSION_03"}`, clock, nil)

	// A full bucket admits burst requests, then rejects.
	for i := range 3 {
		act, local, resp := request(host, [][2]string{{":path", "/"}})
		if act != types.ActionContinue || local != nil {
			t.Fatalf("request %d: action %v local %+v, want admitted", i, act, local)
		}
		if got, want := header(resp, "x-ratelimit-remaining"), []string{"2", "1", "0"}[i]; got != want {
			t.Fatalf("request %d: remaining %q, want %q", i, got, want)
		}
		if header(resp, "x-ratelimit-limit") != "10" {
			t.Fatalf("request %d: limit header %q", i, header(resp, "x-ratelimit-limit"))
		}
	}
	act, local, _ := request(host, [][2]string{{":path", "/"}})
	if act != types.ActionPause || local == nil || local.StatusCode != 429 || local.GRPCStatus != -1 {
		t.Fatalf("4th request: action %v local %+v, want 429 without grpc status", act, local)
	}
	if header(local.Headers, "x-ratelimit-remaining") != "0" || header(local.Headers, "x-ratelimit-reset") != "1" {
		t.Fatalf("429 headers %v", local.Headers)
	}

	// 100ms later one token has been earned.
	clock.advance(100 * time.Millisecond)
	if act, local, _ := request(host, nil); act != types.ActionContinue || local != nil {
		t.Fatalf("after refill: action %v local %+v", act, local)
	}
	if _, local, _ := request(host, nil); local == nil {
		t.Fatal("bucket should be empty again")
	}
	if got := counter(t, host, "wasm_ratelimit.ok"); got != 4 {
		t.Fatalf("ok = %d, want 4", got)
	}
	if got := counter(t, host, "wasm_ratelimit.enforced"); got != 2 {
		t.Fatalf("enforced = %d, want 2", got)
	}

	// The tick refills the buckets used without any request.
	clock.advance(time.Second)
	host.Tick()
	if host.GetTickPeriod() != uint32(tickPeriod/time.Millisecond) {
		t.Fatalf("tick period %d", host.GetTickPeriod())
	}
	if _, _, resp := request(host, nil); header(resp, "x-ratelimit-remaining") != "2" {
		t.Fatalf("after tick: remaining %q, want 2", header(resp, "x-ratelimit-remaining"))
	}
}

func TestGRPCResourceExhausted(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	host := newHost(t, `{"requests_per_unit":1,"burst":1}`, clock, nil)
	grpc := [][2]string{{":path", "/pkg.Svc/M"}, {"content-type", "application/grpc+proto"}}
	request(host, grpc)
	_, local, _ := request(host, grpc)
	if local == nil || local.GRPCStatus != grpcResourceExhausted {
		t.Fatalf("local response %+v, want grpc-status %d", local, grpcResourceExhausted)
	}
}

func TestDryRun(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	host := newHost(t, `{"requests_per_unit":1,"burst":1,"dry_run":true}`, clock, nil)
	for i := range 5 {
		act, local, resp := request(host, nil)
		if act != types.ActionContinue || local != nil || header(resp, "x-ratelimit-limit") != "" {
			t.Fatalf("request %d: action %v local %+v resp %v, want untouched", i, act, local, resp)
		}
	}
	if got := counter(t, host, "wasm_ratelimit.rate_limited"); got != 4 {
		t.Fatalf("rate_limited = %d, want 4", got)
	}
	if got := counter(t, host, "wasm_ratelimit.enforced"); got != 0 {
		t.Fatalf("enforced = %d, want 0", got)
	}
}

// TestKeys checks that distinct descriptor values get independent buckets and
// requests without the descriptor are not limited.
func TestKeys(t *testing.T) {
	tests := []struct {
		name    string
		key     string
		props   map[string]string
		a, b    [][2]string // two requests with different descriptor values
		noKey   [][2]string // a request without the descriptor; nil if none
		sameAsA [][2]string // a request sharing a's bucket
	}{
		{
			name:    "header",
			key:     "header:x-user",
			a:       [][2]string{{"x-user", "alice"}},
			b:       [][2]string{{"x-user", "bob"}},
			noKey:   [][2]string{{"x-other", "1"}},
			sameAsA: [][2]string{{"x-user", "alice"}, {"x-other", "2"}},
		},
		{
			name:    "long header values are hashed, still distinct",
			key:     "header:x-user",
			a:       [][2]string{{"x-user", strings.Repeat("a", 4096)}},
			b:       [][2]string{{"x-user", strings.Repeat("a", 4095) + "b"}},
			sameAsA: [][2]string{{"x-user", strings.Repeat("a", 4096)}},
		},
		{
			name:    "path ignores query",
			key:     "path",
			a:       [][2]string{{":path", "/a?x=1"}},
			b:       [][2]string{{":path", "/b"}},
			sameAsA: [][2]string{{":path", "/a?x=2"}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
			host := newHost(t, `{"requests_per_unit":1,"burst":1,"key":"`+tc.key+`"}`, clock, tc.props)
			if _, local, _ := request(host, tc.a); local != nil {
				t.Fatal("first a rejected")
			}
			if _, local, _ := request(host, tc.b); local != nil {
				t.Fatal("b shares a's bucket")
			}
			if _, local, _ := request(host, tc.sameAsA); local == nil {
				t.Fatal("second request for a's bucket admitted")
			}
			if tc.noKey != nil {
				for range 3 {
					if _, local, _ := request(host, tc.noKey); local != nil {
						t.Fatal("request without descriptor rejected")
					}
				}
				if got := counter(t, host, "wasm_ratelimit.no_key"); got != 3 {
					t.Fatalf("no_key = %d, want 3", got)
				}
			}
		})
	}
}

// TestSourceIdentity checks the descriptor for key source-identity: the
// peer's SPIFFE ID, else its IP. The emulator has one set of properties, so
// the descriptor is checked directly; TestKeys shows distinct descriptors get
// distinct buckets.
func TestSourceIdentity(t *testing.T) {
	tests := []struct {
		name  string
		props map[string]string
		want  string
		ok    bool
	}{
		{name: "principal", props: map[string]string{"source.principal": "spiffe://td/ns/a/sa/x", "source.address": "10.0.0.1:5000"}, want: "principal=spiffe://td/ns/a/sa/x", ok: true},
		{name: "address fallback", props: map[string]string{"source.address": "10.0.0.1:5000"}, want: "address=10.0.0.1", ok: true},
		{name: "neither", props: nil, ok: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
			host := newHost(t, `{"requests_per_unit":1,"key":"source-identity"}`, clock, tc.props)
			// Drive one request so the emulator's current context is an HTTP one.
			id := host.InitializeHttpContext()
			host.CallOnRequestHeaders(id, nil, false)
			p := &pluginContext{cfg: settings{kind: keySourceIdentity}}
			b, ok := p.descriptor()
			if got := string(b); got != tc.want || ok != tc.ok {
				t.Fatalf("descriptor = %q, %v; want %q, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestBadConfigFailsStart(t *testing.T) {
	opt := proxytest.NewEmulatorOption().
		WithVMContext(&vmContext{now: hostNow}).
		WithPluginConfiguration([]byte(`{"requests_per_unit":-1}`))
	host, reset := proxytest.NewHostEmulator(opt)
	defer reset()
	if st := host.StartPlugin(); st != types.OnPluginStartStatusFailed {
		t.Fatalf("StartPlugin = %v, want failed", st)
	}
	if logs := host.GetCriticalLogs(); len(logs) == 0 || !strings.Contains(logs[0], "requests_per_unit") {
		t.Fatalf("critical logs %v, want the field named", logs)
	}
}

func TestBucketEncoding(t *testing.T) {
	b := bucketState{tokens: 2.5, last: 123456789}
	got, err := decodeBucket(b.encodeTo(make([]byte, bucketStateSize)))
	if err != nil || got != b {
		t.Fatalf("round trip = %+v, %v", got, err)
	}
	if _, err := decodeBucket([]byte{1, 2}); err == nil {
		t.Fatal("short state accepted")
	}
}

// TestHeadersOnRejectedOnlyByDefault checks that without
// enable_x_ratelimit_headers admitted responses carry no x-ratelimit-*
// headers (Envoy's default) while the 429 still does.
func TestHeadersOnRejectedOnlyByDefault(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	host := newHost(t, `{"requests_per_unit":1,"burst":1}`, clock, nil)
	if act, local, resp := request(host, nil); act != types.ActionContinue || local != nil || header(resp, "x-ratelimit-limit") != "" {
		t.Fatalf("admitted: action %v local %+v resp %v, want no header", act, local, resp)
	}
	_, local, _ := request(host, nil)
	if local == nil || local.StatusCode != 429 {
		t.Fatalf("over the limit: local response %+v, want a 429", local)
	}
	for _, h := range []struct{ name, want string }{
		{"x-ratelimit-limit", "1"}, {"x-ratelimit-remaining", "0"}, {"x-ratelimit-reset", "1"},
	} {
		if got := header(local.Headers, h.name); got != h.want {
			t.Errorf("429 %s = %q, want %q", h.name, got, h.want)
		}
	}
}

// sharedTokens reads the tokens of the global bucket of config from the
// emulator's shared data.
func sharedTokens(t *testing.T, config string) float64 {
	t.Helper()
	sum := sha256.Sum256([]byte(config))
	raw, _, err := proxywasm.GetSharedData("meshd.ratelimit/" + hex.EncodeToString(sum[:8]) + "/global")
	if err != nil {
		t.Fatal(err)
	}
	b, err := decodeBucket(raw)
	if err != nil {
		t.Fatal(err)
	}
	return b.tokens
}

// TestLease checks the leases: at a high rate a request takes a lease of the
// tokens earned in leaseWindow from the shared bucket and the next ones
// draw from it without a write, also after leaseWindow; the first tick after
// leaseWindow returns the unused tokens, and the next request takes a new
// lease. At a low rate a lease is one token, so the bucket is exact.
func TestLease(t *testing.T) {
	const config = `{"requests_per_unit":100000,"burst":100000,"enable_x_ratelimit_headers":"DRAFT_VERSION_03"}`
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	host := newHost(t, config, clock, nil)
	const lease = 1000 // 100 000/s × 10 ms
	for i := range 3 {
		_, local, resp := request(host, nil)
		if local != nil {
			t.Fatalf("request %d rejected", i)
		}
		if got, want := sharedTokens(t, config), 100000.0-lease; got != want {
			t.Fatalf("after request %d: shared bucket %v, want %v", i, got, want)
		}
		if got, want := header(resp, "x-ratelimit-remaining"), strconv.Itoa(100000-1-i); got != want {
			t.Fatalf("request %d: remaining %s, want %s", i, got, want)
		}
	}
	// Past leaseWindow the lease still serves, without a write.
	clock.advance(leaseWindow)
	_, _, resp := request(host, nil)
	if got, want := sharedTokens(t, config), 100000.0-lease; got != want {
		t.Fatalf("past leaseWindow: shared bucket %v, want %v", got, want)
	}
	if got, want := header(resp, "x-ratelimit-remaining"), "99996"; got != want {
		t.Fatalf("past leaseWindow: remaining %s, want %s", got, want)
	}
	// The tick returns the 996 unused tokens; with the 1000 earned in 10 ms
	// the bucket is full again. The next request takes a new lease.
	host.Tick()
	if got, want := sharedTokens(t, config), 100000.0; got != want {
		t.Fatalf("after the tick: shared bucket %v, want %v", got, want)
	}
	request(host, nil)
	if got, want := sharedTokens(t, config), 100000.0-lease; got != want {
		t.Fatalf("after a new lease: shared bucket %v, want %v", got, want)
	}

	for _, tc := range []struct {
		rpu, burst int64
		unit       time.Duration
		want       float64
	}{
		{100, 100, time.Second, 1},
		{10, 10, time.Minute, 1},
		{1_000_000_000, 1_000_000_000, time.Second, 10_000_000},
		{100000, 160, time.Second, 10}, // at most 1/16 of the burst
	} {
		if got := newLimits(tc.burst, tc.rpu, tc.unit).lease; got != tc.want {
			t.Errorf("lease of %d per %v, burst %d = %v, want %v", tc.rpu, tc.unit, tc.burst, got, tc.want)
		}
	}
}

// TestLeaseReturnedAtTick drains a bucket through leases of 1/16 of its
// capacity and checks that the tick after leaseWindow returns the unused
// part of the last lease.
func TestLeaseReturnedAtTick(t *testing.T) {
	const config = `{"requests_per_unit":100000,"burst":3200}` // leases of 200
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	host := newHost(t, config, clock, nil)
	for i := range 3100 {
		if _, local, _ := request(host, nil); local != nil {
			t.Fatalf("request %d rejected", i)
		}
	}
	if got := sharedTokens(t, config); got != 0 {
		t.Fatalf("shared bucket %v after 16 leases, want 0", got)
	}
	clock.advance(leaseWindow)
	host.Tick()
	// 10 ms earned 1000 tokens; 100 came back.
	if got, want := sharedTokens(t, config), 1100.0; got != want {
		t.Fatalf("after the tick: shared bucket %v, want %v", got, want)
	}
}

// TestOKCountedInBatches checks that admissions served from a lease reach
// the ok counter when the VM next goes to shared data, at the tick and when
// the plugin ends, and never before they happen.
func TestOKCountedInBatches(t *testing.T) {
	// 1e6/s: a lease is what 10 ms earns, 10 000 tokens.
	const cfg = `{"requests_per_unit":1000000,"unit":"second","burst":1000000,"key":"global"}`
	steps := []struct {
		name   string
		do     func(host proxytest.HostEmulator, clock *fakeClock)
		wantOK uint64
	}{
		{"first request takes a lease", func(h proxytest.HostEmulator, _ *fakeClock) { request(h, nil) }, 1},
		{"four from the lease", func(h proxytest.HostEmulator, _ *fakeClock) {
			for range 4 {
				request(h, nil)
			}
		}, 1},
		{"tick counts them", func(h proxytest.HostEmulator, _ *fakeClock) { h.Tick() }, 5},
		{"two more from the lease", func(h proxytest.HostEmulator, _ *fakeClock) { request(h, nil); request(h, nil) }, 5},
		{"past leaseWindow, still from the lease", func(h proxytest.HostEmulator, c *fakeClock) {
			c.advance(2 * leaseWindow)
			request(h, nil)
		}, 5},
		{"tick ends the lease and counts them", func(h proxytest.HostEmulator, _ *fakeClock) { h.Tick() }, 8},
		{"a new lease counts itself", func(h proxytest.HostEmulator, _ *fakeClock) { request(h, nil) }, 9},
		{"one from the lease", func(h proxytest.HostEmulator, _ *fakeClock) { request(h, nil) }, 9},
		{"plugin end counts it", func(h proxytest.HostEmulator, _ *fakeClock) {
			if !h.FinishVM() {
				t.Fatal("FinishVM = false")
			}
		}, 10},
	}
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	host := newHost(t, cfg, clock, nil)
	for _, s := range steps {
		s.do(host, clock)
		if got := counter(t, host, "wasm_ratelimit.ok"); got != s.wantOK {
			t.Fatalf("after %q: ok = %d, want %d", s.name, got, s.wantOK)
		}
	}
}

// TestHeaderContextsIndependent runs more concurrent streams than a slab
// of HTTP contexts holds, finishing them in reverse order: each response
// carries the remaining count of its own request.
func TestHeaderContextsIndependent(t *testing.T) {
	const n = 2*slabSize + 3
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	host := newHost(t, `{"requests_per_unit":1000,"unit":"second","burst":1000,"key":"global","enable_x_ratelimit_headers":"DRAFT_VERSION_03"}`, clock, nil)
	ids := make([]uint32, n)
	for i := range ids {
		ids[i] = host.InitializeHttpContext()
		if act := host.CallOnRequestHeaders(ids[i], nil, false); act != types.ActionContinue {
			t.Fatalf("stream %d: action %v", i, act)
		}
	}
	for i := n - 1; i >= 0; i-- {
		host.CallOnResponseHeaders(ids[i], [][2]string{{":status", "200"}}, false)
		resp := host.GetCurrentResponseHeaders(ids[i])
		if got, want := header(resp, "x-ratelimit-remaining"), strconv.Itoa(1000-1-i); got != want {
			t.Fatalf("stream %d: remaining %q, want %q", i, got, want)
		}
		host.CompleteHttpContext(ids[i])
	}
}

// TestKnownDescriptorAllocatesNothing checks that looking up the lease of
// a descriptor seen before makes no allocation, and that a buffer reused
// for another descriptor does not alias the stored key.
func TestKnownDescriptorAllocatesNothing(t *testing.T) {
	p := newPluginContext(hostNow)
	p.prefix, p.cfg.maxKeys = "pfx/", DefaultMaxKeys
	buf := []byte("principal=spiffe://td/ns/a/sa/x")
	l := p.leaseOfBytes(buf)
	if l.key != "pfx/principal=spiffe://td/ns/a/sa/x" {
		t.Fatalf("key %q", l.key)
	}
	copy(buf, "PRINCIPAL")
	if p.leaseOfBytes([]byte("principal=spiffe://td/ns/a/sa/x")) != l {
		t.Fatal("reusing the buffer changed the stored descriptor")
	}
	if allocs := testing.AllocsPerRun(100, func() { p.leaseOfBytes([]byte("principal=spiffe://td/ns/a/sa/x")) }); allocs != 0 {
		t.Fatalf("%v allocations per known descriptor, want 0", allocs)
	}
}

// TestRefillTimeSaturates: a bucket whose refill takes longer than an
// int64 of nanoseconds (a burst of 4e9 at one request a minute, which the
// mesh file accepts) used to report untilFull as math.MinInt64, from an
// out-of-range float conversion, so a VM saw a drained bucket as already
// full. Both refill times now saturate; found by FuzzParseConfig.
func TestRefillTimeSaturates(t *testing.T) {
	for _, tc := range []struct {
		name                 string
		capacity, perUnit    int64
		unit                 time.Duration
		wantUntil, wantReset int64
	}{
		{"fits", 10, 1, time.Second, 10 * int64(time.Second), 10},
		{"4e9 at one a minute", 4e9, 1, time.Minute, math.MaxInt64, 240e9},
		{"largest at one a minute", math.MaxInt64, 1, time.Minute, math.MaxInt64, math.MaxInt64},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLimits(tc.capacity, tc.perUnit, tc.unit)
			b := bucketState{}
			if got := l.untilFull(b); got != tc.wantUntil {
				t.Errorf("untilFull = %d, want %d", got, tc.wantUntil)
			}
			if got := l.resetSeconds(b); got != tc.wantReset {
				t.Errorf("resetSeconds = %d, want %d", got, tc.wantReset)
			}
		})
	}
}
