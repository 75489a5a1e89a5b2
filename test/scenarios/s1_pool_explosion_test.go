package scenarios

// S1 (connection pool explosion): 100 callers share one downstream
// connection to the sidecar; the upstream grpc-go server advertises
// SETTINGS_MAX_CONCURRENT_STREAMS=10 and answers after 20 ms. meshd's pool
// must open about ceil(100/10) connections, reuse them, and queue the rest.
//
// Numeric assertions, counted on the backend's listener over a 6 s run:
//   - connections accepted in total: at least s1WantConns (10) and at most
//     s1MaxConns (14: the ceiling plus a margin of 4 for dials started
//     while a SETTINGS frame was in flight);
//   - no connection accepted after the first s1Settle (1 s): the count is
//     flat once the pool is warm;
//   - zero failed calls;
//   - every stream but the first of each connection reused a connection:
//     the sidecar's upstream_cx_reuse_ratio_permille is at least
//     1000 x (calls - connections) / calls, rounded down (over 99.9% at the
//     ~20000 calls of a run), and upstream_cx_total equals the backend's
//     count.
//
// It is a timing test (skipped under -race): "flat after the first
// second" and the margin of 4 connections assume the sidecar's writer
// flushes a request's END_STREAM promptly. A grpc-go server answers a
// unary call once it has the request message, before END_STREAM, and the
// stream keeps its slot until both sides ended; under the race detector
// that window grows enough for callers to queue behind slots that are
// about to free, and the pool dials for them.

import (
	"context"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	testpb "google.golang.org/grpc/interop/grpc_testing"
)

const (
	s1Callers   = 100
	s1PeerMCS   = 10
	s1WantConns = s1Callers / s1PeerMCS
	s1MaxConns  = 14
	s1Run       = 6 * time.Second
	s1Settle    = time.Second
	s1Delay     = 20 * time.Millisecond
	// s1MaxCalls bounds each caller's loop besides s1Run.
	s1MaxCalls = 1000
)

func TestS1PoolExplosionTiming(t *testing.T) {
	timing(t)
	be := startGRPCBackend(t, backendConfig{MaxConcurrentStreams: s1PeerMCS, UnaryDelay: s1Delay})
	sc := startScenarioSidecar(t, scenarioBootstrap{
		Endpoints:       []string{be.Addr},
		CircuitBreakers: &circuitBreakers{MaxConnections: 64, MaxPendingRequests: 10000, MaxRequests: 10000},
	})
	// One grpc-go ClientConn is one downstream HTTP/2 connection.
	client := dialGRPC(t, sc.Addr, grpc.WithDefaultCallOptions(grpc.WaitForReady(true)))

	ctx, cancel := context.WithTimeout(context.Background(), s1Run+rpcTimeout)
	defer cancel()
	start := time.Now()
	var calls, failures atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for range s1Callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < s1MaxCalls && time.Since(start) < s1Run; i++ {
				cctx, ccancel := context.WithTimeout(ctx, rpcTimeout)
				_, err := client.EmptyCall(cctx, &testpb.Empty{})
				ccancel()
				calls.Add(1)
				if err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		}()
	}
	// Sample the accepted count once the first second is over.
	time.Sleep(s1Settle)
	afterSettle := be.Conns.Accepted()
	wg.Wait()
	final := be.Conns.Accepted()

	t.Logf("%d calls, %d failed; backend connections: %d after %v, %d at the end, peak open %d",
		calls.Load(), failures.Load(), afterSettle, s1Settle, final, be.Conns.Peak())
	if n := failures.Load(); n != 0 {
		t.Errorf("%d of %d calls failed; first: %v", n, calls.Load(), firstErr.Load())
	}
	if final < s1WantConns || final > s1MaxConns {
		t.Errorf("backend accepted %d connections, want %d..%d", final, s1WantConns, s1MaxConns)
	}
	if final != afterSettle {
		t.Errorf("backend accepted %d connections after the first %v (%d then, %d at the end): the pool is not flat", final-afterSettle, s1Settle, afterSettle, final)
	}
	if got := sc.clusterStat(t, "upstream_cx_total"); got != final {
		t.Errorf("upstream_cx_total = %d, backend accepted %d", got, final)
	}
	rq := sc.clusterStat(t, "upstream_rq_total")
	if want := 1000 * (rq - final) / max(rq, 1); sc.clusterStat(t, "upstream_cx_reuse_ratio_permille") < want {
		t.Errorf("upstream_cx_reuse_ratio_permille = %d, want >= %d (%d streams, %d connections)", sc.clusterStat(t, "upstream_cx_reuse_ratio_permille"), want, rq, final)
	}
	if t.Failed() {
		logClusterStats(t, sc)
	}
}

// logClusterStats logs the sidecar's non-zero cluster stats, to explain a
// failure.
func logClusterStats(t *testing.T, sc *scenarioSidecar) {
	t.Helper()
	all := sc.Stats(t)
	names := slices.Sorted(maps.Keys(all))
	for _, name := range names {
		if v := all[name]; v != 0 && strings.HasPrefix(name, "cluster.") {
			t.Logf("%s: %d", name, v)
		}
	}
}
