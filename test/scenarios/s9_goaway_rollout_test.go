package scenarios

// S9 (GOAWAY during a rollout): the upstream rotates its connections with
// keepalive.ServerParameters{MaxConnectionAge: 2s, MaxConnectionAgeGrace:
// 5s}: grpc-go sends GOAWAY, finishes the streams below its last-stream-id
// and closes. Streams above it were not processed and meshd retries them on
// another (or a new) connection without the caller seeing it.
//
// Numeric assertions: s9Callers callers calling for s9Duration see zero
// errors; the sidecar opened more than one upstream connection
// (upstream_cx_total > 1) and the backend accepted more than one.

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/keepalive"
)

const (
	s9Callers  = 20
	s9Duration = 10 * time.Second
	// s9MaxCallsPerCaller bounds each caller's loop besides s9Duration.
	s9MaxCallsPerCaller = 100000
	s9Delay             = 2 * time.Millisecond
)

func TestS9GoAwayRollout(t *testing.T) {
	be := startGRPCBackend(t, backendConfig{
		Params:     &keepalive.ServerParameters{MaxConnectionAge: 2 * time.Second, MaxConnectionAgeGrace: 5 * time.Second},
		UnaryDelay: s9Delay,
	})
	sc := startScenarioSidecar(t, scenarioBootstrap{Endpoints: []string{be.Addr}, RouteTimeout: rpcTimeout})
	client := dialGRPC(t, sc.Addr)
	var calls, failed atomic.Int64
	var firstErr atomic.Value
	end := time.Now().Add(s9Duration)
	var wg sync.WaitGroup
	for range s9Callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < s9MaxCallsPerCaller && time.Now().Before(end); i++ {
				ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
				_, err := client.EmptyCall(ctx, &testpb.Empty{})
				cancel()
				calls.Add(1)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		}()
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Errorf("%d of %d calls failed, want 0; first: %v", n, calls.Load(), firstErr.Load())
	}
	if got := sc.clusterStat(t, "upstream_cx_total"); got <= 1 {
		t.Errorf("upstream_cx_total = %d, want > 1 (connections rotated)", got)
	}
	if got := be.Conns.Accepted(); got <= 1 {
		t.Errorf("backend accepted %d connections, want > 1", got)
	}
	t.Logf("%d calls; upstream connections %d; GOAWAYs %d; transparent retries %d",
		calls.Load(), be.Conns.Accepted(), sc.clusterStat(t, "upstream_cx_close_notify"),
		sc.clusterStat(t, "upstream_rq_transparent_retry"))
}
