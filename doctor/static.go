package doctor

import (
	"errors"
	"fmt"
	"time"

	"meshd.dev/meshd/xds/model"
)

// Thresholds of the static rules. They are rules of thumb
// (docs/scenarios.md): warnings with the numbers, never hard limits.
const (
	// MiddleboxIdleTimeout is the shortest idle timeout common middleboxes
	// apply to TCP flows (AWS NLB: 350 s); an upstream idle timeout above
	// it lets them drop connections the pool still believes in.
	MiddleboxIdleTimeout = 350 * time.Second
	// DefaultUpstreamIdleTimeout is Envoy's (and meshd's) upstream
	// idle_timeout when a policy sets none.
	DefaultUpstreamIdleTimeout = time.Hour
	// DefaultConnectTimeout is Envoy's connect_timeout when a policy sets
	// none; it also bounds a hung TLS handshake (S5).
	DefaultConnectTimeout = 5 * time.Second
	// MinConnectionDuration is the shortest max_connection_duration that is
	// not churn: below it every connection is drained with GOAWAY that often.
	MinConnectionDuration = time.Minute
	// MinRequestsPerConnection is the smallest max_requests_per_connection
	// that is not churn.
	MinRequestsPerConnection = 100
	// MinIdleTimeout is the shortest idle timeout that does not close
	// connections between the requests of an ordinary load.
	MinIdleTimeout = time.Second
)

// StaticFile loads the mesh file at path and checks it (Static). A file that
// does not load is an Error finding per problem, naming the document and
// field; the report is then otherwise empty.
func StaticFile(path string) *Report {
	m, err := model.Load(path)
	if err != nil {
		return loadFailure(path, err)
	}
	return Static(m)
}

// StaticBytes is StaticFile for a file's contents; source names it.
func StaticBytes(data []byte, source string) *Report {
	m, err := model.Parse(data, source)
	if err != nil {
		return loadFailure(source, err)
	}
	return Static(m)
}

func loadFailure(source string, err error) *Report {
	r := &Report{Target: source, Mode: "static"}
	var me *model.Error
	if errors.As(err, &me) {
		for _, p := range me.Problems {
			subject := p.Document
			if subject == "" {
				subject = p.Source
			}
			// A problem of the whole document (YAML syntax) names no field.
			evidence, fix := p.Reason, "correct the document"
			if p.Field != "" {
				evidence, fix = p.Field+": "+p.Reason, "correct the field"
			}
			r.add(Finding{Severity: Error, Rule: "invalid-mesh", Subject: subject, Evidence: evidence,
				Fix: fix + "; the control plane rejects the file and keeps serving the last good one"})
		}
	} else {
		r.add(Finding{Severity: Error, Rule: "invalid-mesh", Subject: source, Evidence: err.Error()})
	}
	r.sort()
	return r
}

// Static checks every Service's effective policy (the Mesh's spec.defaults
// with the Service's TrafficPolicy laid over them) against the rules of
// thumb in docs/scenarios.md and HTTP/2's limits. Each finding names the
// document and field to change and the value to set. tcp Services carry no
// HTTP policy and are skipped.
func Static(m *model.Mesh) *Report {
	r := &Report{Target: m.Source, Mode: "static"}
	for _, s := range m.Services {
		if s.Spec.Protocol == model.ProtocolTCP {
			continue
		}
		c := &staticCheck{m: m, s: s, p: m.EffectivePolicy(s), tp: m.PolicyFor(s), r: r}
		c.run()
	}
	r.sort()
	return r
}

// staticCheck checks one Service.
type staticCheck struct {
	m  *model.Mesh
	s  *model.Service
	p  model.Policy
	tp *model.TrafficPolicy
	r  *Report
}

func (c *staticCheck) subject() string {
	return "Service " + c.s.Metadata.Namespace + "/" + c.s.Metadata.Name
}

// where names the document and field path to edit for field (a path under
// the policy, "http2.keepalive.interval"): the TrafficPolicy when it sets
// the field or exists, else the Mesh's spec.defaults when they set it,
// else a new TrafficPolicy for the Service.
func (c *staticCheck) where(field string, setIn func(*model.Policy) bool) string {
	switch {
	case c.tp != nil && setIn(&c.tp.Spec.Policy):
		return fmt.Sprintf("TrafficPolicy %s/%s: spec.%s", c.tp.Metadata.Namespace, c.tp.Metadata.Name, field)
	case c.m.Spec.Defaults != nil && setIn(c.m.Spec.Defaults):
		return fmt.Sprintf("Mesh %s: spec.defaults.%s", c.m.Metadata.Name, field)
	case c.tp != nil:
		return fmt.Sprintf("TrafficPolicy %s/%s: spec.%s", c.tp.Metadata.Namespace, c.tp.Metadata.Name, field)
	default:
		return fmt.Sprintf("a TrafficPolicy with targetRef Service %s/%s: spec.%s", c.s.Metadata.Namespace, c.s.Metadata.Name, field)
	}
}

