package testutil

import (
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fakeMeshdEnv makes the test binary act as a minimal meshd (see
// runFakeMeshd), so the harness is tested against a real process before the
// real sidecar exists and without depending on it.
const fakeMeshdEnv = "TESTUTIL_FAKE_MESHD"

func TestMain(m *testing.M) {
	if os.Getenv(fakeMeshdEnv) == "1" {
		os.Exit(runFakeMeshd(os.Args[1:]))
	}
	os.Exit(Main(m))
}

// runFakeMeshd implements the parts of the meshd CLI contract the harness
// relies on: `version`, and `sidecar -c FILE --admin-address-path FILE` with
// an admin API (/ready, /listeners?format=json, /stats, POST
// /healthcheck/fail, POST /quitquitquit), one listener "ingress", exit 0 on
// SIGTERM, exit 1 naming a field for a bootstrap containing "invalid", and
// a data race before it serves for a bootstrap containing
// raceOnPurposeMarker.
func runFakeMeshd(args []string) int {
	if len(args) > 0 && args[0] == "version" {
		fmt.Printf("meshd fake %s\n", runtime.Version())
		return 0
	}
	if len(args) == 0 || args[0] != "sidecar" {
		fmt.Fprintln(os.Stderr, "usage: meshd sidecar -c FILE --admin-address-path FILE")
		return 2
	}
	var bootstrapPath, adminPath string
	for i := 1; i+1 < len(args); i++ {
		switch args[i] {
		case "-c":
			bootstrapPath = args[i+1]
		case "--admin-address-path":
			adminPath = args[i+1]
		}
	}
	bootstrap, err := os.ReadFile(bootstrapPath)
	if err != nil {
		fmt.Fprintf(os.Stderr, "reading bootstrap: %v\n", err)
		return 1
	}
	if strings.Contains(string(bootstrap), "invalid") {
		fmt.Fprintln(os.Stderr, "static_resources.clusters[0].connect_timeout: value must be greater than 0s")
		return 1
	}
	if strings.Contains(string(bootstrap), raceOnPurposeMarker) {
		raceOnPurpose()
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	admin, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	quit := make(chan struct{})
	var quitOnce sync.Once
	var failing bool
	var mu sync.Mutex
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if failing {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		fmt.Fprintln(w, "LIVE")
	})
	mux.HandleFunc("GET /listeners", func(w http.ResponseWriter, _ *http.Request) {
		a := lis.Addr().(*net.TCPAddr)
		fmt.Fprintf(w, `{"listener_statuses":[{"name":"ingress","local_address":{"socket_address":{"address":"%s","port_value":%d}}}]}`, a.IP, a.Port)
	})
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, "cluster.backend.upstream_rq_total: 3\nhttp.ingress.downstream_rq_active: 0\ncluster.backend.upstream_rq_time: P0(nan,1) P25(nan,2)\nserver.live: 1\n")
	})
	mux.HandleFunc("POST /healthcheck/fail", func(http.ResponseWriter, *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		failing = true
	})
	mux.HandleFunc("POST /quitquitquit", func(http.ResponseWriter, *http.Request) {
		quitOnce.Do(func() { close(quit) })
	})
	go func() { _ = http.Serve(admin, mux) }()
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	// Written in two steps on purpose: the harness must cope with seeing
	// the file half written.
	addr := admin.Addr().String()
	if err := os.WriteFile(adminPath, []byte(addr[:len(addr)/2]), 0o600); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	time.Sleep(50 * time.Millisecond)
	if err := os.WriteFile(adminPath, []byte(addr+"\n"), 0o600); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	select {
	case <-sigs:
	case <-quit:
		time.Sleep(50 * time.Millisecond) // let the admin response go out
	}
	return 0
}

// useFakeMeshd points BuildMeshd at this test binary acting as meshd.
func useFakeMeshd(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(MeshdBinEnv, exe)
	t.Setenv(fakeMeshdEnv, "1")
}

