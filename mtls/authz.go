package mtls

import (
	"crypto/tls"
	"errors"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// An Authorizer decides whether a verified peer SPIFFE ID may connect. It
// returns nil to allow, or an error saying which rule refused the ID.
// Authorizers are immutable and safe for concurrent use.
type Authorizer func(id spiffeid.ID) error

// AuthorizeAny allows every ID (the SVID itself is still verified).
func AuthorizeAny() Authorizer {
	return func(spiffeid.ID) error { return nil }
}

// AuthorizeID allows exactly want.
func AuthorizeID(want spiffeid.ID) Authorizer {
	return func(id spiffeid.ID) error {
		if id != want {
			return fmt.Errorf("%s is not %s", id, want)
		}
		return nil
	}
}

// AuthorizeIDs allows the IDs in allowed and no other; with none, it
// refuses every ID.
func AuthorizeIDs(allowed ...spiffeid.ID) Authorizer {
	set := make(map[spiffeid.ID]struct{}, len(allowed))
	for _, id := range allowed {
		set[id] = struct{}{}
	}
	return func(id spiffeid.ID) error {
		if _, ok := set[id]; !ok {
			return fmt.Errorf("%s is not among the %d allowed IDs", id, len(set))
		}
		return nil
	}
}

// AuthorizeTrustDomain allows every ID in td.
func AuthorizeTrustDomain(td spiffeid.TrustDomain) Authorizer {
	return func(id spiffeid.ID) error {
		if !id.MemberOf(td) {
			return fmt.Errorf("%s is not a member of trust domain %q", id, td.Name())
		}
		return nil
	}
}

// AuthorizePattern allows the IDs matching pattern, a SPIFFE ID whose path
// segments may be "*":
//
//   - the trust domain is matched literally;
//   - a "*" segment that is not the last matches exactly one segment;
//   - a "*" last segment matches one or more segments;
//   - every other segment matches itself exactly.
//
// So "spiffe://td/ns/prod/*" allows every workload in namespace prod
// ("spiffe://td/ns/prod/sa/web") but not "spiffe://td/ns/prod" itself, and
// "spiffe://td/ns/*/sa/web" allows service account web in any namespace.
// A pattern without "*" allows exactly that ID. Errors name field.
func AuthorizePattern(field, pattern string) (Authorizer, error) {
	if !strings.HasPrefix(pattern, "spiffe://") {
		return nil, fmt.Errorf("%s: pattern %q must start with spiffe://", field, pattern)
	}
	td, rest, hasPath := strings.Cut(strings.TrimPrefix(pattern, "spiffe://"), "/")
	var segs []string
	if hasPath {
		segs = strings.Split(rest, "/")
	}
	// Validate the pattern as an ID with a plain segment for every "*".
	probe := make([]string, len(segs))
	for i, seg := range segs {
		probe[i] = seg
		if seg == "*" {
			probe[i] = "x"
		}
	}
	probeStr := "spiffe://" + td
	if hasPath {
		probeStr += "/" + strings.Join(probe, "/")
	}
	probeID, err := ParseID(field, probeStr)
	if err != nil {
		return nil, fmt.Errorf("%w (in pattern %q, where * stands for path segments)", err, pattern)
	}
	wantTD := probeID.TrustDomain()
	return func(id spiffeid.ID) error {
		if id.TrustDomain() != wantTD || !matchSegments(segs, strings.Split(strings.TrimPrefix(id.Path(), "/"), "/"), id.Path() == "") {
			return fmt.Errorf("%s does not match pattern %s", id, pattern)
		}
		return nil
	}, nil
}

func matchSegments(pat, got []string, emptyPath bool) bool {
	if len(pat) == 0 {
		return emptyPath
	}
	if emptyPath {
		return false
	}
	for i, p := range pat {
		last := i == len(pat)-1
		if p == "*" && last {
			return len(got) > i
		}
		if i >= len(got) || (p != "*" && p != got[i]) {
			return false
		}
	}
	return len(got) == len(pat)
}

// AnyOf allows an ID that at least one of authzs allows; with none, it
// refuses every ID.
func AnyOf(authzs ...Authorizer) Authorizer {
	return func(id spiffeid.ID) error {
		errs := make([]error, 0, len(authzs))
		for _, a := range authzs {
			err := a(id)
			if err == nil {
				return nil
			}
			errs = append(errs, err)
		}
		if len(errs) == 0 {
			return fmt.Errorf("%s: no rule allows any ID", id)
		}
		return errors.Join(errs...)
	}
}

// AllOf allows an ID that every one of authzs allows; with none, it allows
// every ID.
func AllOf(authzs ...Authorizer) Authorizer {
	return func(id spiffeid.ID) error {
		for _, a := range authzs {
			if err := a(id); err != nil {
				return err
			}
		}
		return nil
	}
}

// PeerID returns the SPIFFE ID of the peer's leaf certificate in state.
// It reports false when the peer sent no certificate or the leaf has not
// exactly one valid SPIFFE ID URI SAN. It does not verify the chain: the
// state must come from a handshake made with [ServerConfig] or
// [ClientConfig], which refuse any SVID that does not verify.
func PeerID(state *tls.ConnectionState) (spiffeid.ID, bool) {
	if state == nil || len(state.PeerCertificates) == 0 {
		return spiffeid.ID{}, false
	}
	id, err := x509svid.IDFromCert(state.PeerCertificates[0])
	if err != nil {
		return spiffeid.ID{}, false
	}
	return id, true
}
