package xds_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"

	"meshd.dev/meshd/internal/meshtest"
	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/xds/server"
)

// benchEnv enables TestMTLSCPUPerCall, a measurement rather than a check.
const benchEnv = "MESHD_BENCH"

// Shape of TestMTLSCPUPerCall.
const (
	costCallers = 16
	costWarmup  = 2 * time.Second
	costCalls   = 30000
	// costTimeout bounds the measured calls of one mode.
	costTimeout = 120 * time.Second
)

// clockTicks returns the unit of /proc/PID/stat's utime and stime.
func clockTicks(t *testing.T) float64 {
	t.Helper()
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err != nil {
		return 100 // the Linux default where getconf is missing
	}
	hz, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64)
	if err != nil || hz <= 0 {
		t.Fatalf("getconf CLK_TCK: %q", out)
	}
	return hz
}

// procCPUTicks returns utime+stime of pid from /proc/PID/stat.
func procCPUTicks(t *testing.T, pid int) int64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the parenthesised command name: state is field 3,
	// utime 14 and stime 15 (proc(5)).
	rest := string(data[strings.LastIndexByte(string(data), ')')+2:])
	f := strings.Fields(rest)
	if len(f) < 13 {
		t.Fatalf("/proc/%d/stat: %d fields after the name", pid, len(f))
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	s, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("/proc/%d/stat: utime %q stime %q", pid, f[11], f[12])
	}
	return u + s
}

// runCalls makes n EmptyCalls over callers goroutines and returns the
// failures and the first error.
func runCalls(client testgrpc.TestServiceClient, callers, n int, timeout time.Duration) (fail int, first error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range callers {
		share := n / callers
		if i < n%callers {
			share++
		}
		wg.Go(func() {
			for range share {
				if _, err := client.EmptyCall(ctx, &testgrpc.Empty{}); err != nil {
					mu.Lock()
					fail++
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	return fail, first
}

// costRounds is how many measured windows each mode gets, alternating
// modes (A B A B ...) so drift on a shared machine hits both alike; the
// median is reported.
const costRounds = 3

// TestMTLSCPUPerCall (issue 5, benchmark; MESHD_BENCH=1): the CPU that the
// two sidecars (client and server side) spend per unary gRPC call, with
// the mesh's mtls DISABLE and STRICT, over the same long-lived
// connections, and the ratio. Both meshes run side by side; costCallers
// callers share one gRPC connection to each client sidecar. After
// costWarmup, costRounds windows of costCalls calls alternate between the
// modes, reading the sidecars' utime+stime around each; the median per
// mode is reported. No call may fail. The TLS handshake cost itself is
// mtls.BenchmarkHandshake.
func TestMTLSCPUPerCall(t *testing.T) {
	if os.Getenv(benchEnv) != "1" {
		t.Skipf("set %s=1 to measure the sidecars' CPU per call with mTLS on and off", benchEnv)
	}
	if raceEnabled {
		t.Skip("CPU figures under the race detector mean nothing")
	}
	hz := clockTicks(t)
	type env struct {
		mode     string
		client   testgrpc.TestServiceClient
		sidecars []*testutil.Sidecar
		perCall  []float64
	}
	var envs []*env
	for _, mode := range []string{"DISABLE", "STRICT"} {
		app := testutil.StartGRPCInteropServer(t)
		p := newMTLSPorts(t)
		meshPath := filepath.Join(t.TempDir(), "mesh.yaml")
		writeFile(t, meshPath, mtlsMeshMode(app.Addr, p, nil, mode))
		cp := startControlPlane(t, meshPath)
		cp.WaitStatus(t, "a published version", waitTimeout, func(st server.Status) bool { return st.Version != "" })
		e := &env{mode: mode, sidecars: []*testutil.Sidecar{
			mtlsSidecar(t, cp, meshPath, serverNode, false),
			mtlsSidecar(t, cp, meshPath, clientNode, false),
		}}
		e.client = meshtest.DialLoopback(t, p.Outbound)
		waitCallCode(t, e.client, codes.OK, waitTimeout)
		warm := time.Now().Add(costWarmup)
		for time.Now().Before(warm) {
			if fail, err := runCalls(e.client, costCallers, 1000, costTimeout); fail != 0 {
				t.Fatalf("%s warm-up: %d calls failed; first: %v", mode, fail, err)
			}
		}
		envs = append(envs, e)
	}
	for round := range costRounds {
		for _, e := range envs {
			var before int64
			for _, sc := range e.sidecars {
				before += procCPUTicks(t, sc.PID())
			}
			start := time.Now()
			fail, err := runCalls(e.client, costCallers, costCalls, costTimeout)
			elapsed := time.Since(start)
			var after int64
			for _, sc := range e.sidecars {
				after += procCPUTicks(t, sc.PID())
			}
			if fail != 0 {
				t.Fatalf("%s round %d: %d of %d calls failed; first: %v", e.mode, round, fail, costCalls, err)
			}
			cpu := float64(after-before) / hz
			if cpu <= 0 {
				t.Fatalf("%s: the sidecars used no measurable CPU over %d calls", e.mode, costCalls)
			}
			us := cpu / costCalls * 1e6
			e.perCall = append(e.perCall, us)
			t.Logf("round %d mtls %s: %d calls in %v (%.0f calls/s); both sidecars %.2f CPU-s = %.1f µs/call",
				round, e.mode, costCalls, elapsed.Round(time.Millisecond), costCalls/elapsed.Seconds(), cpu, us)
		}
	}
	off, on := median(envs[0].perCall), median(envs[1].perCall)
	t.Logf("sidecar CPU per call (median of %d), mTLS on/off: %.1f / %.1f µs = %.2fx", costRounds, on, off, on/off)
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}
