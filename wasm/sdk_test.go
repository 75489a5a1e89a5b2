package wasm

import (
	"context"
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

func TestSDKHeadersGuest(t *testing.T) {
	testutil.CheckGoroutines(t)
	mod := sdkGuest(t, "meshd.dev/meshd/test/wasm/guests/headers")
	p, _ := newTestPlugin(t, `{"echo": ["x-request-id"], "add": {"x-guest": "headers"}}`, func(c *Config) { c.Module = mod })
	s := newStream([2]string{":path", "/"}, [2]string{"x-request-id", "r1"})
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
	for name, want := range map[string]string{"x-echo-x-request-id": "r1", "x-guest": "headers"} {
		if got := s.header(MapResponseHeaders, name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
}

// TestSDKRateLimitGuestAcrossInstances drives the rate-limit guest from 30
// concurrent streams over 4 instances: the bucket lives in shared data, so
// exactly the burst is admitted however the streams spread.
func TestSDKRateLimitGuestAcrossInstances(t *testing.T) {
	testutil.CheckGoroutines(t)
	mod := sdkGuest(t, "meshd.dev/meshd/filters/ratelimit/guest")
	p, _ := newTestPlugin(t, `{"requests_per_unit": 10, "unit": "minute", "burst": 10, "key": "global"}`,
		func(c *Config) { c.Module = mod; c.PoolSize = 4 })
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
			p, _ := newTestPlugin(b, `{"requests_per_unit": 1000000000, "unit": "second", "burst": 1000000000, "key": "global"}`,
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
		{"meshd.dev/meshd/filters/ratelimit/guest", `{"requests_per_unit": 100}`, cbRequestHeaders | cbResponseHeaders | cbDelete},
		{"meshd.dev/meshd/test/wasm/guests/headers", `{}`, cbRequestHeaders | cbResponseHeaders | cbDelete},
	}
	for _, tc := range tests {
		t.Run(tc.pkg[strings.LastIndex(tc.pkg, "/")+1:], func(t *testing.T) {
			mod := sdkGuest(t, tc.pkg)
			p, _ := newTestPlugin(t, tc.config, func(c *Config) { c.Module = mod; c.PoolSize = 1 })
			c := p.NewHTTPContext(newStream([2]string{":path", "/"}))
			if _, err := c.OnRequestHeaders(1, true); err != nil {
				t.Fatal(err)
			}
			if c.mask != tc.want {
				t.Errorf("mask = %#x, want %#x", c.mask, tc.want)
			}
			if err := c.Done(); err != nil {
				t.Fatal(err)
			}
		})
	}
}
