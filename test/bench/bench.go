package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"time"
)

// Target names.
const (
	targetDirect = "direct"
	targetMeshd  = "meshd"
)

// rssSampleInterval is how often a run samples meshd's VmRSS.
const rssSampleInterval = 200 * time.Millisecond

// idleSettle is how long the harness waits after the sidecar is ready before
// it reads the idle RSS.
const idleSettle = 500 * time.Millisecond

// runRecord is one measured run of one scenario against one target.
type runRecord struct {
	Scenario string `json:"scenario"`
	Target   string `json:"target"`
	Round    int    `json:"round"`
	loadResult
	// ProxyCPUSeconds and ProxyCPUPer100k are meshd's user+system CPU over
	// the window, total and per 100k successful requests; absent for the
	// direct target.
	ProxyCPUSeconds *float64 `json:"proxy_cpu_seconds,omitempty"`
	ProxyCPUPer100k *float64 `json:"proxy_cpu_s_per_100k,omitempty"`
	// ProxyRSSLoadedMB is meshd's largest VmRSS sampled during the window.
	ProxyRSSLoadedMB *float64 `json:"proxy_rss_loaded_mb,omitempty"`
	// BackendCPUPer100k is the backend's CPU per 100k requests, for
	// context: the same work on both targets.
	BackendCPUPer100k float64 `json:"backend_cpu_s_per_100k"`
}

// machine describes where the run happened.
type machine struct {
	CPUModel  string `json:"cpu_model"`
	NumCPU    int    `json:"num_cpu"`
	Kernel    string `json:"kernel"`
	GoVersion string `json:"go_version"`
}

// report is everything one harness run produced; it is written as JSON.
type report struct {
	Started        time.Time        `json:"started"`
	Machine        machine          `json:"machine"`
	Options        options          `json:"options"`
	Generator      string           `json:"generator"`
	ClockTicks     int              `json:"clock_ticks_per_s"`
	ClockSource    string           `json:"clock_ticks_source"`
	Pinned         bool             `json:"pinned"`
	HarnessCPUs    string           `json:"harness_cpus_allowed"`
	MeshdCPUs      string           `json:"meshd_cpus_allowed"`
	ProxyRSSIdleMB float64          `json:"proxy_rss_idle_mb"`
	Runs           []runRecord      `json:"runs"`
	Summary        []summaryRow     `json:"summary"`
	Ratios         []ratioRow       `json:"ratios"`
	MeshdStats     map[string]int64 `json:"meshd_stats"`
	Errors         int64            `json:"errors"`
}

// meshdStatNames are the sidecar counters recorded in the report, showing
// that load went through meshd and how many upstream connections it used.
var meshdStatNames = []string{
	"cluster.grpc.upstream_rq_total", "cluster.grpc.upstream_cx_total",
	"cluster.http.upstream_rq_total", "cluster.http.upstream_cx_total",
	"http." + listenerName + ".downstream_rq_total",
}

// bench starts the backend and the sidecar, runs every scenario for every
// round against both targets, and returns the report.
func bench(ctx context.Context, o options, logger *slog.Logger) (*report, error) {
	rep := &report{Started: time.Now().UTC(), Options: o, Pinned: o.Pin, Machine: describeMachine()}
	hz, src, err := clockTicks(ctx)
	if err != nil {
		return nil, err
	}
	rep.ClockTicks, rep.ClockSource = hz, src

	dir, err := os.MkdirTemp("", "meshd-bench-")
	if err != nil {
		return nil, fmt.Errorf("temp dir: %w", err)
	}
	defer os.RemoveAll(dir)

	root, err := moduleRoot()
	if err != nil {
		return nil, err
	}
	if o.OutDir == "" {
		rep.Options.OutDir = root + "/test/bench/results"
	}
	meshd := o.Meshd
	if meshd == "" {
		logger.Info("building meshd", "module", root)
		if meshd, err = buildMeshd(ctx, root, dir); err != nil {
			return nil, err
		}
	}
	gen, err := pickGenerator(o.Generator, dir)
	if err != nil {
		return nil, err
	}
	rep.Generator = gen.Name()
	logger.Info("load generator", "generator", rep.Generator)

	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("own executable: %w", err)
	}
	be, err := startBackend(self, os.Stderr)
	if err != nil {
		return nil, err
	}
	defer be.Stop()

	boot, err := renderBootstrap(be.GRPCAddr, be.HTTPAddr)
	if err != nil {
		return nil, err
	}
	cpu := -1
	if o.Pin {
		cpu = o.ProxyCPU
	}
	sc, err := startSidecar(ctx, meshd, dir, boot, cpu)
	if err != nil {
		return nil, err
	}
	stopSidecar := sync.OnceValue(sc.Stop)
	defer stopSidecar()
	logger.Info("started", "backend_grpc", be.GRPCAddr, "backend_http", be.HTTPAddr,
		"meshd_pid", sc.PID(), "meshd_listener", sc.ListenerAddr, "meshd_admin", sc.AdminAddr)

	if rep.HarnessCPUs, err = readCPUsAllowed(os.Getpid()); err != nil {
		return nil, err
	}
	if rep.MeshdCPUs, err = readCPUsAllowed(sc.PID()); err != nil {
		return nil, err
	}

	time.Sleep(idleSettle)
	idle, err := readRSS(sc.PID())
	if err != nil {
		return nil, fmt.Errorf("meshd idle RSS: %w", err)
	}
	rep.ProxyRSSIdleMB = mb(idle)

	targets := []target{
		{Name: targetDirect, GRPCAddr: be.GRPCAddr, HTTPAddr: be.HTTPAddr},
		{Name: targetMeshd, GRPCAddr: sc.ListenerAddr, HTTPAddr: sc.ListenerAddr},
	}
	for _, s := range o.Scenarios {
		for round := 1; round <= o.Rounds; round++ {
			for _, t := range targets {
				rec, err := measure(ctx, gen, s, t, o, hz, be.PID(), sc.PID())
				if err != nil {
					return nil, fmt.Errorf("%s via %s, round %d: %w", s.Name, t.Name, round, err)
				}
				rec.Round = round
				rep.Runs = append(rep.Runs, rec)
				rep.Errors += rec.Errors
				logger.Info("run", "scenario", s.Name, "target", t.Name, "round", round,
					"rps", fmt.Sprintf("%.0f", rec.RPS), "p50_ms", fmt.Sprintf("%.3f", rec.P50Ms),
					"p99_ms", fmt.Sprintf("%.3f", rec.P99Ms), "errors", rec.Errors,
					"proxy_cpu_s_per_100k", fmtOpt(rec.ProxyCPUPer100k, 2), "error_detail", rec.ErrorDetail)
			}
		}
	}

	rep.MeshdStats = make(map[string]int64)
	for _, name := range meshdStatNames {
		v, ok, err := sc.counter(name)
		if err != nil {
			return nil, fmt.Errorf("meshd /stats: %w", err)
		}
		if ok {
			rep.MeshdStats[name] = v
		}
	}
	if err := stopSidecar(); err != nil {
		logger.Warn("meshd stop", "err", err, "log", sc.Log())
	}
	rep.Summary, rep.Ratios = summarize(o.Scenarios, rep.Runs)
	return rep, nil
}

