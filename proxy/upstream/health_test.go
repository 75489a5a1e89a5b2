package upstream

import (
	"context"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"meshd.dev/meshd/internal/testutil"
)

// healthWait bounds every wait for a health transition; checks run every
// 20 ms, so a transition that needs a few of them takes well under this.
const healthWait = 5 * time.Second

// fastHealthCheck returns a health check that runs every 20 ms with the
// given thresholds, also while the cluster has no traffic.
func fastHealthCheck(unhealthy, healthy uint32) *corev3.HealthCheck {
	return &corev3.HealthCheck{
		Timeout:            durationpb.New(time.Second),
		Interval:           durationpb.New(20 * time.Millisecond),
		NoTrafficInterval:  durationpb.New(20 * time.Millisecond),
		UnhealthyThreshold: wrapperspb.UInt32(unhealthy),
		HealthyThreshold:   wrapperspb.UInt32(healthy),
	}
}

// waitHealthy waits up to healthWait for h's health to become want.
func waitHealthy(t *testing.T, h *Host, want bool, why string) {
	t.Helper()
	deadline := time.Now().Add(healthWait)
	for h.LB.Healthy() != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s: host healthy = %v after %v, want %v", why, !want, healthWait, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// listen returns a listener on 127.0.0.1:0 closed at the end of the test.
func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// statusServer is an HTTP server whose /healthz answers with a settable
// status and records what it received.
type statusServer struct {
	code     atomic.Int64
	proto    atomic.Value // string
	host     atomic.Value // string
	hdr      atomic.Value // string: x-hc header
	requests atomic.Int64
	// hold, when set, delays every answer until it is closed (at most
	// healthWait).
	hold atomic.Pointer[chan struct{}]
}

func startStatusServer(t *testing.T, h2c bool) (*statusServer, string) {
	t.Helper()
	s := &statusServer{}
	s.code.Store(200)
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		if hold := s.hold.Load(); hold != nil {
			select {
			case <-*hold:
			case <-time.After(healthWait):
			}
		}
		s.proto.Store(r.Proto)
		s.host.Store(r.Host)
		s.hdr.Store(r.Header.Get("X-Hc") + "|" + r.UserAgent())
		w.WriteHeader(int(s.code.Load()))
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, Protocols: new(http.Protocols)}
	srv.Protocols.SetHTTP1(true)
	if h2c {
		srv.Protocols.SetUnencryptedHTTP2(true)
	}
	ln := listen(t)
	go srv.Serve(ln) //nolint:errcheck // ends with Close
	t.Cleanup(func() { srv.Close() })
	return s, ln.Addr().String()
}

