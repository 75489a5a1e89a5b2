package doctor

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"meshd.dev/meshd/proxy/http/h2"
)

func TestParseProcAddr(t *testing.T) {
	tests := []struct{ in, want string }{
		{"0100007F:1F90", "127.0.0.1:8080"},
		{"00000000000000000000000001000000:0050", "[::1]:80"},
		{"0000000000000000FFFF00000100007F:1F90", "127.0.0.1:8080"}, // IPv4-mapped
	}
	for _, tt := range tests {
		got, err := parseProcAddr(tt.in)
		if err != nil || got.String() != tt.want {
			t.Errorf("parseProcAddr(%q) = %v, %v; want %s", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{"0100007F", "0100007F:XYZ", "01007F:1F90"} {
		if _, err := parseProcAddr(bad); err == nil {
			t.Errorf("parseProcAddr(%q) succeeded, want an error", bad)
		}
	}
}

func TestCountTimeWait(t *testing.T) {
	dir := t.TempDir()
	head := "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
	tcp := head +
		"   0: 0100007F:9C40 0100007F:1F90 06 00000000:00000000 03:00001770 00000000     0        0 0\n" + // TIME_WAIT to 127.0.0.1:8080
		"   1: 0100007F:9C41 0100007F:1F90 06 00000000:00000000 03:00001770 00000000     0        0 0\n" +
		"   2: 0100007F:1F90 0100007F:9C42 06 00000000:00000000 03:00001770 00000000     0        0 0\n" + // server side closed first
		"   3: 0100007F:9C43 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 0\n" + // ESTABLISHED
		"   4: 0100007F:9C44 0100007F:1F91 06 00000000:00000000 03:00001770 00000000     0        0 0\n" // another port
	tcp6 := head + "   0: 0000000000000000FFFF00000100007F:9C45 0000000000000000FFFF00000100007F:1F90 06 00000000:00000000 03:00001770 00000000     0        0 0\n"
	if err := os.WriteFile(filepath.Join(dir, "tcp"), []byte(tcp), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := CountTimeWait(dir, []string{"127.0.0.1:8080", "127.0.0.1:9999", "pipe"})
	if err != nil || got["127.0.0.1:8080"] != 3 || got["127.0.0.1:9999"] != 0 || len(got) != 2 {
		t.Errorf("without tcp6: %v, %v; want 3 for :8080, 0 for :9999", got, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tcp6"), []byte(tcp6), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := CountTimeWait(dir, []string{"127.0.0.1:8080"}); err != nil || got["127.0.0.1:8080"] != 4 {
		t.Errorf("with tcp6: %v, %v; want 4", got, err)
	}
	if _, err := CountTimeWait(filepath.Join(dir, "missing"), nil); err == nil {
		t.Error("CountTimeWait of a missing directory succeeded")
	}
}

// configDump is the shape of a meshd sidecar's /config_dump for a static
// bootstrap (protojson of envoy.admin.v3.ConfigDump), trimmed.
const configDump = `{"configs":[
 {"@type":"type.googleapis.com/envoy.admin.v3.ClustersConfigDump","static_clusters":[{"cluster":{
   "name":"backend","connect_timeout":"0.5s","outlier_detection":{},
   "circuit_breakers":{"thresholds":[{"max_connections":4,"max_pending_requests":16}]},
   "typed_extension_protocol_options":{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions":{
     "@type":"type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
     "common_http_protocol_options":{"idle_timeout":"300s","max_connection_duration":"1800s","max_requests_per_connection":1000},
     "explicit_http_config":{"http2_protocol_options":{"connection_keepalive":{"interval":"30s","timeout":"5s"}}}}}}},
  {"cluster":{"name":"legacy","typed_extension_protocol_options":{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions":{
     "explicit_http_config":{"http_protocol_options":{}}}}}}]},
 {"@type":"type.googleapis.com/envoy.admin.v3.ListenersConfigDump","static_listeners":[{"listener":{"filter_chains":[{"filters":[{"typed_config":{
   "route_config":{"virtual_hosts":[{"routes":[{"match":{"prefix":"/"},"route":{"cluster":"backend","timeout":"10s"}}]}]}}}]}]}}]}]}`

func TestParseConfigDump(t *testing.T) {
	got, err := parseConfigDump([]byte(configDump))
	if err != nil {
		t.Fatal(err)
	}
	b := got["backend"]
	want := ClusterConfig{Name: "backend", ConnectTimeout: 500 * time.Millisecond, IdleTimeout: 5 * time.Minute, IdleTimeoutSet: true,
		MaxConnectionDuration: 30 * time.Minute, MaxRequestsPerConnection: 1000, KeepaliveInterval: 30 * time.Second,
		MaxConnections: 4, MaxPendingRequests: 16, OutlierDetection: true, RouteTimeout: 10 * time.Second, RouteTimeoutSet: true}
	if b == nil || *b != want {
		t.Errorf("backend = %+v\nwant       %+v", b, want)
	}
	if l := got["legacy"]; l == nil || !l.HTTP1 || l.IdleTimeoutSet || l.RouteTimeoutSet {
		t.Errorf("legacy = %+v; want HTTP/1.1, nothing else set", l)
	}
	if _, err := parseConfigDump([]byte("{")); err == nil {
		t.Error("parseConfigDump of broken JSON succeeded")
	}
}

func TestParseStatsJSON(t *testing.T) {
	body := `{"stats":[{"name":"cluster.b.upstream_rq_total","value":12},{"name":"cluster.b.upstream_cx_active","value":-1},
	{"histograms":{"supported_quantiles":[0,25,50,75,90,95,99,99.5,99.9,100],"computed_quantiles":[
	 {"name":"cluster.b.upstream_rq_stream_wait_ms","values":[{"cumulative":0},{"cumulative":0},{"cumulative":1},{"cumulative":1},{"cumulative":2},{"cumulative":2},{"cumulative":250},{"cumulative":300},{"cumulative":300},{"cumulative":300}]},
	 {"name":"cluster.b.empty","values":[{"cumulative":null},{"cumulative":null},{"cumulative":null},{"cumulative":null},{"cumulative":null},{"cumulative":null},{"cumulative":null},{"cumulative":null},{"cumulative":null},{"cumulative":null}]}]}}]}`
	vals, p99, err := parseStatsJSON([]byte(body))
	if err != nil || vals["cluster.b.upstream_rq_total"] != 12 || vals["cluster.b.upstream_cx_active"] != -1 ||
		p99["cluster.b.upstream_rq_stream_wait_ms"] != 250 || len(p99) != 1 {
		t.Errorf("parseStatsJSON = %v, %v, %v", vals, p99, err)
	}
}

// sample builds a Sample of cluster "backend" with one endpoint, the given
// stats (short names under cluster.backend.) and config.
func sample(at time.Time, st map[string]int64, cfg ClusterConfig, streams ...h2.StreamState) *Sample {
	s := &Sample{At: at, Stats: map[string]int64{}, P99: map[string]float64{}, TimeWait: map[string]int{"127.0.0.1:8080": 0},
		Clusters: []ClusterSample{{Name: "backend", Hosts: []HostSample{{Address: "127.0.0.1:8080"}}}, {Name: "xds_cluster"}},
		Config:   map[string]*ClusterConfig{"backend": &cfg}, Streams: h2.StreamsReport{Waiting: streams}}
	for k, v := range st {
		s.Stats["cluster.backend."+k] = v
	}
	return s
}

// TestDiagnoseRules feeds each live rule a pair of samples ten seconds
// apart and checks the scenario, the severity and the evidence.
func TestDiagnoseRules(t *testing.T) {
	t0 := time.Unix(1000, 0)
	t1 := t0.Add(10 * time.Second)
	base := map[string]int64{"upstream_rq_total": 1000, "upstream_cx_total": 2, "upstream_cx_active": 2}
	with := func(extra map[string]int64) map[string]int64 {
		m := map[string]int64{}
		for k, v := range base {
			m[k] = v
		}
		for k, v := range extra {
			m[k] += v
		}
		return m
	}
	tests := []struct {
		name          string
		after         map[string]int64
		cfg           ClusterConfig
		streams       []h2.StreamState
		scenario      string
		rule          string
		severity      Severity
		evidence, fix string
	}{
		{"healthy", with(map[string]int64{"upstream_rq_total": 5000}), ClusterConfig{IdleTimeout: time.Minute, IdleTimeoutSet: true}, nil, "", "", Info, "", ""},
		{"churn over HTTP/2", with(map[string]int64{"upstream_rq_total": 100, "upstream_cx_total": 100}), ClusterConfig{MaxRequestsPerConnection: 1}, nil,
			S1, "connection-churn", Warning, "100 new HTTP/2 connections for 100 requests", "max_requests_per_connection is 1"},
		{"churn over HTTP/1.1", with(map[string]int64{"upstream_rq_total": 100, "upstream_cx_total": 50}), ClusterConfig{HTTP1: true}, nil,
			S4, "connection-churn", Warning, "50 new HTTP/1.1 connections for 100 requests in 10s: 50.0% of requests reused", "keep idle HTTP/1.1 connections"},
		{"pending overflow", with(map[string]int64{"upstream_rq_total": 100, "upstream_rq_pending_overflow": 7, "upstream_rq_pending_total": 40}), ClusterConfig{MaxConnections: 2}, nil,
			S1, "pool-overflow", Warning, "7 requests failed with 503 overflow and 40 waited", "maxConnections"},
		{"too_many_pings", with(map[string]int64{"http2.keepalive_backoff": 1, "http2.goaway_rx_ENHANCE_YOUR_CALM": 1}), ClusterConfig{KeepaliveInterval: time.Second}, nil,
			S2, "too-many-pings", Warning, "1 GOAWAY ENHANCE_YOUR_CALM received", "http2.keepalive.interval"},
		{"refused streams", with(map[string]int64{"http2.stream_refused_errors": 50, "upstream_rq_transparent_retry": 50}), ClusterConfig{}, nil,
			S3, "refused-streams", Warning, "50 streams refused by the upstream (REFUSED_STREAM) in 10s, 50 retried", "maxConcurrentStreams"},
		{"connect timeouts", with(map[string]int64{"upstream_cx_connect_timeout": 3}), ClusterConfig{ConnectTimeout: 5 * time.Second}, nil,
			S5, "connect-timeout", Warning, "3 connection attempts timed out after connect_timeout 5s", "outlierDetection"},
		{"hung responses", with(map[string]int64{"upstream_rq_total": 10}), ClusterConfig{RouteTimeoutSet: true},
			[]h2.StreamState{{Scope: "cluster.backend.http2", State: "peer_headers", ForMS: 4000}},
			S6, "response-header-hang", Warning, "1 streams waiting for response headers", "spec.timeout"},
		{"rotation", with(map[string]int64{"upstream_rq_total": 1000, "upstream_cx_total": 5, "http2.goaway_rx_NO_ERROR": 10}), ClusterConfig{}, nil,
			S9, "connection-rotation", Warning, "10 GOAWAY NO_ERROR received from the upstream", "maximum connection age"},
		{"idle connections", base, ClusterConfig{}, nil,
			S10, "idle-connections", Warning, "2 connections (to 1 endpoints) open and carrying no request for the whole 10s; idle_timeout 1h0m0s (unset", "idleTimeout"},
		{"keepalive timeouts", with(map[string]int64{"upstream_rq_total": 10, "http2.keepalive_timeout": 2}), ClusterConfig{}, nil,
			S10, "keepalive-timeout", Warning, "2 connections closed because the peer did not answer", "keepalive.timeout"},
		{"stalled by the peer's window", with(map[string]int64{"upstream_rq_total": 10}), ClusterConfig{},
			[]h2.StreamState{{Scope: "cluster.backend.http2", State: "peer_window", ForMS: 3000}, {Scope: "cluster.backend.http2", State: "peer_window", ForMS: 500}},
			S7, "stalled-streams", Warning, "1 streams stuck in peer_window for ≥ 2s (longest 3000 ms)", "initialStreamWindowSize"},
		{"waiting for a stream slot", with(map[string]int64{"upstream_rq_total": 10}), ClusterConfig{},
			[]h2.StreamState{{Scope: "cluster.backend.http2", State: "stream_slot", ForMS: 3000}},
			S1, "stalled-streams", Warning, "stuck in stream_slot", "maxConnections"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Diagnose(sample(t0, base, tt.cfg), sample(t1, tt.after, tt.cfg, tt.streams...), LiveOptions{})
			if tt.scenario == "" {
				if r.Worst() != Info {
					t.Errorf("healthy samples: %+v", r.Findings)
				}
				return
			}
			for _, f := range r.Findings {
				if f.Scenario == tt.scenario && f.Rule == tt.rule {
					if f.Severity != tt.severity || !strings.Contains(f.Evidence, tt.evidence) || !strings.Contains(f.Fix, tt.fix) {
						t.Errorf("finding %+v; want %v, evidence containing %q, fix containing %q", f, tt.severity, tt.evidence, tt.fix)
					}
					return
				}
			}
			t.Errorf("no %s %s finding in %+v", tt.scenario, tt.rule, r.Findings)
		})
	}
}

// TestDiagnoseBeforeWindow: a too_many_pings backoff that happened before
// the window is reported as info only.
func TestDiagnoseBeforeWindow(t *testing.T) {
	st := map[string]int64{"upstream_rq_total": 10, "upstream_cx_total": 1, "http2.keepalive_backoff": 1}
	after := map[string]int64{"upstream_rq_total": 500, "upstream_cx_total": 1, "http2.keepalive_backoff": 1}
	r := Diagnose(sample(time.Unix(0, 0), st, ClusterConfig{}), sample(time.Unix(10, 0), after, ClusterConfig{}), LiveOptions{})
	if r.Worst() != Info || len(r.Findings) != 1 || r.Findings[0].Scenario != S2 || !strings.Contains(r.Findings[0].Evidence, "before the window") {
		t.Errorf("findings %+v; want one S2 info 'before the window'", r.Findings)
	}
}

// TestParseProtoDurationNoWrap: parseProtoDuration used to read the value
// as a float, so the largest Duration protobuf allows and "NaNs" wrapped
// to -292 years and "1e3s" (not protobuf JSON) was read as 1000s; found
// by FuzzParseProtoDuration.
func TestParseProtoDurationNoWrap(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
	}{
		{"1.5s", 1500 * time.Millisecond},
		{"-2s", -2 * time.Second},
		{"0.000000001s", time.Nanosecond},
		{"315576000000s", time.Duration(math.MaxInt64)},
		{"-315576000000s", time.Duration(math.MinInt64)},
		{"315576000001s", 0},
		{"NaNs", 0},
		{"Infs", 0},
		{"1e3s", 0},
		{"1.0000000001s", 0},
		{"1", 0},
	} {
		if got := parseProtoDuration(tc.in); got != tc.want {
			t.Errorf("parseProtoDuration(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}
