package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
)

// statsSettle bounds how long a stat may lag behind the response that
// completes the request it counts.
const statsSettle = 2 * time.Second

// TestAdmin checks the Envoy-compatible admin API of a sidecar in front of
// an HTTP/1.1 backend, ending with POST /quitquitquit.
func TestAdmin(t *testing.T) {
	testutil.CheckGoroutines(t)
	backend := testutil.StartEchoBackend(t)
	addr, sc := front(t, mode{"sidecar", true}, backend.Addr, testutil.UpstreamHTTP1, "--drain-time-s", "1")

	client := http1Client()
	defer client.CloseIdleConnections()
	resp, err := client.Get("http://" + addr + "/status/200")
	if err != nil {
		t.Fatalf("request through the sidecar: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("request through the sidecar: status %d, want 200", resp.StatusCode)
	}
	client.CloseIdleConnections()

	t.Run("ready", func(t *testing.T) {
		if body := sc.Admin(t, http.MethodGet, "/ready"); !strings.Contains(body, "LIVE") {
			t.Errorf("GET /ready body %q, want LIVE (Envoy's)", body)
		}
	})

	t.Run("stats", func(t *testing.T) {
		want := map[string]int64{
			"cluster.backend.upstream_rq_total":                             1,
			"cluster.backend.upstream_rq_200":                               1,
			"cluster.backend.upstream_rq_2xx":                               1,
			"cluster.backend.upstream_cx_total":                             1,
			"http." + testutil.DefaultListenerName + ".downstream_rq_total": 1,
		}
		var stats map[string]int64
		deadline := time.Now().Add(statsSettle)
		for {
			stats = sc.Stats(t)
			var missing []string
			for name, min := range want {
				if stats[name] < min {
					missing = append(missing, name)
				}
			}
			if len(missing) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after one request, /stats lacks or has 0 for %q; have %d stats", missing, len(stats))
			}
			time.Sleep(20 * time.Millisecond)
		}
		if _, ok := stats["cluster.backend.upstream_cx_active"]; !ok {
			t.Error("/stats has no cluster.backend.upstream_cx_active")
		}
	})

	t.Run("prometheus", func(t *testing.T) {
		body := sc.Admin(t, http.MethodGet, "/stats/prometheus")
		m := regexp.MustCompile(`(?m)^envoy_cluster_upstream_rq_total\{envoy_cluster_name="backend"\} (\d+)$`).FindStringSubmatch(body)
		if m == nil {
			t.Fatalf("/stats/prometheus has no envoy_cluster_upstream_rq_total{envoy_cluster_name=\"backend\"} sample:\n%s", body)
		}
		if v, err := strconv.ParseInt(m[1], 10, 64); err != nil || v < 1 {
			t.Errorf("envoy_cluster_upstream_rq_total{envoy_cluster_name=\"backend\"} = %s, want >= 1", m[1])
		}
		if !strings.Contains(body, "# TYPE envoy_cluster_upstream_rq_total counter") {
			t.Error("/stats/prometheus lacks the TYPE line of envoy_cluster_upstream_rq_total")
		}
	})

	t.Run("config_dump", func(t *testing.T) {
		body := sc.Admin(t, http.MethodGet, "/config_dump")
		var dump map[string]any
		if err := json.Unmarshal([]byte(body), &dump); err != nil {
			t.Fatalf("/config_dump is not a JSON object: %v", err)
		}
		for _, want := range []string{`"configs"`, `"backend"`, `"` + testutil.DefaultListenerName + `"`} {
			if !strings.Contains(body, want) {
				t.Errorf("/config_dump lacks %s", want)
			}
		}
	})

	// Envoy's filters on the real dump: one static cluster, trimmed to its
	// name through the packed Cluster.
	t.Run("config_dump filtered", func(t *testing.T) {
		body := sc.Admin(t, http.MethodGet, "/config_dump?resource=static_clusters&mask=cluster.name&name_regex=back.*")
		var dump struct {
			Configs []map[string]any `json:"configs"`
		}
		if err := json.Unmarshal([]byte(body), &dump); err != nil {
			t.Fatalf("/config_dump?resource= is not JSON: %v\n%s", err, body)
		}
		if len(dump.Configs) != 1 || dump.Configs[0]["@type"] != "type.googleapis.com/envoy.admin.v3.ClustersConfigDump.StaticCluster" {
			t.Fatalf("/config_dump?resource=static_clusters&name_regex=back.* = %s, want one StaticCluster", body)
		}
		cl, _ := dump.Configs[0]["cluster"].(map[string]any)
		if len(cl) != 2 || cl["name"] != "backend" {
			t.Errorf("mask=cluster.name left %v, want the @type and name \"backend\"", cl)
		}
	})

	t.Run("clusters", func(t *testing.T) {
		body := sc.Admin(t, http.MethodGet, "/clusters")
		if want := "backend::" + backend.Addr + "::"; !strings.Contains(body, want) {
			t.Errorf("/clusters lacks the backend host line %q:\n%s", want, body)
		}
	})

	t.Run("listeners", func(t *testing.T) {
		body := sc.Admin(t, http.MethodGet, "/listeners")
		if !strings.Contains(body, testutil.DefaultListenerName) || !strings.Contains(body, addr) {
			t.Errorf("/listeners lacks %s at %s:\n%s", testutil.DefaultListenerName, addr, body)
		}
	})

	t.Run("server_info", func(t *testing.T) {
		body := sc.Admin(t, http.MethodGet, "/server_info")
		var info struct {
			Version, State  string
			UptimeAllEpochs string `json:"uptime_all_epochs"`
			Node            struct{ ID, Cluster string }
		}
		if err := json.Unmarshal([]byte(body), &info); err != nil {
			t.Fatalf("/server_info is not a JSON object: %v\n%s", err, body)
		}
		if !regexp.MustCompile(`^meshd/[^/]+/go[^/]+/(full|sidecar-only)$`).MatchString(info.Version) {
			t.Errorf("/server_info version %q, want meshd/VERSION/GO_VERSION/BUILD", info.Version)
		}
		if info.State != "LIVE" || !regexp.MustCompile(`^\d+s$`).MatchString(info.UptimeAllEpochs) {
			t.Errorf("/server_info state %q uptime_all_epochs %q, want LIVE and whole seconds", info.State, info.UptimeAllEpochs)
		}
		if info.Node.ID != "e2e-sidecar" || info.Node.Cluster != "e2e" {
			t.Errorf("/server_info node %+v, want the bootstrap's e2e-sidecar/e2e", info.Node)
		}
	})

	t.Run("healthcheck fail", func(t *testing.T) {
		sc.Admin(t, http.MethodPost, "/healthcheck/fail")
		code, body, err := sc.AdminRequest(http.MethodGet, "/ready")
		if err != nil || code != http.StatusServiceUnavailable {
			t.Errorf("GET /ready after POST /healthcheck/fail = %d %q, %v; want 503", code, body, err)
		}
	})

	t.Run("quitquitquit", func(t *testing.T) {
		sc.Admin(t, http.MethodPost, "/quitquitquit")
		code, err := sc.Wait(10 * time.Second)
		if err != nil || code != 0 {
			t.Fatalf("after POST /quitquitquit: exit %d, %v; want exit 0", code, err)
		}
	})
}
