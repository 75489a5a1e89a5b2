package scenarios

// Shared harness of the scenario tests (docs/scenarios.md, S1–S11): a connection-
// counting listener, a grpc-go TestService backend that can be told to
// misbehave, a bootstrap builder for the Envoy fields the scenarios set, stat
// readers, the timing guard, and process counters for a running sidecar.

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"sigs.k8s.io/yaml"

	"meshd.dev/meshd/internal/testutil"
)

func TestMain(m *testing.M) { os.Exit(testutil.Main(m)) }

// Bounds shared by the scenarios.
const (
	// rpcTimeout bounds one RPC a scenario expects to finish.
	rpcTimeout = 10 * time.Second
	// settleTimeout bounds a poll for a counter to reach its expected value
	// (connections closing, goroutines unwinding).
	settleTimeout = 15 * time.Second
	// pollInterval is the period of every poll loop.
	pollInterval = 25 * time.Millisecond
	// backendStopTimeout bounds GracefulStop at cleanup before Stop.
	backendStopTimeout = 5 * time.Second
)

// timing marks a test whose assertions are about time (latency, gaps,
// deadlines measured to the millisecond). The race detector slows code 2–20×
// unevenly, so such a test is skipped under -race; .ci/run runs the package
// once more without -race, selecting tests by "Timing" in their name, so the
// guard (testutil.Timing) insists on that word being there.
func timing(t *testing.T) {
	t.Helper()
	testutil.Timing(t)
}

// connCounter is a net.Listener that counts the connections it accepts, how
// many of them are open now, the most open at once, and how many were
// closed. A connection counts as closed when the server closes it (grpc-go
// and net/http close a connection once they read EOF from the peer).
type connCounter struct {
	net.Listener
	accepted atomic.Int64
	active   atomic.Int64
	peak     atomic.Int64
	closed   atomic.Int64
}

// listenCounting listens on 127.0.0.1:0 and wraps the listener in a
// connCounter. The caller's server owns closing it.
func listenCounting(t testing.TB) *connCounter {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen 127.0.0.1:0: %v", err)
	}
	return &connCounter{Listener: l}
}

// Accept accepts a connection and counts it.
func (c *connCounter) Accept() (net.Conn, error) {
	conn, err := c.Listener.Accept()
	if err != nil {
		return nil, err
	}
	c.accepted.Add(1)
	n := c.active.Add(1)
	for {
		p := c.peak.Load()
		if n <= p || c.peak.CompareAndSwap(p, n) {
			break
		}
	}
	return &countedConn{Conn: conn, l: c}, nil
}

// Accepted returns how many connections have been accepted in total.
func (c *connCounter) Accepted() int64 { return c.accepted.Load() }

// Active returns how many accepted connections are open now.
func (c *connCounter) Active() int64 { return c.active.Load() }

// Peak returns the most connections that were open at once.
func (c *connCounter) Peak() int64 { return c.peak.Load() }

// Closed returns how many accepted connections have been closed.
func (c *connCounter) Closed() int64 { return c.closed.Load() }

// countedConn decrements its listener's active count on its first Close.
type countedConn struct {
	net.Conn
	l    *connCounter
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() {
		c.l.active.Add(-1)
		c.l.closed.Add(1)
	})
	return c.Conn.Close()
}

// Metadata keys the backend's handlers obey; a test sets them per call with
// metadata.AppendToOutgoingContext and the sidecar forwards them as headers.
const (
	// mdDelay makes a unary handler sleep this long (a Go duration, "20ms")
	// before answering, or until the call ends.
	mdDelay = "x-scenario-delay"
	// mdHang, set to any value, makes a unary handler wait until the call
	// ends (cancel, deadline, reset) without answering.
	mdHang = "x-scenario-hang"
)