func TestHTTPHealthCheck(t *testing.T) {
	for _, tc := range []struct {
		name      string
		codec     typev3.CodecClientType
		wantProto string
	}{
		{"HTTP1", typev3.CodecClientType_HTTP1, "HTTP/1.1"},
		{"HTTP2", typev3.CodecClientType_HTTP2, "HTTP/2.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			srv, addr := startStatusServer(t, true)
			hold := make(chan struct{})
			srv.hold.Store(&hold)
			cp := testClusterProto(t, addr)
			hc := fastHealthCheck(2, 2)
			hc.HealthChecker = &corev3.HealthCheck_HttpHealthCheck_{HttpHealthCheck: &corev3.HealthCheck_HttpHealthCheck{
				Path:            "/healthz",
				Host:            "check.example",
				CodecClientType: tc.codec,
				RequestHeadersToAdd: []*corev3.HeaderValueOption{{
					Header: &corev3.HeaderValue{Key: "x-hc", Value: "yes"},
				}},
				RetriableStatuses: []*typev3.Int64Range{{Start: 429, End: 430}},
			}}
			cp.HealthChecks = []*corev3.HealthCheck{hc}
			c, store := startTestCluster(t, cp)
			h := c.Hosts()[0]
			if failed, _ := h.HealthFlags(); !failed {
				t.Error("a new host is not marked failed_active_hc before its first check")
			}
			srv.hold.Store(nil)
			close(hold)
			waitHealthy(t, h, true, "first successful check")
			if got := srv.proto.Load(); got != tc.wantProto {
				t.Errorf("check used %v, want %s", got, tc.wantProto)
			}
			if got := srv.host.Load(); got != "check.example" {
				t.Errorf("Host header = %v, want check.example", got)
			}
			if got := srv.hdr.Load(); got != "yes|Envoy/HC" {
				t.Errorf("x-hc|user-agent = %v, want yes|Envoy/HC", got)
			}

			// An unexpected status fails the host at once.
			srv.code.Store(503)
			waitHealthy(t, h, false, "503 from the health endpoint")
			srv.code.Store(200)
			waitHealthy(t, h, true, "200 after 503")

			// A retriable status counts towards unhealthy_threshold (2).
			srv.code.Store(429)
			waitHealthy(t, h, false, "retriable 429s reaching unhealthy_threshold")

			srv.code.Store(200)
			waitHealthy(t, h, true, "recovery")
			for _, name := range []string{"attempt", "success", "failure"} {
				if v := statValue(t, store, "cluster.backend.health_check."+name); v == 0 {
					t.Errorf("health_check.%s = 0", name)
				}
			}
			// The gauge is set just after the host's flag changes: poll it.
			deadline := time.Now().Add(healthWait)
			for statValue(t, store, "cluster.backend.health_check.healthy") != 1 {
				if time.Now().After(deadline) {
					t.Fatalf("health_check.healthy = %d after %v, want 1", statValue(t, store, "cluster.backend.health_check.healthy"), healthWait)
				}
				time.Sleep(5 * time.Millisecond)
			}
			if v := statValue(t, store, "cluster.backend.health_check.network_failure"); v != 0 {
				t.Errorf("health_check.network_failure = %d, want 0 (the server always answered)", v)
			}
		})
	}
}

// TestHealthCheckThresholds checks that network failures need
// unhealthy_threshold in a row and recovery needs healthy_threshold
// successes, by counting checks at the server.
func TestHealthCheckThresholds(t *testing.T) {
	testutil.CheckGoroutines(t)
	srv, addr := startStatusServer(t, false)
	cp := testClusterProto(t, addr)
	hc := fastHealthCheck(3, 4)
	hc.HealthChecker = &corev3.HealthCheck_HttpHealthCheck_{HttpHealthCheck: &corev3.HealthCheck_HttpHealthCheck{
		Path:              "/healthz",
		RetriableStatuses: []*typev3.Int64Range{{Start: 500, End: 600}},
	}}
	cp.HealthChecks = []*corev3.HealthCheck{hc}
	c, store := startTestCluster(t, cp)
	h := c.Hosts()[0]
	waitHealthy(t, h, true, "first check")

	srv.code.Store(500)
	before := srv.requests.Load()
	waitHealthy(t, h, false, "retriable 500s")
	if n := srv.requests.Load() - before; n < 3 {
		t.Errorf("host failed after %d checks, want at least unhealthy_threshold 3", n)
	}
	srv.code.Store(200)
	before = srv.requests.Load()
	waitHealthy(t, h, true, "recovery")
	if n := srv.requests.Load() - before; n < 4 {
		t.Errorf("host recovered after %d checks, want at least healthy_threshold 4", n)
	}
	if v := statValue(t, store, "cluster.backend.health_check.failure"); v < 3 {
		t.Errorf("health_check.failure = %d, want >= 3", v)
	}
}

