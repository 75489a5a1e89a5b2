package translate

import (
	"regexp"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"meshd.dev/meshd/mtls"
)

// TestPrincipalMatcherAgreesWithAuthorizePattern checks that the RBAC
// matcher made from an allow entry decides every ID as mtls.AuthorizePattern
// (the model's reading of the entry) does.
func TestPrincipalMatcherAgreesWithAuthorizePattern(t *testing.T) {
	patterns := []string{
		"spiffe://td.test/ns/web/sa/web",
		"spiffe://td.test/ns/ops/*",
		"spiffe://td.test/ns/*/sa/admin",
		"spiffe://td.test/*",
		"spiffe://td.test/ns/*/sa/*",
		"spiffe://td.test/a.b/*/c_d",
	}
	ids := []string{
		"spiffe://td.test/ns/web/sa/web", "spiffe://td.test/ns/web/sa/web2", "spiffe://td.test/ns/ops/sa/x",
		"spiffe://td.test/ns/ops", "spiffe://td.test/ns/ops/sa/x/y", "spiffe://td.test/ns/a/sa/admin",
		"spiffe://td.test/ns/a/b/sa/admin", "spiffe://td.test/ns/a/sa/admin/x", "spiffe://td.test/x",
		"spiffe://td.test/a.b/q/c_d", "spiffe://td.test/aXb/q/c_d", "spiffe://td.test/a.b/q/cxd",
		"spiffe://td.testx/ns/ops/sa/x",
	}
	for _, p := range patterns {
		authz, err := mtls.AuthorizePattern("allow", p)
		if err != nil {
			t.Fatalf("AuthorizePattern(%q): %v", p, err)
		}
		m, err := principalMatcher(p)
		if err != nil {
			t.Fatalf("principalMatcher(%q): %v", p, err)
		}
		match := func(s string) bool {
			switch {
			case m.GetExact() != "":
				return s == m.GetExact()
			case m.GetPrefix() != "":
				return strings.HasPrefix(s, m.GetPrefix())
			default:
				return regexp.MustCompile(m.GetSafeRegex().GetRegex()).MatchString(s)
			}
		}
		for _, s := range ids {
			id := spiffeid.RequireFromString(s)
			if want, got := authz(id) == nil, match(s); got != want {
				t.Errorf("pattern %q, ID %q: RBAC matcher %v says %v, AuthorizePattern says %v", p, s, m, got, want)
			}
		}
	}
}
