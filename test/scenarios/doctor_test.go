package scenarios

// meshd doctor, live (acceptance 1 of the doctor issue): each test puts a
// real sidecar process with a deliberately bad config (or in front of a
// misbehaving upstream) into one scenario, runs doctor's live entry point
// (doctor.Live, what `meshd doctor --admin` runs) against its admin API
// while the scenario plays, and asserts that the report names the scenario
// with the right evidence; TestDoctorHealthy runs the real command against
// a well-configured sidecar under steady load and expects nothing above
// info (exit 0). Each case samples a window of 2–10 s.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"

	"meshd.dev/meshd/doctor"
	"meshd.dev/meshd/internal/testutil"
)

// doctorRun samples sc's admin API over window with doctor.Live while load
// runs (load gets a context cancelled once the window is over, and must
// return soon after); it returns the report, logged as text.
func doctorRun(t *testing.T, sc *scenarioSidecar, window time.Duration, load func(ctx context.Context)) *doctor.Report {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	if load != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			load(ctx)
		}()
	}
	dctx, dcancel := context.WithTimeout(context.Background(), window+30*time.Second)
	defer dcancel()
	rep, err := doctor.Live(dctx, &doctor.Sampler{Admin: sc.AdminAddr}, doctor.LiveOptions{Window: window, StallThreshold: time.Second})
	cancel()
	wg.Wait()
	if err != nil {
		t.Fatalf("doctor.Live(%s): %v", sc.AdminAddr, err)
	}
	var b strings.Builder
	_ = rep.WriteText(&b)
	t.Logf("doctor report:\n%s", b.String())
	return rep
}

// wantFinding returns the report's finding for scenario and rule at
// warning or above, failing the test when there is none.
func wantFinding(t *testing.T, rep *doctor.Report, scenario, rule string) doctor.Finding {
	t.Helper()
	for _, f := range rep.Findings {
		if f.Scenario == scenario && f.Rule == rule && f.Severity >= doctor.Warning {
			return f
		}
	}
	t.Fatalf("doctor did not name %s (%s) as a warning; scenarios named: %v", scenario, rule, rep.Scenarios(doctor.Warning))
	return doctor.Finding{}
}

// wantValue checks one of the finding's numbers against a lower bound.
func wantValue(t *testing.T, f doctor.Finding, name string, atLeast float64) {
	t.Helper()
	if v, ok := f.Values[name]; !ok || v < atLeast {
		t.Errorf("%s %s: value %s = %v, want ≥ %v (evidence: %s)", f.Scenario, f.Rule, name, f.Values[name], atLeast, f.Evidence)
	}
}

// callLoop makes unary calls from n goroutines until ctx ends, with an
// optional pause between calls; it returns how many calls failed.
func callLoop(ctx context.Context, client testpb.TestServiceClient, n int, pause time.Duration, failed *atomic.Int64) {
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100000 && ctx.Err() == nil; i++ {
				cctx, cancel := context.WithTimeout(ctx, rpcTimeout)
				_, err := client.EmptyCall(cctx, &testpb.Empty{})
				cancel()
				if err != nil && ctx.Err() == nil {
					failed.Add(1)
				}
				if pause > 0 {
					select {
					case <-ctx.Done():
					case <-time.After(pause):
					}
				}
			}
		}()
	}
	wg.Wait()
}

