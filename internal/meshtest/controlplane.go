// Package meshtest runs a whole mesh as processes for multi-process tests:
// a `meshd control-plane` on a mesh file, the `meshd sidecar` of each
// Workload bootstrapped as `meshd bootstrap` prints, and gRPC call loads
// through them. It reads the control plane's GET /status to tell when
// sidecars have ACKed a version.
//
// It lives apart from internal/testutil because it imports xds/server,
// whose own tests import testutil. Like testutil, every helper binds
// 127.0.0.1, takes a testing.TB, and registers its own teardown with
// t.Cleanup: a test that returns (or fails) leaves no process behind.
package meshtest

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/xds/server"
)

// Bounds of the harness; every wait is bounded by one of them.
const (
	// StartTimeout bounds a control plane's start to GET /readyz 200.
	StartTimeout = 20 * time.Second
	// WaitTimeout bounds any other single wait (a status, a bootstrap).
	WaitTimeout = 10 * time.Second
	// adminTimeout bounds one admin request to the control plane.
	adminTimeout = 5 * time.Second
	// killTimeout bounds the reaping of a killed process.
	killTimeout = 5 * time.Second
)

// ControlPlaneConfig says how StartControlPlane runs `meshd control-plane`.
type ControlPlaneConfig struct {
	// MeshPath is the mesh file (--config). Required.
	MeshPath string
	// XDSAddr is --xds-address; empty means 127.0.0.1:0. A fixed address
	// lets a restarted control plane be found where the sidecars'
	// bootstraps point.
	XDSAddr string
	// CADir is the built-in CA's --ca-dir; empty means a fresh directory
	// under t.TempDir(). Reusing it keeps the root and the token secret
	// across a restart.
	CADir string
	// Args are extra flags (e.g. "--svid-ttl", "20s").
	Args []string
}

// ControlPlane is a running `meshd control-plane`. Its methods are safe
// for concurrent use.
type ControlPlane struct {
	// XDS and Admin are the bound addresses. Immutable.
	XDS, Admin string
	// CADir is the CA directory; `meshd bootstrap --ca-dir` derives
	// workload tokens from it. Immutable.
	CADir string

	cmd    *exec.Cmd
	stderr *testutil.SyncBuffer
	races  *testutil.RaceLog
	done   chan struct{} // closed once cmd.Wait returned
	client *http.Client
}

