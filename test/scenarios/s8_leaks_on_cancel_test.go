package scenarios

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	testpb "google.golang.org/grpc/interop/grpc_testing"

	"meshd.dev/meshd/internal/testutil"
)

// S8 (leaks on cancel): clients cancel streaming RPCs, or drop their
// connection, mid-stream. RST_STREAM CANCEL must travel upstream (the
// backend's handlers see their calls end) and the sidecar's goroutines, file
// descriptors and memory must return to their baseline after the churn.
//
// Each stream is cancelled after its response headers and first messages
// arrived: ordinary gRPC behaviour, which Envoy's rapid-reset guard
// (CVE-2023-44487) does not count as a premature reset, since Envoy's
// isPrematureRstStream requires both a short lifetime and no response
// headers sent. A sidecar that sends GOAWAY ENHANCE_YOUR_CALM here fails the
// test with that error.
const (
	// s8Cancelled streams are cancelled by the client after their first
	// messages; s8Disconnects clients each open s8PerDisconnect streams and
	// then close their connection. Under -race, where grpc-go's client is
	// some 15 times slower, the churn is divided by s8RaceDivisor; .ci/run
	// runs the full churn in its non-race step (-run 'Timing|S8').
	s8Cancelled      = 10_000
	s8Disconnects    = 20
	s8PerDisconnect  = 25
	s8RaceDivisor    = 10
	s8Concurrency    = 50
	s8StreamMessages = 1000 // far more than a client waits for
	s8MessageSize    = 256
	s8Interval       = time.Millisecond
	// s8ChurnTimeout bounds the whole churn (race detector included).
	s8ChurnTimeout = 3 * time.Minute

	// Tolerances over the baseline taken after a warm-up at the same
	// concurrency. Goroutines and fds must come back (a leak of one per
	// stream would be thousands); memory may keep some heap the Go runtime
	// has not returned yet.
	s8GoroutineSlack = 10
	s8FDSlack        = 4
	s8RSSSlackKiB    = 48 << 10
	// s8RaceRSSSlackKiB replaces s8RSSSlackKiB when the sidecar runs with
	// the race detector, whose shadow memory grows with every allocation.
	s8RaceRSSSlackKiB = 256 << 10
)

// s8Stream opens a StreamingOutputCall, reads want messages and returns
// with the call still running; the caller ends it.
func s8Stream(ctx context.Context, client testpb.TestServiceClient, want int) error {
	stream, err := client.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{
		ResponseParameters: streamParams(s8StreamMessages, s8MessageSize, s8Interval),
	})
	if err != nil {
		return fmt.Errorf("StreamingOutputCall: %w", err)
	}
	for i := range want {
		if _, err := stream.Recv(); err != nil {
			return fmt.Errorf("Recv %d: %w", i, err)
		}
	}
	return nil
}

// s8Churn runs n streams on client, s8Concurrency at a time, each cancelled
// after 1 to 3 messages, and returns the first error.
func s8Churn(ctx context.Context, client testpb.TestServiceClient, n int) error {
	var (
		next     atomic.Int64
		firstErr error
		errOnce  sync.Once
		wg       sync.WaitGroup
	)
	for range s8Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(n) || ctx.Err() != nil {
					return
				}
				callCtx, cancel := context.WithCancel(ctx)
				err := s8Stream(callCtx, client, 1+int(i%3))
				cancel()
				if err != nil {
					errOnce.Do(func() { firstErr = fmt.Errorf("stream %d: %w", i, err) })
					return
				}
			}
		}()
	}
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		return fmt.Errorf("churn of %d streams not done: %w", n, ctx.Err())
	}
	return firstErr
}

// s8Disconnect opens s8PerDisconnect streams on a connection of its own,
// waits for a message on each, then closes the connection under them.
func s8Disconnect(ctx context.Context, t *testing.T, addr string) error {
	cc := dialGRPCConn(t, addr)
	client := testpb.NewTestServiceClient(cc)
	errs := make(chan error, s8PerDisconnect)
	for range s8PerDisconnect {
		go func() { errs <- s8Stream(ctx, client, 1) }()
	}
	for range s8PerDisconnect {
		if err := <-errs; err != nil {
			_ = cc.Close()
			return err
		}
	}
	return cc.Close()
}

type s8Usage struct {
	goroutines, fds int
	rssKiB          int64
}

