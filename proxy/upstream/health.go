package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"meshd.dev/meshd/proxy/stats"
)

// HealthCheckSpec is a compiled health_checks entry with Envoy's defaults.
// Exactly one of HTTP and GRPC is set.
type HealthCheckSpec struct {
	// Timeout bounds one check; a check that takes longer is a network
	// failure.
	Timeout time.Duration
	// Interval is the time between checks of a healthy host once the
	// cluster has had traffic; UnhealthyInterval (default Interval) that of
	// an unhealthy host; HealthyEdgeInterval (default Interval) and
	// UnhealthyEdgeInterval (default UnhealthyInterval) apply while a
	// transition is pending (some but not enough results towards a
	// threshold).
	Interval              time.Duration
	UnhealthyInterval     time.Duration
	HealthyEdgeInterval   time.Duration
	UnhealthyEdgeInterval time.Duration
	// NoTrafficInterval (default 60 s) replaces all of the above while the
	// cluster has never opened an upstream connection;
	// NoTrafficHealthyInterval (default NoTrafficInterval) is its value for
	// healthy hosts.
	NoTrafficInterval        time.Duration
	NoTrafficHealthyInterval time.Duration
	// InitialJitter delays the first check of a host by up to this much;
	// IntervalJitter and IntervalJitterPercent (of the interval) add up to
	// that much to every later wait.
	InitialJitter         time.Duration
	IntervalJitter        time.Duration
	IntervalJitterPercent uint32
	// UnhealthyThreshold network failures (or retriable statuses) in a row
	// mark a healthy host unhealthy; an unexpected HTTP status or a gRPC
	// response other than SERVING does so at once. HealthyThreshold
	// successes in a row mark an unhealthy host healthy, except that a new
	// host needs only one.
	UnhealthyThreshold uint32
	HealthyThreshold   uint32
	// ReuseConnection keeps the check connection between checks (default
	// true).
	ReuseConnection bool

	HTTP *HTTPHealthCheck
	GRPC *GRPCHealthCheck
}

// HTTPHealthCheck is health_checks[].http_health_check.
type HTTPHealthCheck struct {
	// Host is the Host header (default: the cluster name).
	Host   string
	Path   string
	Method string
	// HTTP2 is codec_client_type HTTP2: the check uses HTTP/2 (prior
	// knowledge, or ALPN h2 over TLS); otherwise HTTP/1.1.
	HTTP2 bool
	// AddHeaders are request_headers_to_add, in order; RemoveHeaders are
	// request_headers_to_remove.
	AddHeaders    []HeaderToAdd
	RemoveHeaders []string
	// Expected (default [200, 201)) and Retriable are half-open status
	// ranges; Expected wins where they overlap.
	Expected  []StatusRange
	Retriable []StatusRange
}

// HeaderToAdd is one request_headers_to_add entry.
type HeaderToAdd struct {
	Name, Value string
	// Append adds the value beside existing ones; otherwise it replaces
	// them.
	Append bool
}

// StatusRange is a half-open range of HTTP status codes [Start, End).
type StatusRange struct{ Start, End int }

func inRanges(rs []StatusRange, code int) bool {
	for _, r := range rs {
		if code >= r.Start && code < r.End {
			return true
		}
	}
	return false
}

// GRPCHealthCheck is health_checks[].grpc_health_check: a
// grpc.health.v1.Health/Check call.
type GRPCHealthCheck struct {
	ServiceName string
	// Authority is the :authority of the call (default: the cluster name).
	Authority string
	// Metadata is initial_metadata, as ordered key/value pairs.
	Metadata []string
}

// compileHealth compiles the cluster's outlier_detection and
// health_checks into s. It needs s.Name and s.TLS, so CompileCluster calls
// it last.
func (s *Spec) compileHealth(c *clusterv3.Cluster) error {
	od, err := compileOutlier(c.GetOutlierDetection())
	if err != nil {
		return err
	}
	s.Outlier = od
	hcs := c.GetHealthChecks()
	if len(hcs) == 0 {
		return nil
	}
	if len(hcs) > 1 {
		return fmt.Errorf("health_checks: %d health checks; meshd supports one per cluster", len(hcs))
	}
	hc, err := compileHealthCheck(hcs[0], s.Name)
	if err != nil {
		return fmt.Errorf("health_checks[0].%w", err)
	}
	s.HealthCheck = hc
	return nil
}

