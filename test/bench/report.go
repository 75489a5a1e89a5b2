package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"text/tabwriter"
)

// summaryRow is the median over rounds of one scenario on one target.
type summaryRow struct {
	Scenario          string   `json:"scenario"`
	Target            string   `json:"target"`
	Rounds            int      `json:"rounds"`
	RPS               float64  `json:"rps"`
	P50Ms             float64  `json:"p50_ms"`
	P99Ms             float64  `json:"p99_ms"`
	P999Ms            float64  `json:"p999_ms"`
	ProxyCPUPer100k   *float64 `json:"proxy_cpu_s_per_100k,omitempty"`
	ProxyRSSIdleMB    *float64 `json:"proxy_rss_idle_mb,omitempty"`
	ProxyRSSLoadedMB  *float64 `json:"proxy_rss_loaded_mb,omitempty"`
	ProxyAnonIdleMB   *float64 `json:"proxy_anon_idle_mb,omitempty"`
	ProxyAnonLoadedMB *float64 `json:"proxy_anon_loaded_mb,omitempty"`
	IdleConnKiB       *float64 `json:"idle_conn_kib,omitempty"`
	BackendCPUPer100k float64  `json:"backend_cpu_s_per_100k"`
	Errors            int64    `json:"errors"`
}

// ratioRow compares one target's medians in one scenario with the best
// peer's: for each figure the best value among the peers (lowest CPU,
// latency and memory; highest req/s), which may come from different peers.
// A ratio below 1 (above 1 for req/s) beats every peer. Zero means no peer
// had the figure.
type ratioRow struct {
	Scenario string  `json:"scenario"`
	Target   string  `json:"target"`
	RPS      float64 `json:"rps"`
	P50      float64 `json:"p50"`
	P99      float64 `json:"p99"`
	P999     float64 `json:"p999"`
	CPU      float64 `json:"proxy_cpu"`
	// Anon compares the anonymous resident memory under load (RssAnon):
	// VmRSS would compare the sizes of the executables' mapped pages.
	Anon float64 `json:"proxy_anon_loaded"`
	// BestCPUPeer names the peer with the lowest CPU per 100k.
	BestCPUPeer string `json:"best_cpu_peer"`
}

// summarize takes the median of every figure over the rounds of each
// (scenario, target), in scenario then target order, and each non-peer
// target's ratios to the best peer. Runs without a successful request add
// their errors only.
func summarize(scenarios []scenario, targets []targetInfo, runs []runRecord) ([]summaryRow, []ratioRow) {
	var rows []summaryRow
	var ratios []ratioRow
	for _, s := range scenarios {
		var sRows []summaryRow
		for _, t := range targets {
			var rps, p50, p99, p999, cpu, rss, anon, kib, be []float64
			row := summaryRow{Scenario: s.Name, Target: t.Name}
			for _, r := range runs {
				if r.Scenario != s.Name || r.Target != t.Name {
					continue
				}
				row.Errors += r.Errors
				if r.Requests == 0 {
					continue // a failed run: counted, not measured
				}
				row.Rounds++
				rps = append(rps, r.RPS)
				p50 = append(p50, r.P50Ms)
				p99 = append(p99, r.P99Ms)
				p999 = append(p999, r.P999Ms)
				be = append(be, r.BackendCPUPer100k)
				for _, f := range []struct {
					dst *[]float64
					v   *float64
				}{{&cpu, r.ProxyCPUPer100k}, {&rss, r.ProxyRSSLoadedMB}, {&anon, r.ProxyAnonLoadedMB}, {&kib, r.IdleConnKiB}} {
					if f.v != nil {
						*f.dst = append(*f.dst, *f.v)
					}
				}
			}
			if row.Rounds == 0 {
				continue
			}
			row.RPS, _ = median(rps)
			row.P50Ms, _ = median(p50)
			row.P99Ms, _ = median(p99)
			row.P999Ms, _ = median(p999)
			row.BackendCPUPer100k, _ = median(be)
			row.ProxyCPUPer100k = optMedian(cpu)
			row.ProxyRSSLoadedMB = optMedian(rss)
			row.ProxyAnonLoadedMB = optMedian(anon)
			row.IdleConnKiB = optMedian(kib)
			if t.Processes > 0 {
				idle, anonIdle := t.RSSIdleMB, t.AnonIdleMB
				row.ProxyRSSIdleMB, row.ProxyAnonIdleMB = &idle, &anonIdle
			}
			sRows = append(sRows, row)
		}
		rows = append(rows, sRows...)
		ratios = append(ratios, peerRatios(s.Name, targets, sRows)...)
	}
	return rows, ratios
}

