package e2e

import (
	"io"
	"math"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
)

// localRateLimitFilter limits to 100 requests per second (10 tokens every
// 100 ms) with a burst of 100, enforced on every request.
const localRateLimitFilter = `          - name: envoy.filters.http.local_ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: http_local_rate_limiter
              token_bucket: { max_tokens: 100, tokens_per_fill: 10, fill_interval: 0.1s }
              filter_enabled: { default_value: { numerator: 100, denominator: HUNDRED } }
              filter_enforced: { default_value: { numerator: 100, denominator: HUNDRED } }
              enable_x_ratelimit_headers: DRAFT_VERSION_03
`

// TestLocalRateLimitAccuracy offers 300 req/s from 3 clients for 5 s to a
// sidecar limiting to 100 req/s with a burst of 100: the admitted count must
// be 100 per second of the run plus the burst, within ±5% of the 500.
func TestLocalRateLimitAccuracy(t *testing.T) {
	testutil.CheckGoroutines(t)
	const (
		clients  = 3
		perSec   = 100 // per client
		duration = 5 * time.Second
		rate     = 100 // the limit, req/s
		burst    = 100
	)
	backend := testutil.StartEchoBackend(t)
	bootstrap := testutil.MustBootstrap(t, testutil.BootstrapParams{BackendAddr: backend.Addr, UpstreamProtocol: testutil.UpstreamHTTP1})
	const filtersLine = "          http_filters:\n"
	if !strings.Contains(bootstrap, filtersLine) {
		t.Fatalf("bootstrap has no http_filters line:\n%s", bootstrap)
	}
	bootstrap = strings.Replace(bootstrap, filtersLine, filtersLine+localRateLimitFilter, 1)
	sc := testutil.StartSidecar(t, bootstrap)
	url := "http://" + sc.ListenerAddr(t, testutil.DefaultListenerName) + "/echo"

	var ok, limited, other atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := http1Client()
			defer client.CloseIdleConnections()
			tick := time.NewTicker(time.Second / perSec)
			defer tick.Stop()
			for time.Since(start) < duration {
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
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	offered := ok.Load() + limited.Load() + other.Load()
	want := float64(burst) + rate*elapsed.Seconds()
	t.Logf("offered %d in %v (%.0f req/s): admitted %d, limited %d, other %d; expected admitted %.0f",
		offered, elapsed.Round(time.Millisecond), float64(offered)/elapsed.Seconds(), ok.Load(), limited.Load(), other.Load(), want)
	if other.Load() != 0 {
		t.Errorf("%d requests failed or got another status", other.Load())
	}
	if float64(offered) < 0.8*clients*perSec*duration.Seconds() {
		t.Fatalf("offered only %d requests; the machine is too slow for this test", offered)
	}
	if tol := 0.05 * rate * duration.Seconds(); math.Abs(float64(ok.Load())-want) > tol {
		t.Errorf("admitted %d, want %.0f ± %.0f", ok.Load(), want, tol)
	}
	st := sc.Stats(t)
	if got := st["http_local_rate_limiter.http_local_rate_limit.rate_limited"]; got != limited.Load() {
		t.Errorf("http_local_rate_limiter.http_local_rate_limit.rate_limited = %d, want %d", got, limited.Load())
	}
}