// compileHealthCheck compiles one HealthCheck; errors start with the field
// name relative to the entry.
func compileHealthCheck(hc *corev3.HealthCheck, cluster string) (*HealthCheckSpec, error) {
	s := &HealthCheckSpec{
		IntervalJitterPercent: hc.GetIntervalJitterPercent(),
		ReuseConnection:       hc.GetReuseConnection() == nil || hc.GetReuseConnection().GetValue(),
	}
	var err error
	if hc.GetTimeout() == nil {
		return nil, errors.New("timeout: required")
	}
	if s.Timeout, err = positiveDuration("timeout", hc.GetTimeout(), 0); err != nil {
		return nil, err
	}
	if hc.GetInterval() == nil {
		return nil, errors.New("interval: required")
	}
	if s.Interval, err = positiveDuration("interval", hc.GetInterval(), 0); err != nil {
		return nil, err
	}
	if s.UnhealthyInterval, err = positiveDuration("unhealthy_interval", hc.GetUnhealthyInterval(), s.Interval); err != nil {
		return nil, err
	}
	if s.HealthyEdgeInterval, err = positiveDuration("healthy_edge_interval", hc.GetHealthyEdgeInterval(), s.Interval); err != nil {
		return nil, err
	}
	if s.UnhealthyEdgeInterval, err = positiveDuration("unhealthy_edge_interval", hc.GetUnhealthyEdgeInterval(), s.UnhealthyInterval); err != nil {
		return nil, err
	}
	if s.NoTrafficInterval, err = positiveDuration("no_traffic_interval", hc.GetNoTrafficInterval(), 60*time.Second); err != nil {
		return nil, err
	}
	if s.NoTrafficHealthyInterval, err = positiveDuration("no_traffic_healthy_interval", hc.GetNoTrafficHealthyInterval(), s.NoTrafficInterval); err != nil {
		return nil, err
	}
	for _, j := range []struct {
		name string
		d    *time.Duration
		v    interface{ AsDuration() time.Duration }
		set  bool
	}{
		{"initial_jitter", &s.InitialJitter, hc.GetInitialJitter(), hc.GetInitialJitter() != nil},
		{"interval_jitter", &s.IntervalJitter, hc.GetIntervalJitter(), hc.GetIntervalJitter() != nil},
	} {
		if !j.set {
			continue
		}
		if *j.d = j.v.AsDuration(); *j.d < 0 {
			return nil, fmt.Errorf("%s: must not be negative", j.name)
		}
	}
	if hc.GetUnhealthyThreshold() == nil {
		return nil, errors.New("unhealthy_threshold: required")
	}
	if hc.GetHealthyThreshold() == nil {
		return nil, errors.New("healthy_threshold: required")
	}
	s.UnhealthyThreshold = max(hc.GetUnhealthyThreshold().GetValue(), 1)
	s.HealthyThreshold = max(hc.GetHealthyThreshold().GetValue(), 1)
	switch {
	case hc.GetAltPort() != nil:
		return nil, errors.New("alt_port: not supported")
	case hc.GetTlsOptions() != nil:
		return nil, errors.New("tls_options: not supported")
	case hc.GetTransportSocketMatchCriteria() != nil:
		return nil, errors.New("transport_socket_match_criteria: not supported")
	//lint:ignore SA1019 read only to refuse it with an error naming the field
	case hc.GetEventLogPath() != "" || len(hc.GetEventLogger()) > 0 || hc.GetEventService() != nil:
		return nil, errors.New("event_logger: health check event logs are not supported")
	}
	switch {
	case hc.GetHttpHealthCheck() != nil:
		h, err := compileHTTPHealthCheck(hc.GetHttpHealthCheck(), cluster)
		if err != nil {
			return nil, fmt.Errorf("http_health_check.%w", err)
		}
		s.HTTP = h
	case hc.GetGrpcHealthCheck() != nil:
		g := hc.GetGrpcHealthCheck()
		s.GRPC = &GRPCHealthCheck{ServiceName: g.GetServiceName(), Authority: g.GetAuthority()}
		if s.GRPC.Authority == "" {
			s.GRPC.Authority = cluster
		}
		for i, md := range g.GetInitialMetadata() {
			k := strings.ToLower(md.GetHeader().GetKey())
			if k == "" || strings.HasPrefix(k, ":") {
				return nil, fmt.Errorf("grpc_health_check.initial_metadata[%d].header.key: %q is not a metadata key", i, k)
			}
			v := md.GetHeader().GetValue()
			if v == "" {
				v = string(md.GetHeader().GetRawValue())
			}
			s.GRPC.Metadata = append(s.GRPC.Metadata, k, v)
		}
	case hc.GetTcpHealthCheck() != nil:
		return nil, errors.New("tcp_health_check: not supported (http_health_check and grpc_health_check are)")
	default:
		return nil, errors.New("health_checker: one of http_health_check, grpc_health_check is required")
	}
	return s, nil
}

