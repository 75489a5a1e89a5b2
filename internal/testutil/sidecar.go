package testutil

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Timeouts of the sidecar harness. They bound every wait so a broken sidecar
// fails a test instead of hanging it.
const (
	// SidecarReadyTimeout bounds the time from process start to GET /ready
	// answering 200.
	SidecarReadyTimeout = 20 * time.Second
	// AdminRequestTimeout bounds one admin API request.
	AdminRequestTimeout = 5 * time.Second
	// sidecarKillTimeout bounds the wait for a killed sidecar to be reaped.
	sidecarKillTimeout = 5 * time.Second
)

// Sidecar is a running `meshd sidecar` process started by StartSidecar. Its
// methods are safe for concurrent use. The process is killed, if it is still
// running, when the test that started it ends.
type Sidecar struct {
	// AdminAddr is the bound admin address ("127.0.0.1:port") the sidecar
	// wrote to its --admin-address-path file. Immutable.
	AdminAddr string

	cmd    *exec.Cmd
	stdout *SyncBuffer
	stderr *SyncBuffer
	races  *RaceLog
	done   chan struct{} // closed once cmd.Wait has returned
	state  *os.ProcessState
	admin  *http.Client
}

// StartSidecar writes bootstrapYAML to a file in a fresh temporary directory
// and starts `meshd sidecar -c FILE --admin-address-path ADDRFILE ARGS...`,
// with the binary from BuildMeshd. It returns once the admin address file has
// been written and GET /ready answers 200, and fails the test (with the
// process's output) if the process exits first or SidecarReadyTimeout passes.
//
// On cleanup the process is killed if it is still running, the test fails
// with the report of every data race a race-built meshd wrote (see
// WatchRaces), and the process's stdout and stderr are logged if the test
// failed.
func StartSidecar(t testing.TB, bootstrapYAML string, args ...string) *Sidecar {
	t.Helper()
	bin := BuildMeshd(t)
	dir := t.TempDir()
	bootstrapPath := filepath.Join(dir, "bootstrap.yaml")
	if err := os.WriteFile(bootstrapPath, []byte(bootstrapYAML), 0o600); err != nil {
		t.Fatalf("writing the bootstrap: %v", err)
	}
	adminPath := filepath.Join(dir, "admin-address")
	argv := append([]string{"sidecar", "-c", bootstrapPath, "--admin-address-path", adminPath}, args...)
	s := &Sidecar{
		cmd:    exec.Command(bin, argv...),
		stdout: &SyncBuffer{},
		stderr: &SyncBuffer{},
		done:   make(chan struct{}),
		admin: &http.Client{
			// No keep-alive: the harness must not leave idle
			// connections (and their goroutines) behind for the leak
			// check, nor hold a connection a drain would wait for.
			Transport: &http.Transport{DisableKeepAlives: true},
			Timeout:   AdminRequestTimeout,
		},
	}
	s.cmd.Stdout = s.stdout
	s.cmd.Stderr = s.stderr
	s.cmd.WaitDelay = time.Second
	s.races = WatchRaces(t, s.cmd)
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", bin, err)
	}
	go func() {
		_ = s.cmd.Wait()
		s.state = s.cmd.ProcessState
		close(s.done)
	}()
	t.Cleanup(func() {
		select {
		case <-s.done:
		default:
			_ = s.cmd.Process.Kill()
			select {
			case <-s.done:
			case <-time.After(sidecarKillTimeout):
				t.Errorf("meshd (pid %d) not reaped %v after SIGKILL", s.cmd.Process.Pid, sidecarKillTimeout)
			}
		}
		s.races.Check(t)
		if t.Failed() {
			t.Logf("meshd %s\n--- stdout ---\n%s\n--- stderr ---\n%s", strings.Join(argv, " "), s.stdout, s.stderr)
		}
	})
	if err := s.waitReady(adminPath, SidecarReadyTimeout); err != nil {
		t.Fatalf("meshd sidecar not ready: %v\n--- stderr ---\n%s", err, s.stderr)
	}
	return s
}

