package xds_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"meshd.dev/meshd/internal/meshtest"
	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/xds/server"
	"meshd.dev/meshd/xds/translate"
)

// rateLimitDoc is a RateLimitPolicy (engine native, key global) on
// greeter.demo admitting rate calls per second with bursts of burst.
func rateLimitDoc(rate, burst int) string {
	return fmt.Sprintf(`---
apiVersion: meshd.dev/v1alpha1
kind: RateLimitPolicy
metadata:
  name: greeter-limit
  namespace: demo
spec:
  targetRef: {kind: Service, name: greeter}
  requestsPerUnit: %d
  unit: second
  burst: %d
`, rate, burst)
}

// pacedLoad is the outcome of offerLoad.
type pacedLoad struct {
	ok, exhausted, other int
	firstOther           error
}

// offerLoad runs callers goroutines, each making an EmptyCall every
// 1/perCaller seconds (calls are concurrent within a caller when one takes
// longer than the period), for d, and counts the outcomes.
func offerLoad(client testgrpc.TestServiceClient, callers int, perCaller float64, d time.Duration) pacedLoad {
	var (
		mu  sync.Mutex
		res pacedLoad
		wg  sync.WaitGroup
	)
	period := time.Duration(float64(time.Second) / perCaller)
	end := time.Now().Add(d)
	for range callers {
		wg.Go(func() {
			tick := time.NewTicker(period)
			defer tick.Stop()
			var calls sync.WaitGroup
			for now := time.Now(); now.Before(end); now = <-tick.C {
				calls.Go(func() {
					ctx, cancel := context.WithTimeout(context.Background(), meshtest.CallTimeout)
					defer cancel()
					_, err := client.EmptyCall(ctx, &testgrpc.Empty{})
					mu.Lock()
					defer mu.Unlock()
					switch status.Code(err) {
					case codes.OK:
						res.ok++
					case codes.ResourceExhausted:
						res.exhausted++
					default:
						res.other++
						if res.firstOther == nil {
							res.firstOther = err
						}
					}
				})
			}
			calls.Wait()
		})
	}
	wg.Wait()
	return res
}

// TestRateLimitPolicy drives a RateLimitPolicy end to end: control plane,
// the greeter server's and client's sidecars and a gRPC app. 3 callers
// offering 60 calls/s for 5 s against 20/s with a burst of 20 get
// 20 × 5 + 20 admitted (±10%), every other call RESOURCE_EXHAUSTED. Editing
// the mesh file to 40/s (burst 40) is ACKed within 2 s by the same sidecar
// processes (same PID, same admin address), and the new limit then holds.
func TestRateLimitPolicy(t *testing.T) {
	const (
		measure  = 5 * time.Second
		rate1    = 20
		rate2    = 40
		measure2 = 3 * time.Second
		applyBy  = 2 * time.Second
	)
	app := testutil.StartGRPCInteropServer(t)
	p := newMTLSPorts(t)
	base := mtlsMesh(app.Addr, p, nil)
	before := base + rateLimitDoc(rate1, rate1)
	meshPath := filepath.Join(t.TempDir(), "mesh.yaml")
	writeFile(t, meshPath, before)
	cp := startControlPlane(t, meshPath)
	st := cp.WaitStatus(t, "a published version", waitTimeout, func(st server.Status) bool { return st.Version != "" })
	srv := mtlsSidecar(t, cp, meshPath, serverNode, false)
	cli := mtlsSidecar(t, cp, meshPath, clientNode, true)
	waitCallCode(t, meshtest.DialLoopback(t, p.Outbound), codes.OK, waitTimeout)
	first := changedTypes(&translate.Result{}, translated(t, before))
	delete(first, intruderNode) // no sidecar runs for it
	cp.WaitStatus(t, "both sidecars ACKing the first version", waitTimeout, func(s server.Status) bool { return applied(s, st.Version, first) })
	pid, admin := srv.PID(), srv.AdminAddr
	client := meshtest.DialLoopback(t, p.Outbound)

	// Refill the bucket the readiness calls drew from.
	time.Sleep(time.Second + 100*time.Millisecond)
	statBefore := srv.Stats(t)["rate_limit_policy_demo_greeter-limit.http_local_rate_limit.rate_limited"]
	got := offerLoad(client, 3, rate1, measure)
	want := rate1*int(measure/time.Second) + rate1
	t.Logf("%d/s burst %d, 60/s offered for %v: %d admitted (want %d ±10%%), %d RESOURCE_EXHAUSTED, %d other",
		rate1, rate1, measure, got.ok, want, got.exhausted, got.other)
	checkAdmitted(t, got, want)
	if d := srv.Stats(t)["rate_limit_policy_demo_greeter-limit.http_local_rate_limit.rate_limited"] - statBefore; d != int64(got.exhausted) {
		t.Errorf("server sidecar counted %d rate_limited, the callers saw %d RESOURCE_EXHAUSTED", d, got.exhausted)
	}

	after := base + rateLimitDoc(rate2, rate2)
	_, took := meshEdit(t, cp, meshPath, before, after, applyBy)
	t.Logf("edit to %d/s ACKed after %v", rate2, took)
	select {
	case <-srv.Done():
		t.Fatal("the server sidecar exited during the edit")
	case <-cli.Done():
		t.Fatal("the client sidecar exited during the edit")
	default:
	}
	if srv.PID() != pid || srv.AdminAddr != admin {
		t.Fatalf("server sidecar changed: pid %d → %d, admin %s → %s", pid, srv.PID(), admin, srv.AdminAddr)
	}
	got = offerLoad(client, 3, rate2, measure2)
	want = rate2*int(measure2/time.Second) + rate2
	t.Logf("%d/s burst %d, 120/s offered for %v: %d admitted (want %d ±10%%), %d RESOURCE_EXHAUSTED, %d other",
		rate2, rate2, measure2, got.ok, want, got.exhausted, got.other)
	checkAdmitted(t, got, want)
}

// checkAdmitted fails unless got admitted want ±10% and every other call
// ended RESOURCE_EXHAUSTED.
func checkAdmitted(t *testing.T, got pacedLoad, want int) {
	t.Helper()
	if lo, hi := want*9/10, want*11/10; got.ok < lo || got.ok > hi {
		t.Errorf("admitted %d calls, want %d..%d", got.ok, lo, hi)
	}
	if got.exhausted == 0 {
		t.Error("no call was RESOURCE_EXHAUSTED: the limit did not apply")
	}
	if got.other != 0 {
		t.Errorf("%d calls ended neither OK nor RESOURCE_EXHAUSTED (first: %v)", got.other, got.firstOther)
	}
}