// TestHealthCheckNetworkFailure checks a host nobody listens on: it stays
// failed from the start, counting network failures.
func TestHealthCheckNetworkFailure(t *testing.T) {
	testutil.CheckGoroutines(t)
	ln := listen(t)
	addr := ln.Addr().String()
	ln.Close() // connections are refused
	_, good := startStatusServer(t, false)
	cp := testClusterProto(t, addr, good)
	hc := fastHealthCheck(1, 1)
	hc.HealthChecker = &corev3.HealthCheck_HttpHealthCheck_{HttpHealthCheck: &corev3.HealthCheck_HttpHealthCheck{Path: "/healthz"}}
	cp.HealthChecks = []*corev3.HealthCheck{hc}
	c, store := startTestCluster(t, cp)
	waitHealthy(t, c.Hosts()[1], true, "listening host")
	deadline := time.Now().Add(healthWait)
	for statValue(t, store, "cluster.backend.health_check.network_failure") < 3 {
		if time.Now().After(deadline) {
			t.Fatal("fewer than 3 network failures counted against a closed port")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if c.Hosts()[0].LB.Healthy() {
		t.Error("host with refused connections is healthy")
	}
	for range 100 {
		if c.Pick() != c.Hosts()[1] {
			t.Fatal("load balancer picked the failing host")
		}
	}
}

func TestGRPCHealthCheck(t *testing.T) {
	testutil.CheckGoroutines(t)
	hs := health.NewServer()
	hs.SetServingStatus("echo.Echo", healthpb.HealthCheckResponse_SERVING)
	var authority atomic.Value
	gs := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		authority.Store(strings.Join(md[":authority"], ","))
		return handler(ctx, req)
	}))
	healthpb.RegisterHealthServer(gs, hs)
	ln := listen(t)
	go gs.Serve(ln) //nolint:errcheck // ends with Stop
	t.Cleanup(gs.Stop)

	cp := testClusterProto(t, ln.Addr().String())
	hc := fastHealthCheck(2, 1)
	hc.HealthChecker = &corev3.HealthCheck_GrpcHealthCheck_{GrpcHealthCheck: &corev3.HealthCheck_GrpcHealthCheck{ServiceName: "echo.Echo"}}
	cp.HealthChecks = []*corev3.HealthCheck{hc}
	c, store := startTestCluster(t, cp)
	h := c.Hosts()[0]
	waitHealthy(t, h, true, "SERVING")
	hs.SetServingStatus("echo.Echo", healthpb.HealthCheckResponse_NOT_SERVING)
	waitHealthy(t, h, false, "NOT_SERVING")
	hs.SetServingStatus("echo.Echo", healthpb.HealthCheckResponse_SERVING)
	waitHealthy(t, h, true, "SERVING again")
	if got := authority.Load(); got != "backend" {
		t.Errorf(":authority = %v, want the cluster name", got)
	}
	if v := statValue(t, store, "cluster.backend.health_check.network_failure"); v != 0 {
		t.Errorf("health_check.network_failure = %d, want 0", v)
	}
}

// TestHealthCheckUnejects checks successful_active_health_check_uneject_host:
// a passing active check returns an outlier-ejected host at once.
func TestHealthCheckUnejects(t *testing.T) {
	testutil.CheckGoroutines(t)
	_, addr := startStatusServer(t, false)
	cp := testClusterProto(t, addr)
	hc := fastHealthCheck(1, 1)
	hc.HealthChecker = &corev3.HealthCheck_HttpHealthCheck_{HttpHealthCheck: &corev3.HealthCheck_HttpHealthCheck{Path: "/healthz"}}
	cp.HealthChecks = []*corev3.HealthCheck{hc}
	cp.OutlierDetection = &clusterv3.OutlierDetection{AlwaysEjectOneHost: wrapperspb.Bool(true), BaseEjectionTime: durationpb.New(time.Hour)}
	c, store := startTestCluster(t, cp)
	h := c.Hosts()[0]
	waitHealthy(t, h, true, "first check")
	for range 5 {
		h.ReportStatus(500)
	}
	if _, ejected := h.HealthFlags(); !ejected {
		t.Fatal("host not ejected")
	}
	waitHealthy(t, h, true, "a passing health check un-ejects")
	if v := statValue(t, store, "cluster.backend.outlier_detection.ejections_active"); v != 0 {
		t.Errorf("ejections_active = %d, want 0", v)
	}
}

