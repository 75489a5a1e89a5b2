package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"
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
	// Generator is the load generator that drove the run.
	Generator string `json:"generator"`
	loadResult
	// ProxyCPUSeconds and ProxyCPUPer100k are the proxies' user+system CPU
	// over the window (summed over the target's processes), total and per
	// 100k successful requests; absent for the direct target.
	ProxyCPUSeconds *float64 `json:"proxy_cpu_seconds,omitempty"`
	ProxyCPUPer100k *float64 `json:"proxy_cpu_s_per_100k,omitempty"`
	// ProxyRSSLoadedMB and ProxyAnonLoadedMB are the largest sums of the
	// proxies' VmRSS and RssAnon sampled during the window.
	ProxyRSSLoadedMB  *float64 `json:"proxy_rss_loaded_mb,omitempty"`
	ProxyAnonLoadedMB *float64 `json:"proxy_anon_loaded_mb,omitempty"`
	// IdleConnKiB is the proxies' memory growth per idle connection (idle
	// scenario only): RssAnon with the idle connections open minus before,
	// divided by their number.
	IdleConnKiB *float64 `json:"idle_conn_kib,omitempty"`
	// BackendCPUPer100k is the backend's CPU per 100k requests, for
	// context: the same work on every target.
	BackendCPUPer100k float64 `json:"backend_cpu_s_per_100k"`
}

// machine describes where the run happened.
type machine struct {
	CPUModel  string `json:"cpu_model"`
	NumCPU    int    `json:"num_cpu"`
	Kernel    string `json:"kernel"`
	GoVersion string `json:"go_version"`
}

// targetInfo is a started target as the report records it.
type targetInfo struct {
	targetSpec
	// Processes is the number of proxy processes (2 for two-sidecar
	// targets), CPUs their allowed CPUs.
	Processes int    `json:"processes"`
	CPUs      string `json:"cpus_allowed,omitempty"`
	// RSSIdleMB and AnonIdleMB are the proxies' summed VmRSS and RssAnon
	// after start-up.
	RSSIdleMB  float64 `json:"rss_idle_mb"`
	AnonIdleMB float64 `json:"anon_idle_mb"`
	// Stats are meshd counters (meshd targets), summed over every proxy
	// the target ran: read at the end, and from a proxy before an idle
	// round restarts it.
	Stats map[string]int64 `json:"meshd_stats,omitempty"`
}

// report is everything one harness run produced; it is written as JSON.
type report struct {
	Started     time.Time    `json:"started"`
	Machine     machine      `json:"machine"`
	Options     options      `json:"options"`
	Generator   string       `json:"generator"`
	ClockTicks  int          `json:"clock_ticks_per_s"`
	ClockSource string       `json:"clock_ticks_source"`
	Pinned      bool         `json:"pinned"`
	HarnessCPUs string       `json:"harness_cpus_allowed"`
	NoFile      uint64       `json:"rlimit_nofile"`
	Targets     []targetInfo `json:"targets"`
	// Skipped maps a target that did not run to the reason.
	Skipped map[string]string `json:"skipped,omitempty"`
	// TraceSpans is how many spans the in-harness OTLP receiver got from
	// the tracing target.
	TraceSpans int64        `json:"trace_spans,omitempty"`
	Runs       []runRecord  `json:"runs"`
	Summary    []summaryRow `json:"summary"`
	Ratios     []ratioRow   `json:"ratios"`
	Errors     int64        `json:"errors"`
	// Charts are the PNG files drawn from Summary.
	Charts []string `json:"charts"`
}

// meshdStatSuffixes are the sidecar counters recorded in the report (for
// every cluster and the bench listener), showing that load went through
// meshd, how many upstream connections it used and over which protocol.
var meshdStatSuffixes = []string{
	".upstream_rq_total", ".upstream_cx_total", ".upstream_cx_http3_total",
	".downstream_rq_total", ".upstream_rq_5xx", ".downstream_rq_5xx",
}