// waitReady polls for the admin address file, then for GET /ready == 200.
func (s *Sidecar) waitReady(adminPath string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	lastErr := errors.New("admin address file not written")
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			return fmt.Errorf("process exited (%v) before it was ready; last check: %w", s.state, lastErr)
		default:
		}
		// Read the file again every round: a reader can see it half
		// written, and a half address must not stick.
		data, err := os.ReadFile(adminPath)
		s.AdminAddr = strings.TrimSpace(string(data))
		if err != nil {
			lastErr = fmt.Errorf("admin address file: %w", err)
		} else if s.AdminAddr != "" {
			code, _, err := s.AdminRequest(http.MethodGet, "/ready")
			switch {
			case err != nil:
				lastErr = err
			case code == http.StatusOK:
				return nil
			default:
				lastErr = fmt.Errorf("GET /ready: status %d", code)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("not ready within %v: %w", timeout, lastErr)
}

// AdminRequest sends one request with an empty body to the admin API and
// returns the status code and body. It never retries.
func (s *Sidecar) AdminRequest(method, path string) (int, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), AdminRequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, "http://"+s.AdminAddr+path, nil)
	if err != nil {
		return 0, "", fmt.Errorf("admin %s %s: %w", method, path, err)
	}
	resp, err := s.admin.Do(req)
	if err != nil {
		return 0, "", fmt.Errorf("admin %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, "", fmt.Errorf("admin %s %s: reading the body: %w", method, path, err)
	}
	return resp.StatusCode, string(body), nil
}

// Admin is AdminRequest for tests: it fails the test on a transport error and
// on a status other than 200.
func (s *Sidecar) Admin(t testing.TB, method, path string) string {
	t.Helper()
	code, body, err := s.AdminRequest(method, path)
	if err != nil {
		t.Fatal(err)
	}
	if code != http.StatusOK {
		t.Fatalf("admin %s %s: status %d, body %q", method, path, code, body)
	}
	return body
}

// listenersJSON is the part of Envoy's GET /listeners?format=json the
// harness reads.
type listenersJSON struct {
	ListenerStatuses []struct {
		Name         string `json:"name"`
		LocalAddress struct {
			SocketAddress struct {
				Address   string `json:"address"`
				PortValue int    `json:"port_value"`
			} `json:"socket_address"`
		} `json:"local_address"`
	} `json:"listener_statuses"`
}

// ListenerAddr returns the bound "ip:port" of the listener called name, from
// GET /listeners?format=json. It fails the test if there is no such listener
// or it reports port 0.
func (s *Sidecar) ListenerAddr(t testing.TB, name string) string {
	t.Helper()
	body := s.Admin(t, http.MethodGet, "/listeners?format=json")
	var ls listenersJSON
	if err := json.Unmarshal([]byte(body), &ls); err != nil {
		t.Fatalf("GET /listeners?format=json: %v in %q", err, body)
	}
	var names []string
	for _, l := range ls.ListenerStatuses {
		if l.Name != name {
			names = append(names, l.Name)
			continue
		}
		sa := l.LocalAddress.SocketAddress
		if sa.PortValue <= 0 || sa.PortValue > 65535 {
			t.Fatalf("listener %q: bound port %d", name, sa.PortValue)
		}
		return net.JoinHostPort(sa.Address, strconv.Itoa(sa.PortValue))
	}
	t.Fatalf("GET /listeners?format=json: no listener %q (have %q)", name, names)
	return ""
}

// Stats returns the integer-valued stats of GET /stats ("name: value" lines).
// Lines whose value is not an integer (histogram summaries) are left out.
func (s *Sidecar) Stats(t testing.TB) map[string]int64 {
	t.Helper()
	return ParseStats(s.Admin(t, http.MethodGet, "/stats"))
}

