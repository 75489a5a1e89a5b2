package route

import (
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	"meshd.dev/meshd/proxy/http/stream"
)

type pathKind uint8

const (
	pathPrefix pathKind = iota
	pathExact
	pathRegex
	pathSeparatedPrefix
)

// routeMatch is a compiled RouteMatch. Immutable.
type routeMatch struct {
	kind          pathKind
	value         string // prefix or path; lower case when !caseSensitive
	caseSensitive bool
	re            *regexp.Regexp // anchored at both ends
	rePrefix      string         // literal every match starts with; checked before running re
	grpc          bool
	headers       []headerMatcher
	query         []queryMatcher
}

func compileRegex(p string, m *matcherv3.RegexMatcher) (*regexp.Regexp, error) {
	// Compile the user's text alone first: it gives the clearer error, and
	// it rejects text such as "a)|(b" that would escape the anchoring group.
	if _, err := regexp.Compile(m.GetRegex()); err != nil {
		return nil, fmt.Errorf("%s: invalid RE2: %w", p, err)
	}
	// Envoy's safe_regex must match the whole input.
	re, err := regexp.Compile(`^(?:` + m.GetRegex() + `)$`)
	if err != nil {
		return nil, fmt.Errorf("%s: invalid RE2: %w", p, err)
	}
	return re, nil
}

func compileRouteMatch(p string, m *routev3.RouteMatch) (*routeMatch, error) {
	rm := &routeMatch{caseSensitive: true, grpc: m.GetGrpc() != nil}
	if cs := m.GetCaseSensitive(); cs != nil {
		rm.caseSensitive = cs.GetValue()
	}
	switch ps := m.GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		rm.kind, rm.value = pathPrefix, ps.Prefix
	case *routev3.RouteMatch_Path:
		rm.kind, rm.value = pathExact, ps.Path
	case *routev3.RouteMatch_PathSeparatedPrefix:
		v := ps.PathSeparatedPrefix
		if !strings.HasPrefix(v, "/") || (len(v) > 1 && strings.HasSuffix(v, "/")) || strings.ContainsAny(v, "?#") {
			return nil, fmt.Errorf("%s.path_separated_prefix: %q must start with '/', not end with '/' and contain no '?' or '#'", p, v)
		}
		rm.kind, rm.value = pathSeparatedPrefix, v
	case *routev3.RouteMatch_SafeRegex:
		re, err := compileRegex(p+".safe_regex", ps.SafeRegex)
		if err != nil {
			return nil, err
		}
		rm.kind, rm.re = pathRegex, re
		rm.rePrefix, _ = re.LiteralPrefix()
	default:
		return nil, fmt.Errorf("%s: one of prefix, path, safe_regex or path_separated_prefix is required", p)
	}
	if !rm.caseSensitive {
		rm.value = strings.ToLower(rm.value)
	}
	for i, hm := range m.GetHeaders() {
		c, err := compileHeaderMatcher(fmt.Sprintf("%s.headers[%d]", p, i), hm)
		if err != nil {
			return nil, err
		}
		rm.headers = append(rm.headers, c)
	}
	for i, qm := range m.GetQueryParameters() {
		qp := fmt.Sprintf("%s.query_parameters[%d]", p, i)
		c := queryMatcher{name: qm.GetName()}
		if c.name == "" {
			return nil, fmt.Errorf("%s.name: required", qp)
		}
		if sm := qm.GetStringMatch(); sm != nil {
			s, err := compileStringMatcher(qp+".string_match", sm)
			if err != nil {
				return nil, err
			}
			c.value = &s
		}
		rm.query = append(rm.query, c)
	}
	return rm, nil
}

// matches reports whether req matches. path is req.Path without query and
// fragment.
func (m *routeMatch) matches(req *stream.Request, path string) bool {
	switch m.kind {
	case pathPrefix:
		if !hasPrefixFold(path, m.value, m.caseSensitive) {
			return false
		}
	case pathExact:
		if len(path) != len(m.value) || !hasPrefixFold(path, m.value, m.caseSensitive) {
			return false
		}
	case pathSeparatedPrefix:
		if !hasPrefixFold(path, m.value, m.caseSensitive) {
			return false
		}
		if len(path) > len(m.value) && path[len(m.value)] != '/' && m.value != "/" {
			return false
		}
	case pathRegex:
		if !strings.HasPrefix(path, m.rePrefix) || !m.re.MatchString(path) {
			return false
		}
	}
	if m.grpc && !isGRPC(req) {
		return false
	}
	for i := range m.headers {
		if !m.headers[i].matches(req) {
			return false
		}
	}
	if len(m.query) > 0 {
		q := ""
		if i := strings.IndexByte(req.Path, '?'); i >= 0 {
			q = req.Path[i+1:]
			if j := strings.IndexByte(q, '#'); j >= 0 {
				q = q[:j]
			}
		}
		for i := range m.query {
			if !m.query[i].matches(q) {
				return false
			}
		}
	}
	return true
}

