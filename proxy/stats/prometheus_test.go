package stats

import (
	"bufio"
	"bytes"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// envoyLE are Envoy's default histogram bounds as /stats/prometheus prints
// them in "le".
var envoyLE = []string{"0.5", "1", "5", "10", "25", "50", "100", "250", "500", "1000", "2500",
	"5000", "10000", "30000", "60000", "300000", "600000", "1800000", "3600000", "+Inf"}

// bucketLines are the _bucket lines of a histogram whose cumulative count
// is zero below le index from and n from there on.
func bucketLines(name, labels string, from int, n uint64) string {
	var b strings.Builder
	for i, le := range envoyLE {
		var v uint64
		if i >= from {
			v = n
		}
		fmt.Fprintf(&b, "%s_bucket{%s,le=\"%s\"} %d\n", name, labels, le, v)
	}
	return b.String()
}

func TestWritePrometheus(t *testing.T) {
	const cl = `envoy_cluster_name="backend"`
	const hcm = `envoy_http_conn_manager_prefix="in\"gress"`
	counters := "# TYPE envoy_cluster_upstream_cx_connect_fail counter\n" +
		"envoy_cluster_upstream_cx_connect_fail{" + cl + "} 0\n" +
		"# TYPE envoy_cluster_upstream_rq_total counter\n" +
		"envoy_cluster_upstream_rq_total{" + cl + "} 3\n" +
		"# TYPE envoy_http_downstream_rq_total counter\n" +
		"envoy_http_downstream_rq_total{" + hcm + "} 5\n"
	gauges := "# TYPE envoy_cluster_upstream_cx_active gauge\n" +
		"envoy_cluster_upstream_cx_active{" + cl + "} 2\n" +
		"# TYPE envoy_http_downstream_cx_active gauge\n" +
		"envoy_http_downstream_cx_active{" + hcm + "} -1\n"
	emptyHist := "# TYPE envoy_cluster_upstream_cx_length_ms histogram\n" +
		bucketLines("envoy_cluster_upstream_cx_length_ms", cl, 0, 0) +
		"envoy_cluster_upstream_cx_length_ms_sum{" + cl + "} 0\n" +
		"envoy_cluster_upstream_cx_length_ms_count{" + cl + "} 0\n"
	rqTime := "# TYPE envoy_cluster_upstream_rq_time histogram\n" +
		bucketLines("envoy_cluster_upstream_rq_time", cl, 0, 1) +
		"envoy_cluster_upstream_rq_time_sum{" + cl + "} 0.3\n" +
		"envoy_cluster_upstream_rq_time_count{" + cl + "} 1\n"

	tests := []struct {
		name   string
		filter Filter
		want   string
	}{
		{name: "all", want: counters + gauges + emptyHist + rqTime},
		{
			name:   "usedonly",
			filter: Filter{UsedOnly: true},
			want: "# TYPE envoy_cluster_upstream_rq_total counter\n" +
				"envoy_cluster_upstream_rq_total{" + cl + "} 3\n" +
				"# TYPE envoy_http_downstream_rq_total counter\n" +
				"envoy_http_downstream_rq_total{" + hcm + "} 5\n" +
				gauges + rqTime,
		},
		{
			name:   "filter on flat names",
			filter: Filter{Regexp: regexp.MustCompile(`^http\.in"gress\.`)},
			want: "# TYPE envoy_http_downstream_rq_total counter\n" +
				"envoy_http_downstream_rq_total{" + hcm + "} 5\n" +
				"# TYPE envoy_http_downstream_cx_active gauge\n" +
				"envoy_http_downstream_cx_active{" + hcm + "} -1\n",
		},
	}
	s := smallStore()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := s.WritePrometheus(&b, tc.filter); err != nil {
				t.Fatalf("WritePrometheus: %v", err)
			}
			if got := b.String(); got != tc.want {
				t.Errorf("WritePrometheus got:\n%s\nwant:\n%s", got, tc.want)
			}
			checkExposition(t, b.String())
		})
	}
}

