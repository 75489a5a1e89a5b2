package mtls

import (
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Reason classifies why a peer's X.509-SVID was refused.
type Reason int

// The reasons a peer SVID is refused. Their String forms are stable and
// short enough for a log attribute.
const (
	// ReasonNoCertificate: the peer presented no certificate.
	ReasonNoCertificate Reason = iota + 1
	// ReasonURISANCount: the leaf has no URI SAN or more than one.
	ReasonURISANCount
	// ReasonBadID: the leaf's URI SAN is not a valid workload SPIFFE ID.
	ReasonBadID
	// ReasonCALeaf: the leaf has basicConstraints CA=true.
	ReasonCALeaf
	// ReasonKeyUsage: the leaf has keyCertSign or cRLSign, or lacks
	// digitalSignature.
	ReasonKeyUsage
	// ReasonUnknownTrustDomain: there is no bundle for the ID's trust domain.
	ReasonUnknownTrustDomain
	// ReasonUntrusted: the chain does not verify against the bundle of the
	// ID's own trust domain (wrong signer, expired, not yet valid).
	ReasonUntrusted
	// ReasonUnauthorized: the SVID is valid but the authorizer refused its ID.
	ReasonUnauthorized
	// ReasonMalformed: a certificate could not be parsed.
	ReasonMalformed
)

var reasonNames = map[Reason]string{
	ReasonNoCertificate:      "no_certificate",
	ReasonURISANCount:        "uri_san_count",
	ReasonBadID:              "bad_spiffe_id",
	ReasonCALeaf:             "ca_leaf",
	ReasonKeyUsage:           "key_usage",
	ReasonUnknownTrustDomain: "unknown_trust_domain",
	ReasonUntrusted:          "untrusted_chain",
	ReasonUnauthorized:       "unauthorized",
	ReasonMalformed:          "malformed_certificate",
}

// String returns the reason's stable snake_case name.
func (r Reason) String() string {
	if s, ok := reasonNames[r]; ok {
		return s
	}
	return fmt.Sprintf("Reason(%d)", int(r))
}

// VerifyError is the error of every refused peer SVID. The handshakes of
// [ServerConfig] and [ClientConfig] fail with it (server side: returned by
// tls.Conn.Handshake as is, so errors.As finds it).
type VerifyError struct {
	// Reason classifies the refusal.
	Reason Reason
	// ID is the peer's SPIFFE ID when it could be read, else zero.
	ID spiffeid.ID
	// Err is the underlying cause.
	Err error
}

// Error reads "peer SVID refused (REASON) for ID: cause".
func (e *VerifyError) Error() string {
	if e.ID.IsZero() {
		return fmt.Sprintf("mtls: peer SVID refused (%s): %v", e.Reason, e.Err)
	}
	return fmt.Sprintf("mtls: peer SVID refused (%s) for %s: %v", e.Reason, e.ID, e.Err)
}

// Unwrap returns the underlying cause.
func (e *VerifyError) Unwrap() error { return e.Err }

// VerifySVID verifies certs (leaf first, then intermediates) as an
// X.509-SVID per the SPIFFE X509-SVID specification and returns the leaf's
// SPIFFE ID and the verified chains. Beyond go-spiffe's x509svid.Verify
// (exactly one URI SAN, leaf not a CA, no keyCertSign/cRLSign, chain to the
// bundle of the ID's own trust domain only) it requires a non-empty ID path,
// the digitalSignature key usage and the specification's length limits.
// now is the verification time; the zero time means time.Now. Every error
// is a *VerifyError.
func VerifySVID(certs []*x509.Certificate, bundles x509bundle.Source, now time.Time) (spiffeid.ID, [][]*x509.Certificate, error) {
	if len(certs) == 0 {
		return spiffeid.ID{}, nil, &VerifyError{Reason: ReasonNoCertificate, Err: errors.New("no certificate presented")}
	}
	leaf := certs[0]
	// The leaf checks run first so their reason is exact; Verify repeats
	// some of them and owns the chain check.
	switch n := len(leaf.URIs); {
	case n == 0:
		return spiffeid.ID{}, nil, &VerifyError{Reason: ReasonURISANCount, Err: errors.New("leaf certificate has no URI SAN")}
	case n > 1:
		return spiffeid.ID{}, nil, &VerifyError{Reason: ReasonURISANCount, Err: fmt.Errorf("leaf certificate has %d URI SANs, an X509-SVID has exactly one", n)}
	}
	id, err := ParseWorkloadID("leaf URI SAN", leaf.URIs[0].String())
	if err != nil {
		return spiffeid.ID{}, nil, &VerifyError{Reason: ReasonBadID, Err: err}
	}
	switch {
	case leaf.IsCA:
		return id, nil, &VerifyError{Reason: ReasonCALeaf, ID: id, Err: errors.New("leaf certificate has basicConstraints CA=true")}
	case leaf.KeyUsage&x509.KeyUsageCertSign != 0:
		return id, nil, &VerifyError{Reason: ReasonKeyUsage, ID: id, Err: errors.New("leaf certificate has the keyCertSign key usage")}
	case leaf.KeyUsage&x509.KeyUsageCRLSign != 0:
		return id, nil, &VerifyError{Reason: ReasonKeyUsage, ID: id, Err: errors.New("leaf certificate has the cRLSign key usage")}
	case leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0:
		return id, nil, &VerifyError{Reason: ReasonKeyUsage, ID: id, Err: errors.New("leaf certificate lacks the digitalSignature key usage")}
	}
	if bundles == nil {
		return id, nil, &VerifyError{Reason: ReasonUnknownTrustDomain, ID: id, Err: errors.New("no trust bundles configured")}
	}
	if _, err := bundles.GetX509BundleForTrustDomain(id.TrustDomain()); err != nil {
		return id, nil, &VerifyError{Reason: ReasonUnknownTrustDomain, ID: id, Err: fmt.Errorf("no trust bundle for trust domain %q: %w", id.TrustDomain().Name(), err)}
	}
	var opts []x509svid.VerifyOption
	if !now.IsZero() {
		opts = append(opts, x509svid.WithTime(now))
	}
	_, chains, err := x509svid.Verify(certs, bundles, opts...)
	if err != nil {
		return id, nil, &VerifyError{Reason: ReasonUntrusted, ID: id, Err: fmt.Errorf("chain does not verify against the bundle of trust domain %q: %w", id.TrustDomain().Name(), err)}
	}
	return id, chains, nil
}
