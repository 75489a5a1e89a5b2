package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
)

// benchEnv enables the harness smoke test, which builds meshd and the
// harness and spends about half a minute under load.
const benchEnv = "MESHD_BENCH"

// smokeTimeout bounds one -quick harness run (builds excluded): about 45
// runs of 1.5 s, the idle scenario's connections, start-up and shutdown of
// nine targets.
const smokeTimeout = 6 * time.Minute

func TestMain(m *testing.M) { os.Exit(testutil.Main(m)) }

// TestHarnessQuick runs `bench -quick` against the real meshd and checks the
// JSON it writes: every scenario ran on every target it applies to without
// errors, the proxies' CPU and RSS were measured, meshd's own stats show the
// load went through each meshd target over the protocol it names, the
// tracing target's spans arrived, and the ratios to the best peer are there
// when a peer ran.
func TestHarnessQuick(t *testing.T) {
	if os.Getenv(benchEnv) != "1" {
		t.Skip("set MESHD_BENCH=1 to run the side-by-side benchmark harness in -quick mode")
	}
	meshd := testutil.BuildMeshd(t)
	harness := testutil.BuildGoBinary(t, "./test/bench")
	out := t.TempDir()

	ctx, cancel := context.WithTimeout(t.Context(), smokeTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, harness, "-quick", "-meshd", meshd, "-out", out)
	cmd.WaitDelay = 5 * time.Second
	output, err := cmd.CombinedOutput()
	t.Logf("harness output:\n%s", output)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	files, err := filepath.Glob(filepath.Join(out, "bench-*.json"))
	if err != nil || len(files) != 1 {
		t.Fatalf("results files %v (%v), want exactly one", files, err)
	}
	data, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	var rep report
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatalf("decode %s: %v", files[0], err)
	}

	if rep.Generator == "" || rep.ClockTicks <= 0 {
		t.Errorf("generator %q, clock %d: want both set", rep.Generator, rep.ClockTicks)
	}
	ran := make(map[string]targetInfo)
	for _, ti := range rep.Targets {
		ran[ti.Name] = ti
		if ti.Processes > 0 && ti.RSSIdleMB <= 0 {
			t.Errorf("%s: idle RSS not measured", ti.Name)
		}
	}
	for _, spec := range allTargets {
		if _, ok := ran[spec.Name]; !ok && rep.Skipped[spec.Name] == "" {
			t.Errorf("target %s neither ran nor was skipped with a reason", spec.Name)
		}
	}
	wantRuns := 0
	for _, s := range allScenarios {
		for _, ti := range rep.Targets {
			if (!ti.Variant || s.Variants) && (s.Kind != kindIdle || ti.Processes > 0) {
				wantRuns++
			}
		}
	}
	if len(rep.Runs) != wantRuns {
		t.Fatalf("%d runs, want %d (every scenario on every target it applies to, one round)", len(rep.Runs), wantRuns)
	}
	kind := make(map[string]string)
	for _, s := range allScenarios {
		kind[s.Name] = s.Kind
	}
	// target -> successful requests that were each one HTTP request (a
	// streaming "request" is one message exchange on a long-lived stream)
	measured := make(map[string]int64)
	for _, r := range rep.Runs {
		if r.Requests <= 0 || r.Errors != 0 || r.RPS <= 0 || r.P99Ms < r.P50Ms || r.P999Ms < r.P99Ms {
			t.Errorf("%s via %s: requests %d errors %d rps %.0f p50 %v p99 %v p99.9 %v", r.Scenario, r.Target, r.Requests, r.Errors, r.RPS, r.P50Ms, r.P99Ms, r.P999Ms)
		}
		if kind[r.Scenario] != kindGRPCStream {
			measured[r.Target] += r.Requests
		}
		if ran[r.Target].Processes == 0 {
			continue
		}
		// CPU may be 0 ticks in a 1 s window at 1x1 rates; it must be
		// measured, not positive.
		if r.ProxyCPUPer100k == nil || *r.ProxyCPUPer100k < 0 || r.ProxyRSSLoadedMB == nil || *r.ProxyRSSLoadedMB <= 0 {
			t.Errorf("%s via %s: proxy CPU or RSS not measured: %+v", r.Scenario, r.Target, r)
		}
		if strings.HasPrefix(r.Scenario, "idle") && (r.IdleConnKiB == nil || *r.IdleConnKiB <= 0) {
			t.Errorf("%s via %s: memory per idle connection not measured", r.Scenario, r.Target)
		}
	}
	// Each meshd target's entry sidecar forwarded at least the measured
	// requests (its totals include warm-up) on its two clusters.
	for name, ti := range ran {
		if !strings.HasPrefix(name, "meshd") {
			continue
		}
		var upstream int64
		for _, c := range []string{"grpc", "http"} {
			upstream += ti.Stats[name+":cluster."+c+".upstream_rq_total"]
		}
		if upstream < measured[name] {
			t.Errorf("%s: upstream_rq_total %d < %d measured requests; stats %v", name, upstream, measured[name], ti.Stats)
		}
	}
	if ti, ok := ran[targetH3]; ok && ti.Stats[targetH3+":cluster.grpc.upstream_cx_http3_total"] == 0 {
		t.Errorf("%s: no HTTP/3 upstream connection; stats %v", targetH3, ti.Stats)
	}
	if _, ok := ran[targetTrace]; ok && rep.TraceSpans == 0 {
		t.Errorf("%s ran but the OTLP receiver got no spans", targetTrace)
	}
	if len(rep.Skipped) < 2 && len(rep.Ratios) == 0 {
		t.Errorf("a peer ran but there are no ratios to the best peer")
	}
}
