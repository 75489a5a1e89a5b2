package e2e

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"meshd.dev/meshd/examples"
	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/internal/wasmbuild"
)

// Timeouts of the `meshd up` test.
const (
	// upStartTimeout bounds the time until the start-up block is printed
	// (every sidecar ready).
	upStartTimeout = 30 * time.Second
	// upFirstCallWithin is acceptance 8: successful calls within 30 s.
	upFirstCallWithin = 30 * time.Second
	// upExitTimeout bounds the wait for meshd up to exit once it stops.
	upExitTimeout = 30 * time.Second
)

var summaryRE = regexp.MustCompile(`^meshd up: (\d+) calls, (\d+) errors.*?(?:, first success ([0-9.]+)s after start)?(?:, (\d+) failed before the first success)?`)

// TestUp runs `meshd up` with the built-in example (acceptance 8): the
// sample client's calls succeed through two sidecars within 30 s, with no
// error after the first success; it stops cleanly after --duration and on
// SIGINT, exits 0, leaves no sidecar process behind and removes its
// temporary directory. The example runs STRICT mTLS and carries greeter
// over HTTP/3 between the sidecars: the start-up block prints both SPIFFE
// IDs, the client sidecar opens QUIC connections (upstream_cx_http3_total)
// and never falls back to HTTP/2 (upstream_http3_broken 0), and the server
// sidecar's QUIC listener serves the calls.
func TestUp(t *testing.T) {
	testutil.CheckGoroutines(t)
	bin := testutil.BuildMeshd(t)
	tests := []struct {
		name string
		args []string
		// interrupt, when set, sends SIGINT this long after start-up
		// instead of waiting for --duration.
		interrupt time.Duration
	}{
		{name: "duration", args: []string{"--duration", "20s", "--quiet"}},
		{name: "SIGINT", args: []string{"--quiet"}, interrupt: 3 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), upStartTimeout+upExitTimeout+30*time.Second)
			defer cancel()
			cmd, lines := startUp(ctx, t, bin, t.TempDir(), tc.args...)

			// The start-up block: note the log directory; it ends with
			// "Ctrl-C stops everything." once every sidecar is ready.
			var logDir string
			var children []int
			var identities []string
			admins := map[string]string{} // sidecar node ID -> admin address
			startDeadline := time.After(upStartTimeout)
		startup:
			for {
				select {
				case l, ok := <-lines:
					if !ok {
						t.Fatal("meshd up exited before it was ready")
					}
					t.Log(l)
					if rest, ok := strings.CutPrefix(strings.TrimSpace(l), "logs "); ok {
						logDir, _, _ = strings.Cut(strings.TrimSpace(rest), ",")
					}
					if rest, ok := strings.CutPrefix(strings.TrimSpace(l), "identity "); ok {
						identities = append(identities, strings.TrimSpace(rest))
					}
					if f := strings.Fields(l); len(f) >= 5 && f[0] == "sidecar" && f[2] == "admin" {
						admins[f[1]] = strings.TrimPrefix(f[3], "http://")
					}
					if l == "Ctrl-C stops everything." {
						break startup
					}
				case <-startDeadline:
					t.Fatalf("no start-up block within %s", upStartTimeout)
				}
			}
			if logDir == "" {
				t.Fatal("the start-up block names no log directory")
			}
			wantIDs := []string{"spiffe://example.org/ns/demo/sa/greeter-client", "spiffe://example.org/ns/demo/sa/greeter-server"}
			if strings.Join(identities, " ") != strings.Join(wantIDs, " ") {
				t.Errorf("start-up block identities %q, want %q", identities, wantIDs)
			}
			// The built-in example carries greeter over HTTP/3 between
			// the sidecars: the client sidecar's cluster opens QUIC
			// connections (always TLS; the server sidecar requires client
			// SVIDs, so this is mTLS) without falling back to HTTP/2, and
			// the server sidecar's QUIC listener serves the requests.
			waitStat(t, "greeter-client.demo", admins["greeter-client.demo"], "cluster.", ".upstream_cx_http3_total")
			waitStat(t, "greeter-server.demo", admins["greeter-server.demo"], "http.inbound-quic_", ".downstream_rq_http3_total")
			children = childPIDs(t, cmd.Process.Pid)
			if len(children) != 2 {
				t.Fatalf("meshd up has %d child processes %v, want 2 sidecars", len(children), children)
			}

			if tc.interrupt > 0 {
				time.Sleep(tc.interrupt)
				checkNoHTTP3Fallback(t, admins["greeter-client.demo"])
				if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
					t.Fatal(err)
				}
			}
			if tc.interrupt == 0 {
				// After a few hundred sample calls, well before
				// --duration ends.
				time.Sleep(3 * time.Second)
				checkNoHTTP3Fallback(t, admins["greeter-client.demo"])
			}
			var summary string
			exitDeadline := time.After(upExitTimeout + 20*time.Second)
		run:
			for {
				select {
				case l, ok := <-lines:
					if !ok {
						break run
					}
					t.Log(l)
					if strings.HasPrefix(l, "meshd up: ") && summaryRE.MatchString(l) {
						summary = l
					}
				case <-exitDeadline:
					t.Fatal("meshd up did not exit in time")
				}
			}
			if err := cmd.Wait(); err != nil {
				t.Fatalf("meshd up: %v, want exit 0", err)
			}

			m := summaryRE.FindStringSubmatch(summary)
			if m == nil {
				t.Fatal("no summary line \"meshd up: N calls, M errors\"")
			}
			calls, _ := strconv.Atoi(m[1])
			errs, _ := strconv.Atoi(m[2])
			if calls == 0 || errs != 0 {
				t.Errorf("summary %q: want calls > 0 and 0 errors after the first success", summary)
			}
			if m[3] == "" {
				t.Errorf("summary %q names no first success", summary)
			} else if first, err := strconv.ParseFloat(m[3], 64); err != nil || time.Duration(first*float64(time.Second)) > upFirstCallWithin {
				t.Errorf("first success %ss after start, want within %s", m[3], upFirstCallWithin)
			}
			for _, pid := range children {
				if alive(pid) {
					t.Errorf("sidecar process %d still runs after meshd up exited", pid)
				}
			}
			if _, err := os.Stat(logDir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("log directory %s still there after exit (err %v), want it removed without --keep-logs", logDir, err)
			}
		})
	}
}

