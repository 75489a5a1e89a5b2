// Package rbac is envoy.filters.http.rbac
// (envoy.extensions.filters.http.rbac.v3.RBAC): it allows or denies each
// request by the peer's authenticated SPIFFE ID and by properties of the
// request, before routing.
//
// Supported: rules (action ALLOW or DENY, policies); principals any,
// authenticated (principal_name matched against the peer's SPIFFE ID, the
// URI SAN of the verified client certificate; unset principal_name matches
// any verified client certificate), and_ids, or_ids, not_id,
// direct_remote_ip; permissions any, header, url_path (the path without
// its query), destination_port, and_rules, or_rules, not_rule;
// rules_stat_prefix. Every other field (shadow_rules, matcher, conditions,
// audit logging, the other principal and permission kinds) is a config
// error naming it.
//
// A denied request gets 403 "RBAC: access denied" (gRPC: a trailers-only
// PERMISSION_DENIED), is logged at info with the peer ID, method and path,
// and counts http.<stat_prefix>.rbac.<rules_stat_prefix>denied; an allowed
// one counts ...allowed, as Envoy names them.
package rbac

import (
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbacfv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"meshd.dev/meshd/filters"
	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/proxy/route"
	"meshd.dev/meshd/proxy/stats"
)

// TypeURL is the filter's config type URL.
const TypeURL = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"

// Name is the filter's well-known name.
const Name = "envoy.filters.http.rbac"

func init() {
	filters.Register(TypeURL, build, Name)
}

// Filter is a compiled RBAC config. It is immutable and is its own
// per-stream filter (it keeps no per-stream state).
type Filter struct {
	filters.PassThrough
	deny       bool // action DENY; ALLOW otherwise
	policies   []policy
	statPrefix string // rules_stat_prefix
	stats      filters.StatsCache[*counters]
}

var (
	_ filters.Factory = (*Filter)(nil)
	_ filters.Filter  = (*Filter)(nil)
)

type counters struct {
	allowed, denied *stats.Counter
}

type policy struct {
	name       string
	permission matcher // any of the policy's permissions
	principal  matcher // any of the policy's principals
}

// request is what matchers look at.
type request struct {
	req  *stream.Request
	cb   filters.Callbacks
	peer string
	auth bool
}

type matcher func(r *request) bool

func build(m proto.Message, _ filters.FactoryContext) (filters.Factory, error) {
	cfg := m.(*rbacfv3.RBAC)
	return Compile(cfg)
}

// Compile validates cfg and compiles it. Errors name the field.
func Compile(cfg *rbacfv3.RBAC) (*Filter, error) {
	switch {
	case cfg.GetShadowRules() != nil:
		return nil, fmt.Errorf("shadow_rules: not supported")
	case cfg.GetShadowRulesStatPrefix() != "":
		return nil, fmt.Errorf("shadow_rules_stat_prefix: not supported")
	case cfg.GetMatcher() != nil:
		return nil, fmt.Errorf("matcher: not supported (use rules)")
	case cfg.GetShadowMatcher() != nil:
		return nil, fmt.Errorf("shadow_matcher: not supported")
	case cfg.GetTrackPerRuleStats():
		return nil, fmt.Errorf("track_per_rule_stats: not supported")
	}
	f := &Filter{statPrefix: cfg.GetRulesStatPrefix()}
	rules := cfg.GetRules()
	if rules == nil {
		// Envoy: no rules means the filter allows everything.
		return f, nil
	}
	if rules.GetAuditLoggingOptions() != nil {
		return nil, fmt.Errorf("rules.audit_logging_options: not supported")
	}
	switch rules.GetAction() {
	case rbacv3.RBAC_ALLOW:
	case rbacv3.RBAC_DENY:
		f.deny = true
	default:
		return nil, fmt.Errorf("rules.action: %s is not supported (ALLOW, DENY)", rules.GetAction())
	}
	names := make([]string, 0, len(rules.GetPolicies()))
	for n := range rules.GetPolicies() {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		p, err := compilePolicy(fmt.Sprintf("rules.policies[%q]", n), n, rules.GetPolicies()[n])
		if err != nil {
			return nil, err
		}
		f.policies = append(f.policies, p)
	}
	return f, nil
}

