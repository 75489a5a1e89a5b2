package route

import (
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	"meshd.dev/meshd/proxy/http/stream"
)

// StringMatcher is a compiled envoy.type.matcher.v3.StringMatcher, with the
// semantics route matching uses. It is immutable and safe for concurrent use.
// HTTP filters (RBAC) use it so that a matcher means the same thing in a
// route and in a policy.
type StringMatcher struct{ m stringMatcher }

// CompileStringMatcher compiles sm; errors name the field below path.
func CompileStringMatcher(path string, sm *matcherv3.StringMatcher) (*StringMatcher, error) {
	m, err := compileStringMatcher(path, sm)
	if err != nil {
		return nil, err
	}
	return &StringMatcher{m}, nil
}

// Matches reports whether v matches.
func (s *StringMatcher) Matches(v string) bool { return s.m.matches(v) }

// HeaderMatcher is a compiled envoy.config.route.v3.HeaderMatcher with
// Envoy's HeaderUtility semantics (pseudo-headers, multiple values joined
// with ",", invert_match, treat_missing_header_as_empty). It is immutable and
// safe for concurrent use.
type HeaderMatcher struct{ m headerMatcher }

// CompileHeaderMatcher compiles hm; errors name the field below path.
func CompileHeaderMatcher(path string, hm *routev3.HeaderMatcher) (*HeaderMatcher, error) {
	m, err := compileHeaderMatcher(path, hm)
	if err != nil {
		return nil, err
	}
	return &HeaderMatcher{m}, nil
}

// Matches reports whether req's headers match.
func (h *HeaderMatcher) Matches(req *stream.Request) bool { return h.m.matches(req) }