// startUp starts `meshd up args...` in dir, bounded by ctx. Its stderr
// goes to the test log, and its sidecars inherit GORACE and report to the
// same race log. Its stdout arrives line by line on the returned channel,
// which is closed when the process closes stdout. If the test has not
// waited for the process by the end, a cleanup kills it.
func startUp(ctx context.Context, t *testing.T, bin, dir string, args ...string) (*exec.Cmd, <-chan string) {
	t.Helper()
	cmd := exec.CommandContext(ctx, bin, append([]string{"up"}, args...)...)
	cmd.Dir = dir
	cmd.Stderr = &prefixWriter{t: t, prefix: "meshd up stderr: "}
	cmd.WaitDelay = time.Second
	testutil.WatchRaces(t, cmd)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	lines := make(chan string, 256)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	return cmd, lines
}

// waitStat polls node's admin at addr until a counter named
// prefix...suffix is positive, for up to 10 s.
func waitStat(t *testing.T, node, addr, prefix, suffix string) {
	t.Helper()
	if addr == "" {
		t.Fatalf("the start-up block names no admin address for %s", node)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := testutil.FetchStats(addr)
		for name, n := range st {
			if strings.HasPrefix(name, prefix) && strings.HasSuffix(name, suffix) && n > 0 {
				t.Logf("%s: %s = %d", node, name, n)
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s's admin %s shows no positive %s*%s after 10 s (last error %v): greeter is not carried over HTTP/3", node, addr, prefix, suffix, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkNoHTTP3Fallback fails the test when the client sidecar at addr
// counted an HTTP/3 failure that sent calls to HTTP/2 over TCP.
func checkNoHTTP3Fallback(t *testing.T, addr string) {
	t.Helper()
	st, err := testutil.FetchStats(addr)
	if err != nil {
		t.Fatalf("greeter-client.demo stats: %v", err)
	}
	for name, n := range st {
		if strings.HasSuffix(name, ".upstream_http3_broken") && n != 0 {
			t.Errorf("greeter-client.demo: %s = %d: calls fell back to HTTP/2", name, n)
		}
	}
}

// childPIDs returns the processes whose parent is pid, from /proc.
func childPIDs(t *testing.T, pid int) []int {
	t.Helper()
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil || len(stats) == 0 {
		t.Skipf("no /proc to find child processes in: %v", err)
	}
	var pids []int
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // exited meanwhile
		}
		// "pid (comm) state ppid ...": comm may hold spaces, so split
		// after its closing parenthesis.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 || f[1] != strconv.Itoa(pid) {
			continue
		}
		child, err := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		if err == nil {
			pids = append(pids, child)
		}
	}
	return pids
}

// alive reports whether pid is a running (not zombie) process.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && !strings.HasPrefix(strings.TrimSpace(s[i+1:]), "Z")
}

