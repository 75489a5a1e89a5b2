package stats

import (
	"bufio"
	"encoding/json"
	"io"
	"math"
	"regexp"
	"sort"
	"strconv"
)

// Filter selects the metrics an exposition shows, as the query parameters
// of Envoy's /stats do. The zero Filter selects every metric.
type Filter struct {
	// Regexp, when set, keeps the metrics whose flat name it matches
	// anywhere (Envoy's ?filter=, an unanchored search).
	Regexp *regexp.Regexp
	// UsedOnly keeps the metrics that have been written (Envoy's
	// ?usedonly). meshd does not keep a separate "used" bit, so a metric
	// counts as used when it holds a value: a counter above zero, a gauge
	// other than zero, a histogram with at least one recorded value.
	UsedOnly bool
}

func (f Filter) keep(name string, used bool) bool {
	if f.UsedOnly && !used {
		return false
	}
	return f.Regexp == nil || f.Regexp.MatchString(name)
}

// quantiles are the quantiles Envoy's /stats prints for each histogram:
// the percentage as printed and the fraction (written out rather than
// divided, so 99.9 is exactly the double nearest 0.999).
var quantiles = [...]struct {
	percent  float64
	label    string
	fraction float64
}{
	{0, "0", 0}, {25, "25", 0.25}, {50, "50", 0.5}, {75, "75", 0.75},
	{90, "90", 0.9}, {95, "95", 0.95}, {99, "99", 0.99},
	{99.5, "99.5", 0.995}, {99.9, "99.9", 0.999}, {100, "100", 1},
}

// scalar is a counter or gauge reduced to what the text formats print.
type scalar struct {
	name  string
	value string
}

// scalars returns the selected counters and gauges merged and sorted by
// flat name, and the selected histograms sorted by flat name, as Envoy's
// /stats lists them.
func (s *Store) scalars(f Filter) ([]scalar, []*Histogram) {
	var out []scalar
	var hists []*Histogram
	s.Visit(
		func(c *Counter) {
			v := c.Value()
			if f.keep(c.flat, v != 0) {
				out = append(out, scalar{c.flat, strconv.FormatUint(v, 10)})
			}
		},
		func(g *Gauge) {
			v := g.Value()
			if f.keep(g.flat, v != 0) {
				out = append(out, scalar{g.flat, strconv.FormatInt(v, 10)})
			}
		},
		func(h *Histogram) {
			if f.keep(h.flat, h.count.Load() != 0) {
				hists = append(hists, h)
			}
		},
	)
	sort.SliceStable(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out, hists
}

// WriteText writes the selected metrics in the text format of Envoy's
// /stats: one "name: value" line per counter and gauge, sorted by name,
// then one line per histogram with its quantiles in Envoy's
// "P0(interval,cumulative) P25(...)" form. meshd histograms are
// cumulative only, so the interval value is always "nan"; quantiles are
// interpolated inside Bounds buckets, so they are as precise as the bucket
// that holds them. A histogram without values prints "No recorded values".
func (s *Store) WriteText(w io.Writer, f Filter) error {
	bw := bufio.NewWriter(w)
	scalars, hists := s.scalars(f)
	for _, sc := range scalars {
		bw.WriteString(sc.name)
		bw.WriteString(": ")
		bw.WriteString(sc.value)
		bw.WriteByte('\n')
	}
	for _, h := range hists {
		bw.WriteString(h.flat)
		bw.WriteString(": ")
		snap := h.Snapshot()
		if snap.total() == 0 {
			bw.WriteString("No recorded values\n")
			continue
		}
		for i, q := range quantiles {
			if i > 0 {
				bw.WriteByte(' ')
			}
			bw.WriteByte('P')
			bw.WriteString(q.label)
			bw.WriteString("(nan,")
			bw.WriteString(formatFloat(snap.Quantile(q.fraction)))
			bw.WriteByte(')')
		}
		bw.WriteByte('\n')
	}
	return bw.Flush()
}

// jsonStat is one counter or gauge of Envoy's /stats?format=json.
type jsonStat struct {
	Name  string          `json:"name"`
	Value json.RawMessage `json:"value"`
}

// jsonQuantile is one of a histogram's computed quantiles; nil is null.
type jsonQuantile struct {
	Interval   *float64 `json:"interval"`
	Cumulative *float64 `json:"cumulative"`
}

type jsonHistogram struct {
	Name   string         `json:"name"`
	Values []jsonQuantile `json:"values"`
}

type jsonHistograms struct {
	SupportedQuantiles []float64       `json:"supported_quantiles"`
	ComputedQuantiles  []jsonHistogram `json:"computed_quantiles"`
}

// WriteJSON writes the selected metrics in the shape of Envoy's
// /stats?format=json: {"stats":[{"name":..,"value":..},...]}, counters and
// gauges sorted by name, followed, when any histogram is selected, by one
// {"histograms":{"supported_quantiles":[...],"computed_quantiles":[...]}}
// element whose quantile values have "interval": null (meshd histograms are
// cumulative only) and "cumulative": null for an empty histogram.
func (s *Store) WriteJSON(w io.Writer, f Filter) error {
	scalars, hists := s.scalars(f)
	stats := make([]any, 0, len(scalars)+1)
	for _, sc := range scalars {
		stats = append(stats, jsonStat{Name: sc.name, Value: json.RawMessage(sc.value)})
	}
	if len(hists) > 0 {
		jh := jsonHistograms{
			SupportedQuantiles: make([]float64, len(quantiles)),
			ComputedQuantiles:  make([]jsonHistogram, 0, len(hists)),
		}
		for i, q := range quantiles {
			jh.SupportedQuantiles[i] = q.percent
		}
		for _, h := range hists {
			snap := h.Snapshot()
			vals := make([]jsonQuantile, len(quantiles))
			if snap.total() != 0 {
				for i, q := range quantiles {
					v := snap.Quantile(q.fraction)
					vals[i].Cumulative = &v
				}
			}
			jh.ComputedQuantiles = append(jh.ComputedQuantiles, jsonHistogram{Name: h.flat, Values: vals})
		}
		stats = append(stats, map[string]jsonHistograms{"histograms": jh})
	}
	return json.NewEncoder(w).Encode(struct {
		Stats []any `json:"stats"`
	}{stats})
}

// total is the number of values in the snapshot's buckets; unlike Count it
// always agrees with the buckets, which are read one by one.
func (s HistogramSnapshot) total() uint64 {
	var n uint64
	for _, b := range s.Buckets {
		n += b
	}
	return n
}

// formatFloat prints v in the shortest form that reads back as v; NaN and
// infinities as Prometheus spells them.
func formatFloat(v float64) string {
	switch {
	case math.IsNaN(v):
		return "NaN"
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	}
	if a := math.Abs(v); a != 0 && (a >= 1e21 || a < 1e-6) {
		return strconv.FormatFloat(v, 'e', -1, 64)
	}
	return strconv.FormatFloat(v, 'f', -1, 64)
}
