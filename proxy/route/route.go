// Package route compiles an Envoy v3 RouteConfiguration into an immutable
// matcher: virtual host selection by authority, route selection by path,
// headers, query parameters and gRPC content type, and the per-route
// settings the router needs (clusters and weights, direct responses,
// timeouts, retry policy, rewrites, header mutations).
//
// Compile validates everything up front and names the field path of the
// first problem, e.g. "virtual_hosts[1].routes[0].match.safe_regex: invalid
// RE2: ...". A field Compile does not implement is an error naming it, never
// silently ignored; the only fields accepted and ignored are the opaque
// "metadata" of the route configuration, virtual hosts and routes.
//
// A compiled Table is immutable and safe for concurrent use; Match does not
// allocate for requests whose headers have one value per matched name.
package route

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"meshd.dev/meshd/proxy/http/stream"
)

// DefaultTimeout is Envoy's route timeout when route.timeout is unset.
const DefaultTimeout = 15 * time.Second

// DefaultMaxDirectResponseBodySize is Envoy's default for
// max_direct_response_body_size_bytes.
const DefaultMaxDirectResponseBodySize = 4096

// Table is a compiled RouteConfiguration. Immutable.
type Table struct {
	// Name is the RouteConfiguration's name.
	Name string
	// VirtualHosts are the virtual hosts in configuration order.
	VirtualHosts []*VirtualHost
	// ValidateClusters is validate_clusters, nil when unset. Cluster names
	// are not checked here: the caller, which knows the clusters, does it
	// (Envoy defaults to checking for route configurations inlined in the
	// connection manager, and not for RDS).
	ValidateClusters *bool

	ignorePort bool
	exact      map[string]*VirtualHost
	suffixes   []wildcardGroup // longest first
	prefixes   []wildcardGroup // longest first
	fallback   *VirtualHost    // domain "*"
}

// wildcardGroup holds the wildcard domains of one length, without the "*",
// so that a lookup is one map access per distinct length.
type wildcardGroup struct {
	n  int
	vh map[string]*VirtualHost
}

// VirtualHost is a compiled virtual host. Immutable.
type VirtualHost struct {
	Name string
	// Domains as configured, lower-cased.
	Domains []string
	// Routes in configuration order; the first that matches wins.
	Routes []*Route
}

// WeightedCluster is one cluster of a weighted_clusters action.
type WeightedCluster struct {
	Name   string
	Weight uint32
	// HostRewriteLiteral, when non-empty, overrides the route's for
	// requests sent to this cluster.
	HostRewriteLiteral string

	requestOps, responseOps *headerOps
}

// DirectResponse is a direct_response action.
type DirectResponse struct {
	Status int
	Body   []byte
}

// Route is a compiled route. Immutable. Exactly one of Cluster, Weighted,
// Direct and Redirect is set.
type Route struct {
	// Name is the route's name, possibly empty.
	Name string
	// VirtualHost is the virtual host the route belongs to.
	VirtualHost *VirtualHost

	// Cluster is the target of a route action with a single cluster.
	Cluster string
	// Weighted are the targets of weighted_clusters; PickCluster chooses.
	Weighted []WeightedCluster
	// Direct is a direct_response action.
	Direct *DirectResponse
	// Redirect is a redirect action; see RedirectLocation.
	Redirect *Redirect
	// ClusterNotFoundStatus is the status the router answers when the
	// chosen cluster does not exist: 503 (Envoy's default), 404 or 500.
	ClusterNotFoundStatus int

	// Timeout is route.timeout: DefaultTimeout when unset, 0 = disabled.
	// See EffectiveTimeout for how gRPC requests adjust it.
	Timeout time.Duration
	// IdleTimeout is route.idle_timeout; nil when unset (the connection
	// manager's stream_idle_timeout then applies), 0 = disabled.
	IdleTimeout *time.Duration
	// MaxStreamDuration is max_stream_duration.max_stream_duration; nil
	// when unset (the connection manager's value applies), 0 = disabled.
	MaxStreamDuration *time.Duration
	// MaxGRPCTimeout is max_stream_duration.grpc_timeout_header_max, or the
	// legacy max_grpc_timeout; nil when neither is set. When set, gRPC
	// requests use their grpc-timeout header, capped at it (0 = no cap).
	MaxGRPCTimeout *time.Duration
	// GRPCTimeoutOffset is subtracted from the grpc-timeout header
	// (max_stream_duration.grpc_timeout_header_offset, or the legacy
	// grpc_timeout_offset).
	GRPCTimeoutOffset time.Duration

	// PrefixRewrite replaces the matched prefix (or the whole path for a
	// path match); applied by Rewrite.
	PrefixRewrite string
	// HostRewriteLiteral replaces the authority; applied by Rewrite.
	HostRewriteLiteral string
	// AutoHostRewrite asks the router to set the authority to the chosen
	// upstream host's hostname (it knows the host; Rewrite does not).
	AutoHostRewrite bool

	// Retry is the route's retry_policy, else the virtual host's; nil when
	// neither has one.
	Retry *RetryPolicy
	// BodyBufferLimit is the request body buffer limit the route sets, else
	// the one its virtual host sets (request_body_buffer_limit, else the
	// deprecated per_request_buffer_limit_bytes, at each level); the zero
	// value when neither sets one. Resolve it with BodyBufferLimit.Bytes.
	BodyBufferLimit BodyBufferLimit

	match            *routeMatch
	totalWeight      uint32
	regexRewrite     *regexp.Regexp
	regexRewriteSub  string
	mostSpecificWins bool
	// Header mutations from the least specific level to the most:
	// route configuration, virtual host, route.
	requestLevels  [3]*headerOps
	responseLevels [3]*headerOps
}