func TestWritePrometheusGroupsAndEscapes(t *testing.T) {
	s := NewStore()
	cluster := s.Root().Scope("cluster")
	// Visited in flat-name order: a, b\c, z; grouped under one TYPE line.
	cluster.Tagged("envoy_cluster_name", "z").Counter("upstream_rq_total").Add(1)
	cluster.Tagged("envoy_cluster_name", "a").Counter("upstream_rq_total").Add(2)
	cluster.Tagged("envoy_cluster_name", `b\c`+"\n").Counter("upstream_rq_total").Add(3)
	// Characters Prometheus forbids in names and label names become '_'.
	s.Root().Scope("listener").Tagged("envoy.listener-address", "127.0.0.1_80").Counter("downstream_cx_total").Inc()
	// Two flat names with one Prometheus series, and a gauge reusing a
	// counter's name: the later ones are left out so the scrape parses.
	s.Root().Scope("a.b").Counter("c").Inc()
	s.Root().Scope("a_b").Counter("c").Add(7)
	s.Root().Gauge("a_b_c").Set(9)

	var b bytes.Buffer
	if err := s.WritePrometheus(&b, Filter{}); err != nil {
		t.Fatalf("WritePrometheus: %v", err)
	}
	want := "# TYPE envoy_a_b_c counter\n" +
		"envoy_a_b_c 1\n" +
		"# TYPE envoy_cluster_upstream_rq_total counter\n" +
		`envoy_cluster_upstream_rq_total{envoy_cluster_name="a"} 2` + "\n" +
		`envoy_cluster_upstream_rq_total{envoy_cluster_name="b\\c\n"} 3` + "\n" +
		`envoy_cluster_upstream_rq_total{envoy_cluster_name="z"} 1` + "\n" +
		"# TYPE envoy_listener_downstream_cx_total counter\n" +
		`envoy_listener_downstream_cx_total{envoy_listener_address="127.0.0.1_80"} 1` + "\n"
	if got := b.String(); got != want {
		t.Errorf("WritePrometheus got:\n%s\nwant:\n%s", got, want)
	}
	checkExposition(t, b.String())
}