// bench starts the backend and the targets, runs every scenario for every
// round against each target in turn, and returns the report.
func bench(ctx context.Context, o options, logger *slog.Logger) (*report, error) {
	rep := &report{Started: time.Now().UTC(), Options: o, Pinned: o.Pin, Machine: describeMachine(), Skipped: map[string]string{}}
	hz, src, err := clockTicks(ctx)
	if err != nil {
		return nil, err
	}
	rep.ClockTicks, rep.ClockSource = hz, src
	if rep.NoFile, err = raiseNoFile(); err != nil {
		logger.Warn("RLIMIT_NOFILE not raised", "err", err)
	}

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
	if meshd == "" && slices.ContainsFunc(o.Targets, func(t targetSpec) bool { return strings.HasPrefix(t.Name, "meshd") }) {
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

	var peers map[string]string
	if slices.ContainsFunc(o.Targets, func(t targetSpec) bool { return t.Peer }) {
		var missing map[string]string
		peers, missing = ensurePeers(ctx, logger)
		for name, why := range missing {
			if slices.ContainsFunc(o.Targets, func(t targetSpec) bool { return t.Name == name }) {
				logger.Warn("skipping peer", "target", name, "reason", why)
				rep.Skipped[name] = why
			}
		}
	}

	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("own executable: %w", err)
	}
	be, err := startBackend(self, os.Stderr)
	if err != nil {
		return nil, err
	}
	defer be.Stop()
	if rep.HarnessCPUs, err = readCPUsAllowed(os.Getpid()); err != nil {
		return nil, err
	}

	cpu := -1
	if o.Pin {
		cpu = o.ProxyCPU
	}
	st := &starter{meshd: meshd, dir: dir, root: root, be: be, cpu: cpu, noFile: rep.NoFile, peers: peers, logger: logger}
	var targets []*target
	defer func() {
		for _, t := range targets {
			if err := t.Stop(); err != nil {
				logger.Warn("target stop", "target", t.Name, "err", err)
			}
		}
	}()
	for _, spec := range o.Targets {
		if _, skip := rep.Skipped[spec.Name]; skip {
			continue
		}
		t, err := st.start(ctx, spec)
		if err != nil {
			return nil, fmt.Errorf("target %s: %w", spec.Name, err)
		}
		targets = append(targets, t)
		logger.Info("started", "target", t.Name, "pids", t.PIDs, "grpc", t.GRPCAddr, "http", t.HTTPAddr)
	}
	logger.Info("backend", "grpc", be.GRPCAddr, "http", be.HTTPAddr, "pid", be.PID())

	time.Sleep(idleSettle)
	for _, t := range targets {
		info := targetInfo{targetSpec: t.targetSpec, Processes: len(t.PIDs)}
		if len(t.PIDs) > 0 {
			if info.CPUs, err = readCPUsAllowed(t.PIDs[0]); err != nil {
				return nil, err
			}
			if t.IdleMem, err = sumMem(t.PIDs); err != nil {
				return nil, fmt.Errorf("%s idle RSS: %w", t.Name, err)
			}
		}
		info.RSSIdleMB, info.AnonIdleMB = mb(t.IdleMem.RSS), mb(t.IdleMem.Anon)
		rep.Targets = append(rep.Targets, info)
	}

	for _, s := range o.Scenarios {
		g := gen
		if s.Kind == kindGRPCStream {
			g = goGenerator{} // h2load has no gRPC streaming
		}
		for round := 1; round <= o.Rounds; round++ {
			for i, t := range targets {
				if t.Variant && !s.Variants {
					continue
				}
				if s.Kind == kindIdle && len(t.PIDs) == 0 {
					continue // no proxy whose memory per connection to read
				}
				if s.Kind == kindIdle {
					// A proxy that served earlier runs holds heap those
					// runs freed, and new connections reuse it: their
					// cost would read as nearly zero. Measure each idle
					// round on a freshly started proxy.
					if rep.Targets[i].Stats == nil {
						rep.Targets[i].Stats = map[string]int64{}
					}
					if err := addSidecarStats(rep.Targets[i].Stats, t); err != nil {
						logger.Warn("target stats before restart", "target", t.Name, "err", err)
					}
					if err := t.Stop(); err != nil {
						logger.Warn("target stop", "target", t.Name, "err", err)
					}
					fresh, err := st.start(ctx, t.targetSpec)
					if err != nil {
						targets = slices.Delete(targets, i, i+1) // stopped already
						return nil, fmt.Errorf("target %s: restart for %s: %w", t.Name, s.Name, err)
					}
					targets[i], t = fresh, fresh
					time.Sleep(idleSettle)
				}
				rec, err := measure(ctx, g, s, t, o, hz, be.PID())
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				if err != nil {
					// Recorded and counted as a failure; the other runs
					// go on, so one broken target does not lose a long run.
					logger.Error("run failed", "scenario", s.Name, "target", t.Name, "round", round, "err", err)
					rec.ErrorDetail = err.Error()
					rec.Errors = max(rec.Errors, 1)
				}
				rec.Round = round
				rep.Runs = append(rep.Runs, rec)
				rep.Errors += rec.Errors
				logger.Info("run", "scenario", s.Name, "target", t.Name, "round", round,
					"rps", fmt.Sprintf("%.0f", rec.RPS), "p50_ms", fmt.Sprintf("%.3f", rec.P50Ms),
					"p99_ms", fmt.Sprintf("%.3f", rec.P99Ms), "errors", rec.Errors,
					"proxy_cpu_s_per_100k", fmtOpt(rec.ProxyCPUPer100k, 2), "idle_conn_kib", fmtOpt(rec.IdleConnKiB, 1),
					"error_detail", rec.ErrorDetail)
			}
		}
	}

	for i, t := range targets {
		if len(t.sidecars) == 0 {
			continue
		}
		if rep.Targets[i].Stats == nil {
			rep.Targets[i].Stats = map[string]int64{}
		}
		if err := addSidecarStats(rep.Targets[i].Stats, t); err != nil {
			return nil, err
		}
	}
	if st.collector != nil {
		rep.TraceSpans = st.collector.Spans()
	}
	rep.Summary, rep.Ratios = summarize(o.Scenarios, rep.Targets, rep.Runs)
	return rep, nil
}