func (c *staticCheck) add(sev Severity, scenario, rule, evidence, fix string, values map[string]float64) {
	c.r.add(Finding{Severity: sev, Scenario: scenario, Rule: rule, Subject: c.subject(), Evidence: evidence, Fix: fix, Values: values})
}

// Field presence tests, one per field a rule may point at.
func setKeepaliveInterval(p *model.Policy) bool {
	return p.HTTP2 != nil && p.HTTP2.Keepalive != nil && p.HTTP2.Keepalive.Interval != nil
}
func setKeepalive(p *model.Policy) bool { return p.HTTP2 != nil && p.HTTP2.Keepalive != nil }
func setConnWindow(p *model.Policy) bool {
	return p.HTTP2 != nil && p.HTTP2.InitialConnectionWindowSize != nil
}
func setMaxStreams(p *model.Policy) bool {
	return p.HTTP2 != nil && p.HTTP2.MaxConcurrentStreams != nil
}
func setPool(get func(*model.ConnectionPool) bool) func(*model.Policy) bool {
	return func(p *model.Policy) bool { return p.ConnectionPool != nil && get(p.ConnectionPool) }
}
func setTimeout(p *model.Policy) bool { return p.Timeout != nil }
func setPerTry(p *model.Policy) bool  { return p.Retries != nil && p.Retries.PerTryTimeout != nil }

func ms(d time.Duration) float64 { return float64(d.Milliseconds()) }

