package xds_test

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"meshd.dev/meshd/internal/meshtest"
	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/xds/server"
)

// interopCaseTimeout bounds one interop client process.
const interopCaseTimeout = 30 * time.Second

// sidecarInteropCases are the grpc-go interop cases of the core issue that
// the two-sidecar path must pass.
var sidecarInteropCases = []string{
	"empty_unary", "large_unary", "client_streaming", "server_streaming", "ping_pong",
	"empty_stream", "custom_metadata", "status_code_and_message", "special_status_message",
	"unimplemented_method", "cancel_after_begin", "cancel_after_first_response",
	"timeout_on_sleeping_server",
}

// twoSidecarMesh is a mesh whose client sidecar listens on outbound and
// routes to the server sidecar's inbound port, which hands to app.
func twoSidecarMesh(app string, inbound, outbound, adminS, adminC int) string {
	return fmt.Sprintf(`apiVersion: meshd.dev/v1alpha1
kind: Mesh
metadata:
  name: test
spec:
  trustDomain: test.example
---
apiVersion: meshd.dev/v1alpha1
kind: Service
metadata:
  name: greeter
  namespace: demo
spec:
  protocol: grpc
  port: 50051
  upstreamProtocol: http2
---
apiVersion: meshd.dev/v1alpha1
kind: Workload
metadata:
  name: greeter-server
  namespace: demo
spec:
  serviceAccount: greeter-server
  service: greeter
  inbound:
    port: %d
    app: %s
  admin: 127.0.0.1:%d
---
apiVersion: meshd.dev/v1alpha1
kind: Workload
metadata:
  name: greeter-client
  namespace: demo
spec:
  serviceAccount: greeter-client
  outbound:
    - service: greeter.demo
      port: %d
  admin: 127.0.0.1:%d
`, inbound, app, adminS, outbound, adminC)
}

// TestSidecarsUnderControlPlane (acceptance 1 and 6): meshd control-plane
// serves a mesh file; two meshd sidecars started from `meshd bootstrap`
// output (SotW and delta) carry the grpc-go interop cases from the client
// sidecar's outbound listener to the server sidecar's inbound listener and
// on to the interop server; /config_dump shows the dynamic resources with
// the control plane's version.
func TestSidecarsUnderControlPlane(t *testing.T) {
	client := testutil.BuildGoBinary(t, "meshd.dev/meshd/test/e2e/internal/interopclient")
	for _, delta := range []bool{false, true} {
		name := "sotw"
		if delta {
			name = "delta"
		}
		t.Run(name, func(t *testing.T) {
			app := testutil.StartGRPCInteropServer(t)
			ports := meshtest.FreePorts(t, 4)
			inbound, outbound := ports[0], ports[1]
			meshPath := filepath.Join(t.TempDir(), "mesh.yaml")
			writeFile(t, meshPath, twoSidecarMesh(app.Addr, inbound, outbound, ports[2], ports[3]))
			cp := startControlPlane(t, meshPath)
			st := cp.WaitStatus(t, "a published version", waitTimeout, func(st server.Status) bool { return st.Version != "" })

			var sidecars []*testutil.Sidecar
			for _, w := range []string{"greeter-server.demo", "greeter-client.demo"} {
				args := []string{"bootstrap", "-f", meshPath, "--workload", w, "--xds", cp.XDS, "--ca-dir", cp.CADir}
				if delta {
					args = append(args, "--delta")
				}
				res := testutil.RunMeshd(t, waitTimeout, args...)
				if res.ExitCode != 0 {
					t.Fatalf("meshd bootstrap %s: exit %d\n%s", w, res.ExitCode, res.Stderr)
				}
				sidecars = append(sidecars, testutil.StartSidecar(t, res.Stdout))
			}
			for _, sc := range sidecars {
				dump := sc.Admin(t, "GET", "/config_dump")
				for _, want := range []string{"dynamic_listeners", "dynamic_active_clusters", `"version_info":"` + st.Version + `"`} {
					if !strings.Contains(dump, want) {
						t.Errorf("/config_dump lacks %s:\n%.2000s", want, dump)
					}
				}
			}
			for _, tc := range sidecarInteropCases {
				t.Run(tc, func(t *testing.T) {
					ctx, cancel := context.WithTimeout(context.Background(), interopCaseTimeout)
					defer cancel()
					cmd := exec.CommandContext(ctx, client,
						"--server_host=127.0.0.1", "--server_port="+strconv.Itoa(outbound), "--test_case="+tc,
						"--timeout="+(interopCaseTimeout-5*time.Second).String())
					cmd.WaitDelay = time.Second
					out, err := cmd.CombinedOutput()
					if err != nil {
						t.Fatalf("interop case %s: %v\n%s", tc, err, out)
					}
				})
			}
		})
	}
}
