package stats

import (
	"bytes"
	"encoding/json"
	"regexp"
	"testing"
)

// smallStore is the store the exposition tests print: a cluster and a
// connection manager scope, a zero counter, a used and an empty histogram,
// and a label value that needs escaping.
func smallStore() *Store {
	s := NewStore()
	cluster := s.Root().Scope("cluster").Tagged("envoy_cluster_name", "backend")
	cluster.Counter("upstream_rq_total").Add(3)
	cluster.Counter("upstream_cx_connect_fail") // stays 0
	cluster.Gauge("upstream_cx_active").Set(2)
	cluster.Histogram("upstream_rq_time").Record(0.3)
	cluster.Histogram("upstream_cx_length_ms") // no values
	http := s.Root().Scope("http").Tagged("envoy_http_conn_manager_prefix", `in"gress`)
	http.Counter("downstream_rq_total").Add(5)
	http.Gauge("downstream_cx_active").Set(-1)
	return s
}

func TestWriteText(t *testing.T) {
	hist := "cluster.backend.upstream_rq_time: P0(nan,0) P25(nan,0.125) P50(nan,0.25) P75(nan,0.375) " +
		"P90(nan,0.45) P95(nan,0.475) P99(nan,0.495) P99.5(nan,0.4975) P99.9(nan,0.4995) P100(nan,0.5)\n"
	tests := []struct {
		name   string
		filter Filter
		want   string
	}{
		{
			name: "all",
			want: "cluster.backend.upstream_cx_active: 2\n" +
				"cluster.backend.upstream_cx_connect_fail: 0\n" +
				"cluster.backend.upstream_rq_total: 3\n" +
				"http.in\"gress.downstream_cx_active: -1\n" +
				"http.in\"gress.downstream_rq_total: 5\n" +
				"cluster.backend.upstream_cx_length_ms: No recorded values\n" +
				hist,
		},
		{
			name:   "usedonly",
			filter: Filter{UsedOnly: true},
			want: "cluster.backend.upstream_cx_active: 2\n" +
				"cluster.backend.upstream_rq_total: 3\n" +
				"http.in\"gress.downstream_cx_active: -1\n" +
				"http.in\"gress.downstream_rq_total: 5\n" +
				hist,
		},
		{
			name:   "filter is an unanchored search",
			filter: Filter{Regexp: regexp.MustCompile(`rq_t`)},
			want: "cluster.backend.upstream_rq_total: 3\n" +
				"http.in\"gress.downstream_rq_total: 5\n" +
				hist,
		},
		{
			name:   "filter and usedonly",
			filter: Filter{Regexp: regexp.MustCompile(`^cluster\.`), UsedOnly: true},
			want: "cluster.backend.upstream_cx_active: 2\n" +
				"cluster.backend.upstream_rq_total: 3\n" +
				hist,
		},
		{
			name:   "nothing matches",
			filter: Filter{Regexp: regexp.MustCompile(`^nope$`)},
			want:   "",
		},
	}
	s := smallStore()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := s.WriteText(&b, tc.filter); err != nil {
				t.Fatalf("WriteText: %v", err)
			}
			if got := b.String(); got != tc.want {
				t.Errorf("WriteText got:\n%s\nwant:\n%s", got, tc.want)
			}
		})
	}
}

func TestWriteJSON(t *testing.T) {
	tests := []struct {
		name   string
		filter Filter
		want   string
	}{
		{
			name:   "counters, gauges and histograms",
			filter: Filter{Regexp: regexp.MustCompile(`^cluster\.`)},
			want: `{"stats":[` +
				`{"name":"cluster.backend.upstream_cx_active","value":2},` +
				`{"name":"cluster.backend.upstream_cx_connect_fail","value":0},` +
				`{"name":"cluster.backend.upstream_rq_total","value":3},` +
				`{"histograms":{"supported_quantiles":[0,25,50,75,90,95,99,99.5,99.9,100],"computed_quantiles":[` +
				`{"name":"cluster.backend.upstream_cx_length_ms","values":[` +
				`{"interval":null,"cumulative":null},{"interval":null,"cumulative":null},` +
				`{"interval":null,"cumulative":null},{"interval":null,"cumulative":null},` +
				`{"interval":null,"cumulative":null},{"interval":null,"cumulative":null},` +
				`{"interval":null,"cumulative":null},{"interval":null,"cumulative":null},` +
				`{"interval":null,"cumulative":null},{"interval":null,"cumulative":null}]},` +
				`{"name":"cluster.backend.upstream_rq_time","values":[` +
				`{"interval":null,"cumulative":0},{"interval":null,"cumulative":0.125},` +
				`{"interval":null,"cumulative":0.25},{"interval":null,"cumulative":0.375},` +
				`{"interval":null,"cumulative":0.45},{"interval":null,"cumulative":0.475},` +
				`{"interval":null,"cumulative":0.495},{"interval":null,"cumulative":0.4975},` +
				`{"interval":null,"cumulative":0.4995},{"interval":null,"cumulative":0.5}]}]}}]}` + "\n",
		},
		{
			name:   "no histogram element without histograms; names escaped",
			filter: Filter{Regexp: regexp.MustCompile(`^http\.`)},
			want: `{"stats":[` +
				`{"name":"http.in\"gress.downstream_cx_active","value":-1},` +
				`{"name":"http.in\"gress.downstream_rq_total","value":5}]}` + "\n",
		},
		{
			name:   "empty",
			filter: Filter{Regexp: regexp.MustCompile(`^nope$`)},
			want:   `{"stats":[]}` + "\n",
		},
	}
	s := smallStore()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := s.WriteJSON(&b, tc.filter); err != nil {
				t.Fatalf("WriteJSON: %v", err)
			}
			if got := b.String(); got != tc.want {
				t.Errorf("WriteJSON got:\n%s\nwant:\n%s", got, tc.want)
			}
			if !json.Valid(b.Bytes()) {
				t.Errorf("WriteJSON output is not valid JSON")
			}
		})
	}
}

func TestFormatFloat(t *testing.T) {
	tests := []struct {
		in   float64
		want string
	}{
		{0, "0"},
		{0.5, "0.5"},
		{3600000, "3600000"},
		{12.25, "12.25"},
		{1e21, "1e+21"},
		{1e-7, "1e-07"},
		{-2.5, "-2.5"},
	}
	for _, tc := range tests {
		if got := formatFloat(tc.in); got != tc.want {
			t.Errorf("formatFloat(%v) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
