package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
)

// benchEnv enables the harness smoke test, which builds meshd and the
// harness and spends about half a minute under load.
const benchEnv = "MESHD_BENCH"

// smokeTimeout bounds one -quick harness run (builds excluded): 3 scenarios
// x 2 targets x 1.5 s, plus start-up and shutdown.
const smokeTimeout = 3 * time.Minute

func TestMain(m *testing.M) { os.Exit(testutil.Main(m)) }

// TestHarnessQuick runs `bench -quick` against the real meshd and checks the
// JSON it writes: every scenario ran on both targets without errors, meshd's
// CPU and RSS were measured, and meshd's own stats show the load went through
// it.
func TestHarnessQuick(t *testing.T) {
	if os.Getenv(benchEnv) != "1" {
		t.Skip("set MESHD_BENCH=1 to run the whole-proxy benchmark harness in -quick mode")
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

	if rep.Generator == "" || rep.ClockTicks <= 0 || rep.ProxyRSSIdleMB <= 0 {
		t.Errorf("generator %q, clock %d, idle RSS %v MiB: want all set", rep.Generator, rep.ClockTicks, rep.ProxyRSSIdleMB)
	}
	if want := 2 * len(allScenarios); len(rep.Runs) != want {
		t.Fatalf("%d runs, want %d (every scenario on both targets, one round)", len(rep.Runs), want)
	}
	var viaMeshdGRPC, viaMeshdHTTP int64
	for _, r := range rep.Runs {
		if r.Requests <= 0 || r.Errors != 0 || r.RPS <= 0 || r.P99Ms < r.P50Ms {
			t.Errorf("%s via %s: requests %d errors %d rps %.0f p50 %v p99 %v", r.Scenario, r.Target, r.Requests, r.Errors, r.RPS, r.P50Ms, r.P99Ms)
		}
		if r.Target != targetMeshd {
			continue
		}
		if r.ProxyCPUPer100k == nil || *r.ProxyCPUPer100k <= 0 || r.ProxyRSSLoadedMB == nil || *r.ProxyRSSLoadedMB <= 0 {
			t.Errorf("%s via meshd: proxy CPU or RSS not measured: %+v", r.Scenario, r)
		}
		switch r.Scenario {
		case "h2c-get-16x32":
			viaMeshdHTTP += r.Requests
		default:
			viaMeshdGRPC += r.Requests
		}
	}
	// meshd counted warm-up requests too, so its totals are at least the
	// measured ones.
	for stat, atLeast := range map[string]int64{
		"cluster.grpc.upstream_rq_total": viaMeshdGRPC,
		"cluster.http.upstream_rq_total": viaMeshdHTTP,
	} {
		if got, ok := rep.MeshdStats[stat]; !ok || got < atLeast {
			t.Errorf("meshd %s = %d (present %v), want >= %d measured requests", stat, got, ok, atLeast)
		}
	}
	if len(rep.Ratios) != len(allScenarios) {
		t.Errorf("%d ratio rows, want %d", len(rep.Ratios), len(allScenarios))
	}
}
