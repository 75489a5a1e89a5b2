package xds_test

import (
	"bufio"
	"encoding/json"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"meshd.dev/meshd/doctor"
	"meshd.dev/meshd/internal/meshtest"
	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/xds/server"
)

// unknownWindow is how long TestUnknownNodeNoNACKLoop watches an idle
// unknown sidecar for pushes and NACKs.
const unknownWindow = 3 * time.Second

// ghostWorkload is a Workload document for the node "ghost.demo" with an
// outbound listener on port and its admin on adminPort.
func ghostWorkload(port, adminPort int) string {
	return `---
apiVersion: meshd.dev/v1alpha1
kind: Workload
metadata:
  name: ghost
  namespace: demo
spec:
  serviceAccount: ghost
  outbound:
    - service: greeter.demo
      port: ` + strconv.Itoa(port) + `
  admin: 127.0.0.1:` + strconv.Itoa(adminPort) + `
`
}

// withoutCA returns bootstrapYAML without the built-in CA (its
// meshd_identity cluster and the node's token): a sidecar configured only
// by xDS, as an Envoy under this control plane would be. It is ready once
// its first xDS config is applied, whatever that config is.
func withoutCA(t *testing.T, bootstrapYAML string) string {
	t.Helper()
	js, err := yaml.YAMLToJSON([]byte(bootstrapYAML))
	if err != nil {
		t.Fatal(err)
	}
	b := &bootstrapv3.Bootstrap{}
	if err := protojson.Unmarshal(js, b); err != nil {
		t.Fatalf("bootstrap: %v", err)
	}
	sr := b.GetStaticResources()
	kept := sr.GetClusters()[:0]
	for _, c := range sr.GetClusters() {
		if c.GetName() != "meshd_identity" {
			kept = append(kept, c)
		}
	}
	if len(kept) == len(sr.GetClusters()) {
		t.Fatal("the bootstrap has no meshd_identity cluster to remove")
	}
	sr.Clusters = append([]*clusterv3.Cluster(nil), kept...)
	delete(b.GetNode().GetMetadata().GetFields(), "meshd.token")
	out, err := protojson.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// controlPlaneCounters reads the control plane's GET /metrics and returns
// its counters and gauges by Prometheus name.
func controlPlaneCounters(t *testing.T, cp *meshtest.ControlPlane) map[string]int64 {
	t.Helper()
	code, body, err := cp.Get("/metrics")
	if err != nil || code != 200 {
		t.Fatalf("control plane /metrics: %d %v", code, err)
	}
	out := map[string]int64{}
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok || strings.HasPrefix(name, "#") || strings.Contains(name, "{") {
			continue
		}
		if v, err := strconv.ParseInt(value, 10, 64); err == nil {
			out[name] = v
		}
	}
	return out
}

