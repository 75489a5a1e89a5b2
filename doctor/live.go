package doctor

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"meshd.dev/meshd/proxy/http/h2"
)

// Defaults of LiveOptions.
const (
	DefaultWindow         = 10 * time.Second
	DefaultStallThreshold = 2 * time.Second
)

// Thresholds of the live rules.
const (
	// churnMinConnections: fewer new connections in a window are never
	// called churn (a cold start opens a few).
	churnMinConnections = 5
	// churnMaxShare: churn is new connections above 1/20 of requests
	// (below 95 % reuse; a steady pool reuses over 99.9 %).
	churnMaxShare = 20
	// timeWaitStorm is the count of TIME_WAIT sockets to a cluster's
	// endpoints that is a storm on its own.
	timeWaitStorm = 100
	// refusedStorm is the count of refused streams in a window that is a
	// storm, not a lowered limit met once.
	refusedStorm = 5
	// rotationPeriodWarn: a new connection more often than this, by
	// GOAWAY, is a rollout that never ends.
	rotationPeriodWarn = 10 * time.Second
	// streamWaitP99Warn is the stream-wait p99 (ms) that says the pool is
	// too small for the load.
	streamWaitP99Warn = 100.0
)

// ownClusters are the sidecar's own clusters (xDS, identity), not the
// application's; the live rules skip them.
var ownClusters = []string{"xds_cluster", "meshd_identity"}

// LiveOptions tune Live and Diagnose.
type LiveOptions struct {
	// Window is how long Live samples (DefaultWindow when zero).
	Window time.Duration
	// StallThreshold is how long a stream must sit in one stall state to be
	// reported (DefaultStallThreshold when zero).
	StallThreshold time.Duration
}

func (o LiveOptions) window() time.Duration {
	if o.Window <= 0 {
		return DefaultWindow
	}
	return o.Window
}

func (o LiveOptions) stallThreshold() time.Duration {
	if o.StallThreshold <= 0 {
		return DefaultStallThreshold
	}
	return o.StallThreshold
}

// Live samples the sidecar at the start and the end of the window and
// diagnoses what happened in between (Diagnose). ctx bounds the whole run.
func Live(ctx context.Context, s *Sampler, opts LiveOptions) (*Report, error) {
	before, err := s.Sample(ctx)
	if err != nil {
		return nil, err
	}
	t := time.NewTimer(opts.window())
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return nil, fmt.Errorf("doctor: sampling %s: %w", s.Admin, ctx.Err())
	}
	after, err := s.Sample(ctx)
	if err != nil {
		return nil, err
	}
	r := Diagnose(before, after, opts)
	r.Target = s.Admin
	return r, nil
}

// Diagnose names the scenarios present between two samples of one sidecar,
// each with the counters' change over the window as evidence. Counters
// that moved only before the window are reported as info. A healthy
// sidecar under steady load gets nothing above info.
func Diagnose(before, after *Sample, opts LiveOptions) *Report {
	win := after.At.Sub(before.At)
	r := &Report{Mode: "live", WindowSeconds: math.Round(win.Seconds()*10) / 10}
	for _, c := range after.Clusters {
		if slices.Contains(ownClusters, c.Name) {
			continue
		}
		lc := &liveCheck{r: r, before: before, after: after, win: win, opts: opts, name: c.Name, cluster: c}
		if cfg := after.Config[c.Name]; cfg != nil {
			lc.cfg = cfg
		} else {
			lc.cfg = &ClusterConfig{Name: c.Name}
		}
		lc.run()
	}
	diagnoseStalls(r, before, after, opts)
	r.sort()
	return r
}

// liveCheck diagnoses one cluster.
type liveCheck struct {
	r             *Report
	before, after *Sample
	win           time.Duration
	opts          LiveOptions
	name          string
	cluster       ClusterSample
	cfg           *ClusterConfig
}

func (c *liveCheck) stat(s *Sample, suffix string) int64 {
	return s.Stats["cluster."+c.name+"."+suffix]
}

// d is a counter's change over the window.
func (c *liveCheck) d(suffix string) int64 { return c.stat(c.after, suffix) - c.stat(c.before, suffix) }

