package wasm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/internal/wasmbuild"
)

// sdkGuest builds (cached by source) a guest written with proxy-wasm Go SDK
// v0.24.0 and returns its bytes.
func sdkGuest(t testing.TB, pkg string) []byte {
	t.Helper()
	b, err := os.ReadFile(wasmbuild.Build(t, pkg))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// abis runs f once on the standard proxy-wasm ABI (as with any other host:
// the guest's meshd_* exports ignored) and once on meshd's fast ABI.
func abis(t *testing.T, f func(t *testing.T, standard bool)) {
	for _, standard := range []bool{true, false} {
		t.Run(map[bool]string{true: "standard", false: "fast"}[standard], func(t *testing.T) { f(t, standard) })
	}
}

func TestSDKHeadersGuest(t *testing.T) {
	testutil.CheckGoroutines(t)
	mod := sdkGuest(t, "meshd.dev/meshd/test/wasm/guests/headers")
	// A request id longer than the guest's scratch buffer comes back
	// through proxy_on_memory_allocate on the fast ABI too.
	long := strings.Repeat("r", 3*4096)
	abis(t, func(t *testing.T, standard bool) {
		p, _ := newTestPlugin(t, `{"echo": ["x-request-id"], "add": {"x-guest": "headers"}}`,
			func(c *Config) { c.Module = mod; c.PoolSize = 1; c.standardABI = standard })
		if got := p.instances[0].scratchCap > 0; got == standard {
			t.Fatalf("scratch buffer in use = %v on the %s ABI", got, map[bool]string{true: "standard", false: "fast"}[standard])
		}
		for _, id := range []string{"r1", long, "r3"} {
			s := newStream([2]string{":path", "/"}, [2]string{"x-request-id", id})
			c := p.NewHTTPContext(s)
			if act, err := c.OnRequestHeaders(2, true); err != nil || act != Continue {
				t.Fatalf("OnRequestHeaders = %v, %v", act, err)
			}
			if act, err := c.OnResponseHeaders(0, true); err != nil || act != Continue {
				t.Fatalf("OnResponseHeaders = %v, %v", act, err)
			}
			if err := c.Done(); err != nil {
				t.Fatal(err)
			}
			for name, want := range map[string]string{"x-echo-x-request-id": id, "x-guest": "headers"} {
				if got := s.header(MapResponseHeaders, name); got != want {
					t.Errorf("%s = %.20q (%d bytes), want %.20q (%d bytes)", name, got, len(got), want, len(want))
				}
			}
		}
	})
}

// TestSDKContextTable drives the guest SDK's context table (the wasmbuild
// overlay's contexts.go) through growth and deletions in scrambled order:
// 300 HTTP contexts alive at once on one instance (the table starts with 64
// slots), every third one ended, the rest answering their response
// headers, then all ended and new streams created. A lookup the table got
// wrong would panic in the guest ("invalid context") and break the
// instance.
func TestSDKContextTable(t *testing.T) {
	testutil.CheckGoroutines(t)
	mod := sdkGuest(t, "meshd.dev/meshd/test/wasm/guests/headers")
	abis(t, func(t *testing.T, standard bool) {
		p, _ := newTestPlugin(t, `{"echo": ["x-request-id"]}`,
			func(c *Config) { c.Module = mod; c.PoolSize = 1; c.standardABI = standard })
		const n = 300
		open := make([]*HTTPContext, n)
		streams := make([]*fakeStream, n)
		for k := range open {
			streams[k] = newStream([2]string{":path", "/"}, [2]string{"x-request-id", fmt.Sprint("r", k)})
			open[k] = p.NewHTTPContext(streams[k])
			if _, err := open[k].OnRequestHeaders(2, true); err != nil {
				t.Fatalf("stream %d: OnRequestHeaders: %v", k, err)
			}
		}
		for k := 0; k < n; k += 3 {
			if err := open[k].Done(); err != nil {
				t.Fatalf("stream %d: Done: %v", k, err)
			}
		}
		for k := range open {
			if k%3 == 0 {
				continue
			}
			if _, err := open[k].OnResponseHeaders(0, true); err != nil {
				t.Fatalf("stream %d: OnResponseHeaders: %v", k, err)
			}
			if got, want := streams[k].header(MapResponseHeaders, "x-echo-x-request-id"), fmt.Sprint("r", k); got != want {
				t.Fatalf("stream %d: echoed %q, want %q (another stream's context answered)", k, got, want)
			}
		}
		for k := n - 1; k >= 0; k-- {
			if err := open[k].Done(); err != nil {
				t.Fatalf("stream %d: Done: %v", k, err)
			}
		}
		for k := range 10 {
			c := p.NewHTTPContext(newStream([2]string{":path", "/"}))
			if _, err := c.OnRequestHeaders(1, true); err != nil {
				t.Fatalf("new stream %d: %v", k, err)
			}
			if err := c.Done(); err != nil {
				t.Fatal(err)
			}
		}
		// A root callback delivers any deferred deletes.
		inst := p.instances[0]
		inst.rootCallback(inst.fns.tick, "proxy_on_tick", rootContextID)
		if inst.isBroken() {
			t.Fatal("the instance broke")
		}
	})
}

// TestFastABIDeferredDeletes checks that finished streams' contexts are
// deleted in batches of at most maxDeferredDeletes, that a root callback
// first delivers the pending ones, and that the guest accepted every batch
// (a context id it did not know would have trapped and broken the VM).
func TestFastABIDeferredDeletes(t *testing.T) {
	testutil.CheckGoroutines(t)
	mod := sdkGuest(t, "meshd.dev/meshd/filters/ratelimit/guest")
	p, _ := newTestPlugin(t, `{"requests_per_unit": 1000000, "key": "global"}`, func(c *Config) { c.Module = mod; c.PoolSize = 1 })
	inst := p.instances[0]
	pending := func() int {
		inst.mu.Lock()
		defer inst.mu.Unlock()
		return len(inst.deletes)
	}
	for n := 1; n <= 2*maxDeferredDeletes+1; n++ {
		c := p.NewHTTPContext(newStream([2]string{":path", "/"}))
		if _, err := c.OnRequestHeaders(1, true); err != nil {
			t.Fatal(err)
		}
		if err := c.Done(); err != nil {
			t.Fatal(err)
		}
		if got, want := pending(), n%maxDeferredDeletes; got != want {
			t.Fatalf("after %d streams %d deletes pending, want %d", n, got, want)
		}
	}
	inst.rootCallback(inst.fns.tick, "proxy_on_tick", rootContextID)
	if got := pending(); got != 0 {
		t.Fatalf("%d deletes pending after a root callback, want 0", got)
	}
	if inst.isBroken() || p.healthyInstances() != 1 {
		t.Fatal("the instance broke delivering deferred deletes")
	}
}

// TestSDKRateLimitGuestAcrossInstances drives the rate-limit guest from 30
// concurrent streams over 4 instances: the bucket lives in shared data, so
// exactly the burst is admitted however the streams spread.
func TestSDKRateLimitGuestAcrossInstances(t *testing.T) {
	testutil.CheckGoroutines(t)
	mod := sdkGuest(t, "meshd.dev/meshd/filters/ratelimit/guest")
	abis(t, func(t *testing.T, standard bool) { rateLimitAcrossInstances(t, mod, standard) })
}

func rateLimitAcrossInstances(t *testing.T, mod []byte, standard bool) {
	p, _ := newTestPlugin(t, `{"requests_per_unit": 10, "unit": "minute", "burst": 10, "key": "global"}`,
		func(c *Config) { c.Module = mod; c.PoolSize = 4; c.standardABI = standard })
	var admitted, limited atomic.Int32
	var wg sync.WaitGroup
	for range 30 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := newStream([2]string{":method", "GET"}, [2]string{":path", "/"})
			c := p.NewHTTPContext(s)
			defer c.Done()
			act, err := c.OnRequestHeaders(2, true)
			switch {
			case err != nil:
				t.Error(err)
			case act == Continue:
				admitted.Add(1)
			case s.local != nil && s.local.status == 429:
				limited.Add(1)
			default:
				t.Errorf("paused without a 429: %+v", s.local)
			}
		}()
	}
	wg.Wait()
	// 10 per minute refills one token every 6 s: at most one more admission.
	if a, l := admitted.Load(), limited.Load(); a < 10 || a > 11 || a+l != 30 {
		t.Errorf("admitted %d, limited %d; want 10 (or 11) admitted of 30", a, l)
	}
}

