// Package tlscontext loads the static parts of Envoy's CommonTlsContext:
// certificate chains with their keys and the trusted CA bundle, from files
// or inline data. Errors name the field below common_tls_context.
package tlscontext

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	"meshd.dev/meshd/proxy/datasource"
)

// Certificates loads every tls_certificates entry of ctx.
func Certificates(ctx *tlsv3.CommonTlsContext) ([]tls.Certificate, error) {
	var out []tls.Certificate
	for i, tc := range ctx.GetTlsCertificates() {
		certPEM, err := datasource.Read(tc.GetCertificateChain())
		if err != nil {
			return nil, fmt.Errorf("common_tls_context.tls_certificates[%d].certificate_chain: %w", i, err)
		}
		keyPEM, err := datasource.Read(tc.GetPrivateKey())
		if err != nil {
			return nil, fmt.Errorf("common_tls_context.tls_certificates[%d].private_key: %w", i, err)
		}
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("common_tls_context.tls_certificates[%d]: %w", i, err)
		}
		out = append(out, cert)
	}
	return out, nil
}

// TrustedCA loads validation_context.trusted_ca of ctx; it returns a nil
// pool when no trusted CA is configured.
func TrustedCA(ctx *tlsv3.CommonTlsContext) (*x509.CertPool, error) {
	vc := ctx.GetValidationContext()
	if vc.GetTrustedCa() == nil {
		return nil, nil
	}
	caPEM, err := datasource.Read(vc.GetTrustedCa())
	if err != nil {
		return nil, fmt.Errorf("common_tls_context.validation_context.trusted_ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("common_tls_context.validation_context.trusted_ca: no PEM certificates found")
	}
	return pool, nil
}

// PeerSANVerifier returns, for a static validation_context with
// match_typed_subject_alt_names, a tls.Config.VerifyConnection that
// verifies the peer's chain against roots and requires one of its SANs to
// match one matcher. As in Envoy, the SAN matchers take the place of the
// host name check (the caller sets InsecureSkipVerify so crypto/tls skips
// its own). It returns nil when there are no matchers. URI and DNS SANs
// are supported, with exact, prefix and suffix matchers.
func PeerSANVerifier(vc *tlsv3.CertificateValidationContext, roots *x509.CertPool) (func(tls.ConnectionState) error, error) {
	ms := vc.GetMatchTypedSubjectAltNames()
	if len(ms) == 0 {
		return nil, nil
	}
	const path = "common_tls_context.validation_context.match_typed_subject_alt_names"
	if roots == nil {
		return nil, fmt.Errorf("%s: needs trusted_ca to verify the chain", path)
	}
	type sanMatch struct {
		uri   bool
		match func(string) bool
	}
	matches := make([]sanMatch, len(ms))
	for i, m := range ms {
		var sm sanMatch
		switch m.GetSanType() {
		case tlsv3.SubjectAltNameMatcher_URI:
			sm.uri = true
		case tlsv3.SubjectAltNameMatcher_DNS:
		default:
			return nil, fmt.Errorf("%s[%d].san_type: %s is not supported (URI, DNS)", path, i, m.GetSanType())
		}
		fold := m.GetMatcher().GetIgnoreCase()
		norm := func(s string) string {
			if fold {
				return strings.ToLower(s)
			}
			return s
		}
		switch p := m.GetMatcher().GetMatchPattern().(type) {
		case *matcherv3.StringMatcher_Exact:
			want := norm(p.Exact)
			sm.match = func(s string) bool { return norm(s) == want }
		case *matcherv3.StringMatcher_Prefix:
			want := norm(p.Prefix)
			sm.match = func(s string) bool { return strings.HasPrefix(norm(s), want) }
		case *matcherv3.StringMatcher_Suffix:
			want := norm(p.Suffix)
			sm.match = func(s string) bool { return strings.HasSuffix(norm(s), want) }
		default:
			return nil, fmt.Errorf("%s[%d].matcher: only exact, prefix and suffix are supported, got %T", path, i, p)
		}
		matches[i] = sm
	}
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("peer sent no certificate")
		}
		leaf := cs.PeerCertificates[0]
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			return err
		}
		for _, m := range matches {
			if m.uri {
				for _, u := range leaf.URIs {
					if m.match(u.String()) {
						return nil
					}
				}
				continue
			}
			for _, d := range leaf.DNSNames {
				if m.match(d) {
					return nil
				}
			}
		}
		return fmt.Errorf("peer certificate SANs (URI %v, DNS %v) match no match_typed_subject_alt_names entry", leaf.URIs, leaf.DNSNames)
	}, nil
}
