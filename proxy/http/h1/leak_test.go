package h1

import (
	"runtime"
	"strings"
	"testing"
	"time"
)

// leakTimeout bounds how long a test waits for its goroutines to exit.
const leakTimeout = 5 * time.Second

// checkLeaks fails t if, once t's other cleanups ran, goroutines of this
// package or of the net/http connections it owns are still running.
func checkLeaks(t *testing.T) {
	t.Helper()
	t.Cleanup(func() {
		deadline := time.Now().Add(leakTimeout)
		for {
			leaked := interestingGoroutines()
			if len(leaked) == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("%d leaked goroutine(s):\n%s", len(leaked), strings.Join(leaked, "\n\n"))
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

func interestingGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	// The first goroutine is the caller's.
	for i, g := range strings.Split(string(buf), "\n\n") {
		if i == 0 {
			continue
		}
		for _, mark := range []string{"meshd.dev/meshd/", "net/http.", "crypto/tls.", "net.(*"} {
			if strings.Contains(g, mark) && !strings.Contains(g, "testing.tRunner") {
				out = append(out, g)
				break
			}
		}
	}
	return out
}
