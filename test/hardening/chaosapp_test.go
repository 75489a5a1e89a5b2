package hardening

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
)

// appModeEnv, when set to an address, makes the test binary run
// runAppProcess on it instead of the tests: the chaos tests' upstream
// application is a process of its own, so it can be stopped and replaced.
const appModeEnv = "MESHD_TEST_HARDENING_APP"

// Bounds of the app process.
const (
	// appBindTimeout bounds how long a replacement waits for its port.
	appBindTimeout = 10 * time.Second
	// appGracefulTimeout bounds GracefulStop before Stop.
	appGracefulTimeout = 5 * time.Second
	// appReadyLine is what the process prints once it serves.
	appReadyLine = "serving"
	// appWaitingLine is what a replacement prints when it first finds its
	// port taken, before it retries the bind.
	appWaitingLine = "waiting for the port"
)

// runAppProcess serves grpc-go's interop TestService on addr with
// plaintext HTTP/2. While another process still holds the port it retries
// the bind every millisecond (for up to appBindTimeout), so a replacement
// started before the old process stops takes over the port as soon as it
// is free. It prints appWaitingLine on the first refused bind, so a test
// can stop the old process only once the replacement is retrying: the
// start-up of a process on a loaded machine can outlast the pool's
// restart hold. On SIGTERM it stops gracefully (grpc-go's GracefulStop:
// close the listener, GOAWAY, let in-flight RPCs finish) and exits 0; it
// exits 1 when stdin closes (the test is gone).
func runAppProcess(addr string) int {
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(1)
	}()
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	deadline := time.Now().Add(appBindTimeout)
	var lis net.Listener
	for waiting := false; ; {
		var err error
		if lis, err = net.Listen("tcp", addr); err == nil {
			break
		}
		if !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			fmt.Fprintf(os.Stderr, "app: listen %s: %v\n", addr, err)
			return 1
		}
		if !waiting {
			waiting = true
			fmt.Println(appWaitingLine)
		}
		time.Sleep(time.Millisecond)
	}
	srv := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(srv, interop.NewTestServer())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	fmt.Println(appReadyLine)
	select {
	case err := <-served:
		fmt.Fprintf(os.Stderr, "app: serve: %v\n", err)
		return 1
	case <-term:
	}
	stopped := make(chan struct{})
	go func() {
		srv.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(appGracefulTimeout):
		srv.Stop()
		<-stopped
	}
	return 0
}

// appProcess is a running runAppProcess.
type appProcess struct {
	addr   string
	cmd    *exec.Cmd
	stdin  io.Closer
	stderr strings.Builder
	ready  chan struct{} // closed once it printed appReadyLine
	// waiting is closed once it printed appWaitingLine.
	waiting chan struct{}
	done    chan struct{} // closed once cmd.Wait returned
}

// startApp starts an app process on addr and returns without waiting for
// it to serve (a replacement waits for its port); waitReady waits. The
// process is killed at cleanup if it still runs.
func startApp(t *testing.T, addr string) *appProcess {
	t.Helper()
	a := &appProcess{addr: addr, ready: make(chan struct{}), waiting: make(chan struct{}), done: make(chan struct{})}
	a.cmd = exec.Command(os.Args[0], "-test.run=^$")
	a.cmd.Env = append(os.Environ(), appModeEnv+"="+addr)
	a.cmd.Stderr = &a.stderr
	a.cmd.WaitDelay = time.Second
	stdin, err := a.cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := a.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	a.stdin = stdin
	if err := a.cmd.Start(); err != nil {
		t.Fatalf("starting the app process: %v", err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			switch sc.Text() {
			case appReadyLine:
				close(a.ready)
			case appWaitingLine:
				close(a.waiting)
			}
		}
		_ = a.cmd.Wait()
		close(a.done)
	}()
	t.Cleanup(func() {
		_ = a.stdin.Close()
		select {
		case <-a.done:
		case <-time.After(appGracefulTimeout):
			_ = a.cmd.Process.Kill()
			<-a.done
		}
	})
	return a
}

// waitReady waits until the process serves.
func (a *appProcess) waitReady(t *testing.T) {
	t.Helper()
	select {
	case <-a.ready:
	case <-a.done:
		t.Fatalf("app process on %s exited before serving: %s", a.addr, &a.stderr)
	case <-time.After(appBindTimeout + 5*time.Second):
		t.Fatalf("app process on %s not serving within %v", a.addr, appBindTimeout+5*time.Second)
	}
}

// waitWaiting waits until a replacement process retries the bind of a
// port another process still holds, so it takes the port within a
// millisecond of its release.
func (a *appProcess) waitWaiting(t *testing.T) {
	t.Helper()
	select {
	case <-a.waiting:
	case <-a.ready:
		select {
		case <-a.waiting: // it waited, then the port came free
		default:
			t.Fatalf("replacement app process on %s served at once: the port was free", a.addr)
		}
	case <-a.done:
		t.Fatalf("app process on %s exited before binding: %s", a.addr, &a.stderr)
	case <-time.After(appBindTimeout):
		t.Fatalf("replacement app process on %s not retrying its bind within %v", a.addr, appBindTimeout)
	}
}

// stop sends SIGTERM (a graceful stop) and waits for the exit.
func (a *appProcess) stop(t *testing.T) {
	t.Helper()
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM to the app process: %v", err)
	}
	select {
	case <-a.done:
	case <-time.After(appGracefulTimeout + 5*time.Second):
		t.Fatalf("app process on %s still running %v after SIGTERM", a.addr, appGracefulTimeout+5*time.Second)
	}
	if code := a.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("app process on %s exited %d after SIGTERM: %s", a.addr, code, &a.stderr)
	}
}
