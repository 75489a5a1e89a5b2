package main

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"os/exec"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
)

// Short runs keep these tests quick; they check the generators' mechanics,
// not performance.
const (
	testWarmup   = 100 * time.Millisecond
	testDuration = 400 * time.Millisecond
	// testRunTimeout bounds one generator run in tests.
	testRunTimeout = 30 * time.Second
)

// startTestBackend runs the backend subcommand's server in this process and
// stops it (by closing its stdin) when the test ends.
func startTestBackend(t *testing.T) target {
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
		return target{Name: "direct", GRPCAddr: g, HTTPAddr: h}
	case <-time.After(backendStartTimeout):
		t.Fatalf("backend not started within %v", backendStartTimeout)
	}
	return target{}
}

// smallScenarios are allScenarios' kinds at a concurrency a test machine
// handles under -race.
var smallScenarios = []scenario{
	{Name: "grpc-2x4", Kind: kindGRPCUnary, Conns: 2, Streams: 4},
	{Name: "grpc-1x1", Kind: kindGRPCUnary, Conns: 1, Streams: 1},
	{Name: "get-2x4", Kind: kindH2CGet, Conns: 2, Streams: 4},
}

// checkGenerator runs gen on every small scenario against the backend and
// checks what it reports.
func checkGenerator(t *testing.T, gen generator, tgt target) {
	for _, sc := range smallScenarios {
		t.Run(sc.Name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), testRunTimeout)
			defer cancel()
			calls := 0
			var measuredAt time.Time
			start := time.Now()
			res, err := gen.Run(ctx, sc, tgt, testWarmup, testDuration, func() { calls++; measuredAt = time.Now() })
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
			if res.P50Ms <= 0 || res.P99Ms < res.P50Ms {
				t.Errorf("p50 %vms p99 %vms: want 0 < p50 <= p99", res.P50Ms, res.P99Ms)
			}
		})
	}
}

func TestGoGenerator(t *testing.T) {
	testutil.CheckGoroutines(t)
	checkGenerator(t, goGenerator{}, startTestBackend(t))
}

func TestH2loadGenerator(t *testing.T) {
	path, err := exec.LookPath("h2load")
	if err != nil {
		t.Skip("h2load not installed (apt-get install nghttp2-client)")
	}
	testutil.CheckGoroutines(t)
	checkGenerator(t, h2loadGenerator{path: path, dir: t.TempDir()}, startTestBackend(t))
}

func TestGoGeneratorUnreachable(t *testing.T) {
	testutil.CheckGoroutines(t)
	// grpc-go keeps retrying a refused dial until the context ends.
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	// Port 1 on loopback: nothing listens there in a test environment.
	tgt := target{Name: "nowhere", GRPCAddr: "127.0.0.1:1", HTTPAddr: "127.0.0.1:1"}
	for _, sc := range []scenario{smallScenarios[0], smallScenarios[2]} {
		_, err := goGenerator{}.Run(ctx, sc, tgt, 0, testDuration, func() {})
		if err == nil {
			t.Errorf("%s: Run against a closed port succeeded", sc.Name)
		}
	}
}
