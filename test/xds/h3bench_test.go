package xds_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"

	"meshd.dev/meshd/internal/meshtest"
	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/xds/server"
)

// timedCalls makes n EmptyCalls over callers goroutines and returns each
// call's latency, the failures and the first error.
func timedCalls(client testgrpc.TestServiceClient, callers, n int, timeout time.Duration) (lat []time.Duration, fail int, first error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var mu sync.Mutex
	var wg sync.WaitGroup
	lat = make([]time.Duration, 0, n)
	for i := range callers {
		share := n / callers
		if i < n%callers {
			share++
		}
		wg.Go(func() {
			own := make([]time.Duration, 0, share)
			for range share {
				start := time.Now()
				_, err := client.EmptyCall(ctx, &testgrpc.Empty{})
				own = append(own, time.Since(start))
				if err != nil {
					mu.Lock()
					fail++
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
			mu.Lock()
			lat = append(lat, own...)
			mu.Unlock()
		})
	}
	wg.Wait()
	return lat, fail, first
}

// TestHTTP3VersusHTTP2 (issue 8, benchmark; MESHD_BENCH=1): unary gRPC
// calls through client sidecar -> server sidecar with STRICT mTLS, the
// sidecars speaking HTTP/2 over TCP in one mesh and HTTP/3 over QUIC in the
// other (Service.spec.upstreamProtocol), both meshes running side by side.
// After costWarmup, costRounds windows of costCalls calls from costCallers
// callers alternate between the meshes; for each it reads throughput, p99
// latency and the two sidecars' utime+stime per call; the medians and the
// HTTP/3 / HTTP/2 ratios are logged. No call may fail.
func TestHTTP3VersusHTTP2(t *testing.T) {
	if os.Getenv(benchEnv) != "1" {
		t.Skipf("set %s=1 to compare HTTP/3 and HTTP/2 between sidecars", benchEnv)
	}
	if raceEnabled {
		t.Skip("throughput and CPU figures under the race detector mean nothing")
	}
	hz := clockTicks(t)
	type env struct {
		proto               string
		client              testgrpc.TestServiceClient
		sidecars            []*testutil.Sidecar
		rate, p99, cpuPerUs []float64
	}
	var envs []*env
	for _, proto := range []string{"http2", "http3"} {
		app := testutil.StartGRPCInteropServer(t)
		p := newMTLSPorts(t)
		meshPath := filepath.Join(t.TempDir(), "mesh.yaml")
		writeFile(t, meshPath, strings.Replace(mtlsMesh(app.Addr, p, nil), "upstreamProtocol: http2", "upstreamProtocol: "+proto, 1))
		cp := startControlPlane(t, meshPath)
		cp.WaitStatus(t, "a published version", waitTimeout, func(st server.Status) bool { return st.Version != "" })
		e := &env{proto: proto, sidecars: []*testutil.Sidecar{
			mtlsSidecar(t, cp, meshPath, serverNode, false),
			mtlsSidecar(t, cp, meshPath, clientNode, false),
		}}
		e.client = meshtest.DialLoopback(t, p.Outbound)
		waitCallCode(t, e.client, codes.OK, waitTimeout)
		warm := time.Now().Add(costWarmup)
		for time.Now().Before(warm) {
			if _, fail, err := timedCalls(e.client, costCallers, 1000, costTimeout); fail != 0 {
				t.Fatalf("%s warm-up: %d calls failed; first: %v", proto, fail, err)
			}
		}
		envs = append(envs, e)
	}
	for round := range costRounds {
		for _, e := range envs {
			var before int64
			for _, sc := range e.sidecars {
				before += procCPUTicks(t, sc.PID())
			}
			udpBefore, udpOK := udpDatagramsIn()
			start := time.Now()
			lat, fail, err := timedCalls(e.client, costCallers, costCalls, costTimeout)
			elapsed := time.Since(start)
			var after int64
			for _, sc := range e.sidecars {
				after += procCPUTicks(t, sc.PID())
			}
			udpAfter, _ := udpDatagramsIn()
			if fail != 0 {
				t.Fatalf("%s round %d: %d of %d calls failed; first: %v", e.proto, round, fail, costCalls, err)
			}
			cpu := float64(after-before) / hz
			if cpu <= 0 {
				t.Fatalf("%s: the sidecars used no measurable CPU over %d calls", e.proto, costCalls)
			}
			slices.Sort(lat)
			p99 := lat[len(lat)*99/100]
			rate := costCalls / elapsed.Seconds()
			us := cpu / costCalls * 1e6
			e.rate, e.p99, e.cpuPerUs = append(e.rate, rate), append(e.p99, float64(p99.Microseconds())), append(e.cpuPerUs, us)
			udp := ""
			if udpOK && e.proto == "http3" {
				udp = fmt.Sprintf(", %.2f UDP datagrams/call host-wide", float64(udpAfter-udpBefore)/costCalls)
			}
			t.Logf("round %d %s: %.0f calls/s, p99 %v, both sidecars %.1f µs CPU/call%s", round, e.proto, rate, p99, us, udp)
		}
	}
	h2, h3 := envs[0], envs[1]
	t.Logf("HTTP/3 vs HTTP/2 between sidecars (medians of %d rounds of %d calls, %d callers): throughput %.0f / %.0f calls/s = %.2fx; p99 %.0f / %.0f µs = %.2fx; CPU per call %.1f / %.1f µs = %.2fx",
		costRounds, costCalls, costCallers,
		median(h3.rate), median(h2.rate), median(h3.rate)/median(h2.rate),
		median(h3.p99), median(h2.p99), median(h3.p99)/median(h2.p99),
		median(h3.cpuPerUs), median(h2.cpuPerUs), median(h3.cpuPerUs)/median(h2.cpuPerUs))
	if dir := os.Getenv(benchProfileEnv); dir != "" {
		for _, e := range envs {
			profileSidecars(t, dir, e.proto, e.client, e.sidecars)
		}
	}
}

// udpDatagramsIn returns the host's count of UDP datagrams received
// (/proc/net/snmp Udp InDatagrams), which counts each QUIC datagram
// between the sidecars once; other processes' UDP traffic adds to it, so
// it is indicative. ok is false where the file is missing.
func udpDatagramsIn() (n int64, ok bool) {
	data, err := os.ReadFile("/proc/net/snmp")
	if err != nil {
		return 0, false
	}
	var names []string
	for line := range strings.Lines(string(data)) {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Udp:" {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		for i := 1; i < len(f) && i < len(names); i++ {
			if names[i] == "InDatagrams" {
				n, err := strconv.ParseInt(f[i], 10, 64)
				return n, err == nil
			}
		}
	}
	return 0, false
}

// benchProfileEnv names a directory where TestHTTP3VersusHTTP2 writes a
// CPU profile and a runtime trace of each sidecar under load after its
// measured rounds.
const benchProfileEnv = "MESHD_BENCH_PROFILE"

// profileSeconds is the length of each sidecar CPU profile.
const profileSeconds = 8

// profileSidecars keeps costCallers callers busy while it takes a
// profileSeconds CPU profile of each sidecar through its admin
// /debug/pprof/profile, written to dir as PROTO-INDEX.pprof (0: the server
// side's sidecar, 1: the client side's), then a traceSeconds runtime trace
// of each in turn (/debug/pprof/trace, PROTO-INDEX.trace), logging the
// requests the sidecar served meanwhile.
func profileSidecars(t *testing.T, dir, proto string, client testgrpc.TestServiceClient, sidecars []*testutil.Sidecar) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("%s: %v", benchProfileEnv, err)
	}
	stop := make(chan struct{})
	var load sync.WaitGroup
	load.Go(func() {
		deadline := time.Now().Add(2 * profileSeconds * time.Second)
		for time.Now().Before(deadline) {
			select {
			case <-stop:
				return
			default:
			}
			timedCalls(client, costCallers, 1000, costTimeout)
		}
	})
	defer func() { close(stop); load.Wait() }()
	var wg sync.WaitGroup
	for i, sc := range sidecars {
		wg.Go(func() {
			fetchProfile(t, fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", sc.AdminAddr, profileSeconds),
				filepath.Join(dir, fmt.Sprintf("%s-%d.pprof", proto, i)))
		})
	}
	wg.Wait()
	t.Logf("%s: CPU profiles of both sidecars in %s", proto, dir)
	// Runtime traces one sidecar at a time, so that only one process pays
	// the tracer's overhead, with the requests it served meanwhile: the
	// goroutine wake-ups per call come from these.
	for i, sc := range sidecars {
		path := filepath.Join(dir, fmt.Sprintf("%s-%d.trace", proto, i))
		before := sumStats(sc.Stats(t), "downstream_rq_total")
		fetchProfile(t, fmt.Sprintf("http://%s/debug/pprof/trace?seconds=%d", sc.AdminAddr, traceSeconds), path)
		requests := sumStats(sc.Stats(t), "downstream_rq_total") - before
		f, err := os.Open(path)
		if err != nil {
			t.Errorf("%s trace of sidecar %d: %v", proto, i, err)
			continue
		}
		w, err := countWakeups(f)
		f.Close()
		if err != nil || requests <= 0 {
			t.Errorf("%s trace of sidecar %d (%s): %d requests, %v", proto, i, path, requests, err)
			continue
		}
		t.Logf("%s sidecar %d, runtime trace in %s, %d requests in %d s: %s", proto, i, path, requests, traceSeconds, w.perRequest(requests, 10))
	}
}

// traceSeconds is the length of each sidecar's runtime trace.
const traceSeconds = 2

// fetchProfile writes the body of an admin /debug/pprof GET to path.
func fetchProfile(t *testing.T, url, path string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Errorf("GET %s: %v", url, err)
		return
	}
	defer resp.Body.Close()
	f, err := os.Create(path)
	if err != nil {
		t.Errorf("GET %s: %v", url, err)
		return
	}
	defer f.Close()
	if _, err := f.ReadFrom(resp.Body); err != nil {
		t.Errorf("GET %s: %v", url, err)
	}
}

// sumStats sums the stats whose names end in suffix.
func sumStats(stats map[string]int64, suffix string) int64 {
	var n int64
	for name, v := range stats {
		if strings.HasSuffix(name, suffix) {
			n += v
		}
	}
	return n
}