func (u s8Usage) String() string {
	return fmt.Sprintf("%d goroutines, %d fds, %d KiB RSS", u.goroutines, u.fds, u.rssKiB)
}

func s8Measure(t *testing.T, sc *scenarioSidecar) s8Usage {
	t.Helper()
	return s8Usage{goroutines: sc.goroutines(t), fds: sc.fds(t), rssKiB: sc.rssKiB(t)}
}

func TestS8LeaksOnCancel(t *testing.T) {
	testutil.CheckGoroutines(t)
	b := startGRPCBackend(t, backendConfig{})
	sc := startScenarioSidecar(t, scenarioBootstrap{Endpoints: []string{b.Addr}})
	client := dialGRPC(t, sc.Addr)
	ctx, cancel := context.WithTimeout(context.Background(), s8ChurnTimeout)
	defer cancel()

	// Warm up at the churn's concurrency, so pools, buffers and the
	// runtime's own goroutines are in the baseline.
	if err := s8Churn(ctx, client, 2*s8Concurrency); err != nil {
		t.Fatalf("warm-up: %v", err)
	}
	if err := s8Disconnect(ctx, t, sc.Addr); err != nil {
		t.Fatalf("warm-up disconnect: %v", err)
	}
	waitFor(t, settleTimeout, "backend handlers of the warm-up end", func() (bool, string) {
		return b.Active() == 0, fmt.Sprintf("%d active", b.Active())
	})
	baseline := s8Measure(t, sc)
	startedBefore, cancelledBefore := b.Started(), b.Cancelled()
	acceptedBefore, closedBefore := b.Conns.Accepted(), b.Conns.Closed()

	cancelled, disconnects, rssSlack := s8Cancelled, s8Disconnects, int64(s8RSSSlackKiB)
	if raceEnabled {
		cancelled, disconnects, rssSlack = s8Cancelled/s8RaceDivisor, s8Disconnects/s8RaceDivisor, s8RaceRSSSlackKiB
	}
	start := time.Now()
	churnErr := make(chan error, 1)
	go func() { churnErr <- s8Churn(ctx, client, cancelled) }()
	for i := range disconnects {
		if err := s8Disconnect(ctx, t, sc.Addr); err != nil {
			t.Fatalf("disconnecting client %d: %v", i, err)
		}
	}
	if err := <-churnErr; err != nil {
		t.Fatal(err)
	}
	churn := time.Since(start)
	total := int64(cancelled + disconnects*s8PerDisconnect)

	// Every handler only ends when its call is cancelled: it has
	// s8StreamMessages to send, far more than any client reads.
	waitFor(t, settleTimeout, "the backend sees every stream cancelled", func() (bool, string) {
		started, cancelled := b.Started()-startedBefore, b.Cancelled()-cancelledBefore
		return started == total && cancelled == total && b.Active() == 0,
			fmt.Sprintf("%d of %d streams started, %d cancelled, %d handlers running", started, total, cancelled, b.Active())
	})
	var after s8Usage
	waitFor(t, settleTimeout, "sidecar goroutines and fds back to baseline", func() (bool, string) {
		after = s8Measure(t, sc)
		return after.goroutines <= baseline.goroutines+s8GoroutineSlack && after.fds <= baseline.fds+s8FDSlack,
			fmt.Sprintf("baseline %v, now %v (slack %d goroutines, %d fds)", baseline, after, s8GoroutineSlack, s8FDSlack)
	})
	t.Logf("%d streams cancelled (%d by disconnect) in %v; sidecar baseline %v, after %v", total, disconnects*s8PerDisconnect, churn, baseline, after)
	if grown := after.rssKiB - baseline.rssKiB; grown > rssSlack {
		t.Errorf("sidecar RSS grew by %d KiB over the churn (baseline %v, after %v), want <= %d KiB", grown, baseline, after, rssSlack)
	}
	t.Logf("backend connections: accepted %d (%d before the churn), closed %d (%d before), peak %d",
		b.Conns.Accepted(), acceptedBefore, b.Conns.Closed(), closedBefore, b.Conns.Peak())
	if n := b.Conns.Closed() - closedBefore; n > 0 {
		t.Errorf("the sidecar closed %d upstream connections during the churn, want 0 (cancels reset streams, not connections)", n)
	}
}
