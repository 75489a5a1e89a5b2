package meshtest

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
)

// CallTimeout bounds one call of a CallLoad.
const CallTimeout = 5 * time.Second

// maxFailures is how many failures a CallLoad keeps (with their times);
// it counts all of them.
const maxFailures = 1000

// DialLoopback opens a plaintext gRPC client connection to 127.0.0.1:port
// (an outbound listener of a sidecar), closed at cleanup.
func DialLoopback(t testing.TB, port int) testgrpc.TestServiceClient {
	t.Helper()
	cc, err := grpc.NewClient("127.0.0.1:"+strconv.Itoa(port), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dialing 127.0.0.1:%d: %v", port, err)
	}
	t.Cleanup(func() { cc.Close() })
	return testgrpc.NewTestServiceClient(cc)
}

// Failure is one failed call of a CallLoad.
type Failure struct {
	At  time.Time // when the call ended
	Err error
}

// CallLoad runs a fixed number of callers, each making EmptyCalls back to
// back (2 ms apart, each bounded by CallTimeout), until Stop. A call cut by
// Stop is not counted. Its methods are safe for concurrent use.
type CallLoad struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	ok, fail int
	failures []Failure // the first maxFailures
}

// StartCallLoad starts callers goroutines calling through client. It is
// stopped at cleanup if the test did not stop it.
func StartCallLoad(t testing.TB, client testgrpc.TestServiceClient, callers int) *CallLoad {
	ctx, cancel := context.WithCancel(context.Background())
	l := &CallLoad{cancel: cancel}
	for range callers {
		l.wg.Go(func() {
			for ctx.Err() == nil {
				cctx, ccancel := context.WithTimeout(ctx, CallTimeout)
				_, err := client.EmptyCall(cctx, &testgrpc.Empty{})
				ccancel()
				if ctx.Err() != nil {
					return // stopped mid-call: not the mesh's failure
				}
				l.record(err)
				time.Sleep(2 * time.Millisecond)
			}
		})
	}
	t.Cleanup(l.Stop)
	return l
}

func (l *CallLoad) record(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err == nil {
		l.ok++
		return
	}
	l.fail++
	if len(l.failures) < maxFailures {
		l.failures = append(l.failures, Failure{At: time.Now(), Err: err})
	}
}

// Stop ends the callers and waits for them. It may be called again.
func (l *CallLoad) Stop() {
	l.cancel()
	l.wg.Wait()
}

// Counts returns the calls that succeeded and failed so far.
func (l *CallLoad) Counts() (ok, fail int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ok, l.fail
}

// Failures returns (a copy of) the first failures, oldest first.
func (l *CallLoad) Failures() []Failure {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Failure(nil), l.failures...)
}

// FirstError returns the error of the first failed call, or nil.
func (l *CallLoad) FirstError() error { return firstErr(l.Failures()) }

// WaitCalls waits until n more calls than now have succeeded, for at most
// WaitTimeout; it fails the test otherwise.
func (l *CallLoad) WaitCalls(t testing.TB, n int, what string) {
	t.Helper()
	start, _ := l.Counts()
	deadline := time.Now().Add(WaitTimeout)
	for time.Now().Before(deadline) {
		if ok, _ := l.Counts(); ok >= start+n {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	ok, fail := l.Counts()
	t.Fatalf("%s: %d successful calls (want %d more than %d), %d failed (%v)", what, ok, n, start, fail, firstErr(l.Failures()))
}

// firstErr is the first failure's error, or nil.
func firstErr(f []Failure) error {
	if len(f) == 0 {
		return nil
	}
	return f[0].Err
}