// WaitStat polls GET /stats every 20 ms until the stat name (0 while
// absent) equals want, for at most timeout. Otherwise it fails the test
// with what, the stat's last value and want.
func (s *Sidecar) WaitStat(t testing.TB, name string, want int64, timeout time.Duration, what string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := s.Stats(t)[name]
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s = %d, want %d within %v", what, name, got, want, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// FilterStats returns the entries of st whose names contain sub (for
// logging the few stats a failure is about).
func FilterStats(st map[string]int64, sub string) map[string]int64 {
	out := make(map[string]int64)
	for k, v := range st {
		if strings.Contains(k, sub) {
			out[k] = v
		}
	}
	return out
}

// FetchStats GETs /stats from the admin server at addr ("ip:port"; any
// meshd sidecar's, not only one StartSidecar started), bounded by
// AdminRequestTimeout, and returns its integer-valued entries as
// ParseStats does. A status other than 200 is an error.
func FetchStats(addr string) (map[string]int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), AdminRequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/stats", nil)
	if err != nil {
		return nil, fmt.Errorf("admin %s GET /stats: %w", addr, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("admin %s GET /stats: %w", addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("admin %s GET /stats: reading the body: %w", addr, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("admin %s GET /stats: status %d: %.200s", addr, resp.StatusCode, body)
	}
	return ParseStats(string(body)), nil
}

// ParseStats parses Envoy's plain-text /stats format into a map of the
// integer-valued entries (counters and gauges).
func ParseStats(text string) map[string]int64 {
	out := make(map[string]int64)
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), ": ")
		if !ok {
			continue
		}
		v, err := strconv.ParseInt(strings.TrimSpace(value), 10, 64)
		if err != nil {
			continue
		}
		out[strings.TrimSpace(name)] = v
	}
	return out
}

// Signal sends sig to the sidecar process.
func (s *Sidecar) Signal(sig os.Signal) error {
	if err := s.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("signalling meshd (pid %d) with %v: %w", s.cmd.Process.Pid, sig, err)
	}
	return nil
}

// Wait waits up to timeout for the process to exit and returns its exit code
// (-1 if a signal killed it). It returns an error, and leaves the process
// running, if it has not exited by then.
func (s *Sidecar) Wait(timeout time.Duration) (int, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-s.done:
		return s.state.ExitCode(), nil
	case <-timer.C:
	}
	// An exit racing the deadline (or a zero timeout) still counts.
	select {
	case <-s.done:
		return s.state.ExitCode(), nil
	default:
		return 0, fmt.Errorf("meshd (pid %d) still running %v later", s.cmd.Process.Pid, timeout)
	}
}

// CheckRaces fails t with every data race report the process (when built
// with -race) has written and no earlier check reported. The harness calls
// it when the test ends; a test calls it to pin a race to a step, e.g.
// right after Wait.
func (s *Sidecar) CheckRaces(t testing.TB) {
	t.Helper()
	s.races.Check(t)
}

// Done is closed when the process has exited.
func (s *Sidecar) Done() <-chan struct{} { return s.done }

// Stdout returns what the process has written to stdout so far.
func (s *Sidecar) Stdout() string { return s.stdout.String() }

// Stderr returns what the process has written to stderr so far.
func (s *Sidecar) Stderr() string { return s.stderr.String() }

// RunResult is the outcome of a meshd run that was expected to end by itself.
type RunResult struct {
	ExitCode int // -1 if a signal killed it
	Stdout   string
	Stderr   string
}

// RunMeshd runs the meshd binary from BuildMeshd with args and waits up to
// timeout for it to exit. It fails the test (and kills the process) if the
// process cannot start or is still running at the deadline; a non-zero exit
// is returned, not treated as a failure. A data race report from a
// race-built meshd fails the test when RunMeshd returns.
func RunMeshd(t testing.TB, timeout time.Duration, args ...string) RunResult {
	t.Helper()
	bin := BuildMeshd(t)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	cmd.WaitDelay = time.Second
	races := WatchRaces(t, cmd)
	err := cmd.Run()
	races.Check(t)
	if ctx.Err() != nil {
		t.Fatalf("meshd %s: still running after %v\n--- stderr ---\n%s", strings.Join(args, " "), timeout, stderr.String())
	}
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		t.Fatalf("meshd %s: %v", strings.Join(args, " "), err)
	}
	return RunResult{ExitCode: cmd.ProcessState.ExitCode(), Stdout: stdout.String(), Stderr: stderr.String()}
}

// SyncBuffer collects a process's output: an io.Writer safe for one writer
// and concurrent readers of String (exec.Cmd's Stdout/Stderr with the test
// reading them while the process runs). The zero value is ready to use.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p; it never fails.
func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
