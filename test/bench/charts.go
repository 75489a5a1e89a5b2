package main

import (
	"fmt"
	"math"
	"path/filepath"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// Chart geometry.
const (
	chartHeight = 5 * vg.Inch
	// chartWidthPerBar widens a chart with the number of bars, within
	// [chartMinWidth, chartMaxWidth].
	chartWidthPerBar = 0.22 * vg.Inch
	chartMinWidth    = 7 * vg.Inch
	chartMaxWidth    = 18 * vg.Inch
)

// chartWidth returns the width for n bars.
func chartWidth(n int) vg.Length {
	return min(max(chartMinWidth, vg.Length(n)*chartWidthPerBar), chartMaxWidth)
}

// series is one bar colour of a grouped bar chart: a value per group, NaN
// where it has none (drawn as no bar).
type series struct {
	Name   string
	Values []float64
}

// groupedBars draws series side by side within each of groups and saves the
// chart as a PNG at path.
func groupedBars(path, title, yLabel string, groups []string, ss []series) error {
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = yLabel
	p.Y.Min = 0
	p.Legend.Top = true
	p.NominalX(groups...)
	const groupWidth = 0.8 // of the unit between groups
	bw := vg.Points(12)
	if len(ss) > 0 {
		bw = vg.Length(float64(chartWidth(len(groups)*len(ss))) * groupWidth / float64(len(groups)*len(ss)+len(groups)))
	}
	top := 0.0
	for _, s := range ss {
		for _, v := range s.Values {
			if !math.IsNaN(v) {
				top = max(top, v)
			}
		}
	}
	if top > 0 {
		p.Y.Max = top * 1.2 // room for the legend above the bars
	}
	for i, s := range ss {
		vals := make(plotter.Values, len(s.Values))
		for j, v := range s.Values {
			if math.IsNaN(v) {
				v = 0 // no bar
			}
			vals[j] = v
		}
		bars, err := plotter.NewBarChart(vals, bw)
		if err != nil {
			return fmt.Errorf("chart %s: series %s: %w", title, s.Name, err)
		}
		bars.LineStyle.Width = vg.Length(0)
		bars.Color = plotutil.Color(i)
		bars.Offset = vg.Length(float64(i)-float64(len(ss)-1)/2) * bw
		p.Add(bars)
		p.Legend.Add(s.Name, bars)
	}
	if err := p.Save(chartWidth(len(groups)*len(ss)), chartHeight, path); err != nil {
		return fmt.Errorf("chart %s: save %s: %w", title, path, err)
	}
	return nil
}

// writeCharts draws the report's summary as PNGs into dir, named with
// stamp, and returns their paths: proxy CPU-seconds per 100k requests by
// target for every scenario (one chart), and for each scenario the latency
// percentiles (p50, p99, p99.9) by target.
func writeCharts(dir, stamp string, rows []summaryRow, scenarios []scenario) ([]string, error) {
	var paths []string
	var groups []string
	var targets []string
	for _, s := range scenarios {
		if slices.ContainsFunc(rows, func(r summaryRow) bool { return r.Scenario == s.Name && r.ProxyCPUPer100k != nil }) {
			groups = append(groups, s.Name)
		}
	}
	for _, r := range rows {
		if r.ProxyCPUPer100k != nil && !slices.Contains(targets, r.Target) {
			targets = append(targets, r.Target)
		}
	}
	if len(groups) > 0 {
		var ss []series
		for _, t := range targets {
			s := series{Name: t}
			for _, g := range groups {
				v := math.NaN()
				for _, r := range rows {
					if r.Scenario == g && r.Target == t && r.ProxyCPUPer100k != nil {
						v = *r.ProxyCPUPer100k
					}
				}
				s.Values = append(s.Values, v)
			}
			ss = append(ss, s)
		}
		path := filepath.Join(dir, "bench-"+stamp+"-cpu.png")
		if err := groupedBars(path, "Proxy CPU per 100k requests (lower is better)", "CPU-seconds per 100k requests", groups, ss); err != nil {
			return nil, err
		}
		paths = append(paths, path)
	}
	for _, s := range scenarios {
		var names []string
		p50 := series{Name: "p50"}
		p99 := series{Name: "p99"}
		p999 := series{Name: "p99.9"}
		for _, r := range rows {
			if r.Scenario != s.Name {
				continue
			}
			names = append(names, r.Target)
			p50.Values = append(p50.Values, r.P50Ms)
			p99.Values = append(p99.Values, r.P99Ms)
			p999.Values = append(p999.Values, r.P999Ms)
		}
		if len(names) == 0 {
			continue
		}
		path := filepath.Join(dir, "bench-"+stamp+"-latency-"+s.Name+".png")
		title := fmt.Sprintf("Latency by target: %s (%s)", s.Name, s.requests())
		if err := groupedBars(path, title, "milliseconds", names, []series{p50, p99, p999}); err != nil {
			return nil, err
		}
		paths = append(paths, path)
	}
	return paths, nil
}
