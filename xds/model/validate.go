package model

import (
	"fmt"
	"math"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// HTTP/2 limits (RFC 9113 §6.5.2, §6.9.1) and meshd's own bounds.
const (
	// MinWindowSize is the smallest HTTP/2 flow-control window a policy may
	// set: the protocol's initial 65535.
	MinWindowSize = 65535
	// MaxWindowSize is the largest HTTP/2 flow-control window, 2^31-1.
	MaxWindowSize = 1<<31 - 1
	// MaxAttempts bounds spec.retries.attempts: more retries than this turn
	// one failure into a storm.
	MaxAttempts = 10
)

// retryOnValues are the Envoy retry_on conditions the policy accepts: the
// router's HTTP conditions and gRPC status names (x-envoy-retry-grpc-on).
var retryOnValues = []string{
	"5xx", "gateway-error", "reset", "reset-before-request", "connect-failure",
	"envoy-ratelimited", "retriable-4xx", "refused-stream", "retriable-status-codes",
	"retriable-headers", "http3-post-connect-failure",
	"cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
}

// GRPCRetryOn reports whether cond is a gRPC status retry_on condition (the
// only ones grpc-go's xDS client honours).
func GRPCRetryOn(cond string) bool {
	switch cond {
	case "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable":
		return true
	}
	return false
}

var protocols = []string{ProtocolGRPC, ProtocolHTTP, ProtocolHTTP2, ProtocolTCP}

var loadBalancers = []string{LBRoundRobin, LBLeastRequest, LBRandom}

// validate checks values and resolves references on a decoded mesh, filling
// defaults and the *Ref fields.
func validate(ps *problems, m *Mesh) {
	if m.Spec.TrustDomain == "" {
		m.Spec.TrustDomain = DefaultTrustDomain
	} else if reason := trustDomain(m.Spec.TrustDomain); reason != "" {
		ps.add(m.meshOrigin, "spec.trustDomain", "%q %s", m.Spec.TrustDomain, reason)
	}
	validateMTLS(ps, m)
	validateOutboundTrafficPolicy(ps, m)
	validateTracing(ps, m)
	if m.Spec.MTLS == MTLSDisable {
		for _, s := range m.Services {
			if s.Spec.UpstreamProtocol == UpstreamHTTP3 {
				ps.add(s.origin, "spec.upstreamProtocol", "http3 needs mTLS between sidecars (QUIC is always TLS); the mesh's spec.mtls is DISABLE")
			}
		}
	}
	validateAccessLog(ps, m)
	if m.Spec.Defaults != nil {
		validatePolicy(ps, m.meshOrigin, "spec.defaults", m.Spec.Defaults)
	}
	for _, s := range m.Services {
		m.services[s.Key()] = s
		validateService(ps, s)
	}
	for _, w := range m.Workloads {
		m.workloads[w.NodeID()] = w
		validateWorkload(ps, m, w)
	}
	validatePorts(ps, m)
	validateAddresses(ps, m)
	for _, p := range m.TrafficPolicies {
		validateTrafficPolicy(ps, m, p)
	}
	for _, p := range m.AuthorizationPolicies {
		validateAuthorizationPolicy(ps, m, p)
	}
	for _, p := range m.RateLimitPolicies {
		validateRateLimitPolicy(ps, m, p)
	}
	if m.Spec.Defaults != nil {
		checkKeepalivePair(ps, m.meshOrigin, "spec.defaults", "", m.Spec.Defaults)
	}
	for _, s := range m.Services {
		// A TrafficPolicy may set only one of interval and timeout and take
		// the other from the defaults: check the pair as the sidecar gets it.
		if tp := m.policies[s.Key()]; tp != nil && tp.Spec.HTTP2 != nil && tp.Spec.HTTP2.Keepalive != nil {
			eff := m.EffectivePolicy(s)
			checkKeepalivePair(ps, tp.origin, "spec", " (with spec.defaults of the Mesh)", &eff)
		}
	}
}

// checkKeepalivePair reports a keepalive with only one of interval and
// timeout, or a timeout not shorter than the interval.
func checkKeepalivePair(ps *problems, o origin, path, note string, p *Policy) {
	if p.HTTP2 == nil || p.HTTP2.Keepalive == nil {
		return
	}
	k, kp := p.HTTP2.Keepalive, path+".http2.keepalive"
	switch {
	case k.Interval == nil:
		ps.add(o, kp+".interval", "required with keepalive%s", note)
	case k.Timeout == nil:
		ps.add(o, kp+".timeout", "required with keepalive%s", note)
	case *k.Interval > 0 && *k.Timeout >= *k.Interval:
		ps.add(o, kp+".timeout", "%s must be shorter than interval %s%s (a PING must be answered before the next is due)", k.Timeout, k.Interval, note)
	}
}

func validateService(ps *problems, s *Service) {
	o, sp := s.origin, &s.Spec
	switch {
	case sp.Protocol == "":
		ps.add(o, "spec.protocol", "required (one of %s)", strings.Join(protocols, ", "))
	case !slices.Contains(protocols, sp.Protocol):
		ps.add(o, "spec.protocol", "unknown protocol %q (one of %s)", sp.Protocol, strings.Join(protocols, ", "))
	}
	checkPort(ps, o, "spec.port", sp.Port)
	switch {
	case sp.UpstreamProtocol == "":
	case sp.Protocol == ProtocolTCP:
		ps.add(o, "spec.upstreamProtocol", "must be empty for protocol tcp (sidecars relay bytes)")
	case sp.UpstreamProtocol == "http1" && sp.Protocol != ProtocolHTTP:
		ps.add(o, "spec.upstreamProtocol", "http1 cannot carry protocol %s (HTTP/2 only)", sp.Protocol)
	case sp.UpstreamProtocol == UpstreamHTTP3 && sp.Protocol == ProtocolHTTP:
		ps.add(o, "spec.upstreamProtocol", "http3 carries grpc and http2 services (applications keep speaking HTTP/2 to their sidecar); use http2 or http1 for http")
	case sp.UpstreamProtocol != "http2" && sp.UpstreamProtocol != "http1" && sp.UpstreamProtocol != UpstreamHTTP3:
		ps.add(o, "spec.upstreamProtocol", "unknown protocol %q (http2, http1 or http3)", sp.UpstreamProtocol)
	}
	seen := make(map[string]int)
	for i, e := range sp.Endpoints {
		f := fmt.Sprintf("spec.endpoints[%d]", i)
		if e.Address == "" {
			ps.add(o, f+".address", "required")
		} else if _, err := netip.ParseAddr(e.Address); err != nil {
			ps.add(o, f+".address", "%q is not an IP address", e.Address)
		}
		checkPort(ps, o, f+".port", e.Port)
		if e.Weight != nil && *e.Weight == 0 {
			ps.add(o, f+".weight", "must be at least 1 (remove the endpoint to stop sending it traffic)")
		}
		key := net.JoinHostPort(e.Address, strconv.Itoa(int(e.Port)))
		if j, dup := seen[key]; dup {
			ps.add(o, f, "duplicate endpoint %s (also spec.endpoints[%d])", key, j)
		}
		seen[key] = i
	}
	seenAddr := make(map[netip.Addr]int)
	for i, a := range sp.Addresses {
		f := fmt.Sprintf("spec.addresses[%d]", i)
		ip, err := netip.ParseAddr(a)
		if err != nil {
			ps.add(o, f, "%q is not an IP address", a)
			continue
		}
		if ip.IsUnspecified() || ip.IsLoopback() {
			ps.add(o, f, "%s cannot be a Service's virtual address (unspecified or loopback)", a)
		}
		if j, dup := seenAddr[ip]; dup {
			ps.add(o, f, "duplicate address %s (also spec.addresses[%d])", a, j)
		}
		seenAddr[ip] = i
	}
	if l := sp.ServerLimits; l != nil {
		if l.MinPingInterval != nil && *l.MinPingInterval <= 0 {
			ps.add(o, "spec.serverLimits.minPingInterval", "must be positive, got %s", l.MinPingInterval)
		}
		if l.MaxConcurrentStreams != nil && *l.MaxConcurrentStreams == 0 {
			ps.add(o, "spec.serverLimits.maxConcurrentStreams", "must be at least 1")
		}
	}
}

func validateWorkload(ps *problems, m *Mesh, w *Workload) {
	o, sp := w.origin, &w.Spec
	checkName(ps, o, "spec.serviceAccount", sp.ServiceAccount, true)
	if sp.Service != "" {
		key := resolveRef(sp.Service, w.Metadata.Namespace)
		if w.ServiceRef = m.services[key]; w.ServiceRef == nil {
			ps.add(o, "spec.service", "no Service %s in the mesh file", key)
		}
	}
	switch {
	case sp.Inbound == nil && sp.Service != "":
		ps.add(o, "spec.inbound", "required when spec.service is set (where the sidecar receives %s's traffic)", sp.Service)
	case sp.Inbound != nil && sp.Service == "":
		ps.add(o, "spec.service", "required when spec.inbound is set (the inbound protocol is the service's)")
	case sp.Inbound != nil:
		checkPort(ps, o, "spec.inbound.port", sp.Inbound.Port)
		checkHostPort(ps, o, "spec.inbound.app", sp.Inbound.App, true)
	}
	w.OutboundRefs = make([]*Service, len(sp.Outbound))
	for i, out := range sp.Outbound {
		f := fmt.Sprintf("spec.outbound[%d]", i)
		if out.Service == "" {
			ps.add(o, f+".service", "required")
		} else {
			key := resolveRef(out.Service, w.Metadata.Namespace)
			if w.OutboundRefs[i] = m.services[key]; w.OutboundRefs[i] == nil {
				ps.add(o, f+".service", "no Service %s in the mesh file", key)
			}
		}
		checkPort(ps, o, f+".port", out.Port)
	}
	checkHostPort(ps, o, "spec.admin", sp.Admin, false)
	if sp.Address != "" {
		if _, err := netip.ParseAddr(sp.Address); err != nil {
			ps.add(o, "spec.address", "%q is not an IP address", sp.Address)
		}
	}
	if sp.Capture != nil {
		checkPort(ps, o, "spec.capture.outboundPort", sp.Capture.OutboundPort)
	}
}

// validatePorts reports two listeners of the mesh on one 127.0.0.1 port: in
// file mode every sidecar runs on the same host. A workload with
// spec.address has a network namespace of its own: its ports are checked
// against each other only.
func validatePorts(ps *problems, m *Mesh) {
	type use struct {
		o     origin
		field string
	}
	shared := make(map[uint32]use)
	var seen map[uint32]use
	// File order, so that the later of two clashing documents is blamed.
	inFileOrder := slices.SortedFunc(slices.Values(m.Workloads), func(a, b *Workload) int { return a.origin.index - b.origin.index })
	claim := func(o origin, field string, port uint32) {
		if port == 0 {
			return
		}
		if prev, dup := seen[port]; dup {
			where := prev.field
			if prev.o != o {
				where = prev.o.label() + " " + prev.field
			}
			ps.add(o, field, "port %d is already used by %s (all file-mode listeners share 127.0.0.1)", port, where)
			return
		}
		seen[port] = use{o, field}
	}
	for _, w := range inFileOrder {
		seen = shared
		if w.Spec.Address != "" {
			seen = make(map[uint32]use)
		}
		if w.Spec.Inbound != nil {
			claim(w.origin, "spec.inbound.port", w.Spec.Inbound.Port)
		}
		for i, out := range w.Spec.Outbound {
			claim(w.origin, fmt.Sprintf("spec.outbound[%d].port", i), out.Port)
		}
		if w.Spec.Capture != nil {
			claim(w.origin, "spec.capture.outboundPort", w.Spec.Capture.OutboundPort)
		}
		if host, port, err := net.SplitHostPort(w.Spec.Admin); err == nil && (host == "127.0.0.1" || host == "localhost") {
			if n, err := strconv.ParseUint(port, 10, 16); err == nil {
				claim(w.origin, "spec.admin", uint32(n))
			}
		}
	}
}

// validateAddresses reports two Services claiming one virtual address and
// port: a captured connection to it could go to either.
func validateAddresses(ps *problems, m *Mesh) {
	claimed := make(map[netip.AddrPort]*Service)
	inFileOrder := slices.SortedFunc(slices.Values(m.Services), func(a, b *Service) int { return a.origin.index - b.origin.index })
	for _, s := range inFileOrder {
		for i, a := range s.Spec.Addresses {
			ip, err := netip.ParseAddr(a)
			if err != nil || s.Spec.Port == 0 || s.Spec.Port > 65535 {
				continue // reported by validateService
			}
			ap := netip.AddrPortFrom(ip, uint16(s.Spec.Port))
			if prev := claimed[ap]; prev != nil && prev != s {
				ps.add(s.origin, fmt.Sprintf("spec.addresses[%d]", i), "%s is already the address of %s", ap, prev.origin.label())
				continue
			}
			claimed[ap] = s
		}
	}
}

func validateTrafficPolicy(ps *problems, m *Mesh, p *TrafficPolicy) {
	o := p.origin
	p.Target = resolveTarget(ps, m, o, &p.Spec.TargetRef, p.Metadata.Namespace)
	if p.Target != nil {
		key := p.Target.Key()
		if prev := m.policies[key]; prev != nil {
			ps.add(o, "spec.targetRef", "Service %s is already the target of %s", key, prev.origin.label())
		} else {
			m.policies[key] = p
		}
	}
	validatePolicy(ps, o, "spec", &p.Spec.Policy)
	if p.Target != nil && p.Target.Spec.Protocol == ProtocolTCP && (p.Spec.HTTP2 != nil || p.Spec.Retries != nil || p.Spec.Timeout != nil) {
		ps.add(o, "spec", "http2, retries and timeout do not apply to tcp Service %s", p.Target.Key())
	}
}

// resolveTarget checks a targetRef (kind Service, a name, a namespace
// defaulting to ns) and returns the Service it names, or nil after
// reporting why there is none.
func resolveTarget(ps *problems, m *Mesh, o origin, ref *TargetRef, ns string) *Service {
	switch {
	case ref.Kind == "":
		ps.add(o, "spec.targetRef.kind", "required (Service)")
	case ref.Kind != KindService:
		ps.add(o, "spec.targetRef.kind", "unsupported kind %q (Service)", ref.Kind)
	}
	if ref.Namespace != "" {
		ns = ref.Namespace
	}
	if ref.Name == "" {
		ps.add(o, "spec.targetRef.name", "required")
		return nil
	}
	if ref.Kind != KindService {
		return nil
	}
	key := ref.Name + "." + ns
	s := m.services[key]
	if s == nil {
		ps.add(o, "spec.targetRef", "no Service %s in the mesh file", key)
	}
	return s
}

// validatePolicy rejects impossible values; risky ones are warnings (see
// Mesh.Warnings).
func validatePolicy(ps *problems, o origin, path string, p *Policy) {
	if h := p.HTTP2; h != nil {
		if v := h.MaxConcurrentStreams; v != nil && (*v == 0 || *v > MaxWindowSize) {
			ps.add(o, path+".http2.maxConcurrentStreams", "%d is out of range 1..%d (0 would allow no stream at all)", *v, MaxWindowSize)
		}
		checkWindow(ps, o, path+".http2.initialStreamWindowSize", h.InitialStreamWindowSize)
		checkWindow(ps, o, path+".http2.initialConnectionWindowSize", h.InitialConnectionWindowSize)
		if k := h.Keepalive; k != nil {
			checkDuration(ps, o, path+".http2.keepalive.interval", k.Interval, time.Millisecond)
			checkDuration(ps, o, path+".http2.keepalive.timeout", k.Timeout, time.Millisecond)
		}
	}
	if c := p.ConnectionPool; c != nil {
		cp := path + ".connectionPool"
		atLeastOne(ps, o, cp+".maxConnections", c.MaxConnections, "no connection could be opened")
		atLeastOne(ps, o, cp+".maxRequests", c.MaxRequests, "no request could be sent")
		atLeastOne(ps, o, cp+".maxRequestsPerConnection", c.MaxRequestsPerConnection, "leave it unset for no limit")
		checkDuration(ps, o, cp+".idleTimeout", c.IdleTimeout, 0)
		checkDuration(ps, o, cp+".maxConnectionDuration", c.MaxConnectionDuration, 0)
		checkDuration(ps, o, cp+".connectTimeout", c.ConnectTimeout, time.Millisecond)
	}
	if r := p.Retries; r != nil {
		rp := path + ".retries"
		if r.Attempts != nil && *r.Attempts > MaxAttempts {
			ps.add(o, rp+".attempts", "%d is more than %d", *r.Attempts, MaxAttempts)
		}
		for i, cond := range r.RetryOn {
			if !slices.Contains(retryOnValues, cond) {
				ps.add(o, fmt.Sprintf("%s.retryOn[%d]", rp, i), "unknown retry condition %q (one of %s)", cond, strings.Join(retryOnValues, ", "))
			}
		}
		checkDuration(ps, o, rp+".perTryTimeout", r.PerTryTimeout, time.Millisecond)
		if b := r.BudgetPercent; b != nil && (math.IsNaN(*b) || *b <= 0 || *b > 100) {
			ps.add(o, rp+".budgetPercent", "%v is out of range (0, 100]", *b)
		}
	}
	checkDuration(ps, o, path+".timeout", p.Timeout, 0)
	if d := p.OutlierDetection; d != nil {
		dp := path + ".outlierDetection"
		atLeastOne(ps, o, dp+".consecutive5xx", d.Consecutive5xx, "every response would eject")
		checkDuration(ps, o, dp+".interval", d.Interval, time.Millisecond)
		checkDuration(ps, o, dp+".baseEjectionTime", d.BaseEjectionTime, time.Millisecond)
	}
	if p.LoadBalancer != "" && !slices.Contains(loadBalancers, p.LoadBalancer) {
		ps.add(o, path+".loadBalancer", "unknown load balancer %q (one of %s)", p.LoadBalancer, strings.Join(loadBalancers, ", "))
	}
	if a := p.AutoTune; a != nil {
		ap := path + ".autoTune"
		checkDuration(ps, o, ap+".maxKeepaliveInterval", a.MaxKeepaliveInterval, time.Millisecond)
		atLeastOne(ps, o, ap+".maxConnections", a.MaxConnections, "no connection could be opened")
		checkWindow(ps, o, ap+".windowMemoryBudget", a.WindowMemoryBudget)
	}
}

func checkWindow(ps *problems, o origin, field string, v *uint32) {
	if v != nil && (*v < MinWindowSize || *v > MaxWindowSize) {
		ps.add(o, field, "%d is outside the HTTP/2 window range %d..%d", *v, MinWindowSize, MaxWindowSize)
	}
}

func atLeastOne(ps *problems, o origin, field string, v *uint32, why string) {
	if v != nil && *v == 0 {
		ps.add(o, field, "must be at least 1 (%s)", why)
	}
}

// checkDuration rejects a set duration below min (0: zero allowed, meaning
// "disabled" in Envoy's fields) and any negative one.
func checkDuration(ps *problems, o origin, field string, d *Duration, min time.Duration) {
	switch {
	case d == nil:
	case *d < 0:
		ps.add(o, field, "negative duration %s", d)
	case min > 0 && d.D() < min:
		ps.add(o, field, "%s is shorter than the minimum %s", d, min)
	}
}

func checkPort(ps *problems, o origin, field string, port uint32) {
	if port == 0 {
		ps.add(o, field, "required (1..65535)")
	} else if port > 65535 {
		ps.add(o, field, "%d is out of range 1..65535", port)
	}
}

// checkHostPort reports an address that is not host:port with a port in
// 1..65535.
func checkHostPort(ps *problems, o origin, field, addr string, required bool) {
	if addr == "" {
		if required {
			ps.add(o, field, "required (host:port)")
		}
		return
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		ps.add(o, field, "%q is not host:port", addr)
		return
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		ps.add(o, field, "%q: port must be 1..65535", addr)
	}
}

// trustDomain returns why td is not a SPIFFE trust domain name, or "".
func trustDomain(td string) string {
	for _, c := range td {
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '.', c == '-', c == '_':
		default:
			return "is not a SPIFFE trust domain (lower-case letters, digits, '.', '-', '_')"
		}
	}
	return ""
}