// TestDoctorHealthy runs `meshd doctor --admin ... -o json` (the real
// command) against a sidecar with sound settings under steady load:
// nothing above info, exit code 0.
func TestDoctorHealthy(t *testing.T) {
	be := startGRPCBackend(t, backendConfig{MaxConcurrentStreams: 100})
	sc := startScenarioSidecar(t, scenarioBootstrap{
		Endpoints:      []string{be.Addr},
		RouteTimeout:   5 * time.Second,
		UpstreamH2:     h2Options{Keepalive: &h2Keepalive{Interval: 30 * time.Second, Timeout: 5 * time.Second}},
		UpstreamCommon: commonOptions{IdleTimeout: 5 * time.Minute},
	})
	client := dialGRPC(t, sc.Addr)
	var failed atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		callLoop(ctx, client, 4, 5*time.Millisecond, &failed)
	}()
	res := testutil.RunMeshd(t, 60*time.Second, "doctor", "--admin", sc.AdminAddr, "--window", "3s", "-o", "json")
	cancel()
	<-done
	var rep doctor.Report
	if err := json.Unmarshal([]byte(res.Stdout), &rep); err != nil {
		t.Fatalf("meshd doctor -o json: %v\nstdout: %s\nstderr: %s", err, res.Stdout, res.Stderr)
	}
	if res.ExitCode != 0 || rep.Worst() != doctor.Info {
		t.Errorf("meshd doctor on a healthy sidecar: exit %d, worst %v, want 0 and info; report:\n%s", res.ExitCode, rep.Worst(), res.Stdout)
	}
	if n := failed.Load(); n > 0 {
		t.Errorf("%d calls failed under the healthy load", n)
	}
}

// S1: max_requests_per_connection 1 makes the pool open a connection per
// request.
func TestDoctorS1ConnectionChurn(t *testing.T) {
	be := startGRPCBackend(t, backendConfig{})
	sc := startScenarioSidecar(t, scenarioBootstrap{Endpoints: []string{be.Addr}, UpstreamCommon: commonOptions{MaxRequestsPerConnection: 1, IdleTimeout: time.Minute}})
	client := dialGRPC(t, sc.Addr)
	var failed atomic.Int64
	rep := doctorRun(t, sc, 3*time.Second, func(ctx context.Context) { callLoop(ctx, client, 4, 2*time.Millisecond, &failed) })
	f := wantFinding(t, rep, doctor.S1, "connection-churn")
	wantValue(t, f, "new_connections", 20)
	if f.Values["reuse_percent"] > 50 || !strings.Contains(f.Evidence, "max_requests_per_connection 1") || !strings.Contains(f.Fix, "maxRequestsPerConnection") {
		t.Errorf("S1 evidence %q fix %q: want reuse ≤ 50%% and max_requests_per_connection 1 named", f.Evidence, f.Fix)
	}
}

// S2: keepalive every 1 s against a grpc-go server enforcing MinTime 10 s
// with PermitWithoutStream false: GOAWAY too_many_pings about 4 s after
// the last call.
func TestDoctorS2TooManyPings(t *testing.T) {
	be := startGRPCBackend(t, backendConfig{Enforcement: &keepalive.EnforcementPolicy{MinTime: 10 * time.Second}})
	sc := startScenarioSidecar(t, scenarioBootstrap{
		Endpoints:  []string{be.Addr},
		UpstreamH2: h2Options{Keepalive: &h2Keepalive{Interval: time.Second, Timeout: 500 * time.Millisecond}},
	})
	client := dialGRPC(t, sc.Addr)
	rep := doctorRun(t, sc, 10*time.Second, func(ctx context.Context) {
		cctx, cancel := context.WithTimeout(ctx, rpcTimeout)
		defer cancel()
		if _, err := client.EmptyCall(cctx, &testpb.Empty{}); err != nil {
			t.Errorf("EmptyCall: %v", err)
		}
	})
	f := wantFinding(t, rep, doctor.S2, "too-many-pings")
	wantValue(t, f, "keepalive_backoffs", 1)
	wantValue(t, f, "learned_interval_ms", 2000)
	if !strings.Contains(f.Evidence, "GOAWAY ENHANCE_YOUR_CALM") || !strings.Contains(f.Evidence, "connection_keepalive.interval 1s") {
		t.Errorf("S2 evidence %q: want the GOAWAY and the configured 1s interval", f.Evidence)
	}
}

