package wasm

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
)

func TestNewPluginErrors(t *testing.T) {
	testutil.CheckGoroutines(t)
	noABI := module([][]byte{functype(1, 1)}, nil, []wfunc{{"proxy_on_memory_allocate", 0, i32const(16)}})
	tests := []struct {
		name   string
		cfg    Config
		errHas []string
	}{
		{"no host", Config{Module: []byte{0}}, []string{"Config.Host is required"}},
		{"empty module", Config{Host: newFakeHost()}, []string{"Config.Module is empty"}},
		{"not wasm", Config{Module: []byte("hello"), Host: newFakeHost()}, []string{"compile module sha256"}},
		{"missing imports", Config{Module: minimalGuest(opUnreachable,
			wimport{"env", "proxy_get_configuration", 2}, wimport{"foo", "bar", 2}), Host: newFakeHost()},
			[]string{"imports not provided", "env.proxy_get_configuration", "foo.bar"}},
		{"no abi export", Config{Module: noABI, Host: newFakeHost()}, []string{"proxy_abi_version_0_2_0"}},
		{"configure rejects", Config{Module: goGuest(t), PluginConfig: []byte("reject"), Host: newFakeHost()},
			[]string{"proxy_on_configure returned false"}},
		{"negative pool", Config{Module: goGuest(t), PoolSize: -1, Host: newFakeHost()}, []string{"pool size -1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			p, err := NewPlugin(ctx, tc.cfg)
			if err == nil {
				p.Close()
				t.Fatal("NewPlugin succeeded, want error")
			}
			for _, s := range tc.errHas {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
		})
	}
}

func TestHeaderMapOps(t *testing.T) {
	testutil.CheckGoroutines(t)
	p, _ := newTestPlugin(t, "headers from-config")
	if got := p.ABIVersion(); got != "0.2.0" {
		t.Errorf("ABIVersion = %q, want 0.2.0", got)
	}
	s := newStream([2]string{":path", "/a"}, [2]string{"x-replace", "old"}, [2]string{"x-remove", "1"}, [2]string{"x-remove", "2"})
	c := p.NewHTTPContext(s)
	act, err := c.OnRequestHeaders(4, true)
	if err != nil || act != Continue {
		t.Fatalf("OnRequestHeaders = %v, %v", act, err)
	}
	if _, err := c.OnResponseHeaders(0, true); err != nil {
		t.Fatal(err)
	}
	if err := c.Done(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		m          MapType
		name, want string
	}{
		{MapRequestHeaders, "x-wasm-path", "/a"},
		{MapRequestHeaders, "x-replace", "replaced"},
		{MapRequestHeaders, "x-remove", ""},
		{MapRequestHeaders, "x-wasm-count", "3"}, // :path, x-wasm-path, x-replace
		{MapRequestHeaders, "x-wasm-n", "4"},
		{MapResponseHeaders, "x-wasm-config", "from-config"},
	} {
		if got := s.header(tc.m, tc.name); got != tc.want {
			t.Errorf("map %d %s = %q, want %q", tc.m, tc.name, got, tc.want)
		}
	}
}

func TestProperties(t *testing.T) {
	testutil.CheckGoroutines(t)
	p, _ := newTestPlugin(t, "props")
	s := newStream()
	s.props["request.path"] = "/p"
	s.props["source.principal"] = "spiffe://td/ns/a/sa/b"
	c := p.NewHTTPContext(s)
	if _, err := c.OnRequestHeaders(0, true); err != nil {
		t.Fatal(err)
	}
	defer c.Done()
	for name, want := range map[string]string{
		"x-prop-request-path":     "/p/0",
		"x-prop-source-principal": "spiffe://td/ns/a/sa/b/0",
		"x-prop-plugin_root_id":   "root/0",
		"x-prop-plugin_name":      "test-plugin/0",
		"x-prop-missing":          strconv.Itoa(int(StatusNotFound)),
	} {
		if got := s.header(MapRequestHeaders, name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
}

func TestSendLocalResponse(t *testing.T) {
	testutil.CheckGoroutines(t)
	p, _ := newTestPlugin(t, "local yes")
	s := newStream()
	c := p.NewHTTPContext(s)
	act, err := c.OnRequestHeaders(0, false)
	if err != nil || act != Pause {
		t.Fatalf("OnRequestHeaders = %v, %v; want pause", act, err)
	}
	_ = c.Done()
	want := localResponse{403, "denied_by_wasm", "nope", [][2]string{{"x-deny", "yes"}}, -1}
	if s.local == nil || fmt.Sprint(*s.local) != fmt.Sprint(want) {
		t.Fatalf("local response = %+v, want %+v", s.local, want)
	}
}

func TestBodyBuffering(t *testing.T) {
	testutil.CheckGoroutines(t)
	p, _ := newTestPlugin(t, "body")
	s := newStream()
	s.hasBody, s.body = true, []byte("hel")
	c := p.NewHTTPContext(s)
	defer c.Done()
	if act, err := c.OnRequestBody(3, false); err != nil || act != Pause {
		t.Fatalf("partial body: %v, %v; want pause", act, err)
	}
	s.body = append(s.body, "lo"...)
	if act, err := c.OnRequestBody(5, true); err != nil || act != Continue {
		t.Fatalf("last body: %v, %v; want continue", act, err)
	}
	if string(s.body) != "HELLO" {
		t.Errorf("body = %q, want HELLO", s.body)
	}
}

func TestSharedDataCASAcrossInstances(t *testing.T) {
	testutil.CheckGoroutines(t)
	p, _ := newTestPlugin(t, "shared", func(c *Config) { c.PoolSize = 4 })
	// The ABI has no create-if-absent (a write to a missing key ignores the
	// CAS), so two instances that both find the key missing both write "1".
	// CAS guards updates of an existing key, which is what this test is
	// about: create the key before the workers start.
	if st := p.engine.shared.set("vm", "count", []byte("0"), 0); st != StatusOK {
		t.Fatalf("seed count: status %d", st)
	}
	const workers, perWorker = 8, 50
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range perWorker {
				c := p.NewHTTPContext(newStream())
				if _, err := c.OnRequestHeaders(0, true); err != nil {
					errs <- err
					return
				}
				_ = c.Done()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	v, _, st := p.engine.shared.get("vm", "count")
	if st != StatusOK || string(v) != strconv.Itoa(workers*perWorker) {
		t.Fatalf("count = %q (status %d), want %d", v, st, workers*perWorker)
	}
}

func TestSharedDataCASRules(t *testing.T) {
	var s sharedStore
	s.init()
	if _, _, st := s.get("vm", "k"); st != StatusNotFound {
		t.Fatalf("get missing = %d", st)
	}
	steps := []struct {
		name string
		cas  func(cur uint32) uint32
		want Status
	}{
		{"unconditional create", func(uint32) uint32 { return 0 }, StatusOK},
		{"matching cas", func(cur uint32) uint32 { return cur }, StatusOK},
		{"stale cas", func(cur uint32) uint32 { return cur - 1 }, StatusCasMismatch},
		{"unconditional overwrite", func(uint32) uint32 { return 0 }, StatusOK},
	}
	for _, st := range steps {
		_, cur, _ := s.get("vm", "k")
		if got := s.set("vm", "k", []byte(st.name), st.cas(cur)); got != st.want {
			t.Errorf("%s: set = %d, want %d", st.name, got, st.want)
		}
	}
	if st := s.set("vm", "new", []byte("x"), 42); st != StatusCasMismatch {
		t.Errorf("set missing key with cas = %d, want CasMismatch", st)
	}
	if _, _, st := s.get("other-vm", "k"); st != StatusNotFound {
		t.Errorf("vm ids are not isolated: %d", st)
	}
}

func TestSharedQueue(t *testing.T) {
	testutil.CheckGoroutines(t)
	p, _ := newTestPlugin(t, "queue", func(c *Config) { c.PoolSize = 3 })
	for k := range 6 {
		c := p.NewHTTPContext(newStream([2]string{":path", fmt.Sprintf("/q%d", k)}))
		if _, err := c.OnRequestHeaders(1, true); err != nil {
			t.Fatal(err)
		}
		_ = c.Done()
	}
	waitFor(t, 5*time.Second, "all six items dequeued by on_queue_ready", func() bool {
		for k := range 6 {
			if _, _, st := p.engine.shared.get("vm", fmt.Sprintf("dequeued:/q%d", k)); st != StatusOK {
				return false
			}
		}
		return true
	})
	if _, st := p.engine.shared.resolve("vm", "q"); st != StatusOK {
		t.Errorf("resolve q = %d", st)
	}
}

func TestTicks(t *testing.T) {
	testutil.CheckGoroutines(t)
	p, _ := newTestPlugin(t, "tick")
	waitFor(t, 5*time.Second, "10 ticks (5 ms period, 2 instances)", func() bool {
		v, _, _ := p.engine.shared.get("vm", "ticks")
		n, _ := strconv.Atoi(string(v))
		return n >= 10
	})
}

func TestHTTPCall(t *testing.T) {
	testutil.CheckGoroutines(t)
	for _, tc := range []struct {
		cluster, wantHeader, name string
		wantAction                Action
	}{
		{"auth", "200/pong/2", "x-call", Pause},
		{"nope", strconv.Itoa(int(StatusBadArgument)), "x-call-status", Continue},
	} {
		t.Run(tc.cluster, func(t *testing.T) {
			p, host := newTestPlugin(t, "httpcall "+tc.cluster)
			s := newStream()
			c := p.NewHTTPContext(s)
			defer c.Done()
			act, err := c.OnRequestHeaders(0, true)
			if err != nil || act != tc.wantAction {
				t.Fatalf("OnRequestHeaders = %v, %v; want %v", act, err, tc.wantAction)
			}
			if act == Pause {
				select {
				case d := <-s.resumed:
					if d != StreamRequest {
						t.Errorf("resumed %d, want request", d)
					}
				case <-time.After(5 * time.Second):
					t.Fatal("stream not resumed after the call response")
				}
				host.mu.Lock()
				calls := fmt.Sprint(host.calls)
				host.mu.Unlock()
				if calls != "[/auth ping 1s]" {
					t.Errorf("calls = %s", calls)
				}
			}
			c.inst.mu.Lock()
			got := s.header(MapRequestHeaders, tc.name)
			c.inst.mu.Unlock()
			if got != tc.wantHeader {
				t.Errorf("%s = %q, want %q", tc.name, got, tc.wantHeader)
			}
		})
	}
}

func TestMetrics(t *testing.T) {
	testutil.CheckGoroutines(t)
	p, host := newTestPlugin(t, "metrics", func(c *Config) { c.PoolSize = 3 })
	for k := 1; k <= 5; k++ {
		s := newStream()
		c := p.NewHTTPContext(s)
		if _, err := c.OnRequestHeaders(0, true); err != nil {
			t.Fatal(err)
		}
		_ = c.Done()
		if got := s.header(MapRequestHeaders, "x-metric"); got != strconv.Itoa(k) {
			t.Errorf("request %d: get_metric = %q (one metric across instances)", k, got)
		}
	}
	host.mu.Lock()
	defer host.mu.Unlock()
	m := host.metrics["wasm_test_requests"]
	if len(host.metrics) != 1 || m == nil || m.kind != MetricCounter || m.Value() != 5 {
		t.Errorf("metrics = %v", host.metrics)
	}
}

func TestForeignFunctionNotFound(t *testing.T) {
	testutil.CheckGoroutines(t)
	p, _ := newTestPlugin(t, "foreign")
	s := newStream()
	c := p.NewHTTPContext(s)
	defer c.Done()
	if _, err := c.OnRequestHeaders(0, true); err != nil {
		t.Fatal(err)
	}
	if got := s.header(MapRequestHeaders, "x-foreign"); got != strconv.Itoa(int(StatusNotFound)) {
		t.Errorf("call_foreign_function status = %q, want NotFound", got)
	}
}

func TestOutOfBoundsPointers(t *testing.T) {
	testutil.CheckGoroutines(t)
	p, _ := newTestPlugin(t, "oob")
	for range 3 {
		s := newStream()
		c := p.NewHTTPContext(s)
		if _, err := c.OnRequestHeaders(0, true); err != nil {
			t.Fatal(err)
		}
		_ = c.Done()
		want := strings.Repeat(strconv.Itoa(int(StatusInvalidMemoryAccess))+",", 3)
		if got := s.header(MapRequestHeaders, "x-oob") + ","; got != want {
			t.Errorf("statuses = %q, want %q", got, want)
		}
	}
	if n := p.healthyInstances(); n != 2 {
		t.Errorf("healthy instances = %d, want 2", n)
	}
}

// TestBrokenInstanceReplaced covers a Go panic (proc_exit), a real trap
// (unreachable), and an infinite loop cut by the callback deadline.
func TestBrokenInstanceReplaced(t *testing.T) {
	testutil.CheckGoroutines(t)
	tests := []struct {
		name     string
		cfg      func(*Config)
		deadline bool
	}{
		{"go panic", func(c *Config) { c.PluginConfig = []byte("panic") }, false},
		{"go infinite loop", func(c *Config) { c.PluginConfig = []byte("loop"); c.CallbackTimeout = 50 * time.Millisecond }, true},
		{"unreachable", func(c *Config) { c.Module = minimalGuest(opUnreachable) }, false},
		{"wasm infinite loop", func(c *Config) { c.Module = minimalGuest(opLoopForever); c.CallbackTimeout = 20 * time.Millisecond }, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, _ := newTestPlugin(t, "", tc.cfg)
			for round := range 2 {
				c := p.NewHTTPContext(newStream())
				start := time.Now()
				_, err := c.OnRequestHeaders(0, true)
				if !errors.Is(err, ErrUnavailable) {
					t.Fatalf("round %d: err = %v, want ErrUnavailable", round, err)
				}
				if tc.deadline && !errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("round %d: err = %v, want DeadlineExceeded", round, err)
				}
				if d := time.Since(start); d > 2*time.Second {
					t.Errorf("round %d: the failing callback took %v", round, d)
				}
				// The stream's later callbacks fail fast; Done is harmless.
				if _, err := c.OnResponseHeaders(0, true); !errors.Is(err, ErrUnavailable) {
					t.Errorf("later callback err = %v", err)
				}
				_ = c.Done()
				waitFor(t, 20*time.Second, "the broken instance to be replaced", func() bool { return p.healthyInstances() == 2 })
			}
		})
	}
}

func TestMemoryLimit(t *testing.T) {
	testutil.CheckGoroutines(t)
	eng, err := NewEngine(context.Background(), EngineConfig{Cache: testCache, MemoryLimitPages: 512})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close(context.Background())
	p, _ := newTestPlugin(t, "grow", func(c *Config) { c.Engine = eng; c.PoolSize = 1 })
	c := p.NewHTTPContext(newStream())
	if _, err := c.OnRequestHeaders(0, true); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("64 MiB allocation under a 32 MiB limit: err = %v, want ErrUnavailable", err)
	}
	_ = c.Done()
	waitFor(t, 20*time.Second, "the instance to be replaced", func() bool { return p.healthyInstances() == 1 })
	if _, err := NewEngine(context.Background(), EngineConfig{MemoryLimitPages: 65537}); err == nil {
		t.Error("NewEngine accepted 65537 pages")
	}
}

// TestTrustedGuestOverrunBreaksInstance: without interruption a callback
// runs to its end, but one that overran the deadline still breaks and
// replaces its instance.
func TestTrustedGuestOverrunBreaksInstance(t *testing.T) {
	testutil.CheckGoroutines(t)
	eng, err := NewEngine(context.Background(), EngineConfig{Cache: testCache, TrustedGuests: true})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close(context.Background())
	p, _ := newTestPlugin(t, "slow", func(c *Config) { c.Engine = eng; c.PoolSize = 1; c.CallbackTimeout = time.Microsecond })
	c := p.NewHTTPContext(newStream())
	_, err = c.OnRequestHeaders(0, true)
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want ErrUnavailable and DeadlineExceeded", err)
	}
	_ = c.Done()
	waitFor(t, 20*time.Second, "the instance to be replaced", func() bool { return p.healthyInstances() == 1 })
}