func compileHTTPHealthCheck(h *corev3.HealthCheck_HttpHealthCheck, cluster string) (*HTTPHealthCheck, error) {
	out := &HTTPHealthCheck{Host: h.GetHost(), Path: h.GetPath(), Method: http.MethodGet, RemoveHeaders: h.GetRequestHeadersToRemove()}
	if out.Host == "" {
		out.Host = cluster
	}
	if !strings.HasPrefix(out.Path, "/") {
		return nil, fmt.Errorf("path: %q must start with /", out.Path)
	}
	switch m := h.GetMethod(); m {
	case corev3.RequestMethod_METHOD_UNSPECIFIED:
	case corev3.RequestMethod_CONNECT:
		return nil, errors.New("method: CONNECT is not allowed for health checks")
	default:
		out.Method = m.String()
	}
	switch t := h.GetCodecClientType(); t {
	case typev3.CodecClientType_HTTP1:
	case typev3.CodecClientType_HTTP2:
		out.HTTP2 = true
	default:
		return nil, fmt.Errorf("codec_client_type: %s is not supported (HTTP1, HTTP2)", t)
	}
	switch {
	case h.GetSend() != nil:
		return nil, errors.New("send: request bodies are not supported")
	case len(h.GetReceive()) > 0:
		return nil, errors.New("receive: response body matching is not supported")
	case h.GetServiceNameMatcher() != nil:
		return nil, errors.New("service_name_matcher: not supported")
	case h.GetUseAlpnProtocol():
		return nil, errors.New("use_alpn_protocol: not supported")
	}
	for i, hv := range h.GetRequestHeadersToAdd() {
		name := strings.ToLower(hv.GetHeader().GetKey())
		if name == "" || strings.HasPrefix(name, ":") {
			return nil, fmt.Errorf("request_headers_to_add[%d].header.key: %q cannot be set", i, name)
		}
		add := HeaderToAdd{Name: name, Value: hv.GetHeader().GetValue()}
		if add.Value == "" {
			add.Value = string(hv.GetHeader().GetRawValue())
		}
		switch hv.GetAppendAction() {
		case corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD:
			// The deprecated append field, when set, decides instead.
			//lint:ignore SA1019 deprecated in Envoy's API but still honoured by Envoy; the sidecar honours it for control planes that send it
			add.Append = hv.GetAppend() == nil || hv.GetAppend().GetValue()
		case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD:
		default:
			return nil, fmt.Errorf("request_headers_to_add[%d].append_action: %s is not supported", i, hv.GetAppendAction())
		}
		out.AddHeaders = append(out.AddHeaders, add)
	}
	var err error
	if out.Expected, err = statusRanges("expected_statuses", h.GetExpectedStatuses()); err != nil {
		return nil, err
	}
	if len(out.Expected) == 0 {
		out.Expected = []StatusRange{{200, 201}}
	}
	if out.Retriable, err = statusRanges("retriable_statuses", h.GetRetriableStatuses()); err != nil {
		return nil, err
	}
	return out, nil
}