// peerRatios compares every non-peer row of one scenario with the best peer
// row; nil when no peer ran it.
func peerRatios(scenario string, targets []targetInfo, rows []summaryRow) []ratioRow {
	isPeer := func(name string) bool {
		return slices.ContainsFunc(targets, func(t targetInfo) bool { return t.Name == name && t.Peer })
	}
	var best summaryRow
	var bestCPU *float64
	bestCPUPeer, found := "", false
	for _, r := range rows {
		if !isPeer(r.Target) {
			continue
		}
		if !found {
			best, found = r, true
			bestCPU, bestCPUPeer = r.ProxyCPUPer100k, r.Target
			continue
		}
		best.RPS = max(best.RPS, r.RPS)
		best.P50Ms = min(best.P50Ms, r.P50Ms)
		best.P99Ms = min(best.P99Ms, r.P99Ms)
		best.P999Ms = min(best.P999Ms, r.P999Ms)
		if r.ProxyCPUPer100k != nil && (bestCPU == nil || *r.ProxyCPUPer100k < *bestCPU) {
			bestCPU, bestCPUPeer = r.ProxyCPUPer100k, r.Target
		}
		if r.ProxyAnonLoadedMB != nil && (best.ProxyAnonLoadedMB == nil || *r.ProxyAnonLoadedMB < *best.ProxyAnonLoadedMB) {
			best.ProxyAnonLoadedMB = r.ProxyAnonLoadedMB
		}
	}
	if !found {
		return nil
	}
	optRatio := func(a, b *float64) float64 {
		if a == nil || b == nil {
			return 0
		}
		return ratio(*a, *b)
	}
	var out []ratioRow
	for _, r := range rows {
		if isPeer(r.Target) {
			continue
		}
		out = append(out, ratioRow{
			Scenario: scenario, Target: r.Target,
			RPS: ratio(r.RPS, best.RPS), P50: ratio(r.P50Ms, best.P50Ms), P99: ratio(r.P99Ms, best.P99Ms),
			P999: ratio(r.P999Ms, best.P999Ms), CPU: optRatio(r.ProxyCPUPer100k, bestCPU),
			Anon: optRatio(r.ProxyAnonLoadedMB, best.ProxyAnonLoadedMB), BestCPUPeer: bestCPUPeer,
		})
	}
	return out
}

// optMedian is median as a pointer, nil for no values.
func optMedian(xs []float64) *float64 {
	m, ok := median(xs)
	if !ok {
		return nil
	}
	return &m
}

// ratio returns a/b, or 0 when b is 0 (JSON has no infinity).
func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// fmtOpt formats an optional figure with prec decimals, "-" when absent.
func fmtOpt(v *float64, prec int) string {
	if v == nil {
		return "-"
	}
	return strconv.FormatFloat(*v, 'f', prec, 64)
}