// prefixWriter logs what is written to it through t.Log, line by line.
type prefixWriter struct {
	t      *testing.T
	prefix string
}

func (w *prefixWriter) Write(p []byte) (int, error) {
	for _, l := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		w.t.Log(w.prefix + l)
	}
	return len(p), nil
}

// TestUpWasmRateLimit runs `meshd up -f` on the built-in example with its
// RateLimitPolicy switched to engine wasm at 20 calls/s (burst 20) and the
// rate-limit module given with --ratelimit-wasm: the in-process control
// plane serves the module, the server sidecar fetches it, and the sample
// client's 100 calls/s, for 3 s after start-up, end OK or
// RESOURCE_EXHAUSTED, nothing else.
func TestUpWasmRateLimit(t *testing.T) {
	wasmProcessTest(t)
	bin := testutil.BuildMeshd(t)
	module := wasmbuild.Build(t, guestRateLimit)
	mesh := string(examples.Mesh)
	for _, e := range [][2]string{{"engine: native", "engine: wasm"}, {"requestsPerUnit: 500", "requestsPerUnit: 20"}, {"burst: 500", "burst: 20"}} {
		if !strings.Contains(mesh, e[0]) {
			t.Fatalf("examples/mesh.yaml has no %q", e[0])
		}
		mesh = strings.Replace(mesh, e[0], e[1], 1)
	}
	dir := t.TempDir()
	meshPath := filepath.Join(dir, "mesh.yaml")
	if err := os.WriteFile(meshPath, []byte(mesh), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), upStartTimeout+upExitTimeout+30*time.Second)
	defer cancel()
	// No --duration: it would count the start-up (the module's compile).
	cmd, lines := startUp(ctx, t, bin, dir, "-f", meshPath, "--samples", "--quiet", "--ratelimit-wasm", module)
	var summary string
	ready := time.After(upStartTimeout)
	var stop <-chan time.Time
	for l := range lines {
		t.Log(l)
		if l == "Ctrl-C stops everything." {
			ready, stop = nil, time.After(3*time.Second)
			go func() {
				<-stop
				_ = cmd.Process.Signal(syscall.SIGINT)
			}()
		}
		select {
		case <-ready:
			t.Fatalf("meshd up not ready within %v", upStartTimeout)
		default:
		}
		if strings.HasPrefix(l, "meshd up: ") {
			summary = l
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("meshd up: %v, want exit 0", err)
	}
	m := regexp.MustCompile(`^meshd up: (\d+) calls, (\d+) errors \(ResourceExhausted (\d+)\)`).FindStringSubmatch(summary)
	if m == nil {
		t.Fatalf("summary %q: want calls with ResourceExhausted errors only", summary)
	}
	// "N calls" counts the successful ones.
	calls, _ := strconv.Atoi(m[1])
	errs, _ := strconv.Atoi(m[2])
	if exhausted, _ := strconv.Atoi(m[3]); exhausted != errs || errs == 0 || calls == 0 {
		t.Errorf("summary %q: want calls admitted, calls limited, and every error ResourceExhausted", summary)
	}
}