func (c *liveCheck) add(sev Severity, scenario, rule, evidence, fix string, values map[string]float64) {
	c.r.add(Finding{Severity: sev, Scenario: scenario, Rule: rule, Subject: "cluster " + c.name, Evidence: evidence, Fix: fix, Values: values})
}

func fmtDur(d time.Duration) string {
	if d == 0 {
		return "none"
	}
	return d.String()
}

func (c *liveCheck) run() {
	win := c.win.Round(100 * time.Millisecond)
	rq, cx := c.d("upstream_rq_total"), c.d("upstream_cx_total")
	proto := "HTTP/2"
	if c.cfg.HTTP1 {
		proto = "HTTP/1.1"
	}
	tw := 0
	for _, h := range c.cluster.Hosts {
		tw += c.after.TimeWait[h.Address]
	}

	// S1 / S4: connection churn.
	churned := false
	if cx >= churnMinConnections && cx*churnMaxShare > rq {
		churned = true
		scen, fix := S1, "keep connections: remove connectionPool.maxRequestsPerConnection / raise maxConnectionDuration; check that the upstream does not close them (goaway_rx, upstream_cx_destroy_remote)"
		if c.cfg.HTTP1 {
			scen = S4
			fix = "keep idle HTTP/1.1 connections: connectionPool.idleTimeout above the pause between requests, maxConnections ≥ concurrent requests, no maxRequestsPerConnection, and a server that does not answer Connection: close"
		}
		if it := c.cfg.IdleTimeout; c.cfg.IdleTimeoutSet && it > 0 && it < MinIdleTimeout {
			fix = fmt.Sprintf("idle_timeout %s closes connections between requests: set the destination's connectionPool.idleTimeout to 5m", it)
		}
		if n := c.cfg.MaxRequestsPerConnection; n > 0 && n < MinRequestsPerConnection {
			fix = fmt.Sprintf("max_requests_per_connection is %d: remove connectionPool.maxRequestsPerConnection (or set ≥ 1000) in the destination's TrafficPolicy", n)
		}
		reuse := 0.0
		if rq > 0 {
			reuse = 100 * float64(max(rq-cx, 0)) / float64(rq)
		}
		ev := fmt.Sprintf("%d new %s connections for %d requests in %s: %.1f%% of requests reused a connection (a steady pool reuses > 99.9%%)", cx, proto, rq, win, reuse)
		if c.after.TimeWait != nil {
			ev += fmt.Sprintf("; %d sockets in TIME_WAIT to its endpoints", tw)
		}
		if n := c.cfg.MaxRequestsPerConnection; n > 0 {
			ev += fmt.Sprintf("; max_requests_per_connection %d", n)
		}
		if c.cfg.IdleTimeoutSet {
			ev += fmt.Sprintf("; idle_timeout %s", fmtDur(c.cfg.IdleTimeout))
		}
		c.add(Warning, scen, "connection-churn", ev, fix,
			map[string]float64{"new_connections": float64(cx), "requests": float64(rq), "reuse_percent": reuse, "time_wait": float64(tw)})
	}
	if !churned && tw >= timeWaitStorm {
		c.add(Warning, S4, "time-wait", fmt.Sprintf("%d sockets in TIME_WAIT to the cluster's endpoints (%d new connections in %s)", tw, cx, win),
			"keep connections open and reused: remove connectionPool.maxRequestsPerConnection, raise idleTimeout above the request interval",
			map[string]float64{"time_wait": float64(tw), "new_connections": float64(cx)})
	}

	// S1: pool too small for the load.
	overflow := c.d("upstream_rq_pending_overflow")
	p99 := c.after.P99["cluster."+c.name+".upstream_rq_stream_wait_ms"]
	pending := c.d("upstream_rq_pending_total")
	if overflow > 0 || (pending > 0 && p99 >= streamWaitP99Warn) {
		ev := fmt.Sprintf("%d requests failed with 503 overflow and %d waited for a stream slot in %s; stream-wait p99 %.0f ms since start; max_connections %s, max_pending_requests %s",
			overflow, pending, win, p99, orDefault(c.cfg.MaxConnections, "1024 (default)"), orDefault(c.cfg.MaxPendingRequests, "1024 (default)"))
		c.add(Warning, S1, "pool-overflow", ev,
			"raise connectionPool.maxConnections to ≥ ceil(peak concurrent requests / the server's MAX_CONCURRENT_STREAMS) + headroom, and maxPendingRequests to absorb bursts (S11: preconnect)",
			map[string]float64{"pending_overflow": float64(overflow), "pending": float64(pending), "stream_wait_p99_ms": p99,
				"max_connections": float64(c.cfg.MaxConnections), "max_pending_requests": float64(c.cfg.MaxPendingRequests)})
	}

	// S2: too_many_pings.
	backoff, eyc := c.d("http2.keepalive_backoff"), c.d("http2.goaway_rx_ENHANCE_YOUR_CALM")
	if backoff > 0 || eyc > 0 || c.stat(c.after, "http2.keepalive_backoff") > 0 {
		var learned []string
		var maxMS int64
		for _, h := range c.cluster.Hosts {
			if v, ok := c.after.Stats["cluster."+c.name+".endpoint."+endpointSegment(h.Address)+".http2_keepalive_interval_ms"]; ok {
				learned = append(learned, fmt.Sprintf("%s %d ms", h.Address, v))
				maxMS = max(maxMS, v)
			}
		}
		ev := fmt.Sprintf("%d GOAWAY ENHANCE_YOUR_CALM received and the keepalive interval doubled %d times in %s (too_many_pings); configured connection_keepalive.interval %s; intervals now: %s",
			eyc, backoff, win, fmtDur(c.cfg.KeepaliveInterval), strings.Join(learned, ", "))
		fix := fmt.Sprintf("set http2.keepalive.interval ≥ the server's ping policy (grpc-go EnforcementPolicy.MinTime, default 5m; meshd learned ≥ %s) in the destination's TrafficPolicy, and declare it as the Service's serverLimits.minPingInterval", time.Duration(maxMS)*time.Millisecond)
		sev := Warning
		if backoff == 0 && eyc == 0 {
			sev, ev = Info, fmt.Sprintf("before the window: the keepalive interval doubled %d times after too_many_pings; intervals now: %s", c.stat(c.after, "http2.keepalive_backoff"), strings.Join(learned, ", "))
		}
		c.add(sev, S2, "too-many-pings", ev, fix, map[string]float64{"goaway_enhance_your_calm": float64(eyc), "keepalive_backoffs": float64(backoff),
			"keepalive_interval_ms": float64(c.cfg.KeepaliveInterval.Milliseconds()), "learned_interval_ms": float64(maxMS)})
	}

	// S3: REFUSED_STREAM.
	if refused := c.d("http2.stream_refused_errors"); refused > 0 {
		retried := c.d("upstream_rq_transparent_retry")
		failed := c.d("upstream_rq_5xx")
		sev := Info
		if refused >= refusedStorm {
			sev = Warning
		}
		c.add(sev, S3, "refused-streams",
			fmt.Sprintf("%d streams refused by the upstream (REFUSED_STREAM) in %s, %d retried transparently, %d requests answered 5xx", refused, win, retried, failed),
			"the upstream's stream limit is below what the pool sends: set the destination's http2.maxConcurrentStreams and serverLimits.maxConcurrentStreams to the server's limit, and connectionPool.maxConnections ≥ ceil(peak streams / limit)",
			map[string]float64{"refused_streams": float64(refused), "transparent_retries": float64(retried), "failed_5xx": float64(failed)})
	}

	// S5: connects or handshakes that time out.
	if ct := c.d("upstream_cx_connect_timeout"); ct > 0 {
		ejected := c.d("outlier_detection.ejections_enforced_total")
		od := "no outlier_detection"
		if c.cfg.OutlierDetection {
			od = fmt.Sprintf("%d outlier ejections", ejected)
		}
		ct0 := c.cfg.ConnectTimeout
		if ct0 == 0 {
			ct0 = DefaultConnectTimeout
		}
		c.add(Warning, S5, "connect-timeout",
			fmt.Sprintf("%d connection attempts timed out after connect_timeout %s in %s (TCP accepted and the TLS handshake never finished, or no answer at all); %s", ct, ct0, win, od),
			"find the endpoint that hangs (/clusters); keep connectionPool.connectTimeout ≤ 1s and set outlierDetection so it is ejected after its first failures",
			map[string]float64{"connect_timeouts": float64(ct), "connect_timeout_ms": float64(ct0.Milliseconds()), "ejections": float64(ejected)})
	}

	// S6: requests the upstream never answers.
	timeouts := c.d("upstream_rq_timeout") + c.d("upstream_rq_per_try_timeout")
	hung, longest := 0, int64(0)
	for _, w := range c.after.Streams.Waiting {
		if w.Scope == "cluster."+c.name+".http2" && w.State == h2.StallPeerHeaders.String() && w.ForMS >= c.opts.stallThreshold().Milliseconds() {
			hung++
			longest = max(longest, w.ForMS)
		}
	}
	if timeouts > 0 || hung > 0 {
		rt := "none"
		if c.cfg.RouteTimeoutSet && c.cfg.RouteTimeout > 0 {
			rt = c.cfg.RouteTimeout.String()
		}
		ev := fmt.Sprintf("%d requests timed out waiting for the upstream in %s; %d streams waiting for response headers for ≥ %s now (longest %d ms); route timeout %s",
			timeouts, win, hung, c.opts.stallThreshold(), longest, rt)
		fix := "the upstream takes requests and does not answer: find the endpoint (/clusters rq_active); keep a route timeout and retries.perTryTimeout so another endpoint answers"
		if rt == "none" {
			fix = "set the destination's TrafficPolicy spec.timeout (e.g. 10s for unary calls) and retries.perTryTimeout, so a hung upstream ends in 504 / DEADLINE_EXCEEDED instead of holding the caller"
		}
		c.add(Warning, S6, "response-header-hang", ev, fix,
			map[string]float64{"timeouts": float64(timeouts), "streams_waiting_headers": float64(hung), "longest_wait_ms": float64(longest), "route_timeout_ms": float64(c.cfg.RouteTimeout.Milliseconds())})
	}

	// S9: connections rotated by GOAWAY (the upstream's, or max_connection_duration).
	goaways, maxDur := c.d("http2.goaway_rx_NO_ERROR"), c.d("upstream_cx_max_duration_reached")
	if goaways+maxDur > 0 {
		failed := c.d("upstream_cx_destroy_remote_with_active_rq") + c.d("upstream_rq_5xx")
		// A graceful GOAWAY may come in two frames (grpc-go sends a
		// provisional one first): count rotations by the connections
		// that replaced the drained ones.
		rotations := max(min(cx, goaways+maxDur), 1)
		period := c.win / time.Duration(rotations)
		sev := Info
		if failed > 0 || period < rotationPeriodWarn {
			sev = Warning
		}
		fix := "the upstream drains its connections this often (a rollout, or grpc-go MaxConnectionAge): raise its maximum connection age to minutes; meshd retries the streams a GOAWAY left unprocessed"
		if maxDur > 0 {
			fix = fmt.Sprintf("max_connection_duration %s rotates every connection that often: set the destination's connectionPool.maxConnectionDuration to 30m or more", fmtDur(c.cfg.MaxConnectionDuration))
		}
		c.add(sev, S9, "connection-rotation",
			fmt.Sprintf("%d GOAWAY NO_ERROR received from the upstream and %d connections drained by max_connection_duration (%s) in %s: a new connection every %s; %d streams retried transparently, %d requests failed",
				goaways, maxDur, fmtDur(c.cfg.MaxConnectionDuration), win, period.Round(10*time.Millisecond), c.d("upstream_rq_transparent_retry"), failed),
			fix, map[string]float64{"goaway_no_error": float64(goaways), "max_duration_reached": float64(maxDur), "new_connections": float64(cx),
				"failed": float64(failed), "rotation_period_ms": float64(period.Milliseconds())})
	}

	// S10: dead peers and idle connections.
	if ka := c.d("http2.keepalive_timeout"); ka > 0 {
		c.add(Warning, S10, "keepalive-timeout",
			fmt.Sprintf("%d connections closed because the peer did not answer a keepalive PING in time (%s): dead peers, or a path dropping packets", ka, win),
			"if the peers are alive, raise http2.keepalive.timeout (interval ≥ 3 × timeout + 2 × p99 RTT); otherwise remove the dead endpoints",
			map[string]float64{"keepalive_timeouts": float64(ka)})
	}
	// /clusters carries no per-host connection count: the cluster's
	// gauges say whether connections stayed open with nothing to carry.
	idleConns := c.stat(c.after, "upstream_cx_active")
	if idleConns == 0 || c.stat(c.before, "upstream_cx_active") == 0 || rq != 0 || c.stat(c.after, "upstream_rq_active") != 0 {
		idleConns = 0
	}
	idleHosts := len(c.cluster.Hosts)
	if idleConns > 0 {
		it, how := c.cfg.IdleTimeout, ""
		if !c.cfg.IdleTimeoutSet {
			it, how = DefaultUpstreamIdleTimeout, " (unset: Envoy's default)"
		}
		sev := Info
		if it == 0 || it > MiddleboxIdleTimeout {
			sev = Warning
		}
		c.add(sev, S10, "idle-connections",
			fmt.Sprintf("%d connections (to %d endpoints) open and carrying no request for the whole %s; idle_timeout %s%s", idleConns, idleHosts, win, fmtDur(it), how),
			"set the destination's connectionPool.idleTimeout (e.g. 5m, below every middlebox's idle timeout) so idle connections are closed",
			map[string]float64{"idle_connections": float64(idleConns), "idle_timeout_ms": float64(it.Milliseconds())})
	}
}

