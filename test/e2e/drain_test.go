package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"meshd.dev/meshd/internal/testutil"
)

// Parameters of issue 2, acceptance 5.
const (
	drainCalls       = 200
	drainClientConns = 4 // the calls are spread over this many connections
	drainTime        = 10 * time.Second
	drainMinCallTime = 500 * time.Millisecond
	drainMaxCallTime = 2 * time.Second
	// drainExitSlack is how much longer than the drain time the process may
	// take to exit after the signal.
	drainExitSlack = 3 * time.Second
	// drainRefuseWithin bounds how long after the signal a new connection
	// may still be accepted.
	drainRefuseWithin = 2 * time.Second
)

// TestGracefulDrain starts 200 gRPC calls lasting 0.5–2 s, waits until the
// backend runs all of them, then drains: SIGTERM to meshd (drain time 10 s),
// or GracefulStop of the backend in direct mode. Every call must succeed, a
// new connection must be refused soon after the signal, and the process (or
// GracefulStop) must finish within the drain time.
func TestGracefulDrain(t *testing.T) {
	testutil.CheckGoroutines(t)
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			backend := testutil.StartGRPCInteropServer(t)
			addr, sc := front(t, m, backend.Addr, testutil.UpstreamHTTP2, "--drain-time-s", fmt.Sprint(int(drainTime.Seconds())))

			conns := make([]*grpc.ClientConn, drainClientConns)
			for i := range conns {
				cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
				if err != nil {
					t.Fatal(err)
				}
				defer cc.Close()
				conns[i] = cc
			}

			ctx, cancel := context.WithTimeout(context.Background(), drainTime+drainMaxCallTime+drainExitSlack+10*time.Second)
			defer cancel()
			errs := make([]error, drainCalls)
			var wg sync.WaitGroup
			for i := range drainCalls {
				d := drainMinCallTime + time.Duration(i)*(drainMaxCallTime-drainMinCallTime)/(drainCalls-1)
				wg.Go(func() { errs[i] = slowCall(ctx, testpb.NewTestServiceClient(conns[i%len(conns)]), d) })
			}
			callsDone := make(chan struct{})
			go func() {
				wg.Wait()
				close(callsDone)
			}()

			// Every call must be running in the backend (so meshd accepted
			// and forwarded it) before the drain starts.
			deadline := time.Now().Add(10 * time.Second)
			for backend.ActiveRPCs() < drainCalls {
				select {
				case <-callsDone:
					t.Fatalf("calls ended before all %d were in flight: %v", drainCalls, errors.Join(errs...))
				default:
				}
				if time.Now().After(deadline) {
					cancel()
					<-callsDone
					t.Fatalf("only %d of %d calls reached the backend within 10s: %v", backend.ActiveRPCs(), drainCalls, errors.Join(errs...))
				}
				time.Sleep(2 * time.Millisecond)
			}

			signalled := time.Now()
			finished := make(chan error, 1)
			if sc != nil {
				if err := sc.Signal(syscall.SIGTERM); err != nil {
					t.Fatal(err)
				}
				go func() {
					code, err := sc.Wait(drainTime + drainExitSlack)
					if err == nil && code != 0 {
						err = fmt.Errorf("meshd exited %d after SIGTERM, want 0", code)
					}
					finished <- err
				}()
			} else {
				go func() {
					backend.Server.GracefulStop()
					finished <- nil
				}()
			}

			if err := waitRefused(addr, drainRefuseWithin); err != nil {
				t.Error(err)
			}

			select {
			case <-callsDone:
			case <-time.After(drainTime + drainExitSlack):
				t.Fatalf("calls still running %v after the signal", drainTime+drainExitSlack)
			}
			var failed int
			for i, err := range errs {
				if err != nil {
					failed++
					if failed <= 5 {
						t.Errorf("call %d (accepted before the signal): %v", i, err)
					}
				}
			}
			if failed > 0 {
				t.Errorf("%d of %d calls accepted before the signal failed", failed, drainCalls)
			}
			select {
			case err := <-finished:
				if err != nil {
					t.Error(err)
				}
			case <-time.After(drainTime + drainExitSlack - time.Since(signalled)):
				t.Errorf("drain not finished %v after the signal", drainTime+drainExitSlack)
			}
		})
	}
}

// slowCall makes one server-streaming call whose single response the
// interop server sends after d, and checks it ends with status OK.
func slowCall(ctx context.Context, tc testpb.TestServiceClient, d time.Duration) error {
	stream, err := tc.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{
		ResponseParameters: []*testpb.ResponseParameters{{Size: 16, IntervalUs: int32(d / time.Microsecond)}},
	})
	if err != nil {
		return fmt.Errorf("starting the call: %w", err)
	}
	resp, err := stream.Recv()
	if err != nil {
		return fmt.Errorf("receiving the response: %w", err)
	}
	if n := len(resp.GetPayload().GetBody()); n != 16 {
		return fmt.Errorf("response of %d bytes, want 16", n)
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("end of call: %v, want status OK", err)
	}
	return nil
}

// waitRefused dials addr until a dial fails, and reports an error if one
// still succeeds after within.
func waitRefused(addr string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			return nil
		}
		_ = c.Close()
		if time.Now().After(deadline) {
			return fmt.Errorf("new connections to %s still accepted %v after the signal", addr, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