// StartControlPlane starts `meshd control-plane` (the binary of
// testutil.BuildMeshd) as cfg says, with --poll-interval 50ms, and returns
// once GET /readyz answers 200 and a snapshot version is published. The
// process is killed at cleanup if it still runs, a data race report from a
// race-built meshd fails the test (testutil.WatchRaces), and its stderr is
// logged if the test failed.
func StartControlPlane(t testing.TB, cfg ControlPlaneConfig) *ControlPlane {
	t.Helper()
	bin := testutil.BuildMeshd(t)
	dir := t.TempDir()
	if cfg.XDSAddr == "" {
		cfg.XDSAddr = "127.0.0.1:0"
	}
	if cfg.CADir == "" {
		cfg.CADir = filepath.Join(dir, "ca")
	}
	xdsPath, adminPath := filepath.Join(dir, "xds-address"), filepath.Join(dir, "admin-address")
	cp := &ControlPlane{
		CADir:  cfg.CADir,
		stderr: &testutil.SyncBuffer{},
		done:   make(chan struct{}),
		client: &http.Client{Timeout: adminTimeout, Transport: &http.Transport{DisableKeepAlives: true}},
	}
	args := append([]string{"control-plane", "--config", cfg.MeshPath,
		"--xds-address", cfg.XDSAddr, "--admin-address", "127.0.0.1:0",
		"--xds-address-path", xdsPath, "--admin-address-path", adminPath,
		"--poll-interval", "50ms", "--ca-dir", cfg.CADir}, cfg.Args...)
	cp.cmd = exec.Command(bin, args...)
	cp.cmd.Stderr = cp.stderr
	cp.cmd.WaitDelay = time.Second
	cp.races = testutil.WatchRaces(t, cp.cmd)
	if err := cp.cmd.Start(); err != nil {
		t.Fatalf("starting meshd control-plane: %v", err)
	}
	go func() {
		_ = cp.cmd.Wait()
		close(cp.done)
	}()
	t.Cleanup(func() {
		cp.Kill(t)
		if t.Failed() {
			t.Logf("control-plane (pid %d) stderr:\n%s", cp.cmd.Process.Pid, cp.stderr)
		}
	})
	deadline := time.Now().Add(StartTimeout)
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
			if st, err := cp.Status(); err == nil && st.Version != "" {
				if code, _, _ := cp.get("/readyz"); code == http.StatusOK {
					return cp
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("control plane not ready within %v:\n%s", StartTimeout, cp.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Kill sends SIGKILL (if the process still runs) and waits until it is
// reaped, then fails t with any data race report the process wrote that
// was not reported yet. It may be called more than once.
func (cp *ControlPlane) Kill(t testing.TB) {
	t.Helper()
	defer cp.races.Check(t)
	select {
	case <-cp.done:
		return
	default:
	}
	_ = cp.cmd.Process.Kill()
	select {
	case <-cp.done:
	case <-time.After(killTimeout):
		t.Errorf("control plane (pid %d) not reaped %v after SIGKILL", cp.cmd.Process.Pid, killTimeout)
	}
}

// CheckRaces fails t with every data race report the process (when built
// with -race) has written and no earlier check reported; Kill and the
// cleanup call it.
func (cp *ControlPlane) CheckRaces(t testing.TB) {
	t.Helper()
	cp.races.Check(t)
}

// Stderr returns what the process has logged so far.
func (cp *ControlPlane) Stderr() string { return cp.stderr.String() }

// PID is the process id; it stays valid until Done is closed.
func (cp *ControlPlane) PID() int { return cp.cmd.Process.Pid }

// Signal sends sig to the process.
func (cp *ControlPlane) Signal(sig os.Signal) error {
	if err := cp.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("signalling control plane (pid %d) with %v: %w", cp.cmd.Process.Pid, sig, err)
	}
	return nil
}

// Done is closed once the process has exited and been reaped.
func (cp *ControlPlane) Done() <-chan struct{} { return cp.done }

// Wait waits up to timeout for the process to exit and returns its exit
// code (-1 if a signal killed it). It returns an error, and leaves the
// process running, if it has not exited by then.
func (cp *ControlPlane) Wait(timeout time.Duration) (int, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-cp.done:
		return cp.cmd.ProcessState.ExitCode(), nil
	case <-timer.C:
		return 0, fmt.Errorf("control plane (pid %d) still running %v later", cp.cmd.Process.Pid, timeout)
	}
}

// Get fetches GET path from the admin server and returns the status code
// and the body; an error means no complete response was read.
func (cp *ControlPlane) Get(path string) (int, []byte, error) {
	return cp.get(path)
}

// get fetches an admin path.
func (cp *ControlPlane) get(path string) (int, []byte, error) {
	resp, err := cp.client.Get("http://" + cp.Admin + path)
	if err != nil {
		return 0, nil, fmt.Errorf("control plane GET %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, nil, fmt.Errorf("control plane GET %s: reading the body: %w", path, err)
	}
	return resp.StatusCode, body, nil
}

// Post sends POST path with an empty body and returns the response body;
// a status other than 200 is an error.
func (cp *ControlPlane) Post(path string) (string, error) {
	resp, err := cp.client.Post("http://"+cp.Admin+path, "", nil)
	if err != nil {
		return "", fmt.Errorf("control plane POST %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("control plane POST %s: %s: %s", path, resp.Status, body)
	}
	return string(body), nil
}

// Status fetches and decodes GET /status.
func (cp *ControlPlane) Status() (server.Status, error) {
	code, body, err := cp.get("/status")
	if err != nil {
		return server.Status{}, err
	}
	if code != http.StatusOK {
		return server.Status{}, fmt.Errorf("control plane GET /status: status %d: %s", code, body)
	}
	var st server.Status
	if err := json.Unmarshal(body, &st); err != nil {
		return server.Status{}, fmt.Errorf("control plane GET /status: %w", err)
	}
	return st, nil
}

// WaitStatus polls /status every 10 ms until ok holds, for at most
// timeout, and returns the status that satisfied it; it fails the test
// with the last status (and what) otherwise.
func (cp *ControlPlane) WaitStatus(t testing.TB, what string, timeout time.Duration, ok func(server.Status) bool) server.Status {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last server.Status
	var lastErr error
	for {
		st, err := cp.Status()
		if err == nil && ok(st) {
			return st
		}
		if err == nil {
			last = st
		}
		lastErr = err
		if time.Now().After(deadline) {
			t.Fatalf("%s: not seen on /status within %v (last error %v); last: %+v", what, timeout, lastErr, last)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Acked reports whether st shows, for each node, a state-of-the-world
// stream on which every resource type was ACKed at version. (A SotW stream
// gets every type at every published version.)
func Acked(st server.Status, version string, nodes ...string) bool {
	for _, node := range nodes {
		ok := false
		for _, s := range st.Streams {
			if s.Node != node || s.Stream != server.StreamSotW || len(s.Types) == 0 {
				continue
			}
			all := true
			for _, ts := range s.Types {
				all = all && ts.AckedVersion == version
			}
			ok = ok || all
		}
		if !ok {
			return false
		}
	}
	return true
}

// StartWorkload starts the sidecar of the Workload node ("name.namespace")
// of the mesh file meshPath, from `meshd bootstrap --ca-dir` output (so it
// carries its CA token) pointing at cp's xDS address, over state of the
// world. extra are sidecar flags. The sidecar is stopped at cleanup, as
// testutil.StartSidecar says.
func StartWorkload(t testing.TB, cp *ControlPlane, meshPath, node string, extra ...string) *testutil.Sidecar {
	t.Helper()
	return testutil.StartSidecar(t, WorkloadBootstrap(t, cp, meshPath, node, false), extra...)
}

// StartDeltaWorkload is StartWorkload over delta xDS (`meshd bootstrap
// --delta`).
func StartDeltaWorkload(t testing.TB, cp *ControlPlane, meshPath, node string, extra ...string) *testutil.Sidecar {
	t.Helper()
	return testutil.StartSidecar(t, WorkloadBootstrap(t, cp, meshPath, node, true), extra...)
}

// WorkloadBootstrap returns what `meshd bootstrap -f meshPath --workload
// node --xds cp.XDS --ca-dir cp.CADir` prints (with --delta when delta),
// bounded by WaitTimeout; a non-zero exit fails the test with its stderr.
func WorkloadBootstrap(t testing.TB, cp *ControlPlane, meshPath, node string, delta bool) string {
	t.Helper()
	args := []string{"bootstrap", "-f", meshPath, "--workload", node, "--xds", cp.XDS, "--ca-dir", cp.CADir}
	if delta {
		args = append(args, "--delta")
	}
	res := testutil.RunMeshd(t, WaitTimeout, args...)
	if res.ExitCode != 0 {
		t.Fatalf("meshd bootstrap %s: exit %d\n%s", node, res.ExitCode, res.Stderr)
	}
	return res.Stdout
}

// FreePorts returns n distinct loopback TCP ports that were free a moment
// ago (for mesh files, which name their ports).
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	out := make([]int, 0, n)
	ls := make([]net.Listener, 0, n)
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("finding a free port: %v", err)
		}
		ls = append(ls, l)
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	return out
}

// WriteFileAtomic replaces path with data by renaming a temporary file
// over it, as editors do, so a watcher never reads a half-written file.
func WriteFileAtomic(t testing.TB, path, data string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, []byte(data), 0o600); err != nil {
		t.Fatalf("writing %s: %v", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatalf("replacing %s: %v", path, err)
	}
}