func (c *staticCheck) run() {
	p, limits := c.p, c.s.Spec.ServerLimits
	if limits == nil {
		limits = &model.ServerLimits{}
	}
	// An http3 service's clients fall back to HTTP/2 over TCP with the
	// policy's HTTP/2 settings when UDP is blocked, so the HTTP/2 rules
	// hold for it too.
	proto := c.s.SidecarProtocol()
	http2 := proto == "http2" || proto == model.UpstreamHTTP3
	cp := p.ConnectionPool
	if cp == nil {
		cp = &model.ConnectionPool{}
	}

	// Keepalive (S2, S10).
	if k := p.HTTP2; http2 && k != nil && k.Keepalive != nil && k.Keepalive.Interval != nil && k.Keepalive.Timeout != nil {
		interval, timeout := k.Keepalive.Interval.D(), k.Keepalive.Timeout.D()
		want := 3 * timeout
		if mp := limits.MinPingInterval; mp != nil {
			want = max(want, mp.D())
		}
		if mp := limits.MinPingInterval; mp != nil && interval < mp.D() {
			c.add(Warning, S2, "keepalive-below-min-ping",
				fmt.Sprintf("keepalive interval %s is below the servers' serverLimits.minPingInterval %s: after 3 strikes they answer GOAWAY ENHANCE_YOUR_CALM too_many_pings and close, failing open streams", interval, mp),
				fmt.Sprintf("%s: %s", c.where("http2.keepalive.interval", setKeepaliveInterval), want),
				map[string]float64{"keepalive_interval_ms": ms(interval), "min_ping_interval_ms": ms(mp.D())})
		}
		if interval < 3*timeout {
			c.add(Warning, S10, "keepalive-interval-vs-timeout",
				fmt.Sprintf("keepalive interval %s is below 3 × timeout %s = %s (rule of thumb: interval ≥ 3 × timeout + 2 × p99 RTT): a PING delayed on a slow path closes a healthy connection", interval, timeout, 3*timeout),
				fmt.Sprintf("%s: %s", c.where("http2.keepalive.interval", setKeepaliveInterval), want),
				map[string]float64{"keepalive_interval_ms": ms(interval), "keepalive_timeout_ms": ms(timeout)})
		}
	} else if http2 {
		c.add(Info, S10, "no-keepalive",
			"no HTTP/2 keepalive: a silently dead peer (a dropped NAT entry, a crashed host) is found only when a request times out",
			fmt.Sprintf("%s: {interval: 30s, timeout: 5s}", c.where("http2.keepalive", setKeepalive)), nil)
	}

	// Pool size against the servers' stream limit (S1), pending queue (S11).
	if cp.MaxConnections != nil && cp.MaxRequests != nil && limits.MaxConcurrentStreams != nil && http2 {
		conns, streams, reqs := uint64(*cp.MaxConnections), uint64(*limits.MaxConcurrentStreams), uint64(*cp.MaxRequests)
		if conns*streams < reqs {
			need := (reqs + streams - 1) / streams
			c.add(Warning, S1, "pool-below-peer-capacity",
				fmt.Sprintf("maxConnections %d × serverLimits.maxConcurrentStreams %d = %d streams, below maxRequests %d: requests beyond %d queue for a stream slot or overflow", conns, streams, conns*streams, reqs, conns*streams),
				fmt.Sprintf("%s: %d", c.where("connectionPool.maxConnections", setPool(func(c *model.ConnectionPool) bool { return c.MaxConnections != nil })), need),
				map[string]float64{"max_connections": float64(conns), "peer_max_concurrent_streams": float64(streams), "max_requests": float64(reqs)})
		}
	}
	if cp.MaxPendingRequests != nil && *cp.MaxPendingRequests == 0 {
		c.add(Warning, S11, "no-pending-queue",
			"maxPendingRequests 0: a burst beyond the open connections' capacity (a cold start, a scale-up) fails at once with 503 overflow instead of waiting for a connection",
			fmt.Sprintf("%s: 1024", c.where("connectionPool.maxPendingRequests", setPool(func(c *model.ConnectionPool) bool { return c.MaxPendingRequests != nil }))),
			map[string]float64{"max_pending_requests": 0})
	}

	// Connection churn (S1 over HTTP/2, S4 over HTTP/1.1).
	churn := S1
	if !http2 {
		churn = S4
	}
	if n := cp.MaxRequestsPerConnection; n != nil && *n < MinRequestsPerConnection {
		sev := Warning
		if *n == 1 {
			sev = Error
		}
		c.add(sev, churn, "max-requests-per-connection",
			fmt.Sprintf("maxRequestsPerConnection %d: a new connection after every %d requests (at 1000 requests/s, %d connections/s, each leaving a socket in TIME_WAIT)", *n, *n, 1000 / *n),
			fmt.Sprintf("%s: remove it, or at least %d", c.where("connectionPool.maxRequestsPerConnection", setPool(func(c *model.ConnectionPool) bool { return c.MaxRequestsPerConnection != nil })), 1000),
			map[string]float64{"max_requests_per_connection": float64(*n)})
	}
	if d := cp.MaxConnectionDuration; d != nil && d.D() > 0 && d.D() < MinConnectionDuration {
		c.add(Warning, S9, "short-connection-duration",
			fmt.Sprintf("maxConnectionDuration %s: every connection is drained with GOAWAY and replaced every %s, a rollout that never ends", d, d),
			fmt.Sprintf("%s: 30m", c.where("connectionPool.maxConnectionDuration", setPool(func(c *model.ConnectionPool) bool { return c.MaxConnectionDuration != nil }))),
			map[string]float64{"max_connection_duration_ms": ms(d.D())})
	}

	// Idle connections (S10).
	idleField := c.where("connectionPool.idleTimeout", setPool(func(c *model.ConnectionPool) bool { return c.IdleTimeout != nil }))
	switch it := cp.IdleTimeout; {
	case it != nil && it.D() == 0:
		c.add(Warning, S10, "idle-timeout",
			"idleTimeout 0 disables the idle timeout: connections to peers that went away pile up until the process restarts",
			fmt.Sprintf("%s: 5m (below the idle timeout of every load balancer and NAT on the path)", idleField), map[string]float64{"idle_timeout_ms": 0})
	case it != nil && it.D() < MinIdleTimeout:
		c.add(Warning, churn, "short-idle-timeout",
			fmt.Sprintf("idleTimeout %s closes connections in the pauses between requests: a new connection (and a socket in TIME_WAIT) for most requests", it),
			fmt.Sprintf("%s: 5m (below the idle timeout of every load balancer and NAT on the path)", idleField), map[string]float64{"idle_timeout_ms": ms(it.D())})
	case it == nil || it.D() > MiddleboxIdleTimeout:
		d := DefaultUpstreamIdleTimeout
		how := "unset: Envoy's default"
		if it != nil {
			d, how = it.D(), "set to"
		}
		c.add(Warning, S10, "idle-timeout",
			fmt.Sprintf("idleTimeout %s %s is longer than common middlebox idle timeouts (%s, AWS NLB): they drop idle connections silently and the pool keeps them", how, d, MiddleboxIdleTimeout),
			fmt.Sprintf("%s: 5m (below the idle timeout of every load balancer and NAT on the path)", idleField), map[string]float64{"idle_timeout_ms": ms(d)})
	}

	// Handshake hang (S5).
	if ct := cp.ConnectTimeout; ct != nil && ct.D() > DefaultConnectTimeout {
		c.add(Warning, S5, "long-connect-timeout",
			fmt.Sprintf("connectTimeout %s also bounds the TLS handshake: an endpoint that accepts TCP and never finishes the handshake holds each request that long", ct),
			fmt.Sprintf("%s: 1s", c.where("connectionPool.connectTimeout", setPool(func(c *model.ConnectionPool) bool { return c.ConnectTimeout != nil }))),
			map[string]float64{"connect_timeout_ms": ms(ct.D())})
	}
	if p.OutlierDetection == nil {
		c.add(Info, S5, "no-outlier-detection",
			"no outlier detection: an endpoint that hangs or fails keeps receiving its share of requests",
			fmt.Sprintf("%s: {consecutive5xx: 5, interval: 10s, baseEjectionTime: 30s}", c.where("outlierDetection", func(p *model.Policy) bool { return p.OutlierDetection != nil })), nil)
	}

	// Response header hang (S6).
	timeoutField := c.where("timeout", setTimeout)
	switch {
	case p.Timeout != nil && p.Timeout.D() == 0:
		c.add(Warning, S6, "no-route-timeout",
			"timeout 0s disables the route timeout: an upstream that takes a request and never answers holds it until the caller gives up (only grpc-timeout still applies)",
			fmt.Sprintf("%s: 10s (the longest a unary call may take)", timeoutField), map[string]float64{"timeout_ms": 0})
	case p.Timeout == nil:
		c.add(Info, S6, "no-route-timeout",
			"no route timeout (meshd sets none so streams can live long): a hung upstream is ended only by the caller's grpc-timeout",
			fmt.Sprintf("%s: 10s for unary-only services", timeoutField), nil)
	}
	if rt := p.Retries; rt != nil && rt.PerTryTimeout != nil && rt.Attempts != nil && p.Timeout != nil && p.Timeout.D() > 0 {
		total := time.Duration(*rt.Attempts+1) * rt.PerTryTimeout.D()
		if total > p.Timeout.D() {
			c.add(Warning, S6, "retries-exceed-timeout",
				fmt.Sprintf("perTryTimeout %s × (attempts %d + 1) = %s exceeds timeout %s: the last attempts can never run", rt.PerTryTimeout, *rt.Attempts, total, p.Timeout),
				fmt.Sprintf("%s: %s", c.where("retries.perTryTimeout", setPerTry), (p.Timeout.D()/time.Duration(*rt.Attempts+1)).Truncate(time.Millisecond)),
				map[string]float64{"per_try_timeout_ms": ms(rt.PerTryTimeout.D()), "attempts": float64(*rt.Attempts), "timeout_ms": ms(p.Timeout.D())})
		}
	}

	// HTTP/2 windows and stream limits (S7, S3).
	if h := p.HTTP2; http2 && h != nil {
		sw, cw := uint32(65535), uint32(65535)
		if h.InitialStreamWindowSize != nil {
			sw = *h.InitialStreamWindowSize
		}
		if h.InitialConnectionWindowSize != nil {
			cw = *h.InitialConnectionWindowSize
		}
		if h.InitialStreamWindowSize != nil && cw < sw {
			c.add(Warning, S7, "connection-window-below-stream-window",
				fmt.Sprintf("initialConnectionWindowSize %d is below initialStreamWindowSize %d: one busy stream can take the whole connection window and stall every other stream on the connection", cw, sw),
				fmt.Sprintf("%s: %d", c.where("http2.initialConnectionWindowSize", setConnWindow), uint64(sw)*4),
				map[string]float64{"initial_stream_window": float64(sw), "initial_connection_window": float64(cw)})
		}
		if mcs, lim := h.MaxConcurrentStreams, limits.MaxConcurrentStreams; mcs != nil && lim != nil && *mcs > *lim {
			c.add(Info, S3, "max-streams-above-server-limit",
				fmt.Sprintf("http2.maxConcurrentStreams %d is above the servers' %d: the servers' SETTINGS win, and streams sent before a lowered limit arrives are refused (and retried)", *mcs, *lim),
				fmt.Sprintf("%s: %d", c.where("http2.maxConcurrentStreams", setMaxStreams), *lim),
				map[string]float64{"max_concurrent_streams": float64(*mcs), "peer_max_concurrent_streams": float64(*lim)})
		}
	}
}