func compilePolicy(path, name string, p *rbacv3.Policy) (policy, error) {
	switch {
	case p.GetCondition() != nil:
		return policy{}, fmt.Errorf("%s.condition: not supported", path)
	case p.GetCheckedCondition() != nil:
		return policy{}, fmt.Errorf("%s.checked_condition: not supported", path)
	case p.GetCelConfig() != nil:
		return policy{}, fmt.Errorf("%s.cel_config: not supported", path)
	}
	if len(p.GetPermissions()) == 0 {
		return policy{}, fmt.Errorf("%s.permissions: at least one is required", path)
	}
	if len(p.GetPrincipals()) == 0 {
		return policy{}, fmt.Errorf("%s.principals: at least one is required", path)
	}
	out := policy{name: name}
	var perms, princs []matcher
	for i, pm := range p.GetPermissions() {
		m, err := compilePermission(fmt.Sprintf("%s.permissions[%d]", path, i), pm)
		if err != nil {
			return policy{}, err
		}
		perms = append(perms, m)
	}
	for i, pr := range p.GetPrincipals() {
		m, err := compilePrincipal(fmt.Sprintf("%s.principals[%d]", path, i), pr)
		if err != nil {
			return policy{}, err
		}
		princs = append(princs, m)
	}
	out.permission, out.principal = anyOf(perms), anyOf(princs)
	return out, nil
}

func compilePermission(path string, p *rbacv3.Permission) (matcher, error) {
	switch r := p.GetRule().(type) {
	case *rbacv3.Permission_Any:
		if !r.Any {
			return nil, fmt.Errorf("%s.any: must be true", path)
		}
		return func(*request) bool { return true }, nil
	case *rbacv3.Permission_Header:
		h, err := route.CompileHeaderMatcher(path+".header", r.Header)
		if err != nil {
			return nil, err
		}
		return func(q *request) bool { return h.Matches(q.req) }, nil
	case *rbacv3.Permission_UrlPath:
		sm := r.UrlPath.GetPath()
		if sm == nil {
			return nil, fmt.Errorf("%s.url_path.path: required", path)
		}
		m, err := route.CompileStringMatcher(path+".url_path.path", sm)
		if err != nil {
			return nil, err
		}
		return func(q *request) bool { return m.Matches(pathOnly(q.req.Path)) }, nil
	case *rbacv3.Permission_DestinationPort:
		if r.DestinationPort > 65535 {
			return nil, fmt.Errorf("%s.destination_port: %d is out of range", path, r.DestinationPort)
		}
		want := strconv.Itoa(int(r.DestinationPort))
		return func(q *request) bool { return localPort(q.cb.Conn()) == want }, nil
	case *rbacv3.Permission_AndRules:
		ms, err := compilePermissions(path+".and_rules.rules", r.AndRules.GetRules())
		if err != nil {
			return nil, err
		}
		return all(ms), nil
	case *rbacv3.Permission_OrRules:
		ms, err := compilePermissions(path+".or_rules.rules", r.OrRules.GetRules())
		if err != nil {
			return nil, err
		}
		return anyOf(ms), nil
	case *rbacv3.Permission_NotRule:
		m, err := compilePermission(path+".not_rule", r.NotRule)
		if err != nil {
			return nil, err
		}
		return func(q *request) bool { return !m(q) }, nil
	case nil:
		return nil, fmt.Errorf("%s: a rule is required", path)
	default:
		return nil, fmt.Errorf("%s.%s: not supported (any, header, url_path, destination_port, and_rules, or_rules, not_rule)",
			path, oneofName(p, "rule"))
	}
}

func compilePermissions(path string, ps []*rbacv3.Permission) ([]matcher, error) {
	if len(ps) == 0 {
		return nil, fmt.Errorf("%s: at least one is required", path)
	}
	out := make([]matcher, len(ps))
	for i, p := range ps {
		m, err := compilePermission(fmt.Sprintf("%s[%d]", path, i), p)
		if err != nil {
			return nil, err
		}
		out[i] = m
	}
	return out, nil
}

func compilePrincipal(path string, p *rbacv3.Principal) (matcher, error) {
	switch id := p.GetIdentifier().(type) {
	case *rbacv3.Principal_Any:
		if !id.Any {
			return nil, fmt.Errorf("%s.any: must be true", path)
		}
		return func(*request) bool { return true }, nil
	case *rbacv3.Principal_Authenticated_:
		sm := id.Authenticated.GetPrincipalName()
		if sm == nil {
			// Envoy: any authenticated peer.
			return func(q *request) bool { return q.auth }, nil
		}
		m, err := route.CompileStringMatcher(path+".authenticated.principal_name", sm)
		if err != nil {
			return nil, err
		}
		return func(q *request) bool { return q.peer != "" && m.Matches(q.peer) }, nil
	case *rbacv3.Principal_DirectRemoteIp:
		pfx, err := cidr(id.DirectRemoteIp.GetAddressPrefix(), id.DirectRemoteIp.GetPrefixLen().GetValue())
		if err != nil {
			return nil, fmt.Errorf("%s.direct_remote_ip: %w", path, err)
		}
		return func(q *request) bool { return pfx.Contains(remoteIP(q.cb.Conn())) }, nil
	case *rbacv3.Principal_AndIds:
		ms, err := compilePrincipals(path+".and_ids.ids", id.AndIds.GetIds())
		if err != nil {
			return nil, err
		}
		return all(ms), nil
	case *rbacv3.Principal_OrIds:
		ms, err := compilePrincipals(path+".or_ids.ids", id.OrIds.GetIds())
		if err != nil {
			return nil, err
		}
		return anyOf(ms), nil
	case *rbacv3.Principal_NotId:
		m, err := compilePrincipal(path+".not_id", id.NotId)
		if err != nil {
			return nil, err
		}
		return func(q *request) bool { return !m(q) }, nil
	case nil:
		return nil, fmt.Errorf("%s: an identifier is required", path)
	default:
		return nil, fmt.Errorf("%s.%s: not supported (any, authenticated, direct_remote_ip, and_ids, or_ids, not_id)",
			path, oneofName(p, "identifier"))
	}
}

