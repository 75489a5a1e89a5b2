package main

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"os/exec"
	"slices"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
)

// Short runs keep these tests quick; they check the generators' mechanics,
// not performance. A request counts only when it starts and ends inside
// the window, so the window is long enough for a single-stream scenario to
// complete one under -race on a loaded 2-core machine (at 400 ms,
// grpc-1x1 and grpc-rate once counted none).
const (
	testWarmup   = 100 * time.Millisecond
	testDuration = time.Second
	// testRunTimeout bounds one generator run in tests.
	testRunTimeout = 30 * time.Second
)

// startTestBackend runs the backend subcommand's server in this process and
// stops it (by closing its stdin) when the test ends.
func startTestBackend(t *testing.T) *target {
	t.Helper()
	stdinR, stdinW := io.Pipe()
	stdoutR, stdoutW := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- runBackend(stdinR, stdoutW, slog.New(slog.DiscardHandler))
		stdoutW.Close()
	}()
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdoutR)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		_, _ = io.Copy(io.Discard, stdoutR)
	}()
	t.Cleanup(func() {
		stdinW.Close()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("backend: %v", err)
			}
		case <-time.After(backendStopTimeout + time.Second):
			t.Errorf("backend did not stop within %v of stdin closing", backendStopTimeout+time.Second)
		}
	})
	select {
	case line, ok := <-lines:
		if !ok {
			t.Fatal("backend printed nothing")
		}
		g, h, err := parseBackendLine(line)
		if err != nil {
			t.Fatal(err)
		}
		return &target{targetSpec: targetSpec{Name: targetDirect}, GRPCAddr: g, HTTPAddr: h}
	case <-time.After(backendStartTimeout):
		t.Fatalf("backend not started within %v", backendStartTimeout)
	}
	return nil
}

// smallScenarios are allScenarios' kinds at a concurrency a test machine
// handles under -race.
var smallScenarios = []scenario{
	{Name: "grpc-2x4", Kind: kindGRPCUnary, Conns: 2, Streams: 4},
	{Name: "grpc-1x1", Kind: kindGRPCUnary, Conns: 1, Streams: 1},
	{Name: "get-2x4", Kind: kindH2CGet, Conns: 2, Streams: 4},
	{Name: "grpc-rate", Kind: kindGRPCUnary, Conns: 1, Streams: 2, Rate: 200},
}

// streamScenarios are the streaming kind, which only the built-in
// generator drives.
var streamScenarios = []scenario{
	{Name: "stream-2x1", Kind: kindGRPCStream, Conns: 2, Streams: 1},
	{Name: "stream-2x8", Kind: kindGRPCStream, Conns: 2, Streams: 8},
}

// checkGenerator runs gen on every small scenario against the backend and
// checks what it reports.
func checkGenerator(t *testing.T, gen generator, tgt *target, scenarios []scenario) {
	for _, sc := range scenarios {
		t.Run(sc.Name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), testRunTimeout)
			defer cancel()
			calls := 0
			var measuredAt time.Time
			start := time.Now()
			res, err := gen.Run(ctx, sc, tgt.addr(sc), testWarmup, testDuration, func() { calls++; measuredAt = time.Now() })
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if calls != 1 {
				t.Fatalf("measuring called %d times, want once", calls)
			}
			if lag := measuredAt.Sub(start); lag < testWarmup {
				t.Errorf("measuring called %v after start, before the %v warm-up ended", lag, testWarmup)
			}
			if res.Requests <= 0 || res.Errors != 0 {
				t.Fatalf("requests %d, errors %d; want some requests and no errors", res.Requests, res.Errors)
			}
			if res.Seconds < testDuration.Seconds()*0.9 || res.Seconds > testDuration.Seconds()*3 {
				t.Errorf("window %.3fs, want about %v", res.Seconds, testDuration)
			}
			if res.RPS <= 0 {
				t.Errorf("rps %v, want > 0", res.RPS)
			}
			if res.P50Ms <= 0 || res.P99Ms < res.P50Ms || res.P999Ms < res.P99Ms {
				t.Errorf("p50 %vms p99 %vms p99.9 %vms: want 0 < p50 <= p99 <= p99.9", res.P50Ms, res.P99Ms, res.P999Ms)
			}
			// A rate far below what the backend serves holds: allow for
			// a loaded machine below it, never far above.
			if sc.Rate > 0 && (res.RPS > float64(sc.Rate)*1.2 || res.RPS < float64(sc.Rate)*0.3) {
				t.Errorf("rps %.0f at a fixed rate of %d", res.RPS, sc.Rate)
			}
		})
	}
}

func TestGoGenerator(t *testing.T) {
	testutil.CheckGoroutines(t)
	checkGenerator(t, goGenerator{}, startTestBackend(t), append(slices.Clone(smallScenarios), streamScenarios...))
}

func TestH2loadGenerator(t *testing.T) {
	path, err := exec.LookPath("h2load")
	if err != nil {
		t.Skip("h2load not installed (apt-get install nghttp2-client)")
	}
	testutil.CheckGoroutines(t)
	checkGenerator(t, h2loadGenerator{path: path, dir: t.TempDir()}, startTestBackend(t), smallScenarios)
}

func TestGoGeneratorUnreachable(t *testing.T) {
	testutil.CheckGoroutines(t)
	// grpc-go keeps retrying a refused dial until the context ends.
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	// Port 1 on loopback: nothing listens there in a test environment.
	for _, sc := range []scenario{smallScenarios[0], smallScenarios[2], streamScenarios[0]} {
		_, err := goGenerator{}.Run(ctx, sc, "127.0.0.1:1", 0, testDuration, func() {})
		if err == nil {
			t.Errorf("%s: Run against a closed port succeeded", sc.Name)
		}
	}
}