// backendConfig configures a grpcBackend. The zero value is a well-behaved
// grpc-go server with grpc-go's defaults.
type backendConfig struct {
	// MaxConcurrentStreams, when non-zero, is the server's
	// SETTINGS_MAX_CONCURRENT_STREAMS (grpc.MaxConcurrentStreams).
	MaxConcurrentStreams uint32
	// Enforcement, when set, is the server's keepalive enforcement policy
	// (MinTime, PermitWithoutStream): pings faster than it earn strikes and
	// then GOAWAY ENHANCE_YOUR_CALM "too_many_pings".
	Enforcement *keepalive.EnforcementPolicy
	// Params, when set, are the server's keepalive.ServerParameters
	// (MaxConnectionAge, MaxConnectionAgeGrace, MaxConnectionIdle, Time,
	// Timeout).
	Params *keepalive.ServerParameters
	// UnaryDelay is how long EmptyCall and UnaryCall wait before answering
	// when the call carries no mdDelay.
	UnaryDelay time.Duration
	// Options are added after the ones above.
	Options []grpc.ServerOption
}

// grpcBackend is a grpc-go server with the interop TestService served by
// scenarioService, behind a connCounter, on 127.0.0.1. It counts handler
// runs and how many ended because their call was cancelled.
type grpcBackend struct {
	// Addr is the listening address ("127.0.0.1:port").
	Addr string
	// Server is the grpc-go server; tests may GracefulStop or Stop it early.
	Server *grpc.Server
	// Conns counts the server's connections.
	Conns *connCounter

	cfg       backendConfig
	started   atomic.Int64
	active    atomic.Int64
	cancelled atomic.Int64
}

// startGRPCBackend starts a grpcBackend configured by cfg. It is stopped
// (gracefully, then forcibly after backendStopTimeout) when the test ends.
func startGRPCBackend(t testing.TB, cfg backendConfig) *grpcBackend {
	t.Helper()
	lis := listenCounting(t)
	b := &grpcBackend{Addr: lis.Addr().String(), Conns: lis, cfg: cfg}
	opts := []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(b.unaryInterceptor),
		grpc.ChainStreamInterceptor(b.streamInterceptor),
	}
	if cfg.MaxConcurrentStreams > 0 {
		opts = append(opts, grpc.MaxConcurrentStreams(cfg.MaxConcurrentStreams))
	}
	if cfg.Enforcement != nil {
		opts = append(opts, grpc.KeepaliveEnforcementPolicy(*cfg.Enforcement))
	}
	if cfg.Params != nil {
		opts = append(opts, grpc.KeepaliveParams(*cfg.Params))
	}
	b.Server = grpc.NewServer(append(opts, cfg.Options...)...)
	testpb.RegisterTestServiceServer(b.Server, &scenarioService{b: b})
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = b.Server.Serve(lis) // returns once Stop or GracefulStop is called
	}()
	t.Cleanup(func() {
		stopped := make(chan struct{})
		go func() {
			b.Server.GracefulStop()
			close(stopped)
		}()
		select {
		case <-stopped:
		case <-time.After(backendStopTimeout):
			b.Server.Stop()
			<-stopped
		}
		<-served
	})
	return b
}

// Started returns how many handlers have been entered.
func (b *grpcBackend) Started() int64 { return b.started.Load() }

// Active returns how many handlers are running now.
func (b *grpcBackend) Active() int64 { return b.active.Load() }

// Cancelled returns how many handlers have returned while their call's
// context was done: the client (or the sidecar on its behalf) cancelled or
// reset the stream, or its deadline passed.
func (b *grpcBackend) Cancelled() int64 { return b.cancelled.Load() }

func (b *grpcBackend) unaryInterceptor(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	b.started.Add(1)
	b.active.Add(1)
	defer b.active.Add(-1)
	resp, err := h(ctx, req)
	b.countCancelled(ctx, err)
	return resp, err
}

func (b *grpcBackend) streamInterceptor(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	b.started.Add(1)
	b.active.Add(1)
	defer b.active.Add(-1)
	err := h(srv, ss)
	b.countCancelled(ss.Context(), err)
	return err
}

// handlerCtxGrace bounds the wait, after a handler failed, for grpc-go to
// cancel the call's context: a Send can fail on a reset or closed stream
// a moment before the transport cancels the context.
const handlerCtxGrace = time.Second

