package stats

import (
	"bufio"
	"io"
	"sort"
	"strconv"
	"strings"
)

// promGroup is every series of one Prometheus metric name.
type promGroup[T any] struct {
	name    string
	metrics []T
}

// groupByProm groups metrics by Prometheus name, groups sorted by name and
// metrics inside a group in visiting (flat name) order.
func groupByProm[T interface{ PromName() string }](ms []T) []promGroup[T] {
	idx := map[string]int{}
	var groups []promGroup[T]
	for _, m := range ms {
		n := m.PromName()
		i, ok := idx[n]
		if !ok {
			i = len(groups)
			idx[n] = i
			groups = append(groups, promGroup[T]{name: n})
		}
		groups[i].metrics = append(groups[i].metrics, m)
	}
	sort.Slice(groups, func(i, j int) bool { return groups[i].name < groups[j].name })
	return groups
}

// WritePrometheus writes the selected metrics in the Prometheus text
// exposition format as Envoy's /stats/prometheus does: counters, then gauges,
// then histograms, each kind grouped by Prometheus name in name order, every
// group led by one "# TYPE" line; label values escaped; histograms as
// cumulative "_bucket" series with Envoy's Bounds as "le" (and "+Inf"), then
// "_sum" and "_count". The filter applies to flat names, as Envoy's does.
//
// The output always parses: a series whose name and labels repeat one
// already written, or whose name was already used by another kind of
// metric, is left out, since Prometheus rejects the whole scrape otherwise.
// Such a clash only arises from scope names that differ in characters the
// Prometheus name replaces with '_'.
func (s *Store) WritePrometheus(w io.Writer, f Filter) error {
	var cs []*Counter
	var gs []*Gauge
	var hs []*Histogram
	s.Visit(
		func(c *Counter) {
			if f.keep(c.flat, c.Value() != 0) {
				cs = append(cs, c)
			}
		},
		func(g *Gauge) {
			if f.keep(g.flat, g.Value() != 0) {
				gs = append(gs, g)
			}
		},
		func(h *Histogram) {
			if f.keep(h.flat, h.count.Load() != 0) {
				hs = append(hs, h)
			}
		},
	)
	pw := promWriter{
		w:      bufio.NewWriter(w),
		names:  map[string]bool{},
		series: map[string]bool{},
	}
	for _, g := range groupByProm(cs) {
		if pw.claim(g.name) {
			pw.typeLine(g.name, "counter")
			for _, c := range g.metrics {
				if pw.begin(g.name, c.tags, "") {
					pw.buf = strconv.AppendUint(pw.buf, c.Value(), 10)
					pw.end()
				}
			}
		}
	}
	for _, g := range groupByProm(gs) {
		if pw.claim(g.name) {
			pw.typeLine(g.name, "gauge")
			for _, m := range g.metrics {
				if pw.begin(g.name, m.tags, "") {
					pw.buf = strconv.AppendInt(pw.buf, m.Value(), 10)
					pw.end()
				}
			}
		}
	}
	for _, g := range groupByProm(hs) {
		if !pw.claim(g.name, g.name+"_bucket", g.name+"_sum", g.name+"_count") {
			continue
		}
		pw.typeLine(g.name, "histogram")
		for _, h := range g.metrics {
			pw.histogram(g.name, h)
		}
	}
	return pw.w.Flush()
}

type promWriter struct {
	w      *bufio.Writer
	names  map[string]bool // metric names already given a TYPE
	series map[string]bool // name{labels} already written
	buf    []byte
}

// claim reserves the names for one group; false when any is taken.
func (p *promWriter) claim(names ...string) bool {
	for _, n := range names {
		if p.names[n] {
			return false
		}
	}
	for _, n := range names {
		p.names[n] = true
	}
	return true
}

func (p *promWriter) typeLine(name, typ string) {
	p.w.WriteString("# TYPE ")
	p.w.WriteString(name)
	p.w.WriteByte(' ')
	p.w.WriteString(typ)
	p.w.WriteByte('\n')
}

// seriesKey appends name{labels} to p.buf, le last when given.
func (p *promWriter) seriesKey(name string, tags []Tag, le string) {
	p.buf = append(p.buf[:0], name...)
	if len(tags) == 0 && le == "" {
		return
	}
	p.buf = append(p.buf, '{')
	for i, t := range tags {
		if i > 0 {
			p.buf = append(p.buf, ',')
		}
		p.buf = appendLabelName(p.buf, t.Name)
		p.buf = append(p.buf, '=', '"')
		p.buf = appendLabelValue(p.buf, t.Value)
		p.buf = append(p.buf, '"')
	}
	if le != "" {
		if len(tags) > 0 {
			p.buf = append(p.buf, ',')
		}
		p.buf = append(p.buf, `le="`...)
		p.buf = append(p.buf, le...)
		p.buf = append(p.buf, '"')
	}
	p.buf = append(p.buf, '}')
}

// begin starts the line of one series in p.buf, up to the space before the
// value; false when the series was written before and must be skipped.
func (p *promWriter) begin(name string, tags []Tag, le string) bool {
	p.seriesKey(name, tags, le)
	if p.series[string(p.buf)] {
		return false
	}
	p.series[string(p.buf)] = true
	p.buf = append(p.buf, ' ')
	return true
}

// end writes the line begun by begin, whose value has been appended.
func (p *promWriter) end() {
	p.buf = append(p.buf, '\n')
	p.w.Write(p.buf)
}

func (p *promWriter) histogram(name string, h *Histogram) {
	snap := h.Snapshot()
	bucket := name + "_bucket"
	var cum uint64
	for i, b := range snap.Buckets {
		cum += b
		le := "+Inf"
		if i < len(Bounds) {
			le = formatFloat(Bounds[i])
		}
		if !p.begin(bucket, h.tags, le) {
			return // a duplicate series: the claim on the name prevents a partial one
		}
		p.buf = strconv.AppendUint(p.buf, cum, 10)
		p.end()
	}
	if p.begin(name+"_sum", h.tags, "") {
		p.buf = append(p.buf, formatFloat(snap.Sum)...)
		p.end()
	}
	// _count is the +Inf bucket, so the two always agree even while values
	// are being recorded.
	if p.begin(name+"_count", h.tags, "") {
		p.buf = strconv.AppendUint(p.buf, cum, 10)
		p.end()
	}
}

// appendLabelName appends a label name with every character Prometheus
// does not allow replaced by '_'.
func appendLabelName(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c == '_' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || i > 0 && '0' <= c && c <= '9'
		if !ok {
			c = '_'
		}
		b = append(b, c)
	}
	if len(s) == 0 {
		b = append(b, '_')
	}
	return b
}

var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

// appendLabelValue appends a label value escaped as the exposition format
// requires: backslash, double quote and newline.
func appendLabelValue(b []byte, s string) []byte {
	if !strings.ContainsAny(s, "\\\"\n") {
		return append(b, s...)
	}
	return append(b, labelEscaper.Replace(s)...)
}