// printReport writes the human-readable tables.
func printReport(w io.Writer, r *report) {
	fmt.Fprintf(w, "meshd side-by-side benchmark: %s, %d CPUs, kernel %s, %s\n",
		r.Machine.CPUModel, r.Machine.NumCPU, r.Machine.Kernel, r.Machine.GoVersion)
	pin := "unpinned"
	if r.Pinned {
		pin = fmt.Sprintf("proxies on CPU %d (one worker, GOMAXPROCS=1 for meshd), harness, backend and generator on CPU %s", r.Options.ProxyCPU, r.HarnessCPUs)
	}
	fmt.Fprintf(w, "generator: %s (streaming: built-in); %s; %d round(s) of %v after %v warm-up, targets interleaved, medians shown; clock %d ticks/s\n",
		r.Generator, pin, r.Options.Rounds, r.Options.Duration, r.Options.Warmup, r.ClockTicks)
	for _, t := range r.Targets {
		fmt.Fprintf(w, "  %-12s %s\n", t.Name, t.Desc)
	}
	for name, why := range r.Skipped {
		fmt.Fprintf(w, "  %-12s skipped: %s\n", name, why)
	}
	if r.TraceSpans > 0 {
		fmt.Fprintf(w, "OTLP receiver got %d spans from %s\n", r.TraceSpans, targetTrace)
	}
	fmt.Fprintln(w)

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\ttarget\treq/s\tp50 ms\tp99 ms\tp99.9 ms\tproxy CPU-s/100k\tRSS idle MiB (anon)\tRSS loaded MiB (anon)\tKiB/idle conn\tbackend CPU-s/100k\terrors\t")
	for _, row := range r.Summary {
		fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.3f\t%.3f\t%.3f\t%s\t%s\t%s\t%s\t%.2f\t%d\t\n",
			row.Scenario, row.Target, row.RPS, row.P50Ms, row.P99Ms, row.P999Ms,
			fmtOpt(row.ProxyCPUPer100k, 2), fmtMem(row.ProxyRSSIdleMB, row.ProxyAnonIdleMB), fmtMem(row.ProxyRSSLoadedMB, row.ProxyAnonLoadedMB),
			fmtOpt(row.IdleConnKiB, 1), row.BackendCPUPer100k, row.Errors)
	}
	tw.Flush()

	if len(r.Ratios) == 0 {
		fmt.Fprintln(w, "\nno peer ran: no ratios to the best peer")
		return
	}
	fmt.Fprintln(w, "\nratio to the best peer per figure (< 1 beats every peer; > 1 for req/s):")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\ttarget\treq/s\tp50\tp99\tp99.9\tproxy CPU\tanon RSS loaded\tlowest-CPU peer\t")
	for _, q := range r.Ratios {
		fmt.Fprintf(tw, "%s\t%s\t%.2f\t%.2f\t%.2f\t%.2f\t%s\t%s\t%s\t\n", q.Scenario, q.Target, q.RPS, q.P50, q.P99, q.P999,
			fmtRatio(q.CPU), fmtRatio(q.Anon), q.BestCPUPeer)
	}
	tw.Flush()
}

// fmtMem formats VmRSS and RssAnon as "RSS (anon)", "-" when absent.
func fmtMem(rss, anon *float64) string {
	if rss == nil || anon == nil {
		return "-"
	}
	return fmt.Sprintf("%.1f (%.1f)", *rss, *anon)
}

// fmtRatio formats a ratio, "-" for 0 (not measured).
func fmtRatio(v float64) string {
	if v == 0 {
		return "-"
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}

// writeReport draws the charts (recording their paths in r.Charts) and
// writes r as indented JSON into dir (created if needed), and returns the
// JSON file's path.
func writeReport(dir string, r *report) (string, error) {
	if dir == "" {
		dir = r.Options.OutDir
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("results dir: %w", err)
	}
	charts, err := writeCharts(dir, r.Started.Format("20060102-150405"), r.Summary, r.Options.Scenarios)
	if err != nil {
		return "", err
	}
	r.Charts = charts
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return "", fmt.Errorf("encode results: %w", err)
	}
	path := filepath.Join(dir, "bench-"+r.Started.Format("20060102-150405")+".json")
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return "", fmt.Errorf("write results: %w", err)
	}
	return path, nil
}
