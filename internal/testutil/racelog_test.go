package testutil

import (
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// raceOnPurposeMarker in a bootstrap makes the fake meshd race on purpose.
const raceOnPurposeMarker = "race-on-purpose"

// raceOnPurpose writes one variable from two goroutines with nothing
// ordering the writes, which the race detector reports every time.
func raceOnPurpose() {
	n := new(int)
	done := make(chan struct{})
	go func() {
		*n = 1
		close(done)
	}()
	*n = 2
	<-done
}

// errorTB records Errorf instead of failing the test, so a test can check
// what a helper reports to its caller.
type errorTB struct {
	testing.TB
	mu     sync.Mutex
	errors []string
}

func (e *errorTB) Errorf(format string, args ...any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.errors = append(e.errors, fmt.Sprintf(format, args...))
}

func (e *errorTB) recorded() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.errors)
}

// TestRaceLogReportsSidecarRace starts the fake meshd (this race-built
// test binary) through StartSidecar with a bootstrap that makes it race:
// the race is reported exactly once, quoting the report, whether the test
// checks right after stopping the process or leaves it to the cleanup.
func TestRaceLogReportsSidecarRace(t *testing.T) {
	if !raceEnabled {
		t.Skip("the fake meshd is this test binary, which has no race detector without -race")
	}
	useFakeMeshd(t)
	tests := []struct {
		name      string
		checkStop bool
	}{
		{"at stop", true},
		{"at cleanup", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &errorTB{TB: t}
			t.Run("sidecar", func(t *testing.T) {
				rec.TB = t
				s := StartSidecar(rec, "node: {id: x}\n"+raceOnPurposeMarker+": true\n")
				if !tt.checkStop {
					return
				}
				if err := s.Signal(syscall.SIGTERM); err != nil {
					t.Fatal(err)
				}
				if _, err := s.Wait(5 * time.Second); err != nil {
					t.Fatal(err)
				}
				s.CheckRaces(rec)
				if got := rec.recorded(); len(got) != 1 {
					t.Errorf("CheckRaces after the exit reported %d errors, want 1: %q", len(got), got)
				}
			})
			got := rec.recorded()
			if len(got) != 1 {
				t.Fatalf("reported %d errors by the end of the test, want 1 (the race, once): %q", len(got), got)
			}
			for _, want := range []string{"data race in a process", raceReportStart, "raceOnPurpose", "(pid "} {
				if !strings.Contains(got[0], want) {
					t.Errorf("report %q does not contain %q", got[0], want)
				}
			}
		})
	}
}

// TestRaceLogNoRace: a clean run of the race-built fake reports nothing.
func TestRaceLogNoRace(t *testing.T) {
	if !raceEnabled {
		t.Skip("needs -race")
	}
	useFakeMeshd(t)
	rec := &errorTB{TB: t}
	t.Run("sidecar", func(t *testing.T) {
		rec.TB = t
		StartSidecar(rec, "node: {id: x}\n")
	})
	if got := rec.recorded(); len(got) != 0 {
		t.Errorf("reported %q, want nothing", got)
	}
}

func TestWatchRacesEnv(t *testing.T) {
	tests := []struct {
		name     string
		gorace   string // "" leaves GORACE unset
		cmdEnv   []string
		wantHead string // what precedes log_path in the child's GORACE
	}{
		{name: "unset"},
		{name: "kept from the test's environment", gorace: "halt_on_error=1 history_size=3", wantHead: "halt_on_error=1 history_size=3 "},
		{name: "kept from cmd.Env", cmdEnv: []string{"A=b", "GORACE=atexit_sleep_ms=0"}, wantHead: "atexit_sleep_ms=0 "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("GORACE", tt.gorace)
			cmd := exec.Command("true")
			cmd.Env = tt.cmdEnv
			r := WatchRaces(t, cmd)
			var last string
			for _, kv := range cmd.Environ() {
				if v, ok := strings.CutPrefix(kv, "GORACE="); ok {
					last = v
				}
			}
			if want := tt.wantHead + "log_path=" + r.prefix; last != want {
				t.Errorf("child GORACE = %q, want %q", last, want)
			}
			if tt.cmdEnv != nil && !slices.Contains(cmd.Env, "A=b") {
				t.Errorf("cmd.Env = %q lost A=b", cmd.Env)
			}
		})
	}
}

// A report as the Go race runtime writes it.
const sampleReport = `WARNING: DATA RACE
Write at 0x00c000012345 by goroutine 7:
  main.main.func1()
      /src/x.go:9 +0x3a

Previous write at 0x00c000012345 by main goroutine:
  main.main()
      /src/x.go:11 +0x8c

Goroutine 7 (running) created at:
  main.main()
      /src/x.go:8 +0x7e`

func TestSplitRaceReports(t *testing.T) {
	sep := raceReportSeparator + "\n"
	tests := []struct {
		name      string
		text      string
		reports   []string
		wantOther string
	}{
		{"empty", "", nil, ""},
		{"no race", "==1==WARNING: ThreadSanitizer: something else\n", nil, "==1==WARNING: ThreadSanitizer: something else"},
		{"one", sep + sampleReport + "\n" + sep + "Found 1 data race(s)\n", []string{sampleReport}, "Found 1 data race(s)"},
		{"two", sep + sampleReport + "\n" + sep + sep + sampleReport + "\n" + sep, []string{sampleReport, sampleReport}, ""},
		{"cut short by a kill", sep + sampleReport[:60], []string{sampleReport[:60]}, ""},
		{"text around", "before\n" + sep + sampleReport + "\n" + sep + "after\n", []string{sampleReport}, "before\nafter"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reports, other := SplitRaceReports(tt.text)
			if !slices.Equal(reports, tt.reports) || other != tt.wantOther {
				t.Errorf("SplitRaceReports = %q, %q; want %q, %q", reports, other, tt.reports, tt.wantOther)
			}
		})
	}
}