// countCancelled counts a handler that ended with its call's context done.
func (b *grpcBackend) countCancelled(ctx context.Context, err error) {
	if err != nil && ctx.Err() == nil {
		timer := time.NewTimer(handlerCtxGrace)
		defer timer.Stop()
		select {
		case <-ctx.Done():
		case <-timer.C:
		}
	}
	if ctx.Err() != nil {
		b.cancelled.Add(1)
	}
}

// scenarioService implements the interop TestService with handlers a test
// steers: unary calls wait (mdDelay, mdHang, backendConfig.UnaryDelay) and
// answer with the requested payload size and status; streaming calls send
// one message per ResponseParameters entry after its IntervalUs, stopping
// as soon as the call ends.
type scenarioService struct {
	testpb.UnimplementedTestServiceServer
	b *grpcBackend
}

// wait applies the call's delay or hang; it returns the call's error if the
// call ended first.
func (s *scenarioService) wait(ctx context.Context) error {
	d := s.b.cfg.UnaryDelay
	md, _ := metadata.FromIncomingContext(ctx)
	if len(md.Get(mdHang)) > 0 {
		<-ctx.Done()
		return status.FromContextError(ctx.Err()).Err()
	}
	if v := md.Get(mdDelay); len(v) > 0 {
		parsed, err := time.ParseDuration(v[0])
		if err != nil {
			return status.Errorf(codes.InvalidArgument, "%s %q: %v", mdDelay, v[0], err)
		}
		d = parsed
	}
	if d <= 0 {
		return nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	}
}

func (s *scenarioService) EmptyCall(ctx context.Context, _ *testpb.Empty) (*testpb.Empty, error) {
	if err := s.wait(ctx); err != nil {
		return nil, err
	}
	return &testpb.Empty{}, nil
}

func (s *scenarioService) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	if err := s.wait(ctx); err != nil {
		return nil, err
	}
	if st := req.GetResponseStatus(); st.GetCode() != 0 {
		return nil, status.Error(codes.Code(st.GetCode()), st.GetMessage())
	}
	if req.GetResponseSize() < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "response_size %d is negative", req.GetResponseSize())
	}
	return &testpb.SimpleResponse{Payload: payload(int(req.GetResponseSize()))}, nil
}

func (s *scenarioService) StreamingOutputCall(req *testpb.StreamingOutputCallRequest, stream grpc.ServerStreamingServer[testpb.StreamingOutputCallResponse]) error {
	if err := sendParams(stream.Context(), stream.Send, req.GetResponseParameters()); err != nil {
		return err
	}
	if st := req.GetResponseStatus(); st.GetCode() != 0 {
		return status.Error(codes.Code(st.GetCode()), st.GetMessage())
	}
	return nil
}

func (s *scenarioService) FullDuplexCall(stream grpc.BidiStreamingServer[testpb.StreamingOutputCallRequest, testpb.StreamingOutputCallResponse]) error {
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := sendParams(stream.Context(), stream.Send, req.GetResponseParameters()); err != nil {
			return err
		}
	}
}

// sendParams sends one response per parameter, each after its interval,
// stamped with its send time (stampSent).
// Intervals are measured from the previous send, so a slow send does not
// bunch up later messages behind it.
func sendParams(ctx context.Context, send func(*testpb.StreamingOutputCallResponse) error, params []*testpb.ResponseParameters) error {
	timer := time.NewTimer(time.Hour)
	timer.Stop() // armed by Reset before each wait
	defer timer.Stop()
	for _, p := range params {
		if us := p.GetIntervalUs(); us > 0 {
			timer.Reset(time.Duration(us) * time.Microsecond)
			select {
			case <-timer.C:
			case <-ctx.Done():
				return status.FromContextError(ctx.Err()).Err()
			}
		}
		if p.GetSize() < 0 {
			return status.Errorf(codes.InvalidArgument, "response size %d is negative", p.GetSize())
		}
		body := payload(int(p.GetSize()))
		stampSent(body.Body)
		if err := send(&testpb.StreamingOutputCallResponse{Payload: body}); err != nil {
			return err
		}
	}
	return nil
}

