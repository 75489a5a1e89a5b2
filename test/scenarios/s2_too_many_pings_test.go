package scenarios

// S2 (too_many_pings loop): the sidecar pings its upstream every second
// (connection_keepalive interval 1 s, Envoy's 15% jitter) while the grpc-go
// server enforces MinTime 10 s with PermitWithoutStream false (its
// default), so with no stream open every ping after the first since the
// server last sent headers or data is a strike, and the third strike ends
// the connection with GOAWAY ENHANCE_YOUR_CALM "too_many_pings". One caller
// makes a call every 5 s for 40 s.
//
// The first connection earns its strikes about 4 s in (one ping resets
// the count, three more strike). meshd doubles that endpoint's interval to
// 2 s; then at most two pings (one reset, one strike) fit between two
// calls, so the second connection lives to the end.
//
// Numeric assertions: at most s2MaxConns (3) upstream connections over
// the run (a looping client opens one every ~4 s: 10 or more); zero failed
// calls; cluster.<name>.http2.keepalive_backoff at least 1; the endpoint's
// http2_keepalive_interval_ms gauge at least 2000 (doubled at least once).
//
// This is the one long scenario (s2Run = 40 s); it is not a timing test:
// nothing is asserted about latency, only counts.

import (
	"context"
	"strings"
	"testing"
	"time"

	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/keepalive"

	"meshd.dev/meshd/internal/testutil"
)

const (
	s2Run        = 40 * time.Second
	s2CallEvery  = 5 * time.Second
	s2MaxConns   = 3
	s2KAInterval = time.Second
)

func TestS2TooManyPings(t *testing.T) {
	if testing.Short() {
		t.Skip("S2 runs for 40 s")
	}
	be := startGRPCBackend(t, backendConfig{
		Enforcement: &keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: false},
	})
	sc := startScenarioSidecar(t, scenarioBootstrap{
		Endpoints:  []string{be.Addr},
		UpstreamH2: h2Options{Keepalive: &h2Keepalive{Interval: s2KAInterval, Timeout: 2 * time.Second}},
	})
	client := dialGRPC(t, sc.Addr)

	start := time.Now()
	calls, failures := 0, 0
	for i := 0; time.Duration(i)*s2CallEvery < s2Run; i++ {
		if d := time.Until(start.Add(time.Duration(i) * s2CallEvery)); d > 0 {
			time.Sleep(d)
		}
		ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
		_, err := client.EmptyCall(ctx, &testpb.Empty{})
		cancel()
		calls++
		if err != nil {
			failures++
			t.Errorf("call %d at %v: %v", i, time.Since(start).Round(time.Millisecond), err)
		}
	}
	if d := time.Until(start.Add(s2Run)); d > 0 {
		time.Sleep(d)
	}
	conns := be.Conns.Accepted()
	t.Logf("%d calls, %d failed, %d upstream connections in %v", calls, failures, conns, s2Run)
	if conns > s2MaxConns {
		t.Errorf("backend accepted %d connections, want at most %d (a too_many_pings loop)", conns, s2MaxConns)
	}
	if got := sc.clusterStat(t, "http2.keepalive_backoff"); got < 1 {
		t.Errorf("http2.keepalive_backoff = %d, want >= 1", got)
	}
	prefix := "cluster." + testutil.BackendCluster + ".endpoint."
	found := false
	for name, v := range sc.Stats(t) {
		if strings.HasPrefix(name, prefix) && strings.HasSuffix(name, ".http2_keepalive_interval_ms") {
			found = true
			if v < 2*s2KAInterval.Milliseconds() {
				t.Errorf("%s = %d, want >= %d (doubled at least once)", name, v, 2*s2KAInterval.Milliseconds())
			}
		}
	}
	if !found {
		t.Errorf("no %s*.http2_keepalive_interval_ms gauge", prefix)
	}
}