func statusRanges(field string, rs []*typev3.Int64Range) ([]StatusRange, error) {
	out := make([]StatusRange, 0, len(rs))
	for i, r := range rs {
		if r.GetStart() < 100 || r.GetEnd() > 600 || r.GetStart() >= r.GetEnd() {
			return nil, fmt.Errorf("%s[%d]: [%d, %d) must be a non-empty range within [100, 600)", field, i, r.GetStart(), r.GetEnd())
		}
		out = append(out, StatusRange{int(r.GetStart()), int(r.GetEnd())})
	}
	return out, nil
}

// hostHealth is a host's health flags, as Envoy's FAILED_ACTIVE_HC and
// FAILED_OUTLIER_CHECK: the host is healthy for the load balancer when
// neither is set.
type hostHealth struct {
	mu            sync.Mutex
	failedActive  bool
	failedOutlier bool
}

// HealthFlags reports the host's Envoy health flags: whether active health
// checking and outlier detection currently exclude it.
func (h *Host) HealthFlags() (failedActiveHC, failedOutlierCheck bool) {
	h.health.mu.Lock()
	defer h.health.mu.Unlock()
	return h.health.failedActive, h.health.failedOutlier
}

// setHealthFlag sets one of h's flags and, when that changes the host's
// health, refreshes the cluster's load balancer.
func (c *Cluster) setHealthFlag(h *Host, outlier, failed bool) {
	h.health.mu.Lock()
	if outlier {
		h.health.failedOutlier = failed
	} else {
		h.health.failedActive = failed
	}
	changed := h.LB.SetHealthy(!h.health.failedActive && !h.health.failedOutlier)
	h.health.mu.Unlock()
	if changed {
		if hs := c.set.Load(); hs != nil && hs.picker != nil {
			hs.picker.Refresh()
		}
	}
}

// initHealth creates the cluster's outlier detector and health checker,
// when configured. newCluster calls it before the first setHosts.
func (c *Cluster) initHealth() {
	if od := c.spec.Outlier; od != nil {
		c.outlier = newOutlierDetector(od, newOutlierStats(c.stats.Scope), c.logger, c.Hosts,
			func(h *Host, failed bool) { c.setHealthFlag(h, true, failed) })
		c.outlier.start()
	}
	if hc := c.spec.HealthCheck; hc != nil {
		c.checker = newHealthChecker(c, hc)
	}
}

// attachHealth prepares a new host before it is published: its outlier
// monitor, and, with active health checks, Envoy's initial state of a new
// host (failed until its first check passes).
func (c *Cluster) attachHealth(h *Host) {
	if c.outlier != nil {
		h.outlier = c.outlier.monitor(h)
	}
	if c.checker != nil {
		h.health.failedActive = true
		h.LB.SetHealthy(false)
	}
}

// startHealth starts checking hosts that setHosts has just published.
func (c *Cluster) startHealth(added []*Host) {
	if c.checker != nil {
		for _, h := range added {
			c.checker.add(h)
		}
	}
}

// detachHealth stops checking a host that left the cluster.
func (c *Cluster) detachHealth(h *Host) {
	if c.outlier != nil {
		c.outlier.remove(h)
	}
	if c.checker != nil {
		c.checker.remove(h)
	}
}

// closeHealth stops the detector's sweep and every health check, waiting
// for checks in flight.
func (c *Cluster) closeHealth() {
	if c.outlier != nil {
		c.outlier.close()
	}
	if c.checker != nil {
		c.checker.close()
	}
}

// HealthCheckStats are a cluster's "cluster.<name>.health_check.*" stats,
// named as Envoy names them.
type HealthCheckStats struct {
	Attempt        *stats.Counter
	Success        *stats.Counter
	Failure        *stats.Counter // every failed check, network ones included
	NetworkFailure *stats.Counter // connect failures, timeouts, resets
	Healthy        *stats.Gauge   // hosts not failing active health checks
}

func newHealthCheckStats(cluster *stats.Scope) *HealthCheckStats {
	sc := cluster.Scope("health_check")
	return &HealthCheckStats{
		Attempt:        sc.Counter("attempt"),
		Success:        sc.Counter("success"),
		Failure:        sc.Counter("failure"),
		NetworkFailure: sc.Counter("network_failure"),
		Healthy:        sc.Gauge("healthy"),
	}
}

