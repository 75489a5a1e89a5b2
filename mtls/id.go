package mtls

import (
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Length limits from the SPIFFE ID specification (sections 2.1 and 2.3).
const (
	// MaxTrustDomainLength is the longest trust domain name, in bytes.
	MaxTrustDomainLength = 255
	// MaxIDLength is the longest SPIFFE ID URI, in bytes.
	MaxIDLength = 2048
)

// ParseID parses s as a SPIFFE ID per the SPIFFE ID specification: scheme
// "spiffe", a lower-case trust domain of at most 255 bytes, no port,
// userinfo, query or fragment, path segments that are non-empty, not "." or
// "..", and free of percent-encoding, and at most 2048 bytes in all. field
// names the configuration field s came from; every error starts with it.
// The trust domain's own ID (no path) is accepted; use [ParseWorkloadID]
// where the ID names a workload.
func ParseID(field, s string) (spiffeid.ID, error) {
	if len(s) > MaxIDLength {
		return spiffeid.ID{}, fmt.Errorf("%s: SPIFFE ID is %d bytes, longer than the %d allowed", field, len(s), MaxIDLength)
	}
	id, err := spiffeid.FromString(s)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%s: invalid SPIFFE ID %q: %w", field, s, err)
	}
	if n := len(id.TrustDomain().Name()); n > MaxTrustDomainLength {
		return spiffeid.ID{}, fmt.Errorf("%s: trust domain of %q is %d bytes, longer than the %d allowed", field, s, n, MaxTrustDomainLength)
	}
	return id, nil
}

// ParseWorkloadID is [ParseID] plus the X509-SVID rule that a workload's ID
// has a non-empty path (X509-SVID specification, section 2): the bare
// trust domain ID "spiffe://td" is rejected.
func ParseWorkloadID(field, s string) (spiffeid.ID, error) {
	id, err := ParseID(field, s)
	if err != nil {
		return spiffeid.ID{}, err
	}
	if err := checkWorkloadID(id); err != nil {
		return spiffeid.ID{}, fmt.Errorf("%s: %w", field, err)
	}
	return id, nil
}

// ParseTrustDomain parses a trust domain name ("example.org") or a trust
// domain ID ("spiffe://example.org"); errors start with field.
func ParseTrustDomain(field, s string) (spiffeid.TrustDomain, error) {
	td, err := spiffeid.TrustDomainFromString(s)
	if err != nil {
		return spiffeid.TrustDomain{}, fmt.Errorf("%s: invalid trust domain %q: %w", field, s, err)
	}
	if n := len(td.Name()); n > MaxTrustDomainLength {
		return spiffeid.TrustDomain{}, fmt.Errorf("%s: trust domain is %d bytes, longer than the %d allowed", field, n, MaxTrustDomainLength)
	}
	return td, nil
}

var errEmptyWorkloadPath = errors.New("an X509-SVID's SPIFFE ID must have a non-empty path")

func checkWorkloadID(id spiffeid.ID) error {
	if id.Path() == "" {
		return fmt.Errorf("%q: %w", id.String(), errEmptyWorkloadPath)
	}
	return nil
}
