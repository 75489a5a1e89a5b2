package e2e

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
)

// upEditMesh is the README's minimal mesh file; %PORT% is the Service's
// port, which names the client sidecar's outbound cluster.
const upEditMesh = `apiVersion: meshd.dev/v1alpha1
kind: Service
metadata: {name: greeter, namespace: demo}
spec: {protocol: grpc, port: %PORT%}
---
apiVersion: meshd.dev/v1alpha1
kind: Workload
metadata: {name: greeter-server, namespace: demo}
spec:
  serviceAccount: greeter-server
  service: greeter
  inbound: {port: 15101, app: 127.0.0.1:50051}
  admin: 127.0.0.1:15001
---
apiVersion: meshd.dev/v1alpha1
kind: Workload
metadata: {name: greeter-client, namespace: demo}
spec:
  serviceAccount: greeter-client
  outbound: [{service: greeter.demo, port: 15201}]
  admin: 127.0.0.1:15002
`

// upEditWait bounds the wait for meshd up to report one saved edit (the
// file is polled every 500 ms).
const upEditWait = 15 * time.Second

// TestUpReportsMeshEdits: `meshd up -f` (even --quiet) prints what became
// of each saved edit of its mesh file. A typo is reported as rejected,
// naming the file and the field, and the client sidecar keeps serving the
// last good config; a valid edit is reported as applied and reaches the
// sidecar. Ctrl-C then stops the run with exit 0.
func TestUpReportsMeshEdits(t *testing.T) {
	testutil.CheckGoroutines(t)
	bin := testutil.BuildMeshd(t)
	dir := t.TempDir()
	meshPath := filepath.Join(dir, "mesh.yaml")
	save := func(content string) {
		t.Helper()
		// As editors do: a new file renamed over the old one.
		tmp := meshPath + ".tmp"
		if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, meshPath); err != nil {
			t.Fatal(err)
		}
	}
	good := strings.ReplaceAll(upEditMesh, "%PORT%", "50051")
	save(good)

	ctx, cancel := context.WithTimeout(context.Background(), upStartTimeout+2*upEditWait+upExitTimeout)
	defer cancel()
	cmd, lines := startUp(ctx, t, bin, dir, "-f", meshPath, "--quiet")
	// waitLine returns the first line printed from now on for which
	// match holds.
	waitLine := func(what string, within time.Duration, match func(string) bool) string {
		t.Helper()
		deadline := time.After(within)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("meshd up exited while waiting for %s", what)
				}
				t.Log(l)
				if match(l) {
					return l
				}
			case <-deadline:
				t.Fatalf("no %s within %s", what, within)
			}
		}
	}

	var clientAdmin string
	waitLine("start-up block", upStartTimeout, func(l string) bool {
		if f := strings.Fields(l); len(f) >= 5 && f[0] == "sidecar" && f[1] == "greeter-client.demo" && f[2] == "admin" {
			clientAdmin = strings.TrimPrefix(f[3], "http://")
		}
		return l == "Ctrl-C stops everything."
	})
	if clientAdmin == "" {
		t.Fatal("the start-up block names no admin address for greeter-client.demo")
	}
	waitClusters(t, clientAdmin, "outbound|50051||greeter.demo")

	// A typo: rejected, named, and the last good config keeps serving.
	save(strings.Replace(good, "spec: {protocol: grpc,", "spec: {protocl: grpc,", 1))
	waitLine("report of the rejected edit", upEditWait, func(l string) bool {
		return strings.HasPrefix(l, "meshd up: "+meshPath+" rejected, the sidecars keep the last good config")
	})
	detail := waitLine("the rejection's reason", upEditWait, func(l string) bool { return strings.Contains(l, "spec.protocl") })
	if !strings.Contains(detail, "unknown field") {
		t.Errorf("rejection reason %q does not say the field is unknown", detail)
	}
	waitClusters(t, clientAdmin, "outbound|50051||greeter.demo")

	// A valid edit: applied and pushed.
	save(strings.ReplaceAll(upEditMesh, "%PORT%", "50052"))
	waitLine("report of the applied edit", upEditWait, func(l string) bool {
		return strings.HasPrefix(l, "meshd up: "+meshPath+" applied (version ")
	})
	waitClusters(t, clientAdmin, "outbound|50052||greeter.demo")

	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	for l := range lines {
		t.Log(l)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("meshd up after SIGINT: %v, want exit 0", err)
	}
}

// waitClusters polls the sidecar admin at addr until its /clusters names
// cluster, for up to upEditWait.
func waitClusters(t *testing.T, addr, cluster string) {
	t.Helper()
	// No keep-alive: nothing outlives the call for the leak check.
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	deadline := time.Now().Add(upEditWait)
	for {
		resp, err := c.Get("http://" + addr + "/clusters")
		var body []byte
		if err == nil {
			body, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		if err == nil && strings.Contains(string(body), cluster+"::") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s/clusters has no %s after %s (err %v):\n%s", addr, cluster, upEditWait, err, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