// epoch is the origin of the send stamps. The backend runs in the test's
// process, so a client there can subtract a stamp from its own clock.
var epoch = time.Now()

// stampSent writes the time since epoch (nanoseconds, big-endian) into the
// first 8 bytes of a streamed payload of at least 8 bytes, just before it is
// sent; sinceSent reads it back.
func stampSent(body []byte) {
	if len(body) >= 8 {
		binary.BigEndian.PutUint64(body, uint64(time.Since(epoch)))
	}
}

// sinceSent returns how long ago the backend stamped a streamed payload
// (stampSent), and false for a payload too short to carry a stamp.
func sinceSent(body []byte) (time.Duration, bool) {
	if len(body) < 8 {
		return 0, false
	}
	return time.Since(epoch) - time.Duration(binary.BigEndian.Uint64(body)), true
}

func payload(n int) *testpb.Payload {
	return &testpb.Payload{Type: testpb.PayloadType_COMPRESSABLE, Body: make([]byte, n)}
}

// streamParams returns n ResponseParameters of size bytes every interval,
// for StreamingOutputCall and FullDuplexCall requests.
func streamParams(n, size int, interval time.Duration) []*testpb.ResponseParameters {
	out := make([]*testpb.ResponseParameters, n)
	for i := range out {
		out[i] = &testpb.ResponseParameters{Size: int32(size), IntervalUs: int32(interval / time.Microsecond)}
	}
	return out
}

// dialGRPC returns a TestService client over one grpc-go ClientConn to addr
// (plaintext HTTP/2; all calls share its one connection). The ClientConn is
// closed when the test ends.
func dialGRPC(t testing.TB, addr string, opts ...grpc.DialOption) testpb.TestServiceClient {
	t.Helper()
	return testpb.NewTestServiceClient(dialGRPCConn(t, addr, opts...))
}

