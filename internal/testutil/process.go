package testutil

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// PID returns the operating-system process id of the sidecar, so tests can
// read what the kernel says about it (/proc/PID/fd, /proc/PID/status). The
// id stays valid until the process has been reaped (Done is closed).
func (s *Sidecar) PID() int { return s.cmd.Process.Pid }

// StartAnnouncingProcess runs bin, a helper command that serves on a free
// loopback port, prints prefix followed by its address as its first line
// on stdout and exits when its stdin closes; it returns that address. The
// process ends with the test (stdin closed, then killed if it lingers more
// than 5 s). Benchmarks run their peers this way so that getrusage of the
// test process counts none of the peers' work.
func StartAnnouncingProcess(t testing.TB, bin, prefix string) string {
	t.Helper()
	cmd := exec.Command(bin)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatalf("%s stdin: %v", bin, err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatalf("%s stdout: %v", bin, err)
	}
	cmd.Stderr = os.Stderr
	cmd.WaitDelay = time.Second
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", bin, err)
	}
	waited := make(chan error, 1)
	t.Cleanup(func() {
		stdin.Close()
		select {
		case <-waited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-waited
		}
	})
	line := make(chan string, 1)
	go func() {
		r := bufio.NewReader(stdout)
		l, _ := r.ReadString('\n')
		line <- l
		_, _ = io.Copy(io.Discard, r)
		waited <- cmd.Wait()
	}()
	select {
	case l := <-line:
		addr, ok := strings.CutPrefix(strings.TrimSpace(l), prefix)
		if !ok {
			t.Fatalf("%s: first line %q, want %q ADDR", bin, l, prefix)
		}
		return addr
	case <-time.After(10 * time.Second):
	}
	t.Fatalf("%s: no address within 10 s", bin)
	return ""
}
