package hcm

import (
	"strings"
	"testing"
	"time"

	_ "meshd.dev/meshd/filters/localratelimit"
	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/internal/wasmbuild"
	"meshd.dev/meshd/proxy/http/header"
)

// cpuTime is the CPU time (user + system) the process has used so far, all
// goroutines and the GC included.
func cpuTime(tb testing.TB) time.Duration { return testutil.ProcessCPU(tb) }

// BenchmarkFilterCPU answers "what CPU does a filter add per request": the
// same bodiless request through the connection manager to a direct_response
// route (no upstream, so the filter chain is most of the work), with no
// filter before the router, the native local_ratelimit filter, a no-op WASM
// filter (SDK v0.24.0 defaults) and the WASM rate-limit filter
// (filters/ratelimit/guest, global bucket that never runs dry, so every
// request takes a token) as a RateLimitPolicy configures it (x-ratelimit-*
// headers on rejected responses only: Envoy's default for
// enable_x_ratelimit_headers) and, as wasm-ratelimit-allheaders, with the
// headers on every response (DRAFT_VERSION_03, like the native filter
// configured here). Each reports cpu-ns/op, the process CPU time per
// request (getrusage: every goroutine and the GC), and the filters also
// added-cpu-ns/op, their cpu-ns/op minus that of "none" measured in the same
// run. Run it serially (-cpu 1) with a fixed count, for example
//
//	go test -run '^$' -bench FilterCPU -benchtime 20000x -count 6 -cpu 1 ./proxy/http/hcm/
func BenchmarkFilterCPU(b *testing.B) {
	if testing.Short() {
		b.Skip("builds wasm guests")
	}
	noopWasm := wasmbuild.Build(b, "meshd.dev/meshd/test/wasm/guests/noop")
	rlWasm := wasmbuild.Build(b, "meshd.dev/meshd/filters/ratelimit/guest")
	b.Cleanup(func() { waitPluginsClosed(b) })
	native := `{"name":"envoy.filters.http.local_ratelimit","typed_config":{
		"@type":"type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
		"stat_prefix":"lrl","token_bucket":{"max_tokens":1000000000,"tokens_per_fill":1000000000,"fill_interval":"1s"},
		"filter_enabled":{"default_value":{"numerator":100}},"filter_enforced":{"default_value":{"numerator":100}},
		"enable_x_ratelimit_headers":"DRAFT_VERSION_03"}}`
	variants := []struct {
		name   string
		filter string // "" for none
	}{
		{"none", ""},
		{"native-ratelimit", native},
		{"wasm-noop", wasmFilter(noopWasm, "")},
		{"wasm-ratelimit", wasmFilter(rlWasm, `{"requests_per_unit":1000000000,"unit":"second","burst":1000000000,"key":"global"}`)},
		{"wasm-ratelimit-allheaders", wasmFilter(rlWasm, `{"requests_per_unit":1000000000,"unit":"second","burst":1000000000,"key":"global","enable_x_ratelimit_headers":"DRAFT_VERSION_03"}`)},
	}
	routes := `{"match":{"prefix":"/"},"direct_response":{"status":200}}`
	var baseline float64 // cpu-ns/op of "none"
	for _, v := range variants {
		b.Run(v.name, func(b *testing.B) {
			chain := []string{routerFilter}
			if v.filter != "" {
				chain = []string{v.filter, routerFilter}
			}
			e := newEnv(b, hcmJSON(routes, `"http_filters":[`+strings.Join(chain, ",")+`]`), "")
			// A callback can overrun its wall-clock deadline when the
			// machine is overloaded (the instance is then replaced and the
			// request gets 503): tolerate one in a thousand.
			failed := 0
			serve := func() {
				fs := newFakeStream("GET", "/", header.Make(0), nil)
				e.h.ServeStream(fs)
				fs.cancel()
				if r := fs.result(); r.status != 200 {
					if failed++; failed > 1+b.N/1000 {
						b.Fatalf("%d requests failed, the last with status %d", failed, r.status)
					}
				}
			}
			for range 100 { // warm up: pools, VM instances, lazily built state
				serve()
			}
			b.ReportAllocs()
			start := cpuTime(b)
			n := 0
			for b.Loop() {
				serve()
				n++
			}
			perOp := float64(cpuTime(b)-start) / float64(n)
			b.ReportMetric(perOp, "cpu-ns/op")
			if v.filter == "" {
				baseline = perOp
			} else if baseline > 0 {
				b.ReportMetric(perOp-baseline, "added-cpu-ns/op")
			}
		})
	}
}
