package e2e

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
)

// envoyBuckets are the upper bounds of Envoy's default histogram buckets
// (Stats::HistogramSettingsImpl::defaultBuckets), which dashboards'
// histogram_quantile queries are written against, formatted as Envoy's
// Prometheus output formats them (fixed point, "%.32g").
var envoyBuckets = []string{"0.5", "1", "5", "10", "25", "50", "100", "250", "500", "1000", "2500", "5000", "10000", "30000", "60000", "300000", "600000", "1800000", "3600000"}

// promSeries is one sample of a /stats/prometheus scrape.
type promSeries struct {
	name   string
	labels map[string]string
	value  float64
}

// parseProm parses the exposition text meshd writes (no escapes in the
// label values this test uses) into its TYPE lines and samples.
func parseProm(t *testing.T, body string) (types map[string]string, series []promSeries) {
	t.Helper()
	types = map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(body), "\n") {
		if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
			name, typ, _ := strings.Cut(rest, " ")
			if _, dup := types[name]; dup {
				t.Errorf("/stats/prometheus: two TYPE lines for %s", name)
			}
			types[name] = typ
			continue
		}
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			t.Fatalf("/stats/prometheus: line %q has no value", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("/stats/prometheus: line %q: value: %v", line, err)
		}
		s := promSeries{labels: map[string]string{}, value: v}
		s.name, _, _ = strings.Cut(line[:i], "{")
		if lb, ok := strings.CutPrefix(line[len(s.name):i], "{"); ok {
			for _, kv := range strings.Split(strings.TrimSuffix(lb, "}"), ",") {
				k, val, _ := strings.Cut(kv, "=")
				s.labels[k] = strings.Trim(val, `"`)
			}
		}
		series = append(series, s)
	}
	return types, series
}

// find returns the samples named name whose labels include want.
func find(series []promSeries, name string, want map[string]string) []promSeries {
	var out []promSeries
next:
	for _, s := range series {
		if s.name != name {
			continue
		}
		for k, v := range want {
			if s.labels[k] != v {
				continue next
			}
		}
		out = append(out, s)
	}
	return out
}

// TestEnvoyStatNames scrapes a sidecar after traffic and checks that the
// stats an Envoy user's dashboards and alerts read exist under Envoy's flat
// names in /stats and with Envoy's Prometheus name, labels (tag
// extraction) and type in /stats/prometheus, histograms with Envoy's
// default buckets. It is the list to extend when meshd implements another
// Envoy feature; a renamed or dropped stat fails here. It runs with an
// HTTP/1.1 and an HTTP/2 upstream, whose pools count connections apart.
func TestEnvoyStatNames(t *testing.T) {
	for _, proto := range []string{testutil.UpstreamHTTP1, testutil.UpstreamHTTP2} {
		t.Run(proto, func(t *testing.T) { testEnvoyStatNames(t, proto) })
	}
}

