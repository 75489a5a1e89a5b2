package e2e

import (
	"io"
	"math"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
)

// The limit and the load of the rate-limit accuracy tests, the same for
// the native and the WASM filter: 100 requests per second with a burst of
// 100, offered 300 per second by 3 clients for 10 s.
const (
	accuracyRate     = 100 // the limit, req/s
	accuracyBurst    = 100
	accuracyClients  = 3
	accuracyPerSec   = 100 // per client
	accuracyDuration = 10 * time.Second
)

// localRateLimitFilter limits to accuracyRate requests per second (10
// tokens every 100 ms) with a burst of accuracyBurst, enforced on every
// request.
const localRateLimitFilter = `          - name: envoy.filters.http.local_ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: http_local_rate_limiter
              token_bucket: { max_tokens: 100, tokens_per_fill: 10, fill_interval: 0.1s }
              filter_enabled: { default_value: { numerator: 100, denominator: HUNDRED } }
              filter_enforced: { default_value: { numerator: 100, denominator: HUNDRED } }
              enable_x_ratelimit_headers: DRAFT_VERSION_03
`

// TestLocalRateLimitAccuracy (issue 6, acceptance 2, native filter): see
// checkRateLimitAccuracy.
func TestLocalRateLimitAccuracy(t *testing.T) {
	testutil.CheckGoroutines(t)
	backend := testutil.StartEchoBackend(t)
	sc := testutil.StartSidecar(t, withFilters(t, backend.Addr, localRateLimitFilter))
	checkRateLimitAccuracy(t, sc, "http_local_rate_limiter.http_local_rate_limit.rate_limited")
}

// checkRateLimitAccuracy offers accuracyClients × accuracyPerSec req/s for
// accuracyDuration to sc, whose listener limits to accuracyRate req/s
// with a burst of accuracyBurst: the admitted count must be the burst plus
// the rate times the run's length, within ±5% of rate × duration (the
// 1000 of a 10 s run); every other request gets 429, counted in the
// sidecar's stat limitedStat. A machine too loaded to offer 80% of the
// load fails the test, or skips it under the race detector.
func checkRateLimitAccuracy(t *testing.T, sc *testutil.Sidecar, limitedStat string) {
	t.Helper()
	url := "http://" + sc.ListenerAddr(t, testutil.DefaultListenerName) + "/echo"
	limitedBefore := sc.Stats(t)[limitedStat]
	var ok, limited, other atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range accuracyClients {
		wg.Go(func() {
			client := http1Client()
			defer client.CloseIdleConnections()
			tick := time.NewTicker(time.Second / accuracyPerSec)
			defer tick.Stop()
			for time.Since(start) < accuracyDuration {
				<-tick.C
				resp, err := client.Get(url)
				if err != nil {
					other.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				switch resp.StatusCode {
				case http.StatusOK:
					ok.Add(1)
				case http.StatusTooManyRequests:
					limited.Add(1)
				default:
					other.Add(1)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	offered := ok.Load() + limited.Load() + other.Load()
	want := accuracyBurst + accuracyRate*elapsed.Seconds()
	tol := 0.05 * accuracyRate * accuracyDuration.Seconds()
	t.Logf("offered %d in %v (%.0f req/s): admitted %d, limited %d, other %d; expected admitted %.0f ± %.0f",
		offered, elapsed.Round(time.Millisecond), float64(offered)/elapsed.Seconds(), ok.Load(), limited.Load(), other.Load(), want, tol)
	if other.Load() != 0 {
		t.Errorf("%d requests failed or got another status", other.Load())
	}
	if min := 0.8 * accuracyClients * accuracyPerSec * accuracyDuration.Seconds(); float64(offered) < min {
		if raceEnabled {
			t.Skipf("offered only %d requests (want ≥ %.0f) under the race detector; the machine is too slow for this test", offered, min)
		}
		t.Fatalf("offered only %d requests (want ≥ %.0f); the machine is too slow for this test", offered, min)
	}
	if math.Abs(float64(ok.Load())-want) > tol {
		t.Errorf("admitted %d, want %.0f ± %.0f", ok.Load(), want, tol)
	}
	if got := sc.Stats(t)[limitedStat] - limitedBefore; got != limited.Load() {
		t.Errorf("%s = %d, want %d (the 429s the clients saw)", limitedStat, got, limited.Load())
	}
}
