package xds_test

import (
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/xds/server"
)

// TestControlPlaneMeshEdits: a good edit is published (new version), a bad
// edit is reported on /status with file, document and field while the last
// good version keeps being served, and SIGTERM stops the process with 0.
func TestControlPlaneMeshEdits(t *testing.T) {
	dir := t.TempDir()
	meshPath := filepath.Join(dir, "mesh.yaml")
	good := greeterMesh("127.0.0.1:50061")
	writeFile(t, meshPath, good)
	cp := startControlPlane(t, meshPath)
	first := cp.WaitStatus(t, "first version", waitTimeout, func(st server.Status) bool { return st.Version != "" })

	moved := greeterMesh("127.0.0.1:50062")
	writeFile(t, meshPath, moved)
	second := cp.WaitStatus(t, "a new version after an endpoint change", waitTimeout, func(st server.Status) bool {
		return st.Version != "" && st.Version != first.Version
	})

	writeFile(t, meshPath, strings.Replace(moved, "upstreamProtocol: http2", "upstreamProtocl: http2", 1))
	bad := cp.WaitStatus(t, "the bad edit's error", waitTimeout, func(st server.Status) bool { return st.LastError != nil })
	for _, want := range []string{meshPath, "document 2", "Service demo/greeter", "upstreamProtocl"} {
		if !strings.Contains(bad.LastError.Message, want) {
			t.Errorf("last_error %q does not name %q", bad.LastError.Message, want)
		}
	}
	if bad.Version != second.Version {
		t.Errorf("version after a bad edit = %q, want the last good %q", bad.Version, second.Version)
	}

	writeFile(t, meshPath, good)
	cp.WaitStatus(t, "recovery to the first version", waitTimeout, func(st server.Status) bool {
		return st.LastError == nil && st.Version == first.Version
	})

	if err := cp.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	code, err := cp.Wait(waitTimeout)
	if err != nil {
		t.Fatalf("after SIGTERM: %v", err)
	}
	if code != 0 {
		t.Errorf("exit code after SIGTERM = %d, want 0", code)
	}
}

// TestControlPlaneRejectsBadStart: a bad mesh file or flag fails start-up
// with the reason.
func TestControlPlaneRejectsBadStart(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	writeFile(t, bad, "apiVersion: meshd.dev/v1alpha1\nkind: Mesh\nmetadata:\n  name: m\nspec:\n  trustDomain: x\n  colour: blue\n")
	wasmPolicy := filepath.Join(dir, "wasm.yaml")
	writeFile(t, wasmPolicy, greeterMesh("127.0.0.1:50061")+wasmRateLimitDoc(10, 10, "global", ""))
	emptyModule := filepath.Join(dir, "empty.wasm")
	writeFile(t, emptyModule, "\x00asm\x01\x00\x00\x00") // valid, exports nothing
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no config", []string{"control-plane"}, 2, "--config MESH.yaml is required"},
		{"missing file", []string{"control-plane", "--config", filepath.Join(dir, "absent.yaml")}, 1, "no such file"},
		{"unknown field", []string{"control-plane", "--config", bad}, 1, "spec.colour"},
		{"bad address", []string{"control-plane", "--config", writeGood(t, dir), "--ca-dir", filepath.Join(dir, "ca"), "--xds-address", "127.0.0.1:99999"}, 1, "--xds-address"},
		{"engine wasm without a module", []string{"control-plane", "--config", wasmPolicy, "--ca-dir", filepath.Join(dir, "ca"), "--xds-address", "127.0.0.1:0", "--admin-address", "127.0.0.1:0"}, 1,
			"RateLimitPolicy demo/greeter-limit: spec.engine wasm: the control plane has no rate-limit module to serve (meshd control-plane --ratelimit-wasm FILE)"},
		{"ratelimit-wasm not wasm", []string{"control-plane", "--config", wasmPolicy, "--ca-dir", filepath.Join(dir, "ca"), "--ratelimit-wasm", bad}, 1,
			"--ratelimit-wasm: ratelimit module " + bad + ": not a WebAssembly binary module"},
		{"ratelimit-wasm without proxy-wasm exports", []string{"control-plane", "--config", wasmPolicy, "--ca-dir", filepath.Join(dir, "ca"), "--ratelimit-wasm", emptyModule}, 1,
			"proxy-wasm functions (_initialize, proxy_abi_version_0_2_0,"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := testutil.RunMeshd(t, waitTimeout, tc.args...)
			if res.ExitCode != tc.code || !strings.Contains(res.Stderr, tc.want) {
				t.Errorf("exit %d, stderr:\n%s\nwant exit %d mentioning %q", res.ExitCode, res.Stderr, tc.code, tc.want)
			}
		})
	}
}

func writeGood(t *testing.T, dir string) string {
	p := filepath.Join(dir, "good.yaml")
	writeFile(t, p, greeterMesh("127.0.0.1:50061"))
	return p
}