func testEnvoyStatNames(t *testing.T, upstreamProtocol string) {
	testutil.CheckGoroutines(t)
	backend := testutil.StartEchoBackend(t)
	addr, sc := front(t, mode{"sidecar", true}, backend.Addr, upstreamProtocol)
	// Like Envoy, a listener's stats are named by its configured address
	// (the harness binds port 0), not by the port the kernel chose.
	const listener = "127.0.0.1_0"
	prefix := testutil.DefaultListenerName

	client := http1Client()
	defer client.CloseIdleConnections()
	const ok, failed = 3, 2
	const bigResponse = 200 << 10
	for i := range ok + failed {
		code := 200
		if i >= ok {
			code = 503
		}
		path := fmt.Sprintf("/status/%d", code)
		if i == 0 {
			// One large response, so the byte counters' directions
			// tell apart.
			path = fmt.Sprintf("/big?size=%d", bigResponse)
		}
		resp, err := client.Get("http://" + addr + path)
		if err != nil {
			t.Fatalf("request %d through the sidecar: %v", i, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != code {
			t.Fatalf("request %d: status %d, want %d", i, resp.StatusCode, code)
		}
	}
	client.CloseIdleConnections()
	sc.WaitStat(t, "http."+prefix+".downstream_rq_total", ok+failed, statsSettle, "requests counted")
	sc.WaitStat(t, "cluster.backend.upstream_rq_completed", ok+failed, statsSettle, "upstream responses counted")
	// The client closed its connection: wait until the sidecar saw it
	// close, so downstream_cx_length_ms has its value.
	for deadline := time.Now().Add(statsSettle); sc.Stats(t)["http."+prefix+".downstream_cx_destroy"] < 1; {
		if time.Now().After(deadline) {
			t.Fatalf("http.%s.downstream_cx_destroy still 0 %v after the client closed its connection", prefix, statsSettle)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// The backend goes away: every upstream connection ends at the peer,
	// none at the sidecar, so each is counted remote.
	cxTotal := sc.Stats(t)["cluster.backend.upstream_cx_total"]
	backend.Close()
	sc.WaitStat(t, "cluster.backend.upstream_cx_destroy", cxTotal, statsSettle, "upstream connections closed by the backend")
	if st := sc.Stats(t); st["cluster.backend.upstream_cx_destroy_remote"] != cxTotal || st["cluster.backend.upstream_cx_destroy_local"] != 0 {
		t.Errorf("the backend closed its %d connections: upstream_cx_destroy_remote = %d, upstream_cx_destroy_local = %d, want %d and 0",
			cxTotal, st["cluster.backend.upstream_cx_destroy_remote"], st["cluster.backend.upstream_cx_destroy_local"], cxTotal)
	}

	// Bytes: the large response went backend -> sidecar -> client; every
	// request was a few hundred bytes.
	if st := sc.Stats(t); st["cluster.backend.upstream_cx_rx_bytes_total"] < bigResponse || st["http."+prefix+".downstream_cx_tx_bytes_total"] < bigResponse ||
		st["cluster.backend.upstream_cx_tx_bytes_total"] >= bigResponse/4 || st["http."+prefix+".downstream_cx_rx_bytes_total"] >= bigResponse/4 ||
		st["cluster.backend.upstream_cx_tx_bytes_total"] == 0 || st["http."+prefix+".downstream_cx_rx_bytes_total"] == 0 {
		t.Errorf("after a %d-byte response and small requests: upstream_cx_rx_bytes_total = %d, upstream_cx_tx_bytes_total = %d, downstream_cx_rx_bytes_total = %d, downstream_cx_tx_bytes_total = %d; want rx upstream and tx downstream above the response, the others small but not 0",
			bigResponse, st["cluster.backend.upstream_cx_rx_bytes_total"], st["cluster.backend.upstream_cx_tx_bytes_total"], st["http."+prefix+".downstream_cx_rx_bytes_total"], st["http."+prefix+".downstream_cx_tx_bytes_total"])
	}
	// Static clusters only: each added once, none replaced or removed.
	if st := sc.Stats(t); st["cluster_manager.cluster_added"] != st["cluster_manager.active_clusters"] || st["cluster_manager.cluster_modified"]+st["cluster_manager.cluster_removed"] != 0 {
		t.Errorf("static clusters: cluster_manager.active_clusters = %d, cluster_added = %d, cluster_modified = %d, cluster_removed = %d; want added = active, no modification or removal",
			st["cluster_manager.active_clusters"], st["cluster_manager.cluster_added"], st["cluster_manager.cluster_modified"], st["cluster_manager.cluster_removed"])
	}

	cluster := map[string]string{"envoy_cluster_name": "backend"}
	hcm := map[string]string{"envoy_http_conn_manager_prefix": prefix}
	lis := map[string]string{"envoy_listener_address": listener}
	with := func(base map[string]string, k, v string) map[string]string {
		m := map[string]string{k: v}
		for bk, bv := range base {
			m[bk] = bv
		}
		return m
	}
	type stat struct {
		flat   string            // the /stats name
		prom   string            // the Prometheus name
		labels map[string]string // labels the series carries
		typ    string            // counter, gauge or histogram
		min    float64           // least value (histograms: _count)
	}
	tests := []stat{
		// Cluster manager: connections and requests.
		{"cluster.backend.upstream_cx_total", "envoy_cluster_upstream_cx_total", cluster, "counter", 1},
		{"cluster.backend.upstream_cx_active", "envoy_cluster_upstream_cx_active", cluster, "gauge", 0},
		{"cluster.backend.upstream_cx_connect_fail", "envoy_cluster_upstream_cx_connect_fail", cluster, "counter", 0},
		{"cluster.backend.upstream_cx_connect_timeout", "envoy_cluster_upstream_cx_connect_timeout", cluster, "counter", 0},
		{"cluster.backend.upstream_cx_destroy", "envoy_cluster_upstream_cx_destroy", cluster, "counter", 1},
		{"cluster.backend.upstream_cx_destroy_local", "envoy_cluster_upstream_cx_destroy_local", cluster, "counter", 0},
		{"cluster.backend.upstream_cx_destroy_remote", "envoy_cluster_upstream_cx_destroy_remote", cluster, "counter", 1},
		{"cluster.backend.upstream_cx_connect_ms", "envoy_cluster_upstream_cx_connect_ms", cluster, "histogram", 1},
		{"cluster.backend.upstream_cx_length_ms", "envoy_cluster_upstream_cx_length_ms", cluster, "histogram", 1},
		{"cluster.backend.upstream_cx_rx_bytes_total", "envoy_cluster_upstream_cx_rx_bytes_total", cluster, "counter", bigResponse},
		{"cluster.backend.upstream_cx_tx_bytes_total", "envoy_cluster_upstream_cx_tx_bytes_total", cluster, "counter", 1},
		{"cluster.backend.membership_total", "envoy_cluster_membership_total", cluster, "gauge", 1},
		{"cluster.backend.membership_healthy", "envoy_cluster_membership_healthy", cluster, "gauge", 1},
		{"cluster.backend.circuit_breakers.default.cx_open", "envoy_cluster_circuit_breakers_default_cx_open", cluster, "gauge", 0},
		{"cluster.backend.circuit_breakers.default.rq_pending_open", "envoy_cluster_circuit_breakers_default_rq_pending_open", cluster, "gauge", 0},
		{"cluster.backend.circuit_breakers.default.rq_open", "envoy_cluster_circuit_breakers_default_rq_open", cluster, "gauge", 0},
		{"cluster.backend.circuit_breakers.default.rq_retry_open", "envoy_cluster_circuit_breakers_default_rq_retry_open", cluster, "gauge", 0},
		{"cluster.backend.upstream_cx_close_notify", "envoy_cluster_upstream_cx_close_notify", cluster, "counter", 0},
		{"cluster.backend.upstream_cx_destroy_local_with_active_rq", "envoy_cluster_upstream_cx_destroy_local_with_active_rq", cluster, "counter", 0},
		{"cluster.backend.upstream_cx_destroy_remote_with_active_rq", "envoy_cluster_upstream_cx_destroy_remote_with_active_rq", cluster, "counter", 0},
		{"cluster.backend.upstream_cx_idle_timeout", "envoy_cluster_upstream_cx_idle_timeout", cluster, "counter", 0},
		{"cluster.backend.upstream_cx_pool_overflow", "envoy_cluster_upstream_cx_pool_overflow", cluster, "counter", 0},
		{"cluster.backend.upstream_cx_none_healthy", "envoy_cluster_upstream_cx_none_healthy", cluster, "counter", 0},
		{"cluster.backend.lb_healthy_panic", "envoy_cluster_lb_healthy_panic", cluster, "counter", 0},
		{"cluster.backend.upstream_rq_total", "envoy_cluster_upstream_rq_total", cluster, "counter", ok + failed},
		{"cluster.backend.upstream_rq_completed", "envoy_cluster_upstream_rq_completed", cluster, "counter", ok + failed},
		{"cluster.backend.upstream_rq_active", "envoy_cluster_upstream_rq_active", cluster, "gauge", 0},
		{"cluster.backend.upstream_rq_pending_total", "envoy_cluster_upstream_rq_pending_total", cluster, "counter", 0},
		{"cluster.backend.upstream_rq_pending_active", "envoy_cluster_upstream_rq_pending_active", cluster, "gauge", 0},
		{"cluster.backend.upstream_rq_pending_overflow", "envoy_cluster_upstream_rq_pending_overflow", cluster, "counter", 0},
		{"cluster.backend.upstream_rq_retry", "envoy_cluster_upstream_rq_retry", cluster, "counter", 0},
		{"cluster.backend.upstream_rq_retry_success", "envoy_cluster_upstream_rq_retry_success", cluster, "counter", 0},
		{"cluster.backend.upstream_rq_retry_overflow", "envoy_cluster_upstream_rq_retry_overflow", cluster, "counter", 0},
		{"cluster.backend.upstream_rq_retry_limit_exceeded", "envoy_cluster_upstream_rq_retry_limit_exceeded", cluster, "counter", 0},
		{"cluster.backend.upstream_rq_timeout", "envoy_cluster_upstream_rq_timeout", cluster, "counter", 0},
		{"cluster.backend.upstream_rq_per_try_timeout", "envoy_cluster_upstream_rq_per_try_timeout", cluster, "counter", 0},
		{"cluster.backend.upstream_rq_cancelled", "envoy_cluster_upstream_rq_cancelled", cluster, "counter", 0},
		{"cluster.backend.upstream_rq_rx_reset", "envoy_cluster_upstream_rq_rx_reset", cluster, "counter", 0},
		{"cluster.backend.upstream_rq_200", "envoy_cluster_upstream_rq", with(cluster, "envoy_response_code", "200"), "counter", ok},
		{"cluster.backend.upstream_rq_503", "envoy_cluster_upstream_rq", with(cluster, "envoy_response_code", "503"), "counter", failed},
		{"cluster.backend.upstream_rq_2xx", "envoy_cluster_upstream_rq_xx", with(cluster, "envoy_response_code_class", "2"), "counter", ok},
		{"cluster.backend.upstream_rq_5xx", "envoy_cluster_upstream_rq_xx", with(cluster, "envoy_response_code_class", "5"), "counter", failed},
		{"cluster.backend.upstream_rq_time", "envoy_cluster_upstream_rq_time", cluster, "histogram", ok + failed},
		{"cluster.backend.http2.rx_reset", "envoy_cluster_http2_rx_reset", cluster, "counter", 0},
		{"cluster.backend.http2.tx_reset", "envoy_cluster_http2_tx_reset", cluster, "counter", 0},
		{"cluster.backend.http2.goaway_sent", "envoy_cluster_http2_goaway_sent", cluster, "counter", 0},
		{"cluster.backend.http2.keepalive_timeout", "envoy_cluster_http2_keepalive_timeout", cluster, "counter", 0},
		// Cluster manager: the bootstrap's static clusters, added once.
		{"cluster_manager.active_clusters", "envoy_cluster_manager_active_clusters", nil, "gauge", 1},
		{"cluster_manager.cluster_added", "envoy_cluster_manager_cluster_added", nil, "counter", 1},
		{"cluster_manager.cluster_modified", "envoy_cluster_manager_cluster_modified", nil, "counter", 0},
		{"cluster_manager.cluster_removed", "envoy_cluster_manager_cluster_removed", nil, "counter", 0},
		// HTTP connection manager.
		{"http." + prefix + ".downstream_rq_total", "envoy_http_downstream_rq_total", hcm, "counter", ok + failed},
		{"http." + prefix + ".downstream_rq_active", "envoy_http_downstream_rq_active", hcm, "gauge", 0},
		{"http." + prefix + ".downstream_rq_http1_total", "envoy_http_downstream_rq_http1_total", hcm, "counter", ok + failed},
		{"http." + prefix + ".downstream_rq_2xx", "envoy_http_downstream_rq_xx", with(hcm, "envoy_response_code_class", "2"), "counter", ok},
		{"http." + prefix + ".downstream_rq_5xx", "envoy_http_downstream_rq_xx", with(hcm, "envoy_response_code_class", "5"), "counter", failed},
		{"http." + prefix + ".downstream_rq_200", "envoy_http_downstream_rq", with(hcm, "envoy_response_code", "200"), "counter", ok},
		{"http." + prefix + ".downstream_rq_timeout", "envoy_http_downstream_rq_timeout", hcm, "counter", 0},
		{"http." + prefix + ".downstream_rq_rx_reset", "envoy_http_downstream_rq_rx_reset", hcm, "counter", 0},
		{"http." + prefix + ".downstream_rq_tx_reset", "envoy_http_downstream_rq_tx_reset", hcm, "counter", 0},
		{"http." + prefix + ".downstream_rq_time", "envoy_http_downstream_rq_time", hcm, "histogram", ok + failed},
		{"http." + prefix + ".downstream_cx_total", "envoy_http_downstream_cx_total", hcm, "counter", 1},
		{"http." + prefix + ".downstream_cx_active", "envoy_http_downstream_cx_active", hcm, "gauge", 0},
		{"http." + prefix + ".downstream_cx_destroy", "envoy_http_downstream_cx_destroy", hcm, "counter", 0},
		{"http." + prefix + ".downstream_cx_length_ms", "envoy_http_downstream_cx_length_ms", hcm, "histogram", 1},
		{"http." + prefix + ".downstream_cx_rx_bytes_total", "envoy_http_downstream_cx_rx_bytes_total", hcm, "counter", 1},
		{"http." + prefix + ".downstream_cx_tx_bytes_total", "envoy_http_downstream_cx_tx_bytes_total", hcm, "counter", bigResponse},
		{"http." + prefix + ".downstream_cx_http1_total", "envoy_http_downstream_cx_http1_total", hcm, "counter", 1},
		{"http." + prefix + ".no_route", "envoy_http_no_route", hcm, "counter", 0},
		// Downstream HTTP/2 codec.
		{"http2.rx_reset", "envoy_http2_rx_reset", nil, "counter", 0},
		{"http2.tx_reset", "envoy_http2_tx_reset", nil, "counter", 0},
		{"http2.goaway_sent", "envoy_http2_goaway_sent", nil, "counter", 0},
		{"http2.header_overflow", "envoy_http2_header_overflow", nil, "counter", 0},
		{"http2.outbound_flood", "envoy_http2_outbound_flood", nil, "counter", 0},
		// Listener.
		{"listener." + listener + ".downstream_cx_total", "envoy_listener_downstream_cx_total", lis, "counter", 1},
		{"listener." + listener + ".downstream_cx_active", "envoy_listener_downstream_cx_active", lis, "gauge", 0},
		{"listener." + listener + ".downstream_cx_destroy", "envoy_listener_downstream_cx_destroy", lis, "counter", 0},
		{"listener." + listener + ".downstream_cx_length_ms", "envoy_listener_downstream_cx_length_ms", lis, "histogram", 0},
		{"listener." + listener + ".ssl.handshake", "envoy_listener_ssl_handshake", lis, "counter", 0},
		{"listener." + listener + ".ssl.connection_error", "envoy_listener_ssl_connection_error", lis, "counter", 0},
		// Server.
		{"server.live", "envoy_server_live", nil, "gauge", 1},
		{"server.state", "envoy_server_state", nil, "gauge", 0},
		{"server.uptime", "envoy_server_uptime", nil, "gauge", 0},
		{"server.concurrency", "envoy_server_concurrency", nil, "gauge", 1},
		{"server.memory_allocated", "envoy_server_memory_allocated", nil, "gauge", 1},
		{"server.memory_heap_size", "envoy_server_memory_heap_size", nil, "gauge", 1},
		{"server.memory_physical_size", "envoy_server_memory_physical_size", nil, "gauge", 1},
	}

	text := sc.Admin(t, http.MethodGet, "/stats")
	flat := map[string]string{}
	for _, line := range strings.Split(text, "\n") {
		if name, v, ok := strings.Cut(line, ": "); ok {
			flat[name] = v
		}
	}
	types, series := parseProm(t, sc.Admin(t, http.MethodGet, "/stats/prometheus"))
	for _, tc := range tests {
		t.Run(tc.flat, func(t *testing.T) {
			if _, ok := flat[tc.flat]; !ok {
				t.Errorf("/stats has no %s", tc.flat)
			}
			if types[tc.prom] != tc.typ {
				t.Errorf("/stats/prometheus: # TYPE %s is %q, want %q", tc.prom, types[tc.prom], tc.typ)
			}
			name := tc.prom
			if tc.typ == "histogram" {
				name += "_count"
				checkBuckets(t, tc.prom, find(series, tc.prom+"_bucket", tc.labels))
				if len(find(series, tc.prom+"_sum", tc.labels)) != 1 {
					t.Errorf("/stats/prometheus: no %s_sum%v", tc.prom, tc.labels)
				}
			}
			got := find(series, name, tc.labels)
			if len(got) != 1 {
				t.Fatalf("/stats/prometheus: %d series %s with labels %v, want 1", len(got), name, tc.labels)
			}
			if len(got[0].labels) != len(tc.labels) {
				t.Errorf("/stats/prometheus: %s has labels %v, want exactly %v", name, got[0].labels, tc.labels)
			}
			if got[0].value < tc.min {
				t.Errorf("/stats/prometheus: %s%v = %v, want at least %v", name, tc.labels, got[0].value, tc.min)
			}
		})
	}
}

// checkBuckets checks a histogram's _bucket series: Envoy's default
// bounds, then +Inf, cumulative.
func checkBuckets(t *testing.T, name string, buckets []promSeries) {
	t.Helper()
	var les []string
	var last float64
	for _, b := range buckets {
		les = append(les, b.labels["le"])
		if b.value < last {
			t.Errorf("%s_bucket{le=%q} = %v, below the previous bucket's %v (not cumulative)", name, b.labels["le"], b.value, last)
		}
		last = b.value
	}
	if want := append(slices.Clone(envoyBuckets), "+Inf"); !slices.Equal(les, want) {
		t.Errorf("%s_bucket le values %q, want Envoy's default buckets %q", name, les, want)
	}
}