// addSidecarStats adds the non-zero meshd counters (meshdStatSuffixes) of
// t's sidecars to into, keyed "node:stat".
func addSidecarStats(into map[string]int64, t *target) error {
	for _, sc := range t.sidecars {
		stats, err := sc.stats()
		if err != nil {
			return fmt.Errorf("%s /stats: %w", t.Name, err)
		}
		for name, v := range stats {
			for _, suf := range meshdStatSuffixes {
				if strings.HasSuffix(name, suf) && v != 0 {
					into[sc.node+":"+name] += v
				}
			}
		}
	}
	return nil
}

// sumMem returns the summed memory of pids.
func sumMem(pids []int) (memSample, error) {
	var sum memSample
	for _, pid := range pids {
		m, err := readMem(pid)
		if err != nil {
			return memSample{}, err
		}
		sum = sum.add(m)
	}
	return sum, nil
}

// sumCPU returns the summed CPU ticks of pids.
func sumCPU(pids []int) (uint64, error) {
	var sum uint64
	for _, pid := range pids {
		c, err := readProcCPU(pid)
		if err != nil {
			return 0, err
		}
		sum += c.Total()
	}
	return sum, nil
}

// measure runs one scenario against one target and adds the /proc figures
// of the measurement window. For an idle scenario it first opens the idle
// connections and reads the proxies' RSS growth per connection; they stay
// open during the load and are closed after it.
func measure(ctx context.Context, gen generator, s scenario, t *target, o options, hz, backendPID int) (runRecord, error) {
	rec := runRecord{Scenario: s.Name, Target: t.Name, Generator: gen.Name()}
	if s.Kind == kindIdle {
		before, err := sumMem(t.PIDs)
		if err != nil {
			return rec, err
		}
		ic, err := openIdle(ctx, t.HTTPAddr, s.Idle)
		if err != nil {
			return rec, err
		}
		defer ic.Close()
		time.Sleep(idleConnSettle)
		after, err := sumMem(t.PIDs)
		if err != nil {
			return rec, err
		}
		kib := float64(after.Anon-before.Anon) / 1024 / float64(ic.Len())
		rec.IdleConnKiB = &kib
	}
	var (
		procErr     error
		proxyBefore uint64
		beBefore    procCPU
		maxMem      memSample
		stopRSS     = make(chan struct{})
		rssDone     = make(chan struct{})
		started     bool
		proxyAfter  uint64
		errP        error
	)
	sample := func() {
		if len(t.PIDs) == 0 {
			return
		}
		if m, err := sumMem(t.PIDs); err == nil {
			maxMem = maxMem.max(m)
		}
	}
	res, err := gen.Run(ctx, s, t.addr(s), o.Warmup, o.Duration, func() {
		started = true
		if proxyBefore, procErr = sumCPU(t.PIDs); procErr != nil {
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
	proxyAfter, errP = sumCPU(t.PIDs)
	beAfter, errB := readProcCPU(backendPID)
	if started {
		close(stopRSS)
		<-rssDone
	}
	switch {
	case err != nil:
		return rec, err
	case !started:
		return rec, fmt.Errorf("generator %s never started measuring", gen.Name())
	case procErr != nil:
		return rec, procErr
	case errP != nil:
		return rec, errP
	case errB != nil:
		return rec, errB
	}
	sample()
	rec.loadResult = res
	per100k := func(d uint64) float64 {
		if res.Requests == 0 {
			return 0
		}
		return float64(d) / float64(hz) / float64(res.Requests) * 1e5
	}
	rec.BackendCPUPer100k = per100k(beAfter.Total() - beBefore.Total())
	if len(t.PIDs) > 0 {
		secs := float64(proxyAfter-proxyBefore) / float64(hz)
		p := per100k(proxyAfter - proxyBefore)
		rss, anon := mb(maxMem.RSS), mb(maxMem.Anon)
		rec.ProxyCPUSeconds, rec.ProxyCPUPer100k, rec.ProxyRSSLoadedMB, rec.ProxyAnonLoadedMB = &secs, &p, &rss, &anon
	}
	if res.Requests == 0 {
		return rec, fmt.Errorf("no request succeeded (%d failed: %s)", res.Errors, res.ErrorDetail)
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