// hasPrefixFold is strings.HasPrefix, ASCII-case-insensitive when
// !caseSensitive (prefix is then already lower case), as Envoy compares.
func hasPrefixFold(s, prefix string, caseSensitive bool) bool {
	if len(s) < len(prefix) {
		return false
	}
	if caseSensitive {
		return s[:len(prefix)] == prefix
	}
	for i := 0; i < len(prefix); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != prefix[i] {
			return false
		}
	}
	return true
}

// isGRPC reports whether req is a gRPC request, as Envoy decides it: the
// content-type is application/grpc, optionally followed by "+" or ";"
// (gRPC-Web's "application/grpc-web" is not gRPC).
func isGRPC(req *stream.Request) bool {
	ct := req.Header.Get("content-type")
	const g = "application/grpc"
	if !strings.HasPrefix(ct, g) {
		return false
	}
	return len(ct) == len(g) || ct[len(g)] == '+' || ct[len(g)] == ';'
}

// stringMatcher is a compiled envoy.type.matcher.v3.StringMatcher.
type stringMatcher struct {
	kind       strKind
	value      string // lower case when ignoreCase
	ignoreCase bool
	re         *regexp.Regexp
}

type strKind uint8

const (
	strExact strKind = iota
	strPrefix
	strSuffix
	strContains
	strRegex
)

func compileStringMatcher(p string, sm *matcherv3.StringMatcher) (stringMatcher, error) {
	s := stringMatcher{ignoreCase: sm.GetIgnoreCase()}
	switch mp := sm.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		s.kind, s.value = strExact, mp.Exact
	case *matcherv3.StringMatcher_Prefix:
		s.kind, s.value = strPrefix, mp.Prefix
	case *matcherv3.StringMatcher_Suffix:
		s.kind, s.value = strSuffix, mp.Suffix
	case *matcherv3.StringMatcher_Contains:
		s.kind, s.value = strContains, mp.Contains
	case *matcherv3.StringMatcher_SafeRegex:
		if s.ignoreCase {
			return s, fmt.Errorf("%s.ignore_case: not allowed with safe_regex (use (?i) in the regex)", p)
		}
		re, err := compileRegex(p+".safe_regex", mp.SafeRegex)
		if err != nil {
			return s, err
		}
		s.kind, s.re = strRegex, re
	default:
		return s, fmt.Errorf("%s: one of exact, prefix, suffix, contains or safe_regex is required", p)
	}
	if s.ignoreCase {
		s.value = strings.ToLower(s.value)
	}
	return s, nil
}

func (s *stringMatcher) matches(v string) bool {
	if s.kind == strRegex {
		return s.re.MatchString(v)
	}
	if s.ignoreCase {
		v = asciiLower(v)
	}
	switch s.kind {
	case strExact:
		return v == s.value
	case strPrefix:
		return strings.HasPrefix(v, s.value)
	case strSuffix:
		return strings.HasSuffix(v, s.value)
	default:
		return strings.Contains(v, s.value)
	}
}

