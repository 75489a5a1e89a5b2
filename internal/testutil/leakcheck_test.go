package testutil

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// recordingTB captures what the leak check reports instead of failing the
// real test, and runs the registered cleanups on demand.
type recordingTB struct {
	testing.TB
	mu       sync.Mutex
	errs     []string
	cleanups []func()
}

func (r *recordingTB) Cleanup(f func()) { r.cleanups = append(r.cleanups, f) }

func (r *recordingTB) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

func (r *recordingTB) runCleanups() {
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
}

func leakyGoroutine(stop <-chan struct{}) { <-stop }

func TestCheckGoroutines(t *testing.T) {
	tests := []struct {
		name string
		// start starts goroutines and returns what to do just before the
		// check runs (after the "test" body).
		start    func(stop chan struct{}) (beforeCheck func())
		wantLeak bool
	}{
		{
			name:  "nothing started",
			start: func(chan struct{}) func() { return func() {} },
		},
		{
			name: "goroutine exits during the grace period",
			start: func(stop chan struct{}) func() {
				go leakyGoroutine(stop)
				return func() { time.AfterFunc(50*time.Millisecond, func() { close(stop) }) }
			},
		},
		{
			name: "goroutine never exits",
			start: func(stop chan struct{}) func() {
				go leakyGoroutine(stop)
				return func() {}
			},
			wantLeak: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recordingTB{TB: t}
			checkGoroutines(rec, 500*time.Millisecond)
			stop := make(chan struct{})
			before := tt.start(stop)
			before()
			rec.runCleanups()
			select {
			case <-stop:
			default:
				close(stop) // release the leaked goroutine for the tests after this one
			}
			rec.mu.Lock()
			defer rec.mu.Unlock()
			if !tt.wantLeak {
				if len(rec.errs) != 0 {
					t.Fatalf("reported a leak: %v", rec.errs)
				}
				return
			}
			if len(rec.errs) != 1 || !strings.Contains(rec.errs[0], "leakyGoroutine") {
				t.Fatalf("reports = %q, want one naming leakyGoroutine", rec.errs)
			}
		})
	}
}

func TestParseGoroutineID(t *testing.T) {
	tests := []struct {
		in     string
		want   int
		wantOK bool
	}{
		{"goroutine 17 [running]:\nmain.main()", 17, true},
		{"\ngoroutine 3 [chan receive, 2 minutes]:", 3, true},
		{"goroutine x [running]:", 0, false},
		{"created by main.main", 0, false},
	}
	for _, tt := range tests {
		got, ok := goroutineID([]byte(tt.in))
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("goroutineID(%q) = %d, %v; want %d, %v", tt.in, got, ok, tt.want, tt.wantOK)
		}
	}
}