// endpointSegment is the stat name segment of an endpoint ("ip:port" →
// "ip_port", as cluster.<name>.endpoint.<ip>_<port>.* spells it).
func endpointSegment(addr string) string {
	return strings.NewReplacer(":", "_", "[", "", "]", "").Replace(addr)
}

func orDefault(v int64, def string) string {
	if v == 0 {
		return def
	}
	return fmt.Sprint(v)
}

// diagnoseStalls reports streams stuck in one flow-control or pool state
// (response headers are S6, reported per cluster).
func diagnoseStalls(r *Report, before, after *Sample, opts LiveOptions) {
	type key struct{ scope, state string }
	type agg struct {
		n       int
		longest int64
	}
	found := map[key]*agg{}
	var keys []key
	for _, w := range after.Streams.Waiting {
		if w.State == h2.StallPeerHeaders.String() || w.ForMS < opts.stallThreshold().Milliseconds() {
			continue
		}
		k := key{w.Scope, w.State}
		if found[k] == nil {
			found[k] = &agg{}
			keys = append(keys, k)
		}
		found[k].n++
		found[k].longest = max(found[k].longest, w.ForMS)
	}
	for _, k := range keys {
		a := found[k]
		counted := after.Stats[k.scope+".stream_stall_"+k.state] - before.Stats[k.scope+".stream_stall_"+k.state]
		subject := "downstream (" + k.scope + ")"
		if strings.HasPrefix(k.scope, "cluster.") {
			subject = "cluster " + strings.TrimSuffix(strings.TrimPrefix(k.scope, "cluster."), ".http2")
		}
		scen, fix := S7, ""
		switch k.state {
		case h2.StallPeerWindow.String():
			fix = "the peer does not read (or its window is too small for the bandwidth × RTT): raise http2.initialStreamWindowSize / initialConnectionWindowSize, or fix the slow reader"
		case h2.StallLocalRead.String():
			fix = "the other side of the proxy (the application, or the peer it forwards to) does not read: find the slow consumer; a larger window only buffers more"
		case h2.StallWriteFlush.String():
			fix = "the socket does not drain (TCP back-pressure from a slow or distant peer): check the path and the peer's receive buffer"
		case h2.StallStreamSlot.String():
			scen = S1
			fix = "the pool is full: raise connectionPool.maxConnections to ≥ ceil(peak concurrent requests / the server's MAX_CONCURRENT_STREAMS)"
		}
		r.add(Finding{Severity: Warning, Scenario: scen, Rule: "stalled-streams", Subject: subject,
			Evidence: fmt.Sprintf("%d streams stuck in %s for ≥ %s (longest %d ms); %d waits of ≥ %s in %s counted in the window",
				a.n, k.state, opts.stallThreshold(), a.longest, counted, h2.StallCountThreshold, k.state),
			Fix:    fix,
			Values: map[string]float64{"streams": float64(a.n), "longest_ms": float64(a.longest), "counted": float64(counted)}})
	}
}