// checkResult is the outcome of one health check.
type checkResult int

const (
	checkSuccess checkResult = iota
	// checkNetwork is a connect failure, timeout or reset: counts towards
	// unhealthy_threshold.
	checkNetwork
	// checkRetriable is a retriable status: counts towards
	// unhealthy_threshold, not a network failure.
	checkRetriable
	// checkActive is an answer that says unhealthy: fails the host at once.
	checkActive
)

// healthChecker actively checks every host of one cluster: a timer per
// host runs one check at a time, so the cost is one short-lived goroutine
// per check in flight.
type healthChecker struct {
	c      *Cluster         // immutable
	spec   *HealthCheckSpec // immutable
	stats  *HealthCheckStats
	logger *slog.Logger
	http   *http.Client // nil for gRPC checks; shared by every host

	ctx    context.Context // cancelled by close
	cancel context.CancelFunc

	mu       sync.Mutex // guards sessions and closed
	sessions map[*Host]*hcSession
	closed   bool
	wg       sync.WaitGroup // checks in flight
}

func newHealthChecker(c *Cluster, spec *HealthCheckSpec) *healthChecker {
	hc := &healthChecker{
		c:        c,
		spec:     spec,
		stats:    newHealthCheckStats(c.stats.Scope),
		logger:   c.logger,
		sessions: map[*Host]*hcSession{},
	}
	hc.ctx, hc.cancel = context.WithCancel(context.Background())
	if spec.HTTP != nil {
		hc.http = newHealthHTTPClient(c.spec, spec)
	}
	return hc
}

// newHealthHTTPClient returns a client that speaks the check's protocol
// over the cluster's transport (TLS when the cluster has it), on its own
// connections, never following redirects.
func newHealthHTTPClient(cs *Spec, spec *HealthCheckSpec) *http.Client {
	d := &net.Dialer{Timeout: min(cs.ConnectTimeout, spec.Timeout)}
	tr := &http.Transport{
		DialContext:         d.DialContext,
		DisableKeepAlives:   !spec.ReuseConnection,
		MaxIdleConnsPerHost: 1,
		IdleConnTimeout:     2*spec.UnhealthyInterval + 2*spec.Interval + spec.NoTrafficInterval,
		Protocols:           new(http.Protocols),
	}
	if cs.TLS != nil {
		cfg := cs.TLS.Clone()
		if spec.HTTP.HTTP2 {
			cfg.NextProtos = []string{"h2"}
			tr.Protocols.SetHTTP2(true)
		} else {
			cfg.NextProtos = []string{"http/1.1"}
			tr.Protocols.SetHTTP1(true)
		}
		tr.TLSClientConfig = cfg
	} else if spec.HTTP.HTTP2 {
		tr.Protocols.SetUnencryptedHTTP2(true)
	} else {
		tr.Protocols.SetHTTP1(true)
	}
	return &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// hcSession is the checking of one host.
type hcSession struct {
	hc   *healthChecker
	host *Host

	// Owned by the running check (checks of one host never overlap).
	pending      bool // no check has completed yet (Envoy's PENDING_ACTIVE_HC)
	numHealthy   uint32
	numUnhealthy uint32
	grpcConn     *grpc.ClientConn

	// Guarded by hc.mu.
	timer   *time.Timer
	stopped bool
}

// add starts checking h after a random initial_jitter.
func (hc *healthChecker) add(h *Host) {
	hc.mu.Lock()
	defer hc.mu.Unlock()
	if hc.closed || hc.sessions[h] != nil {
		return
	}
	s := &hcSession{hc: hc, host: h, pending: true}
	hc.sessions[h] = s
	s.timer = time.AfterFunc(jitter(hc.spec.InitialJitter), s.run)
	hc.updateHealthyLocked()
}

// remove stops checking h; a check in flight finishes without effect on
// the timer.
func (hc *healthChecker) remove(h *Host) {
	hc.mu.Lock()
	s := hc.sessions[h]
	if s == nil {
		hc.mu.Unlock()
		return
	}
	delete(hc.sessions, h)
	s.stopped = true
	stoppedBeforeRun := s.timer.Stop()
	hc.updateHealthyLocked()
	hc.mu.Unlock()
	if stoppedBeforeRun {
		s.closeConn()
	}
	// Otherwise the running check sees stopped and closes its connection.
}

// close stops every session, cancels checks in flight and waits for them.
func (hc *healthChecker) close() {
	hc.mu.Lock()
	hc.closed = true
	var idle []*hcSession
	for h, s := range hc.sessions {
		s.stopped = true
		if s.timer.Stop() {
			idle = append(idle, s)
		}
		delete(hc.sessions, h)
	}
	hc.mu.Unlock()
	hc.cancel()
	hc.wg.Wait()
	for _, s := range idle {
		s.closeConn()
	}
	if hc.http != nil {
		hc.http.CloseIdleConnections()
	}
}

// updateHealthyLocked sets the healthy gauge. Requires hc.mu.
func (hc *healthChecker) updateHealthyLocked() {
	n := 0
	for h := range hc.sessions {
		if failed, _ := h.HealthFlags(); !failed {
			n++
		}
	}
	hc.stats.Healthy.Set(int64(n))
}

func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return rand.N(d + 1)
}

