package testutil

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// recordTB records what a timing helper does to its test: the name it
// reports, its errors, logs, and whether it failed fatally or skipped
// (both end the helper's goroutine, as the testing package does).
type recordTB struct {
	testing.TB
	name string

	mu      sync.Mutex
	errs    []string
	logs    []string
	fatal   string
	skipped string
}

func (r *recordTB) Name() string { return r.name }
func (r *recordTB) Helper()      {}

func (r *recordTB) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

func (r *recordTB) Logf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.logs = append(r.logs, fmt.Sprintf(format, args...))
}

func (r *recordTB) Fatalf(format string, args ...any) {
	r.mu.Lock()
	r.fatal = fmt.Sprintf(format, args...)
	r.mu.Unlock()
	runtime.Goexit()
}

func (r *recordTB) Skip(args ...any) {
	r.mu.Lock()
	r.skipped = fmt.Sprint(args...)
	r.mu.Unlock()
	runtime.Goexit()
}

// run calls f with r on its own goroutine, so a Goexit from Fatalf or Skip
// ends only that goroutine.
func (r *recordTB) run(f func(testing.TB)) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(r)
	}()
	<-done
}

func TestTiming(t *testing.T) {
	tests := []struct {
		name        string
		testName    string
		wantFatal   string // substring; "" for none
		wantSkipped bool
	}{
		{name: "timing test", testName: "TestPoolTiming", wantSkipped: RaceEnabled},
		{name: "subtest of a timing test", testName: "TestS10IdleTimeoutTiming/h2", wantSkipped: RaceEnabled},
		{name: "name without the mark", testName: "TestPool", wantFatal: `lacks "Timing"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &recordTB{TB: t, name: tt.testName}
			r.run(Timing)
			if tt.wantFatal == "" && r.fatal != "" || tt.wantFatal != "" && !strings.Contains(r.fatal, tt.wantFatal) {
				t.Errorf("fatal %q, want one containing %q", r.fatal, tt.wantFatal)
			}
			if skipped := r.skipped != ""; skipped != tt.wantSkipped {
				t.Errorf("skipped %v (%q), want %v", skipped, r.skipped, tt.wantSkipped)
			}
			if r.skipped != "" && !strings.Contains(r.skipped, "-run Timing") {
				t.Errorf("skip message %q does not name the step that runs the test", r.skipped)
			}
		})
	}
}

func TestTimingAtMost(t *testing.T) {
	const bound = 650 * time.Millisecond
	tests := []struct {
		name      string
		testName  string
		got       time.Duration
		wantOK    bool
		wantErr   bool // an Errorf (never under -race)
		wantFatal bool
	}{
		{name: "within", testName: "TestKeepaliveTiming", got: 400 * time.Millisecond, wantOK: true},
		{name: "at the bound", testName: "TestKeepaliveTiming", got: bound, wantOK: true},
		{name: "over", testName: "TestKeepaliveTiming", got: 900 * time.Millisecond, wantErr: !RaceEnabled},
		{name: "name without the mark", testName: "TestKeepalive", got: 400 * time.Millisecond, wantFatal: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &recordTB{TB: t, name: tt.testName}
			var ok bool
			r.run(func(tb testing.TB) { ok = TimingAtMost(tb, "dead peer detected", tt.got, bound) })
			if (r.fatal != "") != tt.wantFatal {
				t.Fatalf("fatal %q, want fatal %v", r.fatal, tt.wantFatal)
			}
			if tt.wantFatal {
				return
			}
			if ok != tt.wantOK {
				t.Errorf("TimingAtMost = %v, want %v", ok, tt.wantOK)
			}
			if (len(r.errs) > 0) != tt.wantErr {
				t.Errorf("errors %q, want an error: %v", r.errs, tt.wantErr)
			}
			// The figure is in the log or the error either way.
			all := strings.Join(append(r.logs, r.errs...), "\n")
			if !strings.Contains(all, "dead peer detected: "+tt.got.String()) {
				t.Errorf("logs %q and errors %q do not give the figure %v", r.logs, r.errs, tt.got)
			}
		})
	}
}