// Match returns the route for req and its virtual host. The virtual host is
// chosen by req.Authority (see virtualHost); within it the first route whose
// match accepts the request wins. It returns (nil, nil) when no virtual host
// matches and (nil, vh) when the virtual host has no matching route; either
// way the caller answers 404 with response flag NR.
func (t *Table) Match(req *stream.Request) (*Route, *VirtualHost) {
	vh := t.virtualHost(req.Authority)
	if vh == nil {
		return nil, nil
	}
	path := req.Path
	if i := strings.IndexAny(path, "?#"); i >= 0 {
		path = path[:i]
	}
	for _, r := range vh.Routes {
		if r.match.matches(req, path) {
			return r, vh
		}
	}
	return nil, vh
}

// virtualHost selects a virtual host as Envoy does. The authority is
// compared case-insensitively, in this order: exact domains; suffix
// wildcards ("*.foo.com", "*-bar.foo.com"), longest first; prefix wildcards
// ("foo.*"), longest first; finally "*". A wildcard never matches an empty
// part, so "*.foo.com" does not match ".foo.com". The port is part of the
// authority: "foo.com:8080" matches only a domain that includes the port,
// unless ignore_port_in_host_matching is set. Stripping ports before routing
// (strip_any_host_port, strip_matching_host_port) is the connection
// manager's job, as in Envoy.
func (t *Table) virtualHost(authority string) *VirtualHost {
	host := asciiLower(authority)
	if t.ignorePort {
		host = stripPort(host)
	}
	if vh, ok := t.exact[host]; ok {
		return vh
	}
	for _, g := range t.suffixes {
		if g.n < len(host) {
			if vh, ok := g.vh[host[len(host)-g.n:]]; ok {
				return vh
			}
		}
	}
	for _, g := range t.prefixes {
		if g.n < len(host) {
			if vh, ok := g.vh[host[:g.n]]; ok {
				return vh
			}
		}
	}
	return t.fallback
}

// stripPort removes a trailing ":port" from host, leaving bracketed and bare
// IPv6 literals intact.
func stripPort(host string) string {
	i := strings.LastIndexByte(host, ':')
	if i < 0 || strings.IndexByte(host, ']') > i || (host[0] != '[' && strings.IndexByte(host, ':') != i) {
		return host
	}
	for j := i + 1; j < len(host); j++ {
		if host[j] < '0' || host[j] > '9' {
			return host
		}
	}
	return host[:i]
}

// PickCluster chooses one of the weighted clusters in proportion to its
// weight, as Envoy does: rnd modulo the total weight selects a point in the
// cumulative weights. rnd should come from a fast uniform source such as
// math/rand/v2's Uint64. For a single-cluster route it returns Cluster, and
// "" for a direct response or a redirect.
func (r *Route) PickCluster(rnd uint64) string {
	if len(r.Weighted) == 0 {
		return r.Cluster
	}
	v := uint32(rnd % uint64(r.totalWeight))
	for i := range r.Weighted {
		if v < r.Weighted[i].Weight {
			return r.Weighted[i].Name
		}
		v -= r.Weighted[i].Weight
	}
	return r.Weighted[len(r.Weighted)-1].Name // unreachable: weights sum to totalWeight
}

