package scenarios

// S3 (REFUSED_STREAM storm) and the cold-burst acceptance: a cold burst of
// s3Calls concurrent calls to an upstream limited to s3MaxStreams streams
// with an s3Delay handler, circuit breakers at max_connections 64,
// max_pending_requests 10000, max_requests 10000, and meshd's default retry
// settings (no retry_policy on the route). Streams the upstream refuses are
// not processed, so meshd retries them transparently; streams beyond the
// upstream's capacity wait in the pool.
//
// Numeric assertions: zero client errors; the upstream ran exactly s3Calls
// handlers (a retried stream is never run twice); the upstream never had
// more than 64 connections at once.

import (
	"context"
	"sync"
	"testing"
	"time"

	testpb "google.golang.org/grpc/interop/grpc_testing"
)

const (
	s3Calls      = 200
	s3MaxStreams = 10
	s3Delay      = 20 * time.Millisecond
	s3MaxConns   = 64
)

func TestS3RefusedStreamColdBurst(t *testing.T) {
	be := startGRPCBackend(t, backendConfig{MaxConcurrentStreams: s3MaxStreams, UnaryDelay: s3Delay})
	sc := startScenarioSidecar(t, scenarioBootstrap{
		Endpoints:    []string{be.Addr},
		RouteTimeout: rpcTimeout,
		CircuitBreakers: &circuitBreakers{
			MaxConnections:     s3MaxConns,
			MaxPendingRequests: 10000,
			MaxRequests:        10000,
		},
	})
	client := dialGRPC(t, sc.Addr)
	var wg sync.WaitGroup
	errs := make([]error, s3Calls)
	start := make(chan struct{})
	for i := range s3Calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
			defer cancel()
			_, errs[i] = client.EmptyCall(ctx, &testpb.Empty{})
		}()
	}
	close(start)
	wg.Wait()
	failed := 0
	for i, err := range errs {
		if err != nil {
			failed++
			if failed <= 5 {
				t.Errorf("call %d: %v", i, err)
			}
		}
	}
	if failed > 0 {
		t.Errorf("%d of %d calls failed, want 0", failed, s3Calls)
	}
	if got := be.Started(); got != s3Calls {
		t.Errorf("backend ran %d handlers, want %d (each call exactly once)", got, s3Calls)
	}
	if got := be.Conns.Peak(); got > s3MaxConns {
		t.Errorf("backend had %d connections open at once, want at most %d", got, s3MaxConns)
	}
	t.Logf("upstream connections: %d accepted, peak %d; transparent retries %d; pending overflow %d",
		be.Conns.Accepted(), be.Conns.Peak(),
		sc.clusterStat(t, "upstream_rq_transparent_retry"), sc.clusterStat(t, "upstream_rq_pending_overflow"))
}