// S3: an upstream that refuses every second stream.
func TestDoctorS3RefusedStreams(t *testing.T) {
	addr, _ := startRefusingUpstream(t)
	sc := startScenarioSidecar(t, scenarioBootstrap{Endpoints: []string{addr}, RouteTimeout: rpcTimeout, UpstreamCommon: commonOptions{IdleTimeout: time.Minute}})
	client := dialGRPC(t, sc.Addr)
	var failed atomic.Int64
	rep := doctorRun(t, sc, 3*time.Second, func(ctx context.Context) { callLoop(ctx, client, 4, 20*time.Millisecond, &failed) })
	f := wantFinding(t, rep, doctor.S3, "refused-streams")
	wantValue(t, f, "refused_streams", 5)
	wantValue(t, f, "transparent_retries", 5)
	if n := failed.Load(); n > 0 {
		t.Errorf("%d calls failed: refused streams should be retried", n)
	}
}

// S4: an HTTP/1.1 upstream with idle_timeout 1ms: the pool closes every
// connection in the 5 ms pause between a worker's requests, so each
// request opens a TCP connection and leaves a socket in TIME_WAIT.
func TestDoctorS4TimeWait(t *testing.T) {
	if _, err := os.Stat("/proc/net/tcp"); err != nil {
		t.Skipf("no /proc/net/tcp: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }), ReadHeaderTimeout: rpcTimeout}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), backendStopTimeout)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-served
	})
	sc := startScenarioSidecar(t, scenarioBootstrap{Endpoints: []string{ln.Addr().String()}, UpstreamHTTP1: true,
		UpstreamCommon: commonOptions{IdleTimeout: time.Millisecond}})
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}, Timeout: rpcTimeout}
	t.Cleanup(client.CloseIdleConnections)
	var failed atomic.Int64
	rep := doctorRun(t, sc, 3*time.Second, func(ctx context.Context) {
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 20000 && ctx.Err() == nil; i++ {
					resp, err := client.Get("http://" + sc.Addr + "/")
					if err != nil {
						failed.Add(1)
						continue
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					select {
					case <-ctx.Done():
					case <-time.After(5 * time.Millisecond):
					}
				}
			}()
		}
		wg.Wait()
	})
	f := wantFinding(t, rep, doctor.S4, "connection-churn")
	wantValue(t, f, "new_connections", 20)
	wantValue(t, f, "time_wait", 20)
	if !strings.Contains(f.Evidence, "HTTP/1.1") || !strings.Contains(f.Evidence, "TIME_WAIT") || !strings.Contains(f.Fix, "idleTimeout") {
		t.Errorf("S4 evidence %q fix %q: want HTTP/1.1, TIME_WAIT sockets and the idle timeout's fix", f.Evidence, f.Fix)
	}
}

// S5: one endpoint accepts TCP and never finishes the TLS handshake; the
// cluster has no outlier detection, so calls keep paying connect_timeout.
func TestDoctorS5HandshakeHang(t *testing.T) {
	hang := startHangListener(t)
	good := startGRPCBackend(t, backendConfig{Options: []grpc.ServerOption{grpc.Creds(credentials.NewTLS(s5ServerTLS(t)))}})
	b := s5Bootstrap(hang.Addr(), good.Addr)
	b.OutlierDetection = nil
	sc := startScenarioSidecar(t, b)
	client := dialGRPC(t, sc.Addr)
	var failed atomic.Int64
	rep := doctorRun(t, sc, 3*time.Second, func(ctx context.Context) { callLoop(ctx, client, 2, 0, &failed) })
	f := wantFinding(t, rep, doctor.S5, "connect-timeout")
	wantValue(t, f, "connect_timeouts", 1)
	if f.Values["connect_timeout_ms"] != float64(s5ConnectTimeout.Milliseconds()) || !strings.Contains(f.Evidence, "no outlier_detection") {
		t.Errorf("S5 evidence %q: want connect_timeout %v and no outlier_detection named", f.Evidence, s5ConnectTimeout)
	}
}

