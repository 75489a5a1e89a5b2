// Package xds_test runs `meshd control-plane` as a process and talks to it
// with real xDS clients.
package xds_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	_ "google.golang.org/grpc/xds" // registers the xds:/// resolver and its balancers

	"meshd.dev/meshd/internal/meshtest"
	"meshd.dev/meshd/internal/testutil"
)

// clientModeEnv, when set in the environment, makes the test binary run
// proxylessClient instead of the tests: grpc-go reads GRPC_XDS_BOOTSTRAP
// once, at start-up, so the client needs a process of its own.
const clientModeEnv = "MESHD_TEST_PROXYLESS_CLIENT"

// proxylessCalls is how many RPCs the proxyless client makes.
const proxylessCalls = 5

func TestMain(m *testing.M) {
	if target := os.Getenv(clientModeEnv); target != "" {
		os.Exit(proxylessClient(target))
	}
	os.Exit(testutil.Main(m))
}

// proxylessClient dials target (xds:///...) and makes proxylessCalls
// EmptyCalls, printing the first error, then waits for stdin to close; it
// returns the exit code.
func proxylessClient(target string) int {
	cc, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintf(os.Stderr, "dial %s: %v\n", target, err)
		return 1
	}
	defer cc.Close()
	client := testgrpc.NewTestServiceClient(cc)
	for i := range proxylessCalls {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		_, err := client.EmptyCall(ctx, &testgrpc.Empty{})
		cancel()
		if err != nil {
			fmt.Fprintf(os.Stderr, "call %d through %s: %v\n", i, target, err)
			return 1
		}
	}
	// Stay connected (so the test can see this node on /status) until the
	// test closes stdin.
	fmt.Printf("%d calls ok\n", proxylessCalls)
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

// waitTimeout bounds any wait of these tests but a process start.
const waitTimeout = meshtest.WaitTimeout

// startControlPlane starts `meshd control-plane` on port 0 for meshPath,
// with its CA in a fresh directory under t.TempDir() and any extra flags,
// as meshtest.StartControlPlane does (ready, with a published version;
// killed at cleanup, its stderr logged if the test failed).
func startControlPlane(t *testing.T, meshPath string, extra ...string) *meshtest.ControlPlane {
	t.Helper()
	return meshtest.StartControlPlane(t, meshtest.ControlPlaneConfig{MeshPath: meshPath, Args: extra})
}

// greeterMesh is a mesh with one gRPC service whose endpoint is addr.
func greeterMesh(addr string) string {
	host, port, _ := strings.Cut(addr, ":")
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
  endpoints:
    - address: %s
      port: %s
`, host, port)
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}
