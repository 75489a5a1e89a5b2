package testutil

import (
	"bytes"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// LeakCheckTimeout is how long CheckGoroutines waits for goroutines started
// during a test to exit before it reports them. Connections closed at the end
// of a test take a few scheduler rounds to unwind their reader and writer
// goroutines, so the check polls instead of looking once.
const LeakCheckTimeout = 10 * time.Second

// ignoredGoroutines are stack substrings of goroutines that belong to the
// runtime or the test framework and may come and go during any test.
var ignoredGoroutines = []string{
	"testing.(*T).Run(",
	"testing.(*M).",
	"testing.tRunner(",
	"testing.runTests(",
	"runtime.goexit0",
	"created by runtime.gc",
	"runtime.MHeap_Scavenger",
	"os/signal.signal_recv",
	"os/signal.loop",
	"runtime.ensureSigM",
	"runtime/trace.Start",
	"testing/internal/testdeps.(*TestDeps).StartTestLog",
}

// CheckGoroutines snapshots the goroutines running now and registers a
// t.Cleanup that, when the test ends, waits up to LeakCheckTimeout for every
// goroutine started since to exit, then reports the stacks of those that did
// not with t.Errorf.
//
// Call it first in a test, so its cleanup runs last (cleanups run in reverse
// order) after the test's other cleanups have closed their connections and
// stopped their processes. Like grpc-go's leakcheck it cannot tell the
// goroutines of parallel tests apart: do not use it in tests that call
// t.Parallel or that run beside such tests.
func CheckGoroutines(t testing.TB) {
	t.Helper()
	checkGoroutines(t, LeakCheckTimeout)
}

func checkGoroutines(t testing.TB, timeout time.Duration) {
	baseline := make(map[int]bool)
	for _, g := range goroutines() {
		baseline[g.id] = true
	}
	t.Cleanup(func() {
		deadline := time.Now().Add(timeout)
		var leaks []goroutine
		for {
			leaks = leaked(baseline)
			if len(leaks) == 0 {
				return
			}
			if time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		var b strings.Builder
		for _, g := range leaks {
			fmt.Fprintf(&b, "\n%s\n", g.stack)
		}
		t.Errorf("%d goroutine(s) leaked (still running %v after the test):%s", len(leaks), timeout, b.String())
	})
}

// goroutine is one entry of a runtime.Stack(all) dump.
type goroutine struct {
	id    int
	stack string
}

// leaked returns the goroutines that are not in baseline, are not the
// caller, and are not runtime or test-framework goroutines.
func leaked(baseline map[int]bool) []goroutine {
	self := currentGoroutineID()
	var out []goroutine
	for _, g := range goroutines() {
		if baseline[g.id] || g.id == self || ignored(g.stack) {
			continue
		}
		out = append(out, g)
	}
	return out
}

func ignored(stack string) bool {
	for _, s := range ignoredGoroutines {
		if strings.Contains(stack, s) {
			return true
		}
	}
	return false
}

// goroutines parses a full stack dump. The dump grows the buffer until it
// fits, so no goroutine is cut off.
func goroutines() []goroutine {
	buf := make([]byte, 64<<10)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var out []goroutine
	for _, block := range bytes.Split(buf, []byte("\n\n")) {
		if id, ok := goroutineID(block); ok {
			out = append(out, goroutine{id: id, stack: string(bytes.TrimSpace(block))})
		}
	}
	return out
}

// goroutineID reads N from a block starting "goroutine N [state]:".
func goroutineID(block []byte) (int, bool) {
	rest, ok := bytes.CutPrefix(bytes.TrimSpace(block), []byte("goroutine "))
	if !ok {
		return 0, false
	}
	idText, _, ok := bytes.Cut(rest, []byte(" "))
	if !ok {
		return 0, false
	}
	id, err := strconv.Atoi(string(idText))
	if err != nil {
		return 0, false
	}
	return id, true
}

func currentGoroutineID() int {
	buf := make([]byte, 64)
	n := runtime.Stack(buf, false)
	id, _ := goroutineID(buf[:n])
	return id
}
