package xds_test

import (
	"net/http"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"meshd.dev/meshd/internal/meshtest"
	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/xds/server"
	"meshd.dev/meshd/xds/translate"
)

// Timing of TestControlPlaneRestartUnderLoad.
const (
	// controlPlaneDown is how long the control plane stays dead.
	controlPlaneDown = 2 * time.Second
	// reconnectTimeout bounds the sidecars' reconnect after the restart:
	// their backoff has grown while the control plane was down (500 ms
	// doubling, with jitter).
	reconnectTimeout = 30 * time.Second
)

// bothConnected reports whether /status shows a stream of each sidecar of
// tunedMesh that ACKed version for at least one type.
func bothConnected(st server.Status, version string) bool {
	for _, node := range []string{serverNode, clientNode} {
		ok := false
		for _, s := range st.Streams {
			if s.Node != node {
				continue
			}
			for _, ts := range s.Types {
				ok = ok || ts.AckedVersion == version
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// TestControlPlaneRestartUnderLoad (issue 4, acceptance 4): with callers
// going through client sidecar (delta) → server sidecar (SotW) → app, the
// control plane is SIGKILLed, stays down controlPlaneDown, and is restarted
// on the same xDS port with the same mesh file. No call fails; the sidecars
// notice (control_plane.connected_state), reconnect, and ACK the same
// deterministic version as before; their config is unchanged.
func TestControlPlaneRestartUnderLoad(t *testing.T) {
	testutil.CheckGoroutines(t)
	app := testutil.StartGRPCInteropServer(t)
	p := newTunedMeshPorts(t)
	meshPath := filepath.Join(t.TempDir(), "mesh.yaml")
	text := tunedMesh(app.Addr, p, baseKnobs)
	writeFile(t, meshPath, text)
	xdsAddr := "127.0.0.1:" + strconv.Itoa(meshtest.FreePorts(t, 1)[0])

	caDir := filepath.Join(t.TempDir(), "ca")
	cpConfig := meshtest.ControlPlaneConfig{MeshPath: meshPath, XDSAddr: xdsAddr, CADir: caDir}
	cp := meshtest.StartControlPlane(t, cpConfig)
	first := cp.WaitStatus(t, "a published version", waitTimeout, func(st server.Status) bool { return st.Version != "" })
	sidecars := startSidecars(t, cp, meshPath)
	all := changedTypes(&translate.Result{}, translated(t, text))
	cp.WaitStatus(t, "both sidecars ACKing", waitTimeout, func(st server.Status) bool { return applied(st, first.Version, all) })
	dumps := map[string]string{}
	for node, sc := range sidecars {
		dumps[node] = sc.Admin(t, http.MethodGet, "/config_dump")
	}

	load := meshtest.StartCallLoad(t, meshtest.DialLoopback(t, p.Outbound), 4)
	load.WaitCalls(t, 50, "calls before the kill")

	cp.Kill(t)
	for node, sc := range sidecars {
		sc.WaitStat(t, "control_plane.connected_state", 0, reconnectTimeout, node+" seeing the control plane gone")
	}
	time.Sleep(controlPlaneDown)
	load.WaitCalls(t, 50, "calls while the control plane is down")

	restartedAt := time.Now()
	restarted := meshtest.StartControlPlane(t, cpConfig)
	deadline := time.Now().Add(reconnectTimeout)
	var st server.Status
	for time.Now().Before(deadline) {
		if s, err := restarted.Status(); err == nil {
			st = s
			if s.Version != "" && bothConnected(s, s.Version) {
				break
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !bothConnected(st, st.Version) {
		t.Fatalf("sidecars not reconnected and ACKing within %v; last /status: %+v", reconnectTimeout, st)
	}
	t.Logf("both sidecars reconnected and ACKing %v after the restart began", time.Since(restartedAt).Round(time.Millisecond))
	if st.Version != first.Version {
		t.Errorf("restarted control plane publishes version %q, want the same %q as before", st.Version, first.Version)
	}
	for node, sc := range sidecars {
		sc.WaitStat(t, "control_plane.connected_state", 1, reconnectTimeout, node+" reconnected")
		if dump := sc.Admin(t, http.MethodGet, "/config_dump"); dump != dumps[node] {
			t.Errorf("%s: /config_dump changed across the restart of an unchanged control plane:\nbefore %.1500s\nafter  %.1500s", node, dumps[node], dump)
		}
	}
	load.WaitCalls(t, 50, "calls after the restart")
	load.Stop()
	ok, fail := load.Counts()
	err := load.FirstError()
	if fail != 0 {
		t.Errorf("%d of %d calls failed across the restart; first: %v", fail, ok+fail, err)
	}
	t.Logf("%d calls, %d failed, across a SIGKILL, %v down and a restart; version %s before and after", ok+fail, fail, controlPlaneDown, st.Version)
}