func TestSidecarHarness(t *testing.T) {
	useFakeMeshd(t)
	tests := []struct {
		name string
		stop func(t *testing.T, s *Sidecar)
	}{
		{"SIGTERM", func(t *testing.T, s *Sidecar) {
			if err := s.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
		}},
		{"quitquitquit", func(t *testing.T, s *Sidecar) { s.Admin(t, http.MethodPost, "/quitquitquit") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			CheckGoroutines(t)
			s := StartSidecar(t, "node: {id: x}\n", "--log-level", "debug")

			addr := s.ListenerAddr(t, "ingress")
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err != nil {
				t.Fatalf("dialing listener ingress at %s: %v", addr, err)
			}
			_ = c.Close()

			s.WaitStat(t, "cluster.backend.upstream_rq_total", 3, time.Second, "the fake's counter")
			if fetched, err := FetchStats(s.AdminAddr); err != nil || !maps.Equal(fetched, s.Stats(t)) {
				t.Errorf("FetchStats(%s) = %v, %v; want Stats() without an error", s.AdminAddr, fetched, err)
			}
			stats := s.Stats(t)
			if stats["cluster.backend.upstream_rq_total"] != 3 || stats["server.live"] != 1 {
				t.Errorf("Stats() = %v", stats)
			}
			if _, ok := stats["cluster.backend.upstream_rq_time"]; ok {
				t.Errorf("Stats() kept the histogram line: %v", stats)
			}

			s.Admin(t, http.MethodPost, "/healthcheck/fail")
			if code, _, err := s.AdminRequest(http.MethodGet, "/ready"); err != nil || code != http.StatusServiceUnavailable {
				t.Errorf("GET /ready after /healthcheck/fail = %d, %v; want 503", code, err)
			}

			tt.stop(t, s)
			code, err := s.Wait(5 * time.Second)
			if err != nil || code != 0 {
				t.Fatalf("Wait = %d, %v; want exit 0", code, err)
			}
		})
	}
}

func TestSidecarKilledOnCleanup(t *testing.T) {
	useFakeMeshd(t)
	var s *Sidecar
	t.Run("start", func(t *testing.T) { s = StartSidecar(t, "node: {id: x}\n") })
	select {
	case <-s.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the sidecar outlived the test that started it")
	}
	if code, err := s.Wait(0); err != nil || code != -1 {
		t.Errorf("Wait = %d, %v; want -1 (killed)", code, err)
	}
}

// fatalTB turns Fatal into a recorded message plus Goexit, so a test can
// check that a helper fails its caller.
type fatalTB struct {
	testing.TB
	mu    sync.Mutex
	fatal string
}

func (f *fatalTB) Fatalf(format string, args ...any) {
	f.mu.Lock()
	f.fatal = fmt.Sprintf(format, args...)
	f.mu.Unlock()
	runtime.Goexit()
}

func TestStartSidecarFailsWhenProcessExits(t *testing.T) {
	useFakeMeshd(t)
	f := &fatalTB{TB: t}
	done := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(done)
		StartSidecar(f, "invalid: true\n")
	}()
	select {
	case <-done:
	case <-time.After(SidecarReadyTimeout):
		t.Fatal("StartSidecar did not return")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !strings.Contains(f.fatal, "exited") || !strings.Contains(f.fatal, "connect_timeout") {
		t.Errorf("Fatalf message = %q, want it to say the process exited and show its stderr", f.fatal)
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("took %v to notice the exit, want well under SidecarReadyTimeout", elapsed)
	}
}

func TestRunMeshd(t *testing.T) {
	useFakeMeshd(t)
	bad := t.TempDir() + "/bad.yaml"
	if err := os.WriteFile(bad, []byte("invalid: true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{"version", []string{"version"}, 0, "meshd", ""},
		{"bad bootstrap", []string{"sidecar", "-c", bad}, 1, "", "static_resources.clusters[0].connect_timeout"},
		{"usage", []string{"nonsense"}, 2, "", "usage"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := RunMeshd(t, 10*time.Second, tt.args...)
			if r.ExitCode != tt.wantCode || !strings.Contains(r.Stdout, tt.wantStdout) || !strings.Contains(r.Stderr, tt.wantStderr) {
				t.Errorf("RunMeshd(%q) = %+v; want exit %d, stdout with %q, stderr with %q", tt.args, r, tt.wantCode, tt.wantStdout, tt.wantStderr)
			}
		})
	}
}

func TestParseStats(t *testing.T) {
	got := ParseStats("a.b: 1\nc: -2\nh: P0(nan,1) P100(nan,2)\nno colon\nd: No recorded values\n\ne:  7 \n")
	want := map[string]int64{"a.b": 1, "c": -2, "e": 7}
	if len(got) != len(want) {
		t.Fatalf("ParseStats = %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("ParseStats[%q] = %d, want %d", k, got[k], v)
		}
	}
}

func TestFilterStats(t *testing.T) {
	st := map[string]int64{"http.a.rq": 1, "http.b.rq": 2, "cluster.a.cx": 3}
	tests := []struct {
		sub  string
		want map[string]int64
	}{
		{"http.", map[string]int64{"http.a.rq": 1, "http.b.rq": 2}},
		{".a.", map[string]int64{"http.a.rq": 1, "cluster.a.cx": 3}},
		{"nothing", map[string]int64{}},
		{"", st},
	}
	for _, tt := range tests {
		t.Run(tt.sub, func(t *testing.T) {
			if got := FilterStats(st, tt.sub); !maps.Equal(got, tt.want) {
				t.Errorf("FilterStats(%q) = %v, want %v", tt.sub, got, tt.want)
			}
		})
	}
}
