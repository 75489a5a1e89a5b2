package testutil

import (
	"syscall"
	"testing"
	"time"
)

// ProcessCPU is the CPU time (user + system) this process has used so far,
// every goroutine and the GC included (getrusage RUSAGE_SELF). Benchmarks
// divide its difference over a loop by b.N and report it as cpu-ns/op: on
// a shared machine, wall time per op measures the other processes' load as
// much as the code.
func ProcessCPU(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatalf("getrusage: %v", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