// Rewrite applies the route's path and host rewrites to req for a request
// sent to clusterName: prefix_rewrite replaces the matched prefix (the whole
// path for a path match), regex_rewrite substitutes every match in the path
// (the query string is kept as is), and host_rewrite_literal (the weighted
// cluster's, else the route's) replaces the authority. It reports whether
// the path changed, so the caller can add x-envoy-original-path if it wants.
func (r *Route) Rewrite(req *stream.Request, clusterName string) (pathChanged bool) {
	host := r.HostRewriteLiteral
	for i := range r.Weighted {
		if r.Weighted[i].Name == clusterName && r.Weighted[i].HostRewriteLiteral != "" {
			host = r.Weighted[i].HostRewriteLiteral
		}
	}
	if host != "" {
		req.Authority = host
	}
	if r.PrefixRewrite == "" && r.regexRewrite == nil {
		return false
	}
	path, query := req.Path, ""
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path, query = path[:i], path[i:]
	}
	switch {
	case r.regexRewrite != nil:
		path = r.regexRewrite.ReplaceAllString(path, r.regexRewriteSub)
	case r.match.kind == pathExact:
		path = r.PrefixRewrite
	case len(path) >= len(r.match.value):
		path = r.PrefixRewrite + path[len(r.match.value):]
	}
	req.Path = path + query
	return true
}

// Compile validates rc and compiles it into a Table. The error names the
// field path of the first problem found.
func Compile(rc *routev3.RouteConfiguration) (*Table, error) {
	if rc == nil {
		return nil, fmt.Errorf("route configuration: missing")
	}
	if err := rc.Validate(); err != nil {
		return nil, fmt.Errorf("route configuration %q: %w", rc.GetName(), err)
	}
	if err := checkSupported(rc.ProtoReflect(), ""); err != nil {
		return nil, err
	}
	t := &Table{Name: rc.GetName(), ignorePort: rc.GetIgnorePortInHostMatching(), exact: map[string]*VirtualHost{}}
	if v := rc.GetValidateClusters(); v != nil {
		b := v.GetValue()
		t.ValidateClusters = &b
	}
	c := compiler{rc: rc, maxBody: DefaultMaxDirectResponseBodySize}
	if m := rc.GetMaxDirectResponseBodySizeBytes(); m != nil {
		c.maxBody = m.GetValue()
	}
	var err error
	if c.global[0], err = compileHeaderOps("", "request", rc.GetRequestHeadersToAdd(), rc.GetRequestHeadersToRemove()); err != nil {
		return nil, err
	}
	if c.global[1], err = compileHeaderOps("", "response", rc.GetResponseHeadersToAdd(), rc.GetResponseHeadersToRemove()); err != nil {
		return nil, err
	}
	owner := map[string]int{} // domain -> index of the virtual host that has it
	suffixes, prefixes := map[int]map[string]*VirtualHost{}, map[int]map[string]*VirtualHost{}
	for i, vhc := range rc.GetVirtualHosts() {
		p := fmt.Sprintf("virtual_hosts[%d]", i)
		vh, err := c.virtualHost(p, vhc)
		if err != nil {
			return nil, err
		}
		t.VirtualHosts = append(t.VirtualHosts, vh)
		for j, d := range vh.Domains {
			if prev, dup := owner[d]; dup {
				return nil, fmt.Errorf("%s.domains[%d]: domain %q is also in virtual_hosts[%d] (%q); domains must be unique across virtual hosts",
					p, j, d, prev, rc.GetVirtualHosts()[prev].GetName())
			}
			owner[d] = i
			switch {
			case d == "*":
				t.fallback = vh
			case d[0] == '*':
				addWildcard(suffixes, d[1:], vh)
			case d[len(d)-1] == '*':
				addWildcard(prefixes, d[:len(d)-1], vh)
			default:
				t.exact[d] = vh
			}
		}
	}
	t.suffixes, t.prefixes = sortGroups(suffixes), sortGroups(prefixes)
	return t, nil
}

func addWildcard(m map[int]map[string]*VirtualHost, s string, vh *VirtualHost) {
	if m[len(s)] == nil {
		m[len(s)] = map[string]*VirtualHost{}
	}
	m[len(s)][s] = vh
}