// BenchmarkSDKRateLimitGuest is the host-side cost of one admitted stream
// through the rate-limit guest (request and response headers, done).
func BenchmarkSDKRateLimitGuest(b *testing.B) {
	mod := sdkGuest(b, "meshd.dev/meshd/filters/ratelimit/guest")
	for _, trusted := range []bool{false, true} {
		b.Run(map[bool]string{false: "interruptible", true: "trusted"}[trusted], func(b *testing.B) {
			eng, err := NewEngine(context.Background(), EngineConfig{Cache: testCache, TrustedGuests: trusted})
			if err != nil {
				b.Fatal(err)
			}
			defer eng.Close(context.Background())
			p, _ := newTestPlugin(b, `{"requests_per_unit": 1000000000, "unit": "second", "burst": 1000000000, "key": "global", "enable_x_ratelimit_headers": "DRAFT_VERSION_03"}`,
				func(c *Config) { c.Module = mod; c.PoolSize = 4; c.Engine = eng })
			defer p.Close()
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					s := newStream([2]string{":method", "GET"}, [2]string{":path", "/"})
					c := p.NewHTTPContext(s)
					if act, err := c.OnRequestHeaders(2, true); err != nil || act != Continue {
						b.Errorf("OnRequestHeaders = %v, %v", act, err)
						return
					}
					if _, err := c.OnResponseHeaders(0, true); err != nil {
						b.Error(err)
						return
					}
					_ = c.Done()
				}
			})
		})
	}
}