// S6: no route timeout, and an upstream that takes requests and never
// answers: the stall detector shows the streams waiting for headers.
func TestDoctorS6ResponseHeaderHang(t *testing.T) {
	be := startGRPCBackend(t, backendConfig{})
	sc := startScenarioSidecar(t, scenarioBootstrap{Endpoints: []string{be.Addr}, UpstreamCommon: commonOptions{IdleTimeout: time.Minute}})
	client := dialGRPC(t, sc.Addr)
	const hung = 3
	rep := doctorRun(t, sc, 3*time.Second, func(ctx context.Context) {
		var wg sync.WaitGroup
		for range hung {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = client.EmptyCall(metadata.AppendToOutgoingContext(ctx, mdHang, "1"), &testpb.Empty{})
			}()
		}
		wg.Wait()
	})
	f := wantFinding(t, rep, doctor.S6, "response-header-hang")
	wantValue(t, f, "streams_waiting_headers", hung)
	wantValue(t, f, "longest_wait_ms", 1000)
	if !strings.Contains(f.Evidence, "route timeout none") || !strings.Contains(f.Fix, "spec.timeout") {
		t.Errorf("S6 evidence %q fix %q: want the missing route timeout named and its fix", f.Evidence, f.Fix)
	}
	waitFor(t, settleTimeout, "hung handlers end", func() (bool, string) { return be.Active() == 0, fmt.Sprintf("%d active", be.Active()) })
}

// S9: max_connection_duration 500ms drains every upstream connection with
// a GOAWAY-style rotation twice a second.
func TestDoctorS9ConnectionRotation(t *testing.T) {
	be := startGRPCBackend(t, backendConfig{})
	sc := startScenarioSidecar(t, scenarioBootstrap{Endpoints: []string{be.Addr},
		UpstreamCommon: commonOptions{MaxConnectionDuration: 500 * time.Millisecond, IdleTimeout: time.Minute}})
	client := dialGRPC(t, sc.Addr)
	var failed atomic.Int64
	rep := doctorRun(t, sc, 4*time.Second, func(ctx context.Context) { callLoop(ctx, client, 4, 5*time.Millisecond, &failed) })
	f := wantFinding(t, rep, doctor.S9, "connection-rotation")
	wantValue(t, f, "max_duration_reached", 3)
	if f.Values["rotation_period_ms"] >= 10000 || !strings.Contains(f.Fix, "maxConnectionDuration") {
		t.Errorf("S9 evidence %q fix %q: want a rotation period under 10 s and maxConnectionDuration named", f.Evidence, f.Fix)
	}
	if n := failed.Load(); n > 0 {
		t.Errorf("%d calls failed during rotations", n)
	}
}

// S10: no idle_timeout (Envoy's default 1 h): connections opened by a
// burst stay open with nothing to carry.
func TestDoctorS10IdleConnections(t *testing.T) {
	be := startGRPCBackend(t, backendConfig{MaxConcurrentStreams: 2, UnaryDelay: 50 * time.Millisecond})
	sc := startScenarioSidecar(t, scenarioBootstrap{Endpoints: []string{be.Addr}})
	client := dialGRPC(t, sc.Addr)
	var failed atomic.Int64
	burst, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	callLoop(burst, client, 8, 0, &failed)
	cancel()
	waitFor(t, settleTimeout, "the burst's calls end", func() (bool, string) {
		return sc.clusterStat(t, "upstream_rq_active") == 0, "requests active"
	})
	rep := doctorRun(t, sc, 2*time.Second, nil)
	f := wantFinding(t, rep, doctor.S10, "idle-connections")
	wantValue(t, f, "idle_connections", 2)
	if !strings.Contains(f.Evidence, "idle_timeout 1h0m0s (unset") || !strings.Contains(f.Fix, "idleTimeout") {
		t.Errorf("S10 evidence %q fix %q: want the unset idle_timeout named and its fix", f.Evidence, f.Fix)
	}
}