func sortGroups(m map[int]map[string]*VirtualHost) []wildcardGroup {
	gs := make([]wildcardGroup, 0, len(m))
	for n, vh := range m {
		gs = append(gs, wildcardGroup{n: n, vh: vh})
	}
	slices.SortFunc(gs, func(a, b wildcardGroup) int { return b.n - a.n })
	return gs
}

// compiler carries route-configuration-wide settings into the per-route
// compilation.
type compiler struct {
	rc      *routev3.RouteConfiguration
	maxBody uint32
	global  [2]*headerOps // request, response
}

func (c *compiler) virtualHost(p string, v *routev3.VirtualHost) (*VirtualHost, error) {
	vh := &VirtualHost{Name: v.GetName()}
	if len(v.GetDomains()) == 0 {
		return nil, fmt.Errorf("%s.domains: at least one domain is required", p)
	}
	for j, d := range v.GetDomains() {
		d = strings.ToLower(d)
		if d == "" || strings.ContainsAny(d, " \t\r\n") {
			return nil, fmt.Errorf("%s.domains[%d]: %q is not a valid domain", p, j, d)
		}
		vh.Domains = append(vh.Domains, d)
	}
	reqOps, err := compileHeaderOps(p, "request", v.GetRequestHeadersToAdd(), v.GetRequestHeadersToRemove())
	if err != nil {
		return nil, err
	}
	respOps, err := compileHeaderOps(p, "response", v.GetResponseHeadersToAdd(), v.GetResponseHeadersToRemove())
	if err != nil {
		return nil, err
	}
	//lint:ignore SA1019 deprecated in Envoy's API but still honoured by Envoy; the sidecar honours it for control planes that send it
	vhLimit, err := compileBodyBufferLimit(p, v.GetRequestBodyBufferLimit(), v.GetPerRequestBufferLimitBytes())
	if err != nil {
		return nil, err
	}
	var vhRetry *RetryPolicy
	if rp := v.GetRetryPolicy(); rp != nil {
		if vhRetry, err = compileRetryPolicy(p+".retry_policy", rp); err != nil {
			return nil, err
		}
	}
	for j, rc := range v.GetRoutes() {
		rp := fmt.Sprintf("%s.routes[%d]", p, j)
		r, err := c.route(rp, rc)
		if err != nil {
			return nil, err
		}
		r.VirtualHost = vh
		r.requestLevels[0], r.requestLevels[1] = c.global[0], reqOps
		r.responseLevels[0], r.responseLevels[1] = c.global[1], respOps
		if r.Retry == nil {
			r.Retry = vhRetry
		}
		if !r.BodyBufferLimit.Set {
			r.BodyBufferLimit = vhLimit
		}
		vh.Routes = append(vh.Routes, r)
	}
	return vh, nil
}

func (c *compiler) route(p string, rc *routev3.Route) (*Route, error) {
	r := &Route{Name: rc.GetName(), mostSpecificWins: c.rc.GetMostSpecificHeaderMutationsWins()}
	var err error
	if rc.GetMatch() == nil {
		return nil, fmt.Errorf("%s.match: required", p)
	}
	if r.match, err = compileRouteMatch(p+".match", rc.GetMatch()); err != nil {
		return nil, err
	}
	if r.requestLevels[2], err = compileHeaderOps(p, "request", rc.GetRequestHeadersToAdd(), rc.GetRequestHeadersToRemove()); err != nil {
		return nil, err
	}
	if r.responseLevels[2], err = compileHeaderOps(p, "response", rc.GetResponseHeadersToAdd(), rc.GetResponseHeadersToRemove()); err != nil {
		return nil, err
	}
	//lint:ignore SA1019 deprecated in Envoy's API but still honoured by Envoy; the sidecar honours it for control planes that send it
	if r.BodyBufferLimit, err = compileBodyBufferLimit(p, rc.GetRequestBodyBufferLimit(), rc.GetPerRequestBufferLimitBytes()); err != nil {
		return nil, err
	}
	switch a := rc.GetAction().(type) {
	case *routev3.Route_Route:
		err = c.routeAction(p+".route", a.Route, r)
	case *routev3.Route_DirectResponse:
		err = c.directResponse(p+".direct_response", a.DirectResponse, r)
	case *routev3.Route_Redirect:
		r.Redirect, err = compileRedirect(p+".redirect", a.Redirect, r.match)
	default:
		err = fmt.Errorf("%s: one of route, redirect or direct_response is required", p)
	}
	if err != nil {
		return nil, err
	}
	return r, nil
}