// run is the session's timer function: one check, its effect on the host,
// then the next timer.
func (s *hcSession) run() {
	hc := s.hc
	hc.mu.Lock()
	if s.stopped {
		hc.mu.Unlock()
		s.closeConn()
		return
	}
	hc.wg.Add(1)
	hc.mu.Unlock()
	defer hc.wg.Done()

	hc.stats.Attempt.Inc()
	ctx, cancel := context.WithTimeout(hc.ctx, hc.spec.Timeout)
	var res checkResult
	var detail string
	if hc.spec.HTTP != nil {
		res, detail = s.checkHTTP(ctx)
	} else {
		res, detail = s.checkGRPC(ctx)
	}
	cancel()
	if hc.ctx.Err() != nil {
		s.closeConn()
		return // closing: a cancelled check says nothing about the host
	}
	s.apply(res, detail)
	if !hc.spec.ReuseConnection {
		s.closeConn()
	}

	hc.mu.Lock()
	defer hc.mu.Unlock()
	if s.stopped {
		s.closeConn()
		return
	}
	hc.updateHealthyLocked()
	s.timer.Reset(s.nextInterval())
}

// apply updates the host's state from one result, with Envoy's
// thresholds.
func (s *hcSession) apply(res checkResult, detail string) {
	hc := s.hc
	failed, _ := s.host.HealthFlags()
	wasPending := s.pending
	s.pending = false
	if res == checkSuccess {
		hc.stats.Success.Inc()
		s.numUnhealthy = 0
		if failed {
			s.numHealthy++
			if wasPending || s.numHealthy >= hc.spec.HealthyThreshold {
				s.numHealthy = 0
				hc.logger.Info("health check: host healthy", "host", s.host.Addr)
				hc.c.setHealthFlag(s.host, false, false)
			}
		}
		if hc.c.outlier != nil {
			hc.c.outlier.healthCheckPassed(s.host)
		}
		return
	}
	hc.stats.Failure.Inc()
	if res == checkNetwork {
		hc.stats.NetworkFailure.Inc()
	}
	s.numHealthy = 0
	if failed {
		return
	}
	s.numUnhealthy++
	if res == checkActive || s.numUnhealthy >= hc.spec.UnhealthyThreshold {
		s.numUnhealthy = 0
		hc.logger.Warn("health check: host unhealthy", "host", s.host.Addr, "reason", detail)
		hc.c.setHealthFlag(s.host, false, true)
	}
}

// nextInterval is Envoy's choice of wait before the next check, with
// jitter.
func (s *hcSession) nextInterval() time.Duration {
	sp := s.hc.spec
	failed, _ := s.host.HealthFlags()
	var base time.Duration
	switch {
	case s.hc.c.stats.CxTotal.Value() == 0:
		base = sp.NoTrafficInterval
		if !failed {
			base = sp.NoTrafficHealthyInterval
		}
	case failed && s.numHealthy > 0:
		base = sp.UnhealthyEdgeInterval
	case failed:
		base = sp.UnhealthyInterval
	case s.numUnhealthy > 0:
		base = sp.HealthyEdgeInterval
	default:
		base = sp.Interval
	}
	return base + jitter(sp.IntervalJitter) + jitter(base*time.Duration(sp.IntervalJitterPercent)/100)
}