func compilePrincipals(path string, ps []*rbacv3.Principal) ([]matcher, error) {
	if len(ps) == 0 {
		return nil, fmt.Errorf("%s: at least one is required", path)
	}
	out := make([]matcher, len(ps))
	for i, p := range ps {
		m, err := compilePrincipal(fmt.Sprintf("%s[%d]", path, i), p)
		if err != nil {
			return nil, err
		}
		out[i] = m
	}
	return out, nil
}

// oneofName returns the name of the field set in m's oneof named oneof.
func oneofName(m proto.Message, oneof string) string {
	r := m.ProtoReflect()
	od := r.Descriptor().Oneofs().ByName(protoName(oneof))
	if fd := r.WhichOneof(od); fd != nil {
		return string(fd.Name())
	}
	return oneof
}

func all(ms []matcher) matcher {
	return func(q *request) bool {
		for _, m := range ms {
			if !m(q) {
				return false
			}
		}
		return true
	}
}

func anyOf(ms []matcher) matcher {
	return func(q *request) bool {
		for _, m := range ms {
			if m(q) {
				return true
			}
		}
		return false
	}
}

func cidr(addr string, bits uint32) (netip.Prefix, error) {
	ip, err := netip.ParseAddr(addr)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("address_prefix: %q is not an IP address", addr)
	}
	if int(bits) > ip.BitLen() {
		return netip.Prefix{}, fmt.Errorf("prefix_len: %d is longer than the address (%d bits)", bits, ip.BitLen())
	}
	return netip.PrefixFrom(ip.Unmap(), int(bits)).Masked(), nil
}

func remoteIP(c *stream.ConnInfo) netip.Addr {
	if c == nil || c.RemoteAddr == nil {
		return netip.Addr{}
	}
	ap, err := netip.ParseAddrPort(c.RemoteAddr.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

func localPort(c *stream.ConnInfo) string {
	if c == nil || c.LocalAddr == nil {
		return ""
	}
	s := c.LocalAddr.String()
	return s[strings.LastIndexByte(s, ':')+1:]
}

// pathOnly strips the query and fragment, as Envoy's url_path matching does.
func pathOnly(p string) string {
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		return p[:i]
	}
	return p
}

// NewFilter returns f: the compiled config holds no per-stream state.
func (f *Filter) NewFilter() filters.Filter { return f }

// OnRequestHeaders allows or denies the request.
func (f *Filter) OnRequestHeaders(cb filters.Callbacks, req *stream.Request, _ bool) filters.Status {
	st := f.stats.Get(cb.Stats(), f.newCounters)
	q := request{req: req, cb: cb}
	q.peer, _ = cb.PeerPrincipal()
	if tls := cb.Conn().TLS; tls != nil && len(tls.PeerCertificates) > 0 {
		q.auth = true
	}
	matched := ""
	for i := range f.policies {
		p := &f.policies[i]
		if p.permission(&q) && p.principal(&q) {
			matched = p.name
			break
		}
	}
	allowed := matched != ""
	if f.deny {
		allowed = !allowed
	}
	if allowed {
		st.allowed.Inc()
		return filters.Continue
	}
	st.denied.Inc()
	peer := q.peer
	if peer == "" {
		peer = "none"
	}
	cb.Logger().LogAttrs(cb.Context(), slog.LevelInfo, "rbac: access denied",
		slog.String("peer", peer), slog.String("method", req.Method), slog.String("path", req.Path),
		slog.String("policy", policyName(matched)))
	cb.SendLocalReply(403, "RBAC: access denied", "rbac_access_denied_matched_policy["+policyName(matched)+"]")
	return filters.Stop
}

func policyName(n string) string {
	if n == "" {
		return "none"
	}
	return n
}

func (f *Filter) newCounters(sc *stats.Scope) *counters {
	r := sc.Scope("rbac")
	return &counters{
		allowed: r.Counter(f.statPrefix + "allowed"),
		denied:  r.Counter(f.statPrefix + "denied"),
	}
}

func protoName(s string) protoreflect.Name { return protoreflect.Name(s) }