func (c *compiler) directResponse(p string, d *routev3.DirectResponseAction, r *Route) error {
	if d.GetStatus() < 200 || d.GetStatus() > 599 {
		return fmt.Errorf("%s.status: %d is not within [200, 599]", p, d.GetStatus())
	}
	dr := &DirectResponse{Status: int(d.GetStatus())}
	if b := d.GetBody(); b != nil {
		if s := b.GetInlineString(); s != "" {
			dr.Body = []byte(s)
		} else {
			dr.Body = slices.Clone(b.GetInlineBytes())
		}
		if uint64(len(dr.Body)) > uint64(c.maxBody) {
			return fmt.Errorf("%s.body: %d bytes exceed max_direct_response_body_size_bytes %d", p, len(dr.Body), c.maxBody)
		}
	}
	r.Direct = dr
	return nil
}

func (c *compiler) routeAction(p string, a *routev3.RouteAction, r *Route) error {
	switch cs := a.GetClusterSpecifier().(type) {
	case *routev3.RouteAction_Cluster:
		if cs.Cluster == "" {
			return fmt.Errorf("%s.cluster: empty", p)
		}
		r.Cluster = cs.Cluster
	case *routev3.RouteAction_WeightedClusters:
		if err := c.weighted(p+".weighted_clusters", cs.WeightedClusters, r); err != nil {
			return err
		}
	default:
		return fmt.Errorf("%s: one of cluster or weighted_clusters is required", p)
	}
	switch a.GetClusterNotFoundResponseCode() {
	case routev3.RouteAction_SERVICE_UNAVAILABLE:
		r.ClusterNotFoundStatus = 503
	case routev3.RouteAction_NOT_FOUND:
		r.ClusterNotFoundStatus = 404
	case routev3.RouteAction_INTERNAL_SERVER_ERROR:
		r.ClusterNotFoundStatus = 500
	default:
		return fmt.Errorf("%s.cluster_not_found_response_code: unknown value %d", p, a.GetClusterNotFoundResponseCode())
	}

	var err error
	r.Timeout = DefaultTimeout
	if a.GetTimeout() != nil {
		if r.Timeout, err = duration(p+".timeout", a.GetTimeout()); err != nil {
			return err
		}
	}
	if r.IdleTimeout, err = optDuration(p+".idle_timeout", a.GetIdleTimeout()); err != nil {
		return err
	}
	//lint:ignore SA1019 deprecated in Envoy's API but still honoured by Envoy; the sidecar honours it for control planes that send it
	if r.MaxGRPCTimeout, err = optDuration(p+".max_grpc_timeout", a.GetMaxGrpcTimeout()); err != nil {
		return err
	}
	//lint:ignore SA1019 deprecated in Envoy's API but still honoured by Envoy; the sidecar honours it for control planes that send it
	if r.GRPCTimeoutOffset, err = duration(p+".grpc_timeout_offset", a.GetGrpcTimeoutOffset()); err != nil {
		return err
	}
	if msd := a.GetMaxStreamDuration(); msd != nil {
		mp := p + ".max_stream_duration"
		if r.MaxStreamDuration, err = optDuration(mp+".max_stream_duration", msd.GetMaxStreamDuration()); err != nil {
			return err
		}
		// The max_stream_duration fields take precedence over the legacy ones.
		if m, err := optDuration(mp+".grpc_timeout_header_max", msd.GetGrpcTimeoutHeaderMax()); err != nil {
			return err
		} else if m != nil {
			r.MaxGRPCTimeout = m
		}
		if msd.GetGrpcTimeoutHeaderOffset() != nil {
			if r.GRPCTimeoutOffset, err = duration(mp+".grpc_timeout_header_offset", msd.GetGrpcTimeoutHeaderOffset()); err != nil {
				return err
			}
		}
	}

	if a.GetPrefixRewrite() != "" && a.GetRegexRewrite() != nil {
		return fmt.Errorf("%s: prefix_rewrite and regex_rewrite are mutually exclusive", p)
	}
	if a.GetPrefixRewrite() != "" && r.match.kind == pathRegex {
		return fmt.Errorf("%s.prefix_rewrite: cannot be used with a safe_regex match (use regex_rewrite)", p)
	}
	r.PrefixRewrite = a.GetPrefixRewrite()
	if rr := a.GetRegexRewrite(); rr != nil {
		if rr.GetPattern() == nil {
			return fmt.Errorf("%s.regex_rewrite.pattern: required", p)
		}
		pat := rr.GetPattern().GetRegex()
		if r.regexRewrite, err = regexp.Compile(pat); err != nil {
			return fmt.Errorf("%s.regex_rewrite.pattern: invalid RE2: %w", p, err)
		}
		if r.regexRewriteSub, err = convertSubstitution(rr.GetSubstitution(), r.regexRewrite.NumSubexp()); err != nil {
			return fmt.Errorf("%s.regex_rewrite.substitution: %w", p, err)
		}
	}
	switch h := a.GetHostRewriteSpecifier().(type) {
	case *routev3.RouteAction_HostRewriteLiteral:
		r.HostRewriteLiteral = h.HostRewriteLiteral
	case *routev3.RouteAction_AutoHostRewrite:
		r.AutoHostRewrite = h.AutoHostRewrite.GetValue()
	}
	if rp := a.GetRetryPolicy(); rp != nil {
		if r.Retry, err = compileRetryPolicy(p+".retry_policy", rp); err != nil {
			return err
		}
	}
	return nil
}