// dialGRPCConn returns a plaintext grpc-go ClientConn to addr, closed when
// the test ends if the test has not closed it.
func dialGRPCConn(t testing.TB, addr string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(addr, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)...)
	if err != nil {
		t.Fatalf("grpc.NewClient(%s): %v", addr, err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// scenarioBootstrap describes a sidecar bootstrap: one listener (codec AUTO,
// testutil.DefaultListenerName) routing every path to one STATIC cluster
// (testutil.BackendCluster). A zero field is left out of the YAML, so Envoy's
// (and meshd's) default applies; set the *Extra maps for anything else.
// Every field is an Envoy v3 field, so render's output also starts `envoy -c`
// (TestScenarioBootstrapIsValidEnvoy checks it against the protos).
type scenarioBootstrap struct {
	// Endpoints are the cluster's "ip:port" endpoints; at least one.
	Endpoints []string
	// UpstreamHTTP1 selects explicit http_protocol_options; the default is
	// explicit http2_protocol_options.
	UpstreamHTTP1 bool
	// LBPolicy is the cluster's lb_policy (ROUND_ROBIN when empty).
	LBPolicy string
	// ConnectTimeout is connect_timeout (1s when zero).
	ConnectTimeout time.Duration
	// RouteTimeout is the route's timeout; zero renders "0s" (no timeout,
	// as streaming calls need), not Envoy's 15s default.
	RouteTimeout time.Duration
	// Retry is the route's retry_policy.
	Retry *retryPolicy
	// CircuitBreakers are the DEFAULT-priority thresholds.
	CircuitBreakers *circuitBreakers
	// UpstreamH2 is the cluster's http2_protocol_options (ignored with
	// UpstreamHTTP1).
	UpstreamH2 h2Options
	// UpstreamCommon is the cluster's common_http_protocol_options.
	UpstreamCommon commonOptions
	// DownstreamH2 is the HTTP connection manager's http2_protocol_options.
	DownstreamH2 h2Options
	// DownstreamCommon is the HTTP connection manager's
	// common_http_protocol_options.
	DownstreamCommon commonOptions
	// StreamIdleTimeout is the HCM's stream_idle_timeout.
	StreamIdleTimeout time.Duration
	// PreconnectRatio is preconnect_policy.per_upstream_preconnect_ratio.
	PreconnectRatio float64
	// TCPKeepalive is upstream_connection_options.tcp_keepalive.
	TCPKeepalive *tcpKeepalive
	// PerConnectionBufferLimit is per_connection_buffer_limit_bytes.
	PerConnectionBufferLimit uint32
	// OutlierDetection is the cluster's outlier_detection, as Envoy YAML
	// keys and values (durations as "1s").
	OutlierDetection map[string]any
	// HealthChecks are the cluster's health_checks, as Envoy YAML.
	HealthChecks []map[string]any
	// ClusterExtra, RouteExtra (the route entry: match, route, ...),
	// RouteActionExtra (its route action) and HCMExtra are merged last into
	// their objects, key by key, overwriting what the fields above rendered.
	ClusterExtra, RouteExtra, RouteActionExtra, HCMExtra map[string]any
}

// retryPolicy is a route's retry_policy.
type retryPolicy struct {
	RetryOn              string // "5xx,reset,refused-stream,unavailable"
	NumRetries           uint32 // 0 leaves Envoy's default (1)
	PerTryTimeout        time.Duration
	RetriableStatusCodes []uint32
}

// circuitBreakers are circuit_breakers.thresholds[0]; a zero count is left
// out (Envoy's default 1024, max_retries 3).
type circuitBreakers struct {
	MaxConnections     uint32
	MaxPendingRequests uint32
	MaxRequests        uint32
	MaxRetries         uint32
	RetryBudget        *retryBudget
}

// retryBudget is thresholds.retry_budget.
type retryBudget struct {
	BudgetPercent       float64 // 0 leaves Envoy's 20%
	MinRetryConcurrency uint32  // 0 leaves Envoy's 3
}

// h2Options are http2_protocol_options; zero fields are left out.
type h2Options struct {
	MaxConcurrentStreams        uint32
	InitialStreamWindowSize     uint32
	InitialConnectionWindowSize uint32
	Keepalive                   *h2Keepalive
}

// h2Keepalive is connection_keepalive.
type h2Keepalive struct {
	Interval               time.Duration
	Timeout                time.Duration
	JitterPercent          float64 // interval_jitter; 0 leaves Envoy's 15%
	ConnectionIdleInterval time.Duration
}

// commonOptions are common_http_protocol_options; zero fields are left out.
type commonOptions struct {
	IdleTimeout              time.Duration
	MaxConnectionDuration    time.Duration
	MaxStreamDuration        time.Duration
	MaxRequestsPerConnection uint32
}

// tcpKeepalive is upstream_connection_options.tcp_keepalive; zero fields
// are left out.
type tcpKeepalive struct {
	Probes   uint32
	Time     time.Duration
	Interval time.Duration
}

// dur formats d as protobuf's JSON Duration ("1.5s").
func dur(d time.Duration) string {
	return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) + "s"
}

// setDur sets m[key] to d when d is non-zero.
func setDur(m map[string]any, key string, d time.Duration) {
	if d != 0 {
		m[key] = dur(d)
	}
}

// setUint sets m[key] to v when v is non-zero.
func setUint(m map[string]any, key string, v uint32) {
	if v != 0 {
		m[key] = v
	}
}

func (o h2Options) render() map[string]any {
	m := map[string]any{}
	setUint(m, "max_concurrent_streams", o.MaxConcurrentStreams)
	setUint(m, "initial_stream_window_size", o.InitialStreamWindowSize)
	setUint(m, "initial_connection_window_size", o.InitialConnectionWindowSize)
	if k := o.Keepalive; k != nil {
		ka := map[string]any{}
		setDur(ka, "interval", k.Interval)
		setDur(ka, "timeout", k.Timeout)
		setDur(ka, "connection_idle_interval", k.ConnectionIdleInterval)
		if k.JitterPercent != 0 {
			ka["interval_jitter"] = map[string]any{"value": k.JitterPercent}
		}
		m["connection_keepalive"] = ka
	}
	return m
}

func (o commonOptions) render() map[string]any {
	m := map[string]any{}
	setDur(m, "idle_timeout", o.IdleTimeout)
	setDur(m, "max_connection_duration", o.MaxConnectionDuration)
	setDur(m, "max_stream_duration", o.MaxStreamDuration)
	setUint(m, "max_requests_per_connection", o.MaxRequestsPerConnection)
	return m
}

// render returns the bootstrap as YAML.
func (b scenarioBootstrap) render() (string, error) {
	if len(b.Endpoints) == 0 {
		return "", fmt.Errorf("scenario bootstrap: Endpoints: need at least one")
	}
	var lbEndpoints []any
	for i, ep := range b.Endpoints {
		host, portText, err := net.SplitHostPort(ep)
		if err != nil {
			return "", fmt.Errorf("scenario bootstrap: Endpoints[%d] %q: %w", i, ep, err)
		}
		port, err := strconv.ParseUint(portText, 10, 16)
		if err != nil || port == 0 {
			return "", fmt.Errorf("scenario bootstrap: Endpoints[%d] %q: port must be in [1, 65535]", i, ep)
		}
		lbEndpoints = append(lbEndpoints, map[string]any{"endpoint": map[string]any{"address": socketAddress(host, port)}})
	}

	action := map[string]any{"cluster": testutil.BackendCluster, "timeout": dur(b.RouteTimeout)}
	if r := b.Retry; r != nil {
		rp := map[string]any{"retry_on": r.RetryOn}
		setUint(rp, "num_retries", r.NumRetries)
		setDur(rp, "per_try_timeout", r.PerTryTimeout)
		if len(r.RetriableStatusCodes) > 0 {
			rp["retriable_status_codes"] = r.RetriableStatusCodes
		}
		action["retry_policy"] = rp
	}
	maps.Copy(action, b.RouteActionExtra)
	route := map[string]any{"match": map[string]any{"prefix": "/"}, "route": action}
	maps.Copy(route, b.RouteExtra)

	hcm := map[string]any{
		"@type":       "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
		"stat_prefix": testutil.DefaultListenerName,
		"codec_type":  "AUTO",
		"route_config": map[string]any{
			"name": "local_route",
			"virtual_hosts": []any{map[string]any{
				"name": "backend", "domains": []any{"*"}, "routes": []any{route},
			}},
		},
		"http_filters": []any{map[string]any{
			"name":         "envoy.filters.http.router",
			"typed_config": map[string]any{"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
		}},
	}
	if m := b.DownstreamH2.render(); len(m) > 0 {
		hcm["http2_protocol_options"] = m
	}
	if m := b.DownstreamCommon.render(); len(m) > 0 {
		hcm["common_http_protocol_options"] = m
	}
	setDur(hcm, "stream_idle_timeout", b.StreamIdleTimeout)
	maps.Copy(hcm, b.HCMExtra)

	explicit := map[string]any{}
	if b.UpstreamHTTP1 {
		explicit["http_protocol_options"] = map[string]any{}
	} else {
		explicit["http2_protocol_options"] = b.UpstreamH2.render()
	}
	protocolOptions := map[string]any{
		"@type":                "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
		"explicit_http_config": explicit,
	}
	if m := b.UpstreamCommon.render(); len(m) > 0 {
		protocolOptions["common_http_protocol_options"] = m
	}
	connect := b.ConnectTimeout
	if connect == 0 {
		connect = time.Second
	}
	lbPolicy := b.LBPolicy
	if lbPolicy == "" {
		lbPolicy = "ROUND_ROBIN"
	}
	cluster := map[string]any{
		"name":            testutil.BackendCluster,
		"type":            "STATIC",
		"connect_timeout": dur(connect),
		"lb_policy":       lbPolicy,
		"typed_extension_protocol_options": map[string]any{
			"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": protocolOptions,
		},
		"load_assignment": map[string]any{
			"cluster_name": testutil.BackendCluster,
			"endpoints":    []any{map[string]any{"lb_endpoints": lbEndpoints}},
		},
	}
	if cb := b.CircuitBreakers; cb != nil {
		th := map[string]any{"priority": "DEFAULT"}
		setUint(th, "max_connections", cb.MaxConnections)
		setUint(th, "max_pending_requests", cb.MaxPendingRequests)
		setUint(th, "max_requests", cb.MaxRequests)
		setUint(th, "max_retries", cb.MaxRetries)
		if rb := cb.RetryBudget; rb != nil {
			budget := map[string]any{}
			if rb.BudgetPercent != 0 {
				budget["budget_percent"] = map[string]any{"value": rb.BudgetPercent}
			}
			setUint(budget, "min_retry_concurrency", rb.MinRetryConcurrency)
			th["retry_budget"] = budget
		}
		cluster["circuit_breakers"] = map[string]any{"thresholds": []any{th}}
	}
	if b.PreconnectRatio != 0 {
		cluster["preconnect_policy"] = map[string]any{"per_upstream_preconnect_ratio": b.PreconnectRatio}
	}
	if k := b.TCPKeepalive; k != nil {
		ka := map[string]any{}
		setUint(ka, "keepalive_probes", k.Probes)
		if k.Time != 0 {
			ka["keepalive_time"] = uint32(k.Time / time.Second)
		}
		if k.Interval != 0 {
			ka["keepalive_interval"] = uint32(k.Interval / time.Second)
		}
		cluster["upstream_connection_options"] = map[string]any{"tcp_keepalive": ka}
	}
	setUint(cluster, "per_connection_buffer_limit_bytes", b.PerConnectionBufferLimit)
	if b.OutlierDetection != nil {
		cluster["outlier_detection"] = b.OutlierDetection
	}
	if len(b.HealthChecks) > 0 {
		cluster["health_checks"] = b.HealthChecks
	}
	maps.Copy(cluster, b.ClusterExtra)

	doc := map[string]any{
		"node":  map[string]any{"id": "scenario-sidecar", "cluster": "scenarios"},
		"admin": map[string]any{"address": socketAddress("127.0.0.1", 0)},
		"static_resources": map[string]any{
			"listeners": []any{map[string]any{
				"name":          testutil.DefaultListenerName,
				"address":       socketAddress("127.0.0.1", 0),
				"filter_chains": []any{map[string]any{"filters": []any{map[string]any{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}}}},
			}},
			"clusters": []any{cluster},
		},
	}
	out, err := yaml.Marshal(doc)
	if err != nil {
		return "", fmt.Errorf("scenario bootstrap: %w", err)
	}
	return string(out), nil
}

func socketAddress(host string, port uint64) map[string]any {
	return map[string]any{"socket_address": map[string]any{"address": host, "port_value": port}}
}

// scenarioSidecar is a running meshd sidecar started from a
// scenarioBootstrap, with its listener's address.
type scenarioSidecar struct {
	*testutil.Sidecar
	// Addr is the bound "ip:port" of the listener.
	Addr string
}

// startScenarioSidecar renders b and starts `meshd sidecar` with it (args
// are added to the command line). The process is killed when the test ends.
func startScenarioSidecar(t testing.TB, b scenarioBootstrap, args ...string) *scenarioSidecar {
	t.Helper()
	text, err := b.render()
	if err != nil {
		t.Fatal(err)
	}
	sc := testutil.StartSidecar(t, text, args...)
	return &scenarioSidecar{Sidecar: sc, Addr: sc.ListenerAddr(t, testutil.DefaultListenerName)}
}

// stat returns one integer stat by its full name ("http2.tx_reset"), and
// whether the sidecar reports it.
func (s *scenarioSidecar) stat(t testing.TB, name string) (int64, bool) {
	t.Helper()
	v, ok := s.Stats(t)[name]
	return v, ok
}

// clusterStat returns cluster.<backend>.<suffix> ("upstream_cx_total"); it
// fails the test if the sidecar does not report it, so a renamed stat is
// noticed instead of read as zero.
func (s *scenarioSidecar) clusterStat(t testing.TB, suffix string) int64 {
	t.Helper()
	name := "cluster." + testutil.BackendCluster + "." + suffix
	stats := s.Stats(t)
	v, ok := stats[name]
	if !ok {
		var have []string
		for k := range stats {
			if strings.HasPrefix(k, "cluster."+testutil.BackendCluster+".") {
				have = append(have, k)
			}
		}
		slices.Sort(have)
		t.Fatalf("sidecar reports no stat %q; cluster stats it has: %q", name, have)
	}
	return v
}

// goroutines returns the sidecar's goroutine count, from the first line of
// its admin /debug/pprof/goroutine?debug=1 ("goroutine profile: total N").
func (s *scenarioSidecar) goroutines(t testing.TB) int {
	t.Helper()
	body := s.Admin(t, http.MethodGet, "/debug/pprof/goroutine?debug=1")
	first, _, _ := strings.Cut(body, "\n")
	n, err := strconv.Atoi(strings.TrimPrefix(first, "goroutine profile: total "))
	if err != nil {
		t.Fatalf("goroutine profile: first line %q: want \"goroutine profile: total N\"", first)
	}
	return n
}

// fds returns how many file descriptors the sidecar process has open.
func (s *scenarioSidecar) fds(t testing.TB) int {
	t.Helper()
	n, err := procFDs(s.PID())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// rssKiB returns the sidecar's resident set size in KiB.
func (s *scenarioSidecar) rssKiB(t testing.TB) int64 {
	t.Helper()
	n, err := procRSSKiB(s.PID())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// procFDs counts the entries of /proc/PID/fd.
func procFDs(pid int) (int, error) {
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0, fmt.Errorf("counting fds of pid %d: %w", pid, err)
	}
	return len(entries), nil
}

// procRSSKiB reads VmRSS from /proc/PID/status.
func procRSSKiB(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("reading RSS of pid %d: %w", pid, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:")
		if !ok {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("reading RSS of pid %d: VmRSS %q: %w", pid, rest, err)
		}
		return kb, nil
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("reading RSS of pid %d: %w", pid, err)
	}
	return 0, fmt.Errorf("reading RSS of pid %d: no VmRSS line in /proc/%d/status", pid, pid)
}

// procRunDelay returns how long the threads of process pid have waited on
// a CPU run queue in total (the second field of each
// /proc/PID/task/TID/schedstat). A delta far above zero over a measurement
// means the machine was too busy to schedule the process promptly, which
// timing tests report so a loaded machine is not mistaken for a slow proxy.
func procRunDelay(pid int) (time.Duration, error) {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("run delay of pid %d: %w", pid, err)
	}
	var total time.Duration
	for _, task := range tasks {
		data, err := os.ReadFile(dir + "/" + task.Name() + "/schedstat")
		if err != nil {
			continue // the thread exited since ReadDir
		}
		fields := strings.Fields(string(data))
		if len(fields) < 2 {
			return 0, fmt.Errorf("run delay of pid %d: schedstat %q: want 3 fields", pid, data)
		}
		ns, err := strconv.ParseInt(fields[1], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("run delay of pid %d: schedstat %q: %w", pid, data, err)
		}
		total += time.Duration(ns)
	}
	return total, nil
}

// loadAverage returns the first three fields of /proc/loadavg, or why they
// could not be read, for messages.
func loadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return err.Error()
	}
	f := strings.Fields(string(data))
	return strings.Join(f[:min(3, len(f))], " ")
}

// waitFor polls cond every pollInterval until it returns true, and fails the
// test with what and cond's last description if timeout passes first.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached within %v; last: %s", what, timeout, last)
		}
		time.Sleep(pollInterval)
	}
}

// percentile returns the p-th percentile (0 < p <= 100) of ds by the
// nearest-rank method; ds is sorted in place. It returns 0 for no samples.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	rank := int(float64(len(ds))*p/100+0.999999) - 1
	return ds[max(0, min(rank, len(ds)-1))]
}