// TestSDKCallbackMask checks meshd_on_context_create's report of the
// callbacks each SDK guest's HTTP context implements, and that the host
// then runs only those (plus proxy_on_delete).
func TestSDKCallbackMask(t *testing.T) {
	tests := []struct {
		pkg, config string
		want        uint32
	}{
		{"meshd.dev/meshd/test/wasm/guests/noop", "", cbDelete},
		{"meshd.dev/meshd/filters/ratelimit/guest", `{"requests_per_unit": 100}`, cbRequestHeaders | cbDelete},
		{"meshd.dev/meshd/filters/ratelimit/guest", `{"requests_per_unit": 100, "enable_x_ratelimit_headers": "DRAFT_VERSION_03"}`, cbRequestHeaders | cbResponseHeaders | cbDelete},
		{"meshd.dev/meshd/test/wasm/guests/headers", `{}`, cbRequestHeaders | cbResponseHeaders | cbDelete},
	}
	for _, tc := range tests {
		t.Run(tc.pkg[strings.LastIndex(tc.pkg, "/")+1:]+tc.config, func(t *testing.T) {
			mod := sdkGuest(t, tc.pkg)
			p, _ := newTestPlugin(t, tc.config, func(c *Config) { c.Module = mod; c.PoolSize = 1 })
			c := p.NewHTTPContext(newStream([2]string{":path", "/"}))
			if _, err := c.OnRequestHeaders(1, true); err != nil {
				t.Fatal(err)
			}
			if c.mask != tc.want {
				t.Errorf("mask = %#x, want %#x", c.mask, tc.want)
			}
			// None of these guests has body, trailer or end callbacks.
			if got := c.BodyCallbacks(); got != (StreamCallbacks{}) {
				t.Errorf("BodyCallbacks = %+v, want none", got)
			}
			if err := c.Done(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// BenchmarkSDKGuestABI is one admitted stream (request and response
// headers, done) through the no-op and the rate-limit SDK guests on one
// instance, on the standard ABI and on meshd's fast ABI. cpu-ns/op is the
// process CPU time (getrusage) per stream, so the guest's work, the host's
// and the GC all count. Run it serially with a fixed count:
//
//	go test -run '^$' -bench SDKGuestABI -benchtime 20000x -count 6 -cpu 1 ./wasm/
func BenchmarkSDKGuestABI(b *testing.B) {
	guests := []struct{ name, pkg, config string }{
		{"noop", "meshd.dev/meshd/test/wasm/guests/noop", ""},
		{"ratelimit", "meshd.dev/meshd/filters/ratelimit/guest", `{"requests_per_unit": 1000000000, "unit": "second", "burst": 1000000000, "key": "global", "enable_x_ratelimit_headers": "DRAFT_VERSION_03"}`},
	}
	for _, g := range guests {
		mod := sdkGuest(b, g.pkg)
		for _, standard := range []bool{true, false} {
			b.Run(g.name+"/"+map[bool]string{true: "standard", false: "fast"}[standard], func(b *testing.B) {
				p, _ := newTestPlugin(b, g.config, func(c *Config) { c.Module = mod; c.PoolSize = 2; c.standardABI = standard })
				defer p.Close()
				// A callback can overrun its wall-clock deadline on an
				// overloaded machine (its instance is then replaced):
				// tolerate one in a thousand, like BenchmarkFilterCPU.
				failed := 0
				stream := func() {
					s := newStream([2]string{":method", "GET"}, [2]string{":path", "/"})
					c := p.NewHTTPContext(s)
					defer c.Done()
					act, err := c.OnRequestHeaders(2, true)
					if err == nil {
						_, err = c.OnResponseHeaders(0, true)
					}
					switch {
					case errors.Is(err, ErrUnavailable):
						if failed++; failed > 1+b.N/1000 {
							b.Fatalf("%d streams failed, the last with %v", failed, err)
						}
					case err != nil || act != Continue:
						b.Fatalf("stream = %v, %v", act, err)
					}
				}
				for range 100 {
					stream()
				}
				b.ReportAllocs()
				start, n := testutil.ProcessCPU(b), 0
				for b.Loop() {
					stream()
					n++
				}
				b.ReportMetric(float64(testutil.ProcessCPU(b)-start)/float64(n), "cpu-ns/op")
			})
		}
	}
}
