package xds_test

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"maps"
	"runtime/trace"
	"slices"
	"strings"
	"testing"

	xtrace "golang.org/x/exp/trace"
)

// wakeups is what countWakeups reads from a runtime trace: how often
// goroutines were woken, by whom, and how often an idle P was started.
type wakeups struct {
	// Unblocks counts goroutines made runnable after blocking (a channel,
	// mutex, condition variable or network wait ended).
	Unblocks int
	// ByScheduler counts the Unblocks that no goroutine made: the netpoller
	// or a timer, found by the scheduler.
	ByScheduler int
	// ProcStarts counts Ps going from idle to running: a thread woken (or
	// kept spinning) to run goroutines another P readied.
	ProcStarts int
	// Edges counts Unblocks by "waker -> wakee": the innermost frame outside
	// the runtime and the standard library's synchronisation and I/O
	// packages of the goroutine that readied the other, and of the stack
	// the woken goroutine had blocked in ("scheduler" for ByScheduler).
	Edges map[string]int
}

// countWakeups reads a runtime trace (the output of runtime/trace or
// /debug/pprof/trace) and counts its goroutine wake-ups and P starts.
func countWakeups(r io.Reader) (wakeups, error) {
	w := wakeups{Edges: map[string]int{}}
	tr, err := xtrace.NewReader(r)
	if err != nil {
		return w, fmt.Errorf("reading the trace header: %w", err)
	}
	blockedIn := map[xtrace.GoID]string{}
	for {
		ev, err := tr.ReadEvent()
		if errors.Is(err, io.EOF) {
			return w, nil
		}
		if err != nil {
			return w, fmt.Errorf("reading trace events: %w", err)
		}
		if ev.Kind() != xtrace.EventStateTransition {
			continue
		}
		st := ev.StateTransition()
		switch st.Resource.Kind {
		case xtrace.ResourceProc:
			if from, to := st.Proc(); from == xtrace.ProcIdle && to == xtrace.ProcRunning {
				w.ProcStarts++
			}
		case xtrace.ResourceGoroutine:
			g := st.Resource.Goroutine()
			switch from, to := st.Goroutine(); {
			case from == xtrace.GoRunning && to == xtrace.GoWaiting:
				blockedIn[g] = wakeSite(ev.Stack())
			case from == xtrace.GoWaiting && to == xtrace.GoRunnable:
				w.Unblocks++
				waker := "scheduler"
				if ev.Goroutine() == xtrace.NoGoroutine {
					w.ByScheduler++
				} else {
					waker = wakeSite(ev.Stack())
				}
				wakee := cmp.Or(blockedIn[g], "?")
				w.Edges[waker+" -> "+wakee]++
			}
		}
	}
}

// plumbing lists the function prefixes wakeSite looks through: the
// runtime and the standard library's synchronisation and I/O layers,
// which every wake-up passes and which name no owner.
var plumbing = []string{
	"runtime.", "internal/", "sync.", "context.", "time.", "syscall.", "os.", "net.", "io.", "bufio.", "bytes.",
	"crypto/tls.", "golang.org/x/sys/", "golang.org/x/net/internal/", "golang.org/x/net/ipv4.", "golang.org/x/net/ipv6.",
}

// wakeSite names the innermost frame of stack outside plumbing, shortened
// to its package's last element; the innermost frame when all are
// plumbing, "-" for an empty stack.
func wakeSite(stack xtrace.Stack) string {
	first := ""
	for f := range stack.Frames() {
		if first == "" {
			first = f.Func
		}
		if !slices.ContainsFunc(plumbing, func(p string) bool { return strings.HasPrefix(f.Func, p) }) {
			return shortFunc(f.Func)
		}
	}
	return cmp.Or(shortFunc(first), "-")
}

// shortFunc drops the import path before a function's package name:
// "github.com/quic-go/quic-go.(*Conn).run" becomes "quic-go.(*Conn).run".
func shortFunc(fn string) string {
	slash := strings.LastIndexByte(fn, '/')
	return fn[slash+1:]
}

// perRequest formats w's counts divided by requests, with the n most
// frequent edges.
func (w wakeups) perRequest(requests int64, n int) string {
	per := func(v int) float64 { return float64(v) / float64(requests) }
	var b strings.Builder
	fmt.Fprintf(&b, "%.2f goroutine wake-ups per request (%.2f by the netpoller or a timer), %.2f idle P started",
		per(w.Unblocks), per(w.ByScheduler), per(w.ProcStarts))
	edges := slices.SortedFunc(maps.Keys(w.Edges), func(a, b string) int {
		return cmp.Or(cmp.Compare(w.Edges[b], w.Edges[a]), strings.Compare(a, b))
	})
	for _, e := range edges[:min(n, len(edges))] {
		fmt.Fprintf(&b, "\n\t%.2f %s", per(w.Edges[e]), e)
	}
	return b.String()
}

// tokenRelay passes a token rounds times between two goroutines over
// unbuffered channels; each waits for the other at every pass.
//
//go:noinline
func tokenRelay(rounds int) {
	ping, pong := make(chan int), make(chan int)
	done := make(chan struct{})
	go func() {
		defer close(done)
		relayBack(ping, pong)
	}()
	for i := range rounds {
		ping <- i
		<-pong
	}
	close(ping)
	<-done
}

// relayBack answers every value received on ping on pong.
//
//go:noinline
func relayBack(ping <-chan int, pong chan<- int) {
	for v := range ping {
		pong <- v
	}
}

// TestCountWakeups checks countWakeups on a trace of this process: a
// token relay between two goroutines of known length is counted, attributed to the two
// functions that wake each other, and an empty or foreign input is an
// error.
func TestCountWakeups(t *testing.T) {
	const rounds = 2000
	var buf bytes.Buffer
	if err := trace.Start(&buf); err != nil {
		t.Skipf("runtime trace in use (go test -trace?): %v", err)
	}
	tokenRelay(rounds)
	trace.Stop()
	w, err := countWakeups(&buf)
	if err != nil {
		t.Fatal(err)
	}
	// Every pass of the token wakes at most the goroutine on the other end,
	// parked sending or receiving, and each round (two passes) parks at
	// least one of them; closing the channel wakes relayBack once more, and
	// a few more are allowed for wake-ups around the goroutine's start and
	// exit. Every one of them is between the two functions.
	const slack = 4
	there := w.Edges["xds_test.tokenRelay -> xds_test.relayBack"]
	back := w.Edges["xds_test.relayBack -> xds_test.tokenRelay"]
	if sum := there + back; there == 0 || back == 0 || sum < rounds || sum > 2*rounds+slack || w.Unblocks < sum {
		t.Errorf("%d rounds: tokenRelay woke relayBack %d times, relayBack woke tokenRelay %d times, %d wake-ups in all; want both, together %d..%d\n%s",
			rounds, there, back, w.Unblocks, rounds, 2*rounds+slack, w.perRequest(rounds, 5))
	}
	t.Logf("%d rounds: %s", rounds, w.perRequest(rounds, 3))
	for _, tc := range []struct {
		name  string
		input string
	}{
		{"empty", ""},
		{"not a trace", "go 1.26 trace\x00\x00\x00 but nothing else"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := countWakeups(strings.NewReader(tc.input)); err == nil {
				t.Errorf("countWakeups(%q) = nil error, want one", tc.input)
			}
		})
	}
}