// TestUnknownNodeNoNACKLoop: a sidecar whose node ID the mesh does not
// name (no Workload "ghost.demo" in the served mesh file) is served a
// config it accepts: no listener or cluster update is rejected, the
// control plane counts no NACK, pushes once per type and version (nothing
// while the mesh is idle), warns about the node once naming it, and lists
// it on /status unknown_nodes. A mesh edit reaches it as one more accepted
// push, and once the mesh names the node it gets its own listener.
func TestUnknownNodeNoNACKLoop(t *testing.T) {
	app := testutil.StartGRPCInteropServer(t)
	ports := meshtest.FreePorts(t, 2)
	outbound, admin := ports[0], ports[1]
	dir := t.TempDir()
	served := greeterMesh(app.Addr)
	// The bootstrap is made from a mesh that has the Workload; the control
	// plane serves one that does not.
	fullPath, meshPath := filepath.Join(dir, "full.yaml"), filepath.Join(dir, "mesh.yaml")
	writeFile(t, fullPath, served+ghostWorkload(outbound, admin))
	writeFile(t, meshPath, served)
	cp := startControlPlane(t, meshPath)
	v1 := cp.WaitStatus(t, "a published version", waitTimeout, func(st server.Status) bool { return st.Version != "" }).Version

	sc := testutil.StartSidecar(t, withoutCA(t, meshtest.WorkloadBootstrap(t, cp, fullPath, "ghost.demo", false)))
	st := cp.WaitStatus(t, "ghost.demo ACKing "+v1, waitTimeout, func(st server.Status) bool {
		return meshtest.Acked(st, v1, "ghost.demo") && len(st.UnknownNodes) == 1
	})
	if u := st.UnknownNodes[0]; u.Node != "ghost.demo" || !strings.Contains(u.Reason, "no Workload") {
		t.Errorf("unknown_nodes = %+v, want ghost.demo with no Workload as the reason", st.UnknownNodes)
	}
	for _, s := range st.Streams {
		if s.Node == "ghost.demo" && s.CacheKey != server.UnknownSidecarKey {
			t.Errorf("ghost.demo's cache key is %q, want %q", s.CacheKey, server.UnknownSidecarKey)
		}
	}

	// Idle: nothing is pushed, nothing rejected.
	before := controlPlaneCounters(t, cp)
	cpu0 := procCPUTicks(t, cp.PID())
	time.Sleep(unknownWindow)
	after := controlPlaneCounters(t, cp)
	cpu := float64(procCPUTicks(t, cp.PID())-cpu0) / clockTicks(t)
	pushes := after["envoy_control_plane_xds_pushes"] - before["envoy_control_plane_xds_pushes"]
	t.Logf("idle %v: control plane %d pushes, %d NACKs in total, %.2f s CPU", unknownWindow, pushes, after["envoy_control_plane_xds_nacks"], cpu)
	if pushes != 0 {
		t.Errorf("%d pushes in %v while the mesh did not change, want 0", pushes, unknownWindow)
	}
	if got := after["envoy_control_plane_unknown_nodes"]; got != 1 {
		t.Errorf("control_plane.unknown_nodes = %d, want 1", got)
	}

	// doctor names the node and why.
	res := testutil.RunMeshd(t, time.Minute, "doctor", "--control-plane", cp.Admin, "--window", "1s", "-o", "json")
	var rep doctor.Report
	if err := json.Unmarshal([]byte(res.Stdout), &rep); err != nil {
		t.Fatalf("meshd doctor --control-plane -o json: %v\nstdout: %s\nstderr: %s", err, res.Stdout, res.Stderr)
	}
	found := false
	for _, f := range rep.Findings {
		found = found || (f.Rule == "unknown-node" && f.Severity == doctor.Warning && f.Subject == "node ghost.demo" && strings.Contains(f.Evidence, "no Workload"))
		if f.Rule == "xds-nack" {
			t.Errorf("doctor reports a NACK: %+v", f)
		}
	}
	if !found {
		t.Errorf("doctor has no unknown-node warning for ghost.demo (exit %d):\n%s", res.ExitCode, res.Stdout)
	}

	// A mesh edit: one more accepted push per type.
	meshtest.WriteFileAtomic(t, meshPath, served+`---
apiVersion: meshd.dev/v1alpha1
kind: Service
metadata:
  name: other
  namespace: demo
spec:
  protocol: http
  port: 8080
  endpoints:
    - address: 127.0.0.1
      port: 8080
`)
	v2 := cp.WaitStatus(t, "a second version ACKed by ghost.demo", waitTimeout, func(st server.Status) bool {
		return st.Version != v1 && meshtest.Acked(st, st.Version, "ghost.demo")
	}).Version

	stats := sc.Stats(t)
	for _, name := range []string{"listener_manager.lds.update_rejected", "cluster_manager.cds.update_rejected"} {
		if stats[name] != 0 {
			t.Errorf("sidecar %s = %d, want 0", name, stats[name])
		}
	}
	for _, name := range []string{"listener_manager.lds.update_success", "cluster_manager.cds.update_success"} {
		if stats[name] < 2 {
			t.Errorf("sidecar %s = %d, want at least 2 (%s and %s)", name, stats[name], v1, v2)
		}
	}
	if n := controlPlaneCounters(t, cp)["envoy_control_plane_xds_nacks"]; n != 0 {
		t.Errorf("control plane xds_nacks = %d, want 0", n)
	}
	if n := strings.Count(cp.Stderr(), "proxy not in the mesh"); n != 1 || !strings.Contains(cp.Stderr(), "node=ghost.demo") {
		t.Errorf("%d warnings about the unknown node, want 1 naming node=ghost.demo", n)
	}

	// The mesh names the node: it gets its outbound listener.
	meshtest.WriteFileAtomic(t, meshPath, served+ghostWorkload(outbound, admin))
	cp.WaitStatus(t, "ghost.demo known and ACKing", waitTimeout, func(st server.Status) bool {
		return st.Version != v2 && meshtest.Acked(st, st.Version, "ghost.demo") && len(st.UnknownNodes) == 0
	})
	deadline := time.Now().Add(waitTimeout)
	for !strings.Contains(sc.Admin(t, "GET", "/listeners"), strconv.Itoa(outbound)) {
		if time.Now().After(deadline) {
			t.Fatalf("no listener on port %d once the mesh names ghost.demo:\n%s", outbound, sc.Admin(t, "GET", "/listeners"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
