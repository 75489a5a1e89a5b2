package main

import (
	"image/png"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"gonum.org/v1/plot/vg"
)

// TestWriteCharts draws the charts of a small summary and checks the files:
// one CPU chart over the scenarios with proxy figures and one latency chart
// per scenario, each a decodable PNG of the intended size.
func TestWriteCharts(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	sc := []scenario{allScenarios[0], allScenarios[1], allScenarios[3]}
	rows := []summaryRow{
		{Scenario: sc[0].Name, Target: targetDirect, P50Ms: 1, P99Ms: 2, P999Ms: 3},
		{Scenario: sc[0].Name, Target: targetMeshd, P50Ms: 2, P99Ms: 4, P999Ms: 6, ProxyCPUPer100k: f(5)},
		{Scenario: sc[0].Name, Target: targetNghttpx, P50Ms: 1.5, P99Ms: 3, P999Ms: 4, ProxyCPUPer100k: f(2.3)},
		// Only meshd ran the second scenario: nghttpx gets no bar there.
		{Scenario: sc[1].Name, Target: targetMeshd, P50Ms: 0.2, P99Ms: 0.4, P999Ms: 0.9, ProxyCPUPer100k: f(9)},
		// The third has no proxy figures: a latency chart only.
		{Scenario: sc[2].Name, Target: targetDirect, P50Ms: 0.1, P99Ms: 0.3, P999Ms: 0.5},
	}
	dir := t.TempDir()
	paths, err := writeCharts(dir, "20260101-000000", rows, sc)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"bench-20260101-000000-cpu.png",
		"bench-20260101-000000-latency-" + sc[0].Name + ".png",
		"bench-20260101-000000-latency-" + sc[1].Name + ".png",
		"bench-20260101-000000-latency-" + sc[2].Name + ".png",
	}
	var got []string
	for _, p := range paths {
		got = append(got, filepath.Base(p))
	}
	if !slices.Equal(got, want) {
		t.Fatalf("charts %v, want %v", got, want)
	}
	for _, p := range paths {
		file, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(file)
		file.Close()
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		// vg's PNG canvas draws at 96 dpi.
		if b := img.Bounds(); b.Dx() < int(chartMinWidth.Dots(96))-1 || b.Dy() != int(chartHeight.Dots(96)+0.5) {
			t.Errorf("%s: %dx%d pixels, want at least %.0f wide and %.0f high", p, b.Dx(), b.Dy(), chartMinWidth.Dots(96), chartHeight.Dots(96))
		}
	}
}

func TestChartWidth(t *testing.T) {
	tests := []struct {
		bars int
		want float64 // inches
	}{{0, 7}, {10, 7}, {40, 8.8}, {1000, 18}}
	for _, tt := range tests {
		if got := float64(chartWidth(tt.bars) / vg.Inch); got < tt.want-1e-9 || got > tt.want+1e-9 {
			t.Errorf("chartWidth(%d) = %v in, want %v", tt.bars, got, tt.want)
		}
	}
}
