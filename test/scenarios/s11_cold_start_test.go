package scenarios

// S11 (cold start): the first burst after start finds no connection. With
// preconnect_policy.per_upstream_preconnect_ratio 2 the sidecar opens a
// connection to the endpoint before any request, and a cold burst of 200
// concurrent calls to an upstream limited to 10 streams per connection
// (20 ms handler) is queued for connections, not failed.
//
// Numeric assertions:
//   - at least 1 upstream connection exists before the first call
//     (preconnect), within settleTimeout of the sidecar being ready;
//   - zero failed calls out of s11Burst (200);
//   - upstream_rq_pending_overflow is 0 and upstream_rq_pending_total is
//     above 0 (the burst was queued);
//   - at most s11MaxConns (44) upstream connections: ceil(2 x 200 / 10) =
//     40 for the preconnect ratio, plus 4 for dials in flight when SETTINGS
//     arrived; max_connections (64) is never the limit that holds.

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	testpb "google.golang.org/grpc/interop/grpc_testing"
)

const (
	s11Burst    = 200
	s11PeerMCS  = 10
	s11MaxConns = 44
)

func TestS11ColdStart(t *testing.T) {
	be := startGRPCBackend(t, backendConfig{MaxConcurrentStreams: s11PeerMCS, UnaryDelay: 20 * time.Millisecond})
	sc := startScenarioSidecar(t, scenarioBootstrap{
		Endpoints:       []string{be.Addr},
		PreconnectRatio: 2,
		CircuitBreakers: &circuitBreakers{MaxConnections: 64, MaxPendingRequests: 10000, MaxRequests: 10000},
	})
	waitFor(t, settleTimeout, "a preconnected upstream connection", func() (bool, string) {
		n := be.Conns.Accepted()
		return n >= 1, fmt.Sprintf("%d connections", n)
	})
	client := dialGRPC(t, sc.Addr)
	// Warm the downstream connection only, so the burst is not slowed by
	// the client's own dial.
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()
	if _, err := client.EmptyCall(ctx, &testpb.Empty{}); err != nil {
		t.Fatalf("first call: %v", err)
	}

	var wg sync.WaitGroup
	errs := make(chan error, s11Burst)
	release := make(chan struct{})
	for range s11Burst {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-release
			if _, err := client.EmptyCall(ctx, &testpb.Empty{}); err != nil {
				errs <- err
			}
		}()
	}
	close(release)
	wg.Wait()
	close(errs)
	failed := 0
	for err := range errs {
		if failed == 0 {
			t.Errorf("first failed call: %v", err)
		}
		failed++
	}
	conns := be.Conns.Accepted()
	t.Logf("%d of %d calls failed; %d upstream connections; pending_total %d",
		failed, s11Burst, conns, sc.clusterStat(t, "upstream_rq_pending_total"))
	if failed != 0 {
		t.Errorf("%d of %d calls failed, want 0", failed, s11Burst)
	}
	if got := sc.clusterStat(t, "upstream_rq_pending_overflow"); got != 0 {
		t.Errorf("upstream_rq_pending_overflow = %d, want 0", got)
	}
	if got := sc.clusterStat(t, "upstream_rq_pending_total"); got == 0 {
		t.Error("upstream_rq_pending_total = 0: the burst was never queued, so the test did not exercise the queue")
	}
	if conns > s11MaxConns {
		t.Errorf("%d upstream connections, want at most %d", conns, s11MaxConns)
	}
}
