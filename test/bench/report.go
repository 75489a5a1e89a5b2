package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
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
	ProxyCPUPer100k   *float64 `json:"proxy_cpu_s_per_100k,omitempty"`
	ProxyRSSLoadedMB  *float64 `json:"proxy_rss_loaded_mb,omitempty"`
	BackendCPUPer100k float64  `json:"backend_cpu_s_per_100k"`
	Errors            int64    `json:"errors"`
}

// ratioRow is meshd's median divided by direct's for one scenario.
type ratioRow struct {
	Scenario string  `json:"scenario"`
	RPS      float64 `json:"rps"`
	P50      float64 `json:"p50"`
	P99      float64 `json:"p99"`
}

// summarize takes the median of every figure over the rounds of each
// (scenario, target) and the meshd/direct ratios of the medians, in scenario
// order with direct first.
func summarize(scenarios []scenario, runs []runRecord) ([]summaryRow, []ratioRow) {
	var rows []summaryRow
	var ratios []ratioRow
	for _, s := range scenarios {
		byTarget := make(map[string]summaryRow)
		for _, t := range []string{targetDirect, targetMeshd} {
			var rps, p50, p99, cpu, rss, be []float64
			row := summaryRow{Scenario: s.Name, Target: t}
			for _, r := range runs {
				if r.Scenario != s.Name || r.Target != t {
					continue
				}
				row.Rounds++
				row.Errors += r.Errors
				rps = append(rps, r.RPS)
				p50 = append(p50, r.P50Ms)
				p99 = append(p99, r.P99Ms)
				be = append(be, r.BackendCPUPer100k)
				if r.ProxyCPUPer100k != nil {
					cpu = append(cpu, *r.ProxyCPUPer100k)
				}
				if r.ProxyRSSLoadedMB != nil {
					rss = append(rss, *r.ProxyRSSLoadedMB)
				}
			}
			if row.Rounds == 0 {
				continue
			}
			row.RPS, _ = median(rps)
			row.P50Ms, _ = median(p50)
			row.P99Ms, _ = median(p99)
			row.BackendCPUPer100k, _ = median(be)
			row.ProxyCPUPer100k = optMedian(cpu)
			row.ProxyRSSLoadedMB = optMedian(rss)
			rows = append(rows, row)
			byTarget[t] = row
		}
		d, okD := byTarget[targetDirect]
		m, okM := byTarget[targetMeshd]
		if okD && okM {
			ratios = append(ratios, ratioRow{
				Scenario: s.Name,
				RPS:      ratio(m.RPS, d.RPS),
				P50:      ratio(m.P50Ms, d.P50Ms),
				P99:      ratio(m.P99Ms, d.P99Ms),
			})
		}
	}
	return rows, ratios
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

// printReport writes the human-readable table.
func printReport(w io.Writer, r *report) {
	fmt.Fprintf(w, "meshd whole-proxy benchmark: %s, %d CPUs, kernel %s, %s\n",
		r.Machine.CPUModel, r.Machine.NumCPU, r.Machine.Kernel, r.Machine.GoVersion)
	pin := "unpinned"
	if r.Pinned {
		pin = fmt.Sprintf("meshd on CPU %s (GOMAXPROCS=1), harness, backend and generator on CPU %s", r.MeshdCPUs, r.HarnessCPUs)
	}
	fmt.Fprintf(w, "generator: %s; %s; %d round(s) of %v after %v warm-up, medians shown; clock %d ticks/s (%s)\n",
		r.Generator, pin, r.Options.Rounds, r.Options.Duration, r.Options.Warmup, r.ClockTicks, r.ClockSource)
	fmt.Fprintf(w, "meshd RSS idle: %.1f MiB\n\n", r.ProxyRSSIdleMB)

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\ttarget\treq/s\tp50 ms\tp99 ms\tproxy CPU-s/100k\tproxy RSS MiB\tbackend CPU-s/100k\terrors\t")
	for _, row := range r.Summary {
		fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.3f\t%.3f\t%s\t%s\t%.2f\t%d\t\n",
			row.Scenario, row.Target, row.RPS, row.P50Ms, row.P99Ms,
			fmtOpt(row.ProxyCPUPer100k, 2), fmtOpt(row.ProxyRSSLoadedMB, 1), row.BackendCPUPer100k, row.Errors)
	}
	tw.Flush()

	fmt.Fprintln(w, "\nmeshd / direct (medians):")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\treq/s\tp50\tp99\t")
	for _, q := range r.Ratios {
		fmt.Fprintf(tw, "%s\t%.2f\t%.2f\t%.2f\t\n", q.Scenario, q.RPS, q.P50, q.P99)
	}
	tw.Flush()
	fmt.Fprintln(w, "\nreference, proxy CPU-s per 100k gRPC unary 1 KiB (test/bench/README.md): nghttpx 2.30, HAProxy 3.92, nginx 9.70, Go ReverseProxy 23.2")
}

// writeReport writes r as indented JSON into dir (created if needed) and
// returns the file's path.
func writeReport(dir string, r *report) (string, error) {
	if dir == "" {
		dir = r.Options.OutDir
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("results dir: %w", err)
	}
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
