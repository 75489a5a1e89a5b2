package mtls

import (
	"crypto/tls"
	"crypto/x509"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"meshd.dev/meshd/mtls/mtlstest"
)

func TestAuthorizers(t *testing.T) {
	id := func(s string) spiffeid.ID { return spiffeid.RequireFromString(s) }
	td := spiffeid.RequireTrustDomainFromString("example.org")
	pattern := func(p string) Authorizer {
		a, err := AuthorizePattern("allow[0]", p)
		if err != nil {
			t.Fatalf("AuthorizePattern(%q): %v", p, err)
		}
		return a
	}
	web := id("spiffe://example.org/ns/prod/sa/web")
	tests := []struct {
		name  string
		authz Authorizer
		allow []string
		deny  []string
	}{
		{"any", AuthorizeAny(), []string{"spiffe://other.org/x"}, nil},
		{"exact", AuthorizeID(web), []string{web.String()}, []string{"spiffe://example.org/ns/prod/sa/web2", "spiffe://other.org/ns/prod/sa/web"}},
		{"set", AuthorizeIDs(web, id("spiffe://example.org/ns/prod/sa/db")),
			[]string{web.String(), "spiffe://example.org/ns/prod/sa/db"}, []string{"spiffe://example.org/ns/prod/sa/api"}},
		{"empty set", AuthorizeIDs(), nil, []string{web.String()}},
		{"trust domain", AuthorizeTrustDomain(td), []string{web.String(), "spiffe://example.org"}, []string{"spiffe://other.org/ns/prod/sa/web"}},
		{"namespace pattern", pattern("spiffe://example.org/ns/prod/*"),
			[]string{web.String(), "spiffe://example.org/ns/prod/x"},
			[]string{"spiffe://example.org/ns/prod", "spiffe://example.org/ns/dev/sa/web", "spiffe://example.org/ns/production/sa/web", "spiffe://other.org/ns/prod/sa/web"}},
		{"inner wildcard", pattern("spiffe://example.org/ns/*/sa/web"),
			[]string{web.String(), "spiffe://example.org/ns/dev/sa/web"},
			[]string{"spiffe://example.org/ns/dev/sa/api", "spiffe://example.org/ns/a/b/sa/web", "spiffe://example.org/ns/dev/sa/web/x"}},
		{"literal pattern", pattern("spiffe://example.org/ns/prod/sa/web"), []string{web.String()}, []string{"spiffe://example.org/ns/prod/sa/web/x"}},
		{"trust domain pattern", pattern("spiffe://example.org"), []string{"spiffe://example.org"}, []string{web.String()}},
		{"anyOf", AnyOf(AuthorizeID(web), AuthorizeTrustDomain(spiffeid.RequireTrustDomainFromString("other.org"))),
			[]string{web.String(), "spiffe://other.org/x"}, []string{"spiffe://example.org/ns/prod/sa/db"}},
		{"anyOf none", AnyOf(), nil, []string{web.String()}},
		{"allOf", AllOf(AuthorizeTrustDomain(td), pattern("spiffe://example.org/ns/prod/*")),
			[]string{web.String()}, []string{"spiffe://example.org/ns/dev/sa/web"}},
		{"allOf none", AllOf(), []string{web.String()}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, s := range tt.allow {
				if err := tt.authz(id(s)); err != nil {
					t.Errorf("refused %s: %v", s, err)
				}
			}
			for _, s := range tt.deny {
				err := tt.authz(id(s))
				if err == nil {
					t.Errorf("allowed %s", s)
				} else if !strings.Contains(err.Error(), s) {
					t.Errorf("refusal of %s does not name it: %v", s, err)
				}
			}
		})
	}
}

func TestAuthorizePatternErrors(t *testing.T) {
	tests := []struct{ pattern, want string }{
		{"example.org/ns/*", "must start with spiffe://"},
		{"spiffe://Example.org/ns/*", "trust domain characters"},
		{"spiffe://example.org/ns//*", "empty segments"},
		{"spiffe://example.org/ns/*/", "trailing slash"},
		{"spiffe://example.org/ns/a*", "path segment characters"},
		{"spiffe://example.org/../*", "dot segments"},
	}
	for _, tt := range tests {
		_, err := AuthorizePattern("allow[2]", tt.pattern)
		if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "allow[2]") {
			t.Errorf("AuthorizePattern(%q) error %v, want one starting with allow[2] containing %q", tt.pattern, err, tt.want)
		}
	}
}

func TestPeerID(t *testing.T) {
	ca := mtlstest.NewCA(t, "example.org")
	good := ca.Issue(t, "spiffe://example.org/ns/a/sa/b")
	two := ca.Issue(t, "spiffe://example.org/a", mtlstest.WithExtraURI("spiffe://example.org/b"))
	tests := []struct {
		name  string
		state *tls.ConnectionState
		want  string
	}{
		{"nil", nil, ""},
		{"no certificates", &tls.ConnectionState{}, ""},
		{"svid", &tls.ConnectionState{PeerCertificates: []*x509.Certificate{good.Certificates[0]}}, "spiffe://example.org/ns/a/sa/b"},
		{"two URI SANs", &tls.ConnectionState{PeerCertificates: two.Certificates}, ""},
	}
	for _, tt := range tests {
		id, ok := PeerID(tt.state)
		if ok != (tt.want != "") || (ok && id.String() != tt.want) {
			t.Errorf("%s: PeerID = %v, %v; want %q", tt.name, id, ok, tt.want)
		}
	}
}