func TestDeadlineAllowsSlowCallback(t *testing.T) {
	testutil.CheckGoroutines(t)
	p, _ := newTestPlugin(t, "slow", func(c *Config) { c.CallbackTimeout = 2 * time.Second })
	c := p.NewHTTPContext(newStream())
	defer c.Done()
	if _, err := c.OnRequestHeaders(0, true); err != nil {
		t.Fatalf("slow but in-deadline callback failed: %v", err)
	}
}

func TestCompileCacheAndPool(t *testing.T) {
	testutil.CheckGoroutines(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	eng, err := NewEngine(ctx, EngineConfig{Cache: testCache})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close(context.Background())
	share := func(c *Config) { c.Engine = eng; c.PoolSize = 3 }
	p1, _ := newTestPlugin(t, "shared", share)
	p2, _ := newTestPlugin(t, "shared", share)
	if n := eng.cachedModules(); n != 1 {
		t.Errorf("cached modules = %d, want 1 for two plugins of one module", n)
	}
	seen := map[*instance]bool{}
	for range 6 {
		c := p1.NewHTTPContext(newStream())
		seen[c.inst] = true
		if _, err := c.OnRequestHeaders(0, true); err != nil {
			t.Fatal(err)
		}
		_ = c.Done()
	}
	if len(seen) != 3 {
		t.Errorf("6 streams used %d instances, want all 3 (round robin)", len(seen))
	}
	c := p2.NewHTTPContext(newStream())
	if _, err := c.OnRequestHeaders(0, true); err != nil {
		t.Fatal(err)
	}
	_ = c.Done()
	if v, _, _ := eng.shared.get("vm", "count"); string(v) != "7" {
		t.Errorf("shared count across plugins of one vm_id = %q, want 7", v)
	}
	p1.Close()
	p2.Close()
	if n := eng.cachedModules(); n != 0 {
		t.Errorf("cached modules after Close = %d, want 0", n)
	}
	if c := p1.NewHTTPContext(newStream()); c.inst != nil {
		t.Error("closed plugin handed out an instance")
	}
}

func TestDoneRunsOnce(t *testing.T) {
	testutil.CheckGoroutines(t)
	p, _ := newTestPlugin(t, "done")
	c := p.NewHTTPContext(newStream())
	if _, err := c.OnRequestHeaders(0, true); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := c.Done(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.OnResponseHeaders(0, true); err == nil {
		t.Error("callback after Done succeeded")
	}
	// A context that never ran a callback is never created, so Done skips it.
	_ = p.NewHTTPContext(newStream()).Done()
	if v, _, _ := p.engine.shared.get("vm", "done"); string(v) != "1" {
		t.Errorf("proxy_on_done ran %q times, want 1", v)
	}
}

// BenchmarkNoopHeaders measures the host overhead of one stream through a
// filter that does nothing: context create, request and response headers,
// done/log/delete (six guest calls), with interruptible callbacks (the
// default) and with EngineConfig.TrustedGuests.
func BenchmarkNoopHeaders(b *testing.B) {
	for _, trusted := range []bool{false, true} {
		b.Run(fmt.Sprintf("trusted=%v", trusted), func(b *testing.B) {
			eng, err := NewEngine(context.Background(), EngineConfig{Cache: testCache, TrustedGuests: trusted})
			if err != nil {
				b.Fatal(err)
			}
			defer eng.Close(context.Background())
			p, _ := newTestPlugin(b, "noop", func(c *Config) { c.PoolSize = 4; c.Engine = eng })
			defer p.Close()
			s := newStream()
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					c := p.NewHTTPContext(s)
					if _, err := c.OnRequestHeaders(3, true); err != nil {
						b.Error(err)
						return
					}
					if _, err := c.OnResponseHeaders(2, true); err != nil {
						b.Error(err)
						return
					}
					_ = c.Done()
				}
			})
		})
	}
}
