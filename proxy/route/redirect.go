package route

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"meshd.dev/meshd/proxy/http/stream"
)

// Redirect is a compiled redirect action: the router answers with Status
// and a Location header built by Route.RedirectLocation. Immutable.
type Redirect struct {
	// Status is 301 (Envoy's default), 302, 303, 307 or 308.
	Status int
	// Scheme replaces the request's scheme when non-empty.
	Scheme string
	// Host replaces the request's authority when non-empty (it may carry
	// a port; the request's port is then dropped).
	Host string
	// Port replaces the authority's port when non-zero.
	Port uint32
	// PathRedirect replaces the path (and, if it has one, the query) when
	// HasPathRedirect is set.
	PathRedirect    string
	HasPathRedirect bool
	// PrefixRewrite replaces the matched prefix when HasPrefixRewrite is set.
	PrefixRewrite    string
	HasPrefixRewrite bool
	// StripQuery drops the request's query string.
	StripQuery bool

	regex    *regexp.Regexp
	regexSub string
}

var redirectCodes = map[routev3.RedirectAction_RedirectResponseCode]int{
	routev3.RedirectAction_MOVED_PERMANENTLY:  301,
	routev3.RedirectAction_FOUND:              302,
	routev3.RedirectAction_SEE_OTHER:          303,
	routev3.RedirectAction_TEMPORARY_REDIRECT: 307,
	routev3.RedirectAction_PERMANENT_REDIRECT: 308,
}

func compileRedirect(p string, a *routev3.RedirectAction, m *routeMatch) (*Redirect, error) {
	status, ok := redirectCodes[a.GetResponseCode()]
	if !ok {
		return nil, fmt.Errorf("%s.response_code: unknown value %d", p, a.GetResponseCode())
	}
	rd := &Redirect{Status: status, Host: strings.ToLower(a.GetHostRedirect()), Port: a.GetPortRedirect(), StripQuery: a.GetStripQuery()}
	if rd.Port > 65535 {
		return nil, fmt.Errorf("%s.port_redirect: %d is not a port", p, rd.Port)
	}
	switch s := a.GetSchemeRewriteSpecifier().(type) {
	case *routev3.RedirectAction_HttpsRedirect:
		if s.HttpsRedirect {
			rd.Scheme = "https"
		}
	case *routev3.RedirectAction_SchemeRedirect:
		rd.Scheme = strings.ToLower(s.SchemeRedirect)
	}
	switch ps := a.GetPathRewriteSpecifier().(type) {
	case *routev3.RedirectAction_PathRedirect:
		if !strings.HasPrefix(ps.PathRedirect, "/") {
			return nil, fmt.Errorf("%s.path_redirect: %q must start with '/'", p, ps.PathRedirect)
		}
		rd.PathRedirect, rd.HasPathRedirect = ps.PathRedirect, true
	case *routev3.RedirectAction_PrefixRewrite:
		if m.kind == pathRegex {
			return nil, fmt.Errorf("%s.prefix_rewrite: cannot be used with a safe_regex match (use regex_rewrite)", p)
		}
		rd.PrefixRewrite, rd.HasPrefixRewrite = ps.PrefixRewrite, true
	case *routev3.RedirectAction_RegexRewrite:
		if ps.RegexRewrite.GetPattern() == nil {
			return nil, fmt.Errorf("%s.regex_rewrite.pattern: required", p)
		}
		re, err := regexp.Compile(ps.RegexRewrite.GetPattern().GetRegex())
		if err != nil {
			return nil, fmt.Errorf("%s.regex_rewrite.pattern: invalid RE2: %w", p, err)
		}
		if rd.regexSub, err = convertSubstitution(ps.RegexRewrite.GetSubstitution(), re.NumSubexp()); err != nil {
			return nil, fmt.Errorf("%s.regex_rewrite.substitution: %w", p, err)
		}
		rd.regex = re
	}
	return rd, nil
}

// RedirectLocation is the Location of a redirect route's response to req
// ("" for routes that are not redirects). It follows Envoy: the scheme,
// host, port, path and query are each kept from the request unless the
// action replaces them; when the scheme changes, an explicit port that was
// the default of the request's scheme (":80" for http, ":443" for https)
// is dropped; path_redirect's own query replaces the request's and survives
// strip_query.
func (r *Route) RedirectLocation(req *stream.Request) string {
	rd := r.Redirect
	if rd == nil {
		return ""
	}
	scheme := req.Scheme
	if scheme == "" {
		scheme = "http"
	}
	host, port := splitAuthority(req.Authority)
	if rd.Scheme != "" && rd.Scheme != scheme {
		if (scheme == "http" && port == "80") || (scheme == "https" && port == "443") {
			port = ""
		}
		scheme = rd.Scheme
	}
	if rd.Host != "" {
		host, port = splitAuthority(rd.Host)
	}
	if rd.Port != 0 {
		port = strconv.FormatUint(uint64(rd.Port), 10)
	}

	path, query := req.Path, ""
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path, query = path[:i], path[i:]
	}
	if rd.StripQuery {
		query = ""
	}
	switch {
	case rd.HasPathRedirect:
		path = rd.PathRedirect
		if i := strings.IndexByte(path, '?'); i >= 0 {
			path, query = path[:i], path[i:]
		}
	case rd.HasPrefixRewrite && r.match.kind == pathExact:
		path = rd.PrefixRewrite
	case rd.HasPrefixRewrite && len(path) >= len(r.match.value):
		path = rd.PrefixRewrite + path[len(r.match.value):]
	case rd.regex != nil:
		path = rd.regex.ReplaceAllString(path, rd.regexSub)
	}

	var b strings.Builder
	b.WriteString(scheme)
	b.WriteString("://")
	b.WriteString(host)
	if port != "" {
		b.WriteByte(':')
		b.WriteString(port)
	}
	b.WriteString(path)
	b.WriteString(query)
	return b.String()
}

// splitAuthority splits "host:port" (with IPv6 literals in brackets) into
// host and port; port is "" when absent.
func splitAuthority(a string) (host, port string) {
	h := stripPort(a)
	if len(h) == len(a) {
		return a, ""
	}
	return h, a[len(h)+1:]
}
