package scenarios

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"meshd.dev/meshd/internal/testutil"

	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3" // resolves the router's typed_config
)

// TestScenarioBootstrapIsValidEnvoy decodes rendered bootstraps strictly
// into the Envoy v3 protos and validates them, so every field lands where
// Envoy expects it.
func TestScenarioBootstrapIsValidEnvoy(t *testing.T) {
	full := scenarioBootstrap{
		Endpoints:      []string{"127.0.0.1:1", "127.0.0.1:2"},
		LBPolicy:       "LEAST_REQUEST",
		ConnectTimeout: 250 * time.Millisecond,
		RouteTimeout:   1500 * time.Millisecond,
		Retry:          &retryPolicy{RetryOn: "refused-stream,unavailable", NumRetries: 2, PerTryTimeout: 300 * time.Millisecond, RetriableStatusCodes: []uint32{503}},
		CircuitBreakers: &circuitBreakers{MaxConnections: 64, MaxPendingRequests: 10000, MaxRequests: 10000, MaxRetries: 5,
			RetryBudget: &retryBudget{BudgetPercent: 25, MinRetryConcurrency: 10}},
		UpstreamH2: h2Options{MaxConcurrentStreams: 100, InitialStreamWindowSize: 1 << 20, InitialConnectionWindowSize: 4 << 20,
			Keepalive: &h2Keepalive{Interval: time.Second, Timeout: 500 * time.Millisecond, JitterPercent: 10, ConnectionIdleInterval: 30 * time.Second}},
		UpstreamCommon:           commonOptions{IdleTimeout: 2 * time.Second, MaxConnectionDuration: time.Minute, MaxStreamDuration: 10 * time.Second, MaxRequestsPerConnection: 1000},
		DownstreamH2:             h2Options{MaxConcurrentStreams: 50},
		DownstreamCommon:         commonOptions{IdleTimeout: 5 * time.Minute},
		StreamIdleTimeout:        30 * time.Second,
		PreconnectRatio:          1.5,
		TCPKeepalive:             &tcpKeepalive{Probes: 3, Time: 30 * time.Second, Interval: 5 * time.Second},
		PerConnectionBufferLimit: 32 << 10,
		OutlierDetection:         map[string]any{"consecutive_5xx": 3, "interval": "1s", "base_ejection_time": "5s"},
		HealthChecks: []map[string]any{{"timeout": "1s", "interval": "1s", "unhealthy_threshold": 2, "healthy_threshold": 1,
			"grpc_health_check": map[string]any{}}},
		RouteExtra: map[string]any{"name": "all"},
	}
	tests := []struct {
		name  string
		b     scenarioBootstrap
		check func(t *testing.T, hcm *hcmv3.HttpConnectionManager, c *clusterv3.Cluster, opts *upstreamhttpv3.HttpProtocolOptions)
	}{
		{
			name: "minimal http2",
			b:    scenarioBootstrap{Endpoints: []string{"127.0.0.1:8080"}},
			check: func(t *testing.T, hcm *hcmv3.HttpConnectionManager, c *clusterv3.Cluster, opts *upstreamhttpv3.HttpProtocolOptions) {
				if hcm.GetCodecType() != hcmv3.HttpConnectionManager_AUTO || hcm.GetHttp2ProtocolOptions() != nil {
					t.Errorf("HCM codec %v, http2 options %v; want AUTO and none", hcm.GetCodecType(), hcm.GetHttp2ProtocolOptions())
				}
				if opts.GetExplicitHttpConfig().GetHttp2ProtocolOptions() == nil {
					t.Errorf("upstream protocol %v, want explicit HTTP/2", opts.GetExplicitHttpConfig())
				}
				if c.GetConnectTimeout().AsDuration() != time.Second || c.GetCircuitBreakers() != nil {
					t.Errorf("connect_timeout %v, circuit_breakers %v; want 1s and none", c.GetConnectTimeout().AsDuration(), c.GetCircuitBreakers())
				}
				rt := hcm.GetRouteConfig().GetVirtualHosts()[0].GetRoutes()[0].GetRoute()
				if rt.GetTimeout() == nil || rt.GetTimeout().AsDuration() != 0 || rt.GetRetryPolicy() != nil {
					t.Errorf("route timeout %v retry %v; want explicit 0s and no retries", rt.GetTimeout(), rt.GetRetryPolicy())
				}
			},
		},
		{
			name: "http1",
			b:    scenarioBootstrap{Endpoints: []string{"127.0.0.1:8080"}, UpstreamHTTP1: true},
			check: func(t *testing.T, _ *hcmv3.HttpConnectionManager, _ *clusterv3.Cluster, opts *upstreamhttpv3.HttpProtocolOptions) {
				if opts.GetExplicitHttpConfig().GetHttpProtocolOptions() == nil {
					t.Errorf("upstream protocol %v, want explicit HTTP/1.1", opts.GetExplicitHttpConfig())
				}
			},
		},
		{
			name: "every field",
			b:    full,
			check: func(t *testing.T, hcm *hcmv3.HttpConnectionManager, c *clusterv3.Cluster, opts *upstreamhttpv3.HttpProtocolOptions) {
				th := c.GetCircuitBreakers().GetThresholds()[0]
				if th.GetMaxConnections().GetValue() != 64 || th.GetMaxPendingRequests().GetValue() != 10000 ||
					th.GetRetryBudget().GetBudgetPercent().GetValue() != 25 || th.GetRetryBudget().GetMinRetryConcurrency().GetValue() != 10 {
					t.Errorf("thresholds %v", th)
				}
				ka := opts.GetExplicitHttpConfig().GetHttp2ProtocolOptions().GetConnectionKeepalive()
				if ka.GetInterval().AsDuration() != time.Second || ka.GetTimeout().AsDuration() != 500*time.Millisecond || ka.GetIntervalJitter().GetValue() != 10 {
					t.Errorf("connection_keepalive %v", ka)
				}
				common := opts.GetCommonHttpProtocolOptions()
				if common.GetIdleTimeout().AsDuration() != 2*time.Second || common.GetMaxRequestsPerConnection().GetValue() != 1000 {
					t.Errorf("common_http_protocol_options %v", common)
				}
				if c.GetPreconnectPolicy().GetPerUpstreamPreconnectRatio().GetValue() != 1.5 ||
					c.GetUpstreamConnectionOptions().GetTcpKeepalive().GetKeepaliveTime().GetValue() != 30 ||
					c.GetPerConnectionBufferLimitBytes().GetValue() != 32<<10 ||
					c.GetOutlierDetection().GetConsecutive_5Xx().GetValue() != 3 || len(c.GetHealthChecks()) != 1 {
					t.Errorf("cluster %v", c)
				}
				if len(c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()) != 2 || c.GetLbPolicy() != clusterv3.Cluster_LEAST_REQUEST {
					t.Errorf("endpoints %v, lb_policy %v", c.GetLoadAssignment(), c.GetLbPolicy())
				}
				r := hcm.GetRouteConfig().GetVirtualHosts()[0].GetRoutes()[0]
				rp := r.GetRoute().GetRetryPolicy()
				if r.GetName() != "all" || rp.GetRetryOn() != "refused-stream,unavailable" || rp.GetNumRetries().GetValue() != 2 ||
					rp.GetPerTryTimeout().AsDuration() != 300*time.Millisecond || r.GetRoute().GetTimeout().AsDuration() != 1500*time.Millisecond {
					t.Errorf("route %v", r)
				}
				if hcm.GetHttp2ProtocolOptions().GetMaxConcurrentStreams().GetValue() != 50 || hcm.GetStreamIdleTimeout().AsDuration() != 30*time.Second {
					t.Errorf("HCM %v", hcm)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			text, err := tt.b.render()
			if err != nil {
				t.Fatal(err)
			}
			js, err := yaml.YAMLToJSON([]byte(text))
			if err != nil {
				t.Fatalf("YAMLToJSON: %v\n%s", err, text)
			}
			var b bootstrapv3.Bootstrap
			if err := (protojson.UnmarshalOptions{}).Unmarshal(js, &b); err != nil {
				t.Fatalf("strict decode: %v\n%s", err, text)
			}
			if err := b.ValidateAll(); err != nil {
				t.Fatalf("Validate: %v\n%s", err, text)
			}
			var hcm hcmv3.HttpConnectionManager
			if err := b.GetStaticResources().GetListeners()[0].GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(&hcm); err != nil {
				t.Fatalf("HCM typed_config: %v", err)
			}
			c := b.GetStaticResources().GetClusters()[0]
			var opts upstreamhttpv3.HttpProtocolOptions
			if err := c.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].UnmarshalTo(&opts); err != nil {
				t.Fatalf("HttpProtocolOptions: %v", err)
			}
			tt.check(t, &hcm, c, &opts)
		})
	}
}

