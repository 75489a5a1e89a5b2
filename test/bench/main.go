// Command bench is meshd's whole-proxy load harness: in one run it measures
// meshd sidecars (one, two with mTLS, and feature variants), the peer
// proxies nghttpx and HAProxy, and a direct connection to the same backend,
// by the method in test/bench/README.md (each proxy pinned to one core with
// one worker, load generator and backend on another, interleaved runs,
// proxy CPU-seconds per 100k requests from /proc), and writes the table,
// JSON and PNG charts.
//
// Usage (from the module root):
//
//	go run ./test/bench [-duration 10s] [-warmup 2s] [-rounds 3] [-scenarios LIST]
//	                    [-targets LIST] [-meshd PATH] [-generator auto|h2load|go]
//	                    [-quick] [-out DIR]
//
// See test/bench/README.md for what it measures and how to read the table.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// pinnedEnv is set in the environment of the harness once it has re-executed
// itself under `taskset -c LOADCPU`, so it does not do so again.
const pinnedEnv = "MESHD_BENCH_PINNED"

func main() {
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if len(os.Args) > 1 && os.Args[1] == "backend" {
		if err := runBackend(os.Stdin, os.Stdout, logger); err != nil {
			logger.Error("backend failed", "err", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, logger)
	stop()
	os.Exit(code)
}

// options are the harness's flags after -quick has been applied.
type options struct {
	Duration  time.Duration `json:"duration_ns"`
	Warmup    time.Duration `json:"warmup_ns"`
	Rounds    int           `json:"rounds"`
	Scenarios []scenario    `json:"scenarios"`
	Targets   []targetSpec  `json:"targets"`
	Meshd     string        `json:"meshd"`
	Generator string        `json:"generator_flag"`
	Quick     bool          `json:"quick"`
	OutDir    string        `json:"-"`
	Pin       bool          `json:"pin"`
	ProxyCPU  int           `json:"proxy_cpu"`
	LoadCPU   int           `json:"load_cpu"`
}

// Quick mode: one short round, for the smoke test.
const (
	quickDuration = time.Second
	quickWarmup   = 500 * time.Millisecond
	// quickIdle and quickIdleActive replace the idle scenario's 10 000
	// idle and 1 000 active connections.
	quickIdle       = 1000
	quickIdleActive = 100
)

// parseFlags parses args into options; errors name the flag.
func parseFlags(args []string, stderr io.Writer) (options, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	var scenarios, targets string
	fs.DurationVar(&o.Duration, "duration", 10*time.Second, "measured length of each run")
	fs.DurationVar(&o.Warmup, "warmup", 2*time.Second, "warm-up before each run's measurement")
	fs.IntVar(&o.Rounds, "rounds", 3, "interleaved rounds (direct, meshd) per scenario; the table shows medians")
	fs.StringVar(&scenarios, "scenarios", "all", "comma-separated scenarios: "+scenarioNames())
	fs.StringVar(&targets, "targets", "all", "comma-separated targets: "+targetNames())
	fs.StringVar(&o.Meshd, "meshd", "", "meshd binary (default: the sidecar-only build, go build -tags meshd_sidecar ./cmd/meshd, into a temp dir)")
	fs.StringVar(&o.Generator, "generator", "auto", "load generator: auto (h2load when installed, else go), h2load, go")
	fs.BoolVar(&o.Quick, "quick", false, "1s runs, 0.5s warm-up, 1 round (smoke test)")
	fs.StringVar(&o.OutDir, "out", "", "results directory (default: test/bench/results in the module)")
	fs.BoolVar(&o.Pin, "pin", true, "pin meshd to -proxy-cpu and this harness, backend and generator to -load-cpu")
	fs.IntVar(&o.ProxyCPU, "proxy-cpu", 0, "CPU meshd is pinned to")
	fs.IntVar(&o.LoadCPU, "load-cpu", 1, "CPU the harness, backend and load generator are pinned to")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if o.Quick {
		o.Duration, o.Warmup, o.Rounds = quickDuration, quickWarmup, 1
	}
	switch {
	case o.Duration <= 0:
		return o, fmt.Errorf("-duration %v: must be positive", o.Duration)
	case o.Warmup < 0:
		return o, fmt.Errorf("-warmup %v: must not be negative", o.Warmup)
	case o.Rounds < 1:
		return o, fmt.Errorf("-rounds %d: must be at least 1", o.Rounds)
	case o.ProxyCPU < 0 || o.LoadCPU < 0:
		return o, errors.New("-proxy-cpu and -load-cpu must not be negative")
	}
	switch o.Generator {
	case "auto", "h2load", "go":
	default:
		return o, fmt.Errorf("-generator %q: want auto, h2load or go", o.Generator)
	}
	sc, err := selectScenarios(scenarios)
	if err != nil {
		return o, fmt.Errorf("-scenarios: %w", err)
	}
	o.Scenarios = sc
	if o.Quick {
		for i := range o.Scenarios {
			if o.Scenarios[i].Kind == kindIdle {
				o.Scenarios[i].Idle, o.Scenarios[i].Conns = quickIdle, quickIdleActive
			}
		}
	}
	if o.Targets, err = selectTargets(targets); err != nil {
		return o, fmt.Errorf("-targets: %w", err)
	}
	return o, nil
}

// scenarioNames lists the known scenario names, comma-separated.
func scenarioNames() string {
	names := make([]string, len(allScenarios))
	for i, s := range allScenarios {
		names[i] = s.Name
	}
	return strings.Join(names, ",")
}

// selectScenarios resolves a comma-separated list ("all" for every one),
// keeping allScenarios' order.
func selectScenarios(list string) ([]scenario, error) {
	if list == "all" || list == "" {
		return slices.Clone(allScenarios), nil
	}
	want := make(map[string]bool)
	for _, n := range strings.Split(list, ",") {
		n = strings.TrimSpace(n)
		if !slices.ContainsFunc(allScenarios, func(s scenario) bool { return s.Name == n }) {
			return nil, fmt.Errorf("unknown scenario %q (known: %s)", n, scenarioNames())
		}
		want[n] = true
	}
	var out []scenario
	for _, s := range allScenarios {
		if want[s.Name] {
			out = append(out, s)
		}
	}
	return out, nil
}

// run is the harness: it returns the process exit code.
func run(ctx context.Context, args []string, stdout io.Writer, logger *slog.Logger) int {
	o, err := parseFlags(args, os.Stderr)
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		}
		return 2
	}
	if o.Pin {
		if err := pinSelf(o, args, logger); err != nil {
			logger.Warn("running unpinned", "reason", err)
			o.Pin = false
		}
	}
	rep, err := bench(ctx, o, logger)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 1
	}
	printReport(stdout, rep)
	path, err := writeReport(o.OutDir, rep)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "\nresults: %s\n", path)
	for _, c := range rep.Charts {
		fmt.Fprintf(stdout, "chart: %s\n", c)
	}
	if rep.Errors > 0 {
		fmt.Fprintf(os.Stderr, "bench: %d requests failed during measurement\n", rep.Errors)
		return 1
	}
	return 0
}

// pinSelf re-executes the harness under `taskset -c LOADCPU` (replacing this
// process, so the pid stays the same) unless that has already happened. It
// returns an error, and does nothing, when pinning is impossible here.
func pinSelf(o options, args []string, logger *slog.Logger) error {
	if os.Getenv(pinnedEnv) == "1" {
		return nil
	}
	if n := runtime.NumCPU(); n < 2 || o.ProxyCPU >= n || o.LoadCPU >= n || o.ProxyCPU == o.LoadCPU {
		return fmt.Errorf("need two distinct CPUs below %d for -proxy-cpu %d and -load-cpu %d", n, o.ProxyCPU, o.LoadCPU)
	}
	taskset, err := exec.LookPath("taskset")
	if err != nil {
		return fmt.Errorf("taskset: %w", err)
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("own executable: %w", err)
	}
	logger.Info("re-executing pinned", "cpu", o.LoadCPU)
	argv := append([]string{"taskset", "-c", strconv.Itoa(o.LoadCPU), self}, args...)
	env := append(os.Environ(), pinnedEnv+"=1")
	return fmt.Errorf("exec taskset: %w", syscall.Exec(taskset, argv, env))
}
