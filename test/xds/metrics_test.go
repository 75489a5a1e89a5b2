package xds_test

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"

	"meshd.dev/meshd/internal/testutil"
)

// TestControlPlaneOTLPMetrics: with --otlp-metrics-address the control
// plane exports its own counters (snapshots, pushes) and the
// connected-nodes gauge to an OTLP receiver, and /metrics shows the new
// gauge and the push-latency histogram in Prometheus form.
func TestControlPlaneOTLPMetrics(t *testing.T) {
	recv := testutil.StartMetricsReceiver(t)
	meshPath := filepath.Join(t.TempDir(), "mesh.yaml")
	writeFile(t, meshPath, greeterMesh("127.0.0.1:50061"))
	cp := startControlPlane(t, meshPath, "--otlp-metrics-address", recv.Addr, "--metrics-interval", "200ms")
	for _, name := range []string{"control_plane.snapshots_published", "control_plane.connected_nodes", "control_plane.xds_pushes"} {
		recv.WaitMetric(t, 15*time.Second, name, func(m *metricspb.Metric) bool { return m.GetName() == name })
	}
	code, body, err := cp.Get("/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"envoy_control_plane_connected_nodes", "envoy_control_plane_xds_push_ack_latency_ms_bucket"} {
		if code != 200 || !strings.Contains(string(body), want) {
			t.Errorf("/metrics (%d) has no %s", code, want)
		}
	}
}