func TestScenarioBootstrapErrors(t *testing.T) {
	tests := []struct {
		name string
		b    scenarioBootstrap
		want string
	}{
		{"no endpoints", scenarioBootstrap{}, "Endpoints: need at least one"},
		{"no port", scenarioBootstrap{Endpoints: []string{"127.0.0.1"}}, "Endpoints[0]"},
		{"port zero", scenarioBootstrap{Endpoints: []string{"127.0.0.1:1", "127.0.0.1:0"}}, "Endpoints[1]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.b.render()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("render() error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestPercentile(t *testing.T) {
	ms := func(ns ...int) []time.Duration {
		out := make([]time.Duration, len(ns))
		for i, n := range ns {
			out[i] = time.Duration(n) * time.Millisecond
		}
		return out
	}
	tests := []struct {
		name string
		ds   []time.Duration
		p    float64
		want time.Duration
	}{
		{"empty", nil, 99, 0},
		{"one", ms(7), 50, 7 * time.Millisecond},
		{"median of five unsorted", ms(5, 1, 4, 2, 3), 50, 3 * time.Millisecond},
		{"p99 of 100", ms(func() []int {
			out := make([]int, 100)
			for i := range out {
				out[i] = 100 - i
			}
			return out
		}()...), 99, 99 * time.Millisecond},
		{"p100", ms(1, 9, 3), 100, 9 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := percentile(tt.ds, tt.p); got != tt.want {
				t.Errorf("percentile(%v) = %v, want %v", tt.p, got, tt.want)
			}
		})
	}
}

func TestConnCounter(t *testing.T) {
	testutil.CheckGoroutines(t)
	l := listenCounting(t)
	defer l.Close()
	accepted := make(chan net.Conn, 3)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	var clients, servers []net.Conn
	for range 3 {
		c, err := net.DialTimeout("tcp", l.Addr().String(), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
		select {
		case s := <-accepted:
			servers = append(servers, s)
		case <-time.After(5 * time.Second):
			t.Fatal("no connection accepted within 5s")
		}
	}
	_ = servers[0].Close()
	_ = servers[0].Close() // a second Close must not count twice
	if got := [4]int64{l.Accepted(), l.Active(), l.Peak(), l.Closed()}; got != [4]int64{3, 2, 3, 1} {
		t.Errorf("accepted, active, peak, closed = %v, want [3 2 3 1]", got)
	}
	for i := range clients {
		_ = clients[i].Close()
		_ = servers[i].Close()
	}
	if l.Active() != 0 || l.Closed() != 3 {
		t.Errorf("after closing all: active %d closed %d, want 0 and 3", l.Active(), l.Closed())
	}
}

// TestScenarioHarness runs the backend's behaviours through a sidecar built
// from scenarioBootstrap and reads the process counters, so a scenario that
// fails points at meshd, not at its harness.
func TestScenarioHarness(t *testing.T) {
	testutil.CheckGoroutines(t)
	b := startGRPCBackend(t, backendConfig{MaxConcurrentStreams: 10})
	sc := startScenarioSidecar(t, scenarioBootstrap{Endpoints: []string{b.Addr}})
	client := dialGRPC(t, sc.Addr)
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()

	resp, err := client.UnaryCall(ctx, &testpb.SimpleRequest{ResponseSize: 100})
	if err != nil || len(resp.GetPayload().GetBody()) != 100 {
		t.Fatalf("UnaryCall = %v, %v; want a 100-byte payload", resp, err)
	}
	_, err = client.UnaryCall(ctx, &testpb.SimpleRequest{ResponseStatus: &testpb.EchoStatus{Code: int32(codes.ResourceExhausted), Message: "full"}})
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("UnaryCall asking for RESOURCE_EXHAUSTED = %v", err)
	}
	start := time.Now()
	if _, err := client.EmptyCall(metadata.AppendToOutgoingContext(ctx, mdDelay, "100ms"), &testpb.Empty{}); err != nil {
		t.Fatalf("EmptyCall with %s: %v", mdDelay, err)
	}
	if d := time.Since(start); d < 100*time.Millisecond {
		t.Errorf("EmptyCall with %s 100ms took %v", mdDelay, d)
	}

	stream, err := client.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{ResponseParameters: streamParams(3, 512, time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if m, err := stream.Recv(); err != nil || len(m.GetPayload().GetBody()) != 512 {
			t.Fatalf("Recv %d = %v, %v", i, m, err)
		}
	}

	cancelledBefore := b.Cancelled()
	hangCtx, hangCancel := context.WithTimeout(metadata.AppendToOutgoingContext(ctx, mdHang, "1"), 200*time.Millisecond)
	defer hangCancel()
	if _, err := client.EmptyCall(hangCtx, &testpb.Empty{}); status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("EmptyCall with %s and a 200ms deadline = %v, want DeadlineExceeded", mdHang, err)
	}
	waitFor(t, settleTimeout, "backend sees the hung call end", func() (bool, string) {
		return b.Cancelled() == cancelledBefore+1 && b.Active() == 0, fmt.Sprintf("cancelled %d, active %d", b.Cancelled()-cancelledBefore, b.Active())
	})

	if n := b.Conns.Accepted(); n != 1 {
		t.Errorf("backend accepted %d connections, want 1", n)
	}
	if cx, accepted := sc.clusterStat(t, "upstream_cx_total"), b.Conns.Accepted(); cx != accepted {
		t.Errorf("sidecar's upstream_cx_total = %d, backend accepted %d connections; want them equal", cx, accepted)
	}
	if g, fds, rss := sc.goroutines(t), sc.fds(t), sc.rssKiB(t); g < 2 || fds < 3 || rss <= 0 {
		t.Errorf("sidecar goroutines %d, fds %d, RSS %d KiB: implausible", g, fds, rss)
	}
}