// asciiLower lower-cases ASCII letters only, allocating only when needed.
func asciiLower(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; 'A' <= c && c <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if c := b[j]; 'A' <= c && c <= 'Z' {
					b[j] = c + 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}

type hdrKind uint8

const (
	hdrString hdrKind = iota
	hdrPresent
	hdrRange
)

// headerMatcher is a compiled HeaderMatcher.
type headerMatcher struct {
	name           string
	kind           hdrKind
	str            stringMatcher
	present        bool
	start, end     int64
	invert         bool
	missingAsEmpty bool
}

func compileHeaderMatcher(p string, hm *routev3.HeaderMatcher) (headerMatcher, error) {
	m := headerMatcher{
		name:           strings.ToLower(hm.GetName()),
		invert:         hm.GetInvertMatch(),
		missingAsEmpty: hm.GetTreatMissingHeaderAsEmpty(),
	}
	if m.name == "" {
		return m, fmt.Errorf("%s.name: required", p)
	}
	var err error
	switch s := hm.GetHeaderMatchSpecifier().(type) {
	case *routev3.HeaderMatcher_ExactMatch:
		//lint:ignore SA1019 deprecated in Envoy's API but still honoured by Envoy; the sidecar honours it for control planes that send it
		m.str = stringMatcher{kind: strExact, value: s.ExactMatch}
	case *routev3.HeaderMatcher_PrefixMatch:
		//lint:ignore SA1019 deprecated in Envoy's API but still honoured by Envoy; the sidecar honours it for control planes that send it
		m.str = stringMatcher{kind: strPrefix, value: s.PrefixMatch}
	case *routev3.HeaderMatcher_SuffixMatch:
		//lint:ignore SA1019 deprecated in Envoy's API but still honoured by Envoy; the sidecar honours it for control planes that send it
		m.str = stringMatcher{kind: strSuffix, value: s.SuffixMatch}
	case *routev3.HeaderMatcher_ContainsMatch:
		//lint:ignore SA1019 deprecated in Envoy's API but still honoured by Envoy; the sidecar honours it for control planes that send it
		m.str = stringMatcher{kind: strContains, value: s.ContainsMatch}
	case *routev3.HeaderMatcher_SafeRegexMatch:
		var re *regexp.Regexp
		//lint:ignore SA1019 deprecated in Envoy's API but still honoured by Envoy; the sidecar honours it for control planes that send it
		re, err = compileRegex(p+".safe_regex_match", s.SafeRegexMatch)
		m.str = stringMatcher{kind: strRegex, re: re}
	case *routev3.HeaderMatcher_StringMatch:
		m.str, err = compileStringMatcher(p+".string_match", s.StringMatch)
	case *routev3.HeaderMatcher_PresentMatch:
		m.kind, m.present = hdrPresent, s.PresentMatch
	case *routev3.HeaderMatcher_RangeMatch:
		m.kind, m.start, m.end = hdrRange, s.RangeMatch.GetStart(), s.RangeMatch.GetEnd()
	default:
		// Envoy: no specifier means "the header is present".
		m.kind, m.present = hdrPresent, true
	}
	return m, err
}

// matches follows Envoy's HeaderUtility: present_match compares presence
// (then invert_match applies); every other matcher fails on a missing header
// whatever invert_match says, unless treat_missing_header_as_empty is set, in
// which case it matches against "".
func (m *headerMatcher) matches(req *stream.Request) bool {
	v, ok := headerValue(req, m.name)
	if m.kind == hdrPresent {
		return (ok == m.present) != m.invert
	}
	if !ok && !m.missingAsEmpty {
		return false
	}
	var r bool
	switch m.kind {
	case hdrRange:
		n, err := strconv.ParseInt(v, 10, 64)
		r = err == nil && n >= m.start && n < m.end
	default:
		r = m.str.matches(v)
	}
	return r != m.invert
}

// headerValue returns a request header for matching: the pseudo-headers
// ":authority", ":method", ":path" and ":scheme" from the request line, and
// for regular fields all values joined with ",", as Envoy does.
func headerValue(req *stream.Request, name string) (string, bool) {
	if name[0] == ':' {
		switch name {
		case ":authority":
			return req.Authority, req.Authority != ""
		case ":method":
			return req.Method, req.Method != ""
		case ":path":
			return req.Path, req.Path != ""
		case ":scheme":
			return req.Scheme, req.Scheme != ""
		}
		return "", false
	}
	fs := req.Header.Fields()
	first := -1
	for i := range fs {
		if fs[i].Name != name {
			continue
		}
		if first >= 0 {
			return strings.Join(req.Header.Values(name), ","), true
		}
		first = i
	}
	if first < 0 {
		return "", false
	}
	return fs[first].Value, true
}

// queryMatcher is a compiled QueryParameterMatcher: value nil means the
// parameter only has to be present (Envoy treats present_match this way
// whatever its boolean value).
type queryMatcher struct {
	name  string
	value *stringMatcher
}

// matches looks up the first occurrence of the parameter in the raw query
// q, decoding names and values as Envoy does.
func (m *queryMatcher) matches(q string) bool {
	for q != "" {
		var kv string
		kv, q, _ = strings.Cut(q, "&")
		k, v, _ := strings.Cut(kv, "=")
		if unescape(k) != m.name {
			continue
		}
		return m.value == nil || m.value.matches(unescape(v))
	}
	return false
}

func unescape(s string) string {
	if !strings.ContainsAny(s, "%+") {
		return s
	}
	if u, err := url.QueryUnescape(s); err == nil {
		return u
	}
	return s
}