func TestCompileHealthCheck(t *testing.T) {
	valid := func(mod func(*corev3.HealthCheck)) []*corev3.HealthCheck {
		hc := fastHealthCheck(2, 2)
		hc.HealthChecker = &corev3.HealthCheck_HttpHealthCheck_{HttpHealthCheck: &corev3.HealthCheck_HttpHealthCheck{Path: "/healthz"}}
		if mod != nil {
			mod(hc)
		}
		return []*corev3.HealthCheck{hc}
	}
	tests := []struct {
		name    string
		hcs     []*corev3.HealthCheck
		check   func(*testing.T, *HealthCheckSpec)
		wantErr string
	}{
		{name: "defaults", hcs: valid(func(hc *corev3.HealthCheck) { hc.NoTrafficInterval = nil }), check: func(t *testing.T, s *HealthCheckSpec) {
			if s.NoTrafficInterval != time.Minute || s.UnhealthyInterval != s.Interval || !s.ReuseConnection || s.HTTP.Host != "backend" ||
				s.HTTP.Method != "GET" || len(s.HTTP.Expected) != 1 || s.HTTP.Expected[0] != (StatusRange{200, 201}) {
				t.Errorf("defaults not applied: %+v %+v", s, s.HTTP)
			}
		}},
		{name: "grpc authority defaults to cluster", hcs: valid(func(hc *corev3.HealthCheck) {
			hc.HealthChecker = &corev3.HealthCheck_GrpcHealthCheck_{GrpcHealthCheck: &corev3.HealthCheck_GrpcHealthCheck{}}
		}), check: func(t *testing.T, s *HealthCheckSpec) {
			if s.GRPC == nil || s.GRPC.Authority != "backend" {
				t.Errorf("GRPC = %+v", s.GRPC)
			}
		}},
		{name: "two checks", hcs: append(valid(nil), valid(nil)...), wantErr: "health_checks: 2 health checks"},
		{name: "no timeout", hcs: valid(func(hc *corev3.HealthCheck) { hc.Timeout = nil }), wantErr: "health_checks[0].timeout: required"},
		{name: "zero interval", hcs: valid(func(hc *corev3.HealthCheck) { hc.Interval = durationpb.New(0) }), wantErr: "health_checks[0].interval: must be positive"},
		{name: "no thresholds", hcs: valid(func(hc *corev3.HealthCheck) { hc.HealthyThreshold = nil }), wantErr: "health_checks[0].healthy_threshold: required"},
		{name: "tcp", hcs: valid(func(hc *corev3.HealthCheck) {
			hc.HealthChecker = &corev3.HealthCheck_TcpHealthCheck_{TcpHealthCheck: &corev3.HealthCheck_TcpHealthCheck{}}
		}), wantErr: "health_checks[0].tcp_health_check: not supported"},
		{name: "bad status range", hcs: valid(func(hc *corev3.HealthCheck) {
			hc.GetHttpHealthCheck().ExpectedStatuses = []*typev3.Int64Range{{Start: 200, End: 700}}
		}), wantErr: "health_checks[0].http_health_check.expected_statuses[0]: [200, 700)"},
		{name: "http3", hcs: valid(func(hc *corev3.HealthCheck) {
			hc.GetHttpHealthCheck().CodecClientType = typev3.CodecClientType_HTTP3
		}), wantErr: "health_checks[0].http_health_check.codec_client_type: HTTP3 is not supported"},
		{name: "relative path", hcs: valid(func(hc *corev3.HealthCheck) { hc.GetHttpHealthCheck().Path = "healthz" }),
			wantErr: `health_checks[0].http_health_check.path: "healthz" must start with /`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cp := testClusterProto(t, fakeAddrs(1)...)
			cp.HealthChecks = tt.hcs
			spec, err := CompileCluster(cp)
			if tt.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one starting %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, spec.HealthCheck)
		})
	}
}