// checkHTTP sends the configured request and classifies the answer.
func (s *hcSession) checkHTTP(ctx context.Context) (checkResult, string) {
	sp := s.hc.spec.HTTP
	scheme := "http"
	if s.hc.c.spec.TLS != nil {
		scheme = "https"
	}
	req, err := http.NewRequestWithContext(ctx, sp.Method, scheme+"://"+s.host.Addr+sp.Path, nil)
	if err != nil {
		return checkNetwork, err.Error()
	}
	req.Host = sp.Host
	req.Header.Set("User-Agent", "Envoy/HC")
	for _, h := range sp.AddHeaders {
		if h.Append {
			req.Header.Add(h.Name, h.Value)
		} else {
			req.Header.Set(h.Name, h.Value)
		}
	}
	for _, name := range sp.RemoveHeaders {
		req.Header.Del(name)
	}
	resp, err := s.hc.http.Do(req)
	if err != nil {
		return checkNetwork, err.Error()
	}
	// Drain a bounded amount so the connection can be reused.
	_, err = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	switch {
	case inRanges(sp.Expected, resp.StatusCode):
		if err != nil {
			return checkNetwork, "reading body: " + err.Error()
		}
		return checkSuccess, ""
	case inRanges(sp.Retriable, resp.StatusCode):
		return checkRetriable, fmt.Sprintf("retriable status %d", resp.StatusCode)
	default:
		return checkActive, fmt.Sprintf("unexpected status %d", resp.StatusCode)
	}
}

// checkGRPC calls grpc.health.v1.Health/Check on the session's own
// ClientConn, created on first use.
func (s *hcSession) checkGRPC(ctx context.Context) (checkResult, string) {
	sp := s.hc.spec.GRPC
	if s.grpcConn == nil {
		cc, err := s.dialGRPC()
		if err != nil {
			return checkNetwork, err.Error()
		}
		s.grpcConn = cc
	}
	if len(sp.Metadata) > 0 {
		ctx = metadata.AppendToOutgoingContext(ctx, sp.Metadata...)
	}
	resp, err := healthpb.NewHealthClient(s.grpcConn).Check(ctx, &healthpb.HealthCheckRequest{Service: sp.ServiceName})
	if err != nil {
		switch status.Code(err) {
		case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.Internal:
			return checkNetwork, err.Error()
		default:
			return checkActive, err.Error()
		}
	}
	if st := resp.GetStatus(); st != healthpb.HealthCheckResponse_SERVING {
		return checkActive, "health status " + st.String()
	}
	return checkSuccess, ""
}

func (s *hcSession) dialGRPC() (*grpc.ClientConn, error) {
	cs := s.hc.c.spec
	creds := insecure.NewCredentials()
	if cs.TLS != nil {
		cfg := cs.TLS.Clone()
		cfg.NextProtos = []string{"h2"}
		creds = credentials.NewTLS(cfg)
	}
	sp := s.hc.spec
	// grpc-go's reconnect backoff must not hide a host that came back for
	// longer than the check interval.
	bo := backoff.DefaultConfig
	bo.BaseDelay = min(bo.BaseDelay, sp.Interval)
	bo.MaxDelay = min(sp.Interval, sp.UnhealthyInterval)
	return grpc.NewClient("passthrough:///"+s.host.Addr,
		grpc.WithTransportCredentials(creds),
		grpc.WithAuthority(sp.GRPC.Authority),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: bo, MinConnectTimeout: min(cs.ConnectTimeout, sp.Timeout)}),
	)
}

// closeConn closes the session's gRPC connection, if any. Called by the
// session's check goroutine, or after its timer was stopped before firing.
func (s *hcSession) closeConn() {
	if s.grpcConn != nil {
		s.grpcConn.Close()
		s.grpcConn = nil
	}
}
