package hardening

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// probeModeEnv, set by startProbe on a child copy of the test binary,
// makes it a probe process instead of running tests.
const probeModeEnv = "MESHD_TEST_HARDENING_PROBE"

// Probe process bounds.
const (
	// probeWindow is one latency window of the probe process.
	probeWindow = 100 * time.Millisecond
	// probePace separates the probe's requests, so its own load (about
	// 400 requests/s) leaves the sidecar's CPU to the attack.
	probePace = 2 * time.Millisecond
	// probeLifetime bounds the probe process, should its parent vanish.
	probeLifetime = 10 * time.Minute
)

// runProbeProcess times GET / on addr back to back, one window after the
// other, and prints one line per window: start and end (Unix ns), p99 (ns),
// requests and errors. It stops when stdin closes or after probeLifetime.
// The probe runs in its own process so that attackers and the backend,
// which share the test process, cannot starve it on Go's scheduler: what
// it measures is the sidecar.
func runProbeProcess(addr string) int {
	stdinClosed := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(stdinClosed)
	}()
	p := newProber(addr)
	defer p.close()
	out := bufio.NewWriter(os.Stdout)
	end := time.Now().Add(probeLifetime)
	for time.Now().Before(end) {
		select {
		case <-stdinClosed:
			return 0
		default:
		}
		start := time.Now()
		lat, errs := p.window(probeWindow, probePace)
		fmt.Fprintf(out, "%d %d %d %d %d\n", start.UnixNano(), time.Now().UnixNano(), percentile(lat, 0.99), len(lat), errs)
		_ = out.Flush()
	}
	return 0
}

// probeWindowResult is one line of the probe process.
type probeWindowResult struct {
	start, end time.Time
	p99        time.Duration
	n, errs    int
}

// probe is a running probe process.
type probe struct {
	mu      sync.Mutex
	windows []probeWindowResult
}

// startProbe starts the probe process against addr; it is stopped when
// the test ends.
func startProbe(t *testing.T, addr string) *probe {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), probeModeEnv+"="+addr)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	cmd.WaitDelay = time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &probe{}
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) != 5 {
				continue
			}
			var v [5]int64
			for i := range f {
				v[i], _ = strconv.ParseInt(f[i], 10, 64)
			}
			p.mu.Lock()
			p.windows = append(p.windows, probeWindowResult{
				start: time.Unix(0, v[0]), end: time.Unix(0, v[1]), p99: time.Duration(v[2]), n: int(v[3]), errs: int(v[4]),
			})
			p.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = stdin.Close()
		done := make(chan struct{})
		go func() {
			_ = cmd.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		<-readDone
	})
	return p
}

// between summarises the windows that lie wholly within [from, to].
func (p *probe) between(from, to time.Time) latency {
	p.mu.Lock()
	defer p.mu.Unlock()
	var l latency
	for _, w := range p.windows {
		if w.start.Before(from) || w.end.After(to) {
			continue
		}
		l.n += w.n
		l.errs += w.errs
		l.p99s = append(l.p99s, w.p99)
	}
	l.finish()
	return l
}
