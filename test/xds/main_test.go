// Package xds_test runs `meshd control-plane` as a process and talks to it
// with real xDS clients.
package xds_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	_ "google.golang.org/grpc/xds" // registers the xds:/// resolver and its balancers

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/xds/server"
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

// Timeouts of these tests.
const (
	startTimeout = 20 * time.Second // process start to /readyz 200
	waitTimeout  = 10 * time.Second // any other wait
)

// controlPlane is a running `meshd control-plane`.
type controlPlane struct {
	XDS, Admin string
	// CADir is the built-in CA's --ca-dir (under the test's temp dir, so
	// no test writes into the user's config dir); `meshd bootstrap
	// --ca-dir` derives workload tokens from it.
	CADir  string
	cmd    *exec.Cmd
	stderr *lockedBuffer
	done   chan struct{}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startControlPlane starts meshd control-plane on port 0 for meshPath, with
// its CA in a fresh directory under t.TempDir() and any extra flags, and
// waits until /readyz answers 200. The process is killed at cleanup.
func startControlPlane(t *testing.T, meshPath string, extra ...string) *controlPlane {
	t.Helper()
	bin := testutil.BuildMeshd(t)
	dir := t.TempDir()
	xdsPath, adminPath := filepath.Join(dir, "xds-address"), filepath.Join(dir, "admin-address")
	cp := &controlPlane{CADir: filepath.Join(dir, "ca"), stderr: &lockedBuffer{}, done: make(chan struct{})}
	args := []string{"control-plane", "--config", meshPath,
		"--xds-address", "127.0.0.1:0", "--admin-address", "127.0.0.1:0",
		"--xds-address-path", xdsPath, "--admin-address-path", adminPath,
		"--poll-interval", "50ms", "--ca-dir", cp.CADir}
	cp.cmd = exec.Command(bin, append(args, extra...)...)
	cp.cmd.Stderr = cp.stderr
	cp.cmd.WaitDelay = time.Second
	if err := cp.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = cp.cmd.Wait()
		close(cp.done)
	}()
	t.Cleanup(func() {
		select {
		case <-cp.done:
		default:
			_ = cp.cmd.Process.Kill()
			<-cp.done
		}
		if t.Failed() {
			t.Logf("control-plane stderr:\n%s", cp.stderr)
		}
	})
	deadline := time.Now().Add(startTimeout)
	for {
		select {
		case <-cp.done:
			t.Fatalf("control plane exited before it was ready:\n%s", cp.stderr)
		default:
		}
		x, _ := os.ReadFile(xdsPath)
		a, _ := os.ReadFile(adminPath)
		cp.XDS, cp.Admin = strings.TrimSpace(string(x)), strings.TrimSpace(string(a))
		if cp.XDS != "" && cp.Admin != "" {
			if code, _ := cp.get(t, "/readyz"); code == http.StatusOK {
				return cp
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("control plane not ready within %v:\n%s", startTimeout, cp.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// get fetches an admin path; a connection error is status 0.
func (cp *controlPlane) get(t *testing.T, path string) (int, []byte) {
	t.Helper()
	c := &http.Client{Timeout: waitTimeout, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + cp.Admin + path)
	if err != nil {
		return 0, nil
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return resp.StatusCode, []byte(b.String())
}

// waitStatus polls /status until ok holds.
func (cp *controlPlane) waitStatus(t *testing.T, what string, ok func(server.Status) bool) server.Status {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	var last []byte
	for time.Now().Before(deadline) {
		code, body := cp.get(t, "/status")
		last = body
		var st server.Status
		if code == http.StatusOK && json.Unmarshal(body, &st) == nil && ok(st) {
			return st
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: not seen on /status within %v; last:\n%s", what, waitTimeout, last)
	return server.Status{}
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