// measure runs one scenario against one target and adds the /proc figures of
// the measurement window.
func measure(ctx context.Context, gen generator, s scenario, t target, o options, hz, backendPID, meshdPID int) (runRecord, error) {
	var (
		procErr               error
		meshdBefore, beBefore procCPU
		maxRSS                int64
		stopRSS               = make(chan struct{})
		rssDone               = make(chan struct{})
		started               bool
	)
	sample := func() {
		rss, err := readRSS(meshdPID)
		if err == nil && rss > maxRSS {
			maxRSS = rss
		}
	}
	res, err := gen.Run(ctx, s, t, o.Warmup, o.Duration, func() {
		started = true
		if meshdBefore, procErr = readProcCPU(meshdPID); procErr != nil {
			close(rssDone)
			return
		}
		if beBefore, procErr = readProcCPU(backendPID); procErr != nil {
			close(rssDone)
			return
		}
		go func() {
			defer close(rssDone)
			tick := time.NewTicker(rssSampleInterval)
			defer tick.Stop()
			for {
				sample()
				select {
				case <-stopRSS:
					return
				case <-tick.C:
				}
			}
		}()
	})
	meshdAfter, errM := readProcCPU(meshdPID)
	beAfter, errB := readProcCPU(backendPID)
	if started {
		close(stopRSS)
		<-rssDone
	}
	switch {
	case err != nil:
		return runRecord{}, err
	case !started:
		return runRecord{}, fmt.Errorf("generator %s never started measuring", gen.Name())
	case procErr != nil:
		return runRecord{}, procErr
	case errM != nil:
		return runRecord{}, errM
	case errB != nil:
		return runRecord{}, errB
	}
	sample()
	rec := runRecord{Scenario: s.Name, Target: t.Name, loadResult: res}
	per100k := func(d uint64) float64 {
		if res.Requests == 0 {
			return 0
		}
		return float64(d) / float64(hz) / float64(res.Requests) * 1e5
	}
	rec.BackendCPUPer100k = per100k(beAfter.Total() - beBefore.Total())
	if t.Name == targetMeshd {
		secs := float64(meshdAfter.Total()-meshdBefore.Total()) / float64(hz)
		p := per100k(meshdAfter.Total() - meshdBefore.Total())
		rss := mb(maxRSS)
		rec.ProxyCPUSeconds, rec.ProxyCPUPer100k, rec.ProxyRSSLoadedMB = &secs, &p, &rss
	}
	if res.Requests == 0 {
		return rec, fmt.Errorf("no request succeeded (%d failed)", res.Errors)
	}
	return rec, nil
}

// pickGenerator resolves the -generator flag.
func pickGenerator(flagValue, dir string) (generator, error) {
	switch flagValue {
	case "go":
		return goGenerator{}, nil
	case "h2load", "auto":
		path, err := exec.LookPath("h2load")
		if err == nil {
			return h2loadGenerator{path: path, dir: dir}, nil
		}
		if flagValue == "h2load" {
			return nil, fmt.Errorf("-generator h2load: %w (install nghttp2-client)", err)
		}
		return goGenerator{}, nil
	}
	return nil, fmt.Errorf("-generator %q: want auto, h2load or go", flagValue)
}

// mb converts bytes to MiB.
func mb(b int64) float64 { return float64(b) / (1 << 20) }

// describeMachine reads the CPU model and kernel release from /proc.
func describeMachine() machine {
	m := machine{GoVersion: runtime.Version()}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			k, v, ok := strings.Cut(line, ":")
			switch k = strings.TrimSpace(k); {
			case !ok:
			case k == "processor":
				m.NumCPU++ // every CPU, not just this process's affinity
			case k == "model name" && m.CPUModel == "":
				m.CPUModel = strings.TrimSpace(v)
			}
		}
	}
	return m
}