// checkExposition is a small promtool-style check of the text exposition
// format: every line is a TYPE comment or a sample "name{labels} value";
// each name has exactly one TYPE, before its samples, and its samples are
// contiguous; no series repeats; histogram buckets are cumulative with a
// final +Inf bucket equal to _count.
func checkExposition(t reporter, text string) {
	t.Helper()
	var (
		nameRE     = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*$`)
		labelRE    = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)
		types      = map[string]string{}
		done       = map[string]bool{} // families whose samples have ended
		series     = map[string]bool{}
		current    string
		lastBucket = map[string]float64{} // series without le → last cumulative count
		infBucket  = map[string]float64{}
	)
	sc := bufio.NewScanner(strings.NewReader(text))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "# "); ok {
			f := strings.Fields(rest)
			if len(f) != 3 || f[0] != "TYPE" {
				t.Errorf("line %d: bad comment %q", n, line)
				continue
			}
			if !nameRE.MatchString(f[1]) {
				t.Errorf("line %d: bad metric name %q", n, f[1])
			}
			switch f[2] {
			case "counter", "gauge", "histogram":
			default:
				t.Errorf("line %d: bad type %q", n, f[2])
			}
			if _, dup := types[f[1]]; dup {
				t.Errorf("line %d: second TYPE for %s", n, f[1])
			}
			types[f[1]] = f[2]
			if current != "" {
				done[current] = true
			}
			current = f[1]
			continue
		}
		name, labels, value, err := parseSample(line)
		if err != nil {
			t.Errorf("line %d: %v: %q", n, err, line)
			continue
		}
		if !nameRE.MatchString(name) {
			t.Errorf("line %d: bad metric name %q", n, name)
		}
		family := name
		if types[family] == "" {
			for _, suf := range []string{"_bucket", "_sum", "_count"} {
				if base, ok := strings.CutSuffix(name, suf); ok && types[base] == "histogram" {
					family = base
				}
			}
		}
		if types[family] == "" {
			t.Errorf("line %d: sample of %s without a TYPE", n, name)
		}
		if family != current || done[family] {
			t.Errorf("line %d: sample of %s outside its group", n, name)
		}
		var le string
		var rest []string
		for _, l := range labels {
			if !labelRE.MatchString(l[0]) {
				t.Errorf("line %d: bad label name %q", n, l[0])
			}
			if l[0] == "le" && strings.HasSuffix(name, "_bucket") {
				le = l[1]
				continue
			}
			rest = append(rest, l[0]+"="+l[1])
		}
		key := name + "{" + strings.Join(rest, ",") + "}"
		if series[key+le] {
			t.Errorf("line %d: repeated series %s", n, key+le)
		}
		series[key+le] = true
		switch {
		case strings.HasSuffix(name, "_bucket") && types[family] == "histogram":
			hkey := family + strings.TrimPrefix(key, name)
			if value < lastBucket[hkey] {
				t.Errorf("line %d: bucket count decreases", n)
			}
			lastBucket[hkey] = value
			if le == "+Inf" {
				infBucket[hkey] = value
			}
		case strings.HasSuffix(name, "_count") && types[family] == "histogram":
			hkey := family + strings.TrimPrefix(key, name)
			if inf, ok := infBucket[hkey]; !ok || inf != value {
				t.Errorf("line %d: _count %v does not match the +Inf bucket (%v, present %v)", n, value, inf, ok)
			}
		}
	}
}

// reporter is the part of testing.T checkExposition uses, so its own test
// can record failures.
type reporter interface {
	Helper()
	Errorf(format string, args ...any)
}

type recorder struct{ errs []string }

func (r *recorder) Helper() {}
func (r *recorder) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

// parseSample splits `name{a="x",b="y"} value`, unescaping label values.
func parseSample(line string) (name string, labels [][2]string, value float64, err error) {
	i := strings.IndexAny(line, "{ ")
	if i <= 0 {
		return "", nil, 0, fmt.Errorf("no name")
	}
	name, line = line[:i], line[i:]
	if line[0] == '{' {
		line = line[1:]
		for {
			eq := strings.IndexByte(line, '=')
			if eq <= 0 || len(line) < eq+2 || line[eq+1] != '"' {
				return "", nil, 0, fmt.Errorf("bad label")
			}
			lname := line[:eq]
			line = line[eq+2:]
			var v strings.Builder
			closed := false
			for j := 0; j < len(line); j++ {
				c := line[j]
				if c == '\\' {
					if j+1 == len(line) {
						return "", nil, 0, fmt.Errorf("dangling escape")
					}
					j++
					switch line[j] {
					case '\\', '"':
						v.WriteByte(line[j])
					case 'n':
						v.WriteByte('\n')
					default:
						return "", nil, 0, fmt.Errorf("bad escape \\%c", line[j])
					}
					continue
				}
				if c == '\n' {
					return "", nil, 0, fmt.Errorf("raw newline in label value")
				}
				if c == '"' {
					line = line[j+1:]
					closed = true
					break
				}
				v.WriteByte(c)
			}
			if !closed {
				return "", nil, 0, fmt.Errorf("unterminated label value")
			}
			labels = append(labels, [2]string{lname, v.String()})
			if strings.HasPrefix(line, ",") {
				line = line[1:]
				continue
			}
			if strings.HasPrefix(line, "}") {
				line = line[1:]
				break
			}
			return "", nil, 0, fmt.Errorf("bad label list")
		}
	}
	v, ok := strings.CutPrefix(line, " ")
	if !ok || strings.ContainsAny(v, " \t") {
		return "", nil, 0, fmt.Errorf("bad value separator")
	}
	value, err = strconv.ParseFloat(v, 64)
	if err != nil {
		return "", nil, 0, fmt.Errorf("bad value: %w", err)
	}
	return name, labels, value, nil
}

func TestCheckExpositionRejects(t *testing.T) {
	// The checker is only worth something if it fails bad input.
	tests := []struct{ name, text string }{
		{"sample without TYPE", "envoy_x 1\n"},
		{"two TYPEs", "# TYPE envoy_x counter\n# TYPE envoy_x gauge\n"},
		{"unescaped quote", "# TYPE envoy_x counter\nenvoy_x{a=\"b\"c\"} 1\n"},
		{"bad value", "# TYPE envoy_x counter\nenvoy_x one\n"},
		{"repeated series", "# TYPE envoy_x counter\nenvoy_x{a=\"1\"} 1\nenvoy_x{a=\"1\"} 2\n"},
		{"split group", "# TYPE envoy_x counter\nenvoy_x 1\n# TYPE envoy_y counter\nenvoy_y 1\nenvoy_x{a=\"2\"} 1\n"},
		{"count mismatch", "# TYPE envoy_h histogram\nenvoy_h_bucket{le=\"+Inf\"} 2\nenvoy_h_sum 1\nenvoy_h_count 3\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var r recorder
			checkExposition(&r, tc.text)
			if len(r.errs) == 0 {
				t.Errorf("checkExposition accepted %q", tc.text)
			}
		})
	}
}