func (c *compiler) weighted(p string, w *routev3.WeightedCluster, r *Route) error {
	if len(w.GetClusters()) == 0 {
		return fmt.Errorf("%s.clusters: at least one cluster is required", p)
	}
	var sum uint64
	for i, cw := range w.GetClusters() {
		cp := fmt.Sprintf("%s.clusters[%d]", p, i)
		if cw.GetName() == "" {
			return fmt.Errorf("%s.name: required", cp)
		}
		wc := WeightedCluster{Name: cw.GetName(), Weight: cw.GetWeight().GetValue(), HostRewriteLiteral: cw.GetHostRewriteLiteral()}
		var err error
		if wc.requestOps, err = compileHeaderOps(cp, "request", cw.GetRequestHeadersToAdd(), cw.GetRequestHeadersToRemove()); err != nil {
			return err
		}
		if wc.responseOps, err = compileHeaderOps(cp, "response", cw.GetResponseHeadersToAdd(), cw.GetResponseHeadersToRemove()); err != nil {
			return err
		}
		sum += uint64(wc.Weight)
		r.Weighted = append(r.Weighted, wc)
	}
	if sum == 0 {
		return fmt.Errorf("%s.clusters: the sum of weights must be greater than 0", p)
	}
	if sum > 1<<32-1 {
		return fmt.Errorf("%s.clusters: the sum of weights %d overflows uint32", p, sum)
	}
	//lint:ignore SA1019 deprecated in Envoy's API but still honoured by Envoy; the sidecar honours it for control planes that send it
	if tw := w.GetTotalWeight(); tw != nil && uint64(tw.GetValue()) != sum {
		return fmt.Errorf("%s.total_weight: %d does not equal the sum of weights %d", p, tw.GetValue(), sum)
	}
	r.totalWeight = uint32(sum)
	return nil
}

// convertSubstitution turns an RE2 substitution ("\1" for a group, "\\"
// for a backslash) into Go's Expand syntax, rejecting references to groups
// the pattern does not have.
func convertSubstitution(s string, groups int) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '$':
			b.WriteString("$$")
		case c == '\\' && i+1 < len(s) && s[i+1] >= '0' && s[i+1] <= '9':
			g := int(s[i+1] - '0')
			if g > groups {
				return "", fmt.Errorf(`\%d refers to a group the pattern does not have (%d groups)`, g, groups)
			}
			fmt.Fprintf(&b, "${%d}", g)
			i++
		case c == '\\' && i+1 < len(s) && s[i+1] == '\\':
			b.WriteByte('\\')
			i++
		case c == '\\':
			return "", fmt.Errorf(`lone backslash at offset %d (write \\ for a backslash)`, i)
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), nil
}

// duration converts a protobuf Duration (nil = 0), rejecting invalid and
// negative values with the field path.
func duration(p string, d *durationpb.Duration) (time.Duration, error) {
	if d == nil {
		return 0, nil
	}
	if err := d.CheckValid(); err != nil {
		return 0, fmt.Errorf("%s: %w", p, err)
	}
	v := d.AsDuration()
	if v < 0 {
		return 0, fmt.Errorf("%s: %v is negative", p, v)
	}
	return v, nil
}

func optDuration(p string, d *durationpb.Duration) (*time.Duration, error) {
	if d == nil {
		return nil, nil
	}
	v, err := duration(p, d)
	if err != nil {
		return nil, err
	}
	return &v, nil
}
