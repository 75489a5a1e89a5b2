package mtls

import (
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"meshd.dev/meshd/mtls/mtlstest"
)

// FuzzParseID: the SPIFFE ID parsers never panic, name the field in every
// error, and what they accept round-trips through String.
func FuzzParseID(f *testing.F) {
	for _, s := range []string{"spiffe://example.org/ns/default/sa/a", "spiffe://example.org", "spiffe://EXAMPLE.org/x", "spiffe://a/b/../c",
		"https://example.org/x", "spiffe:///x", "spiffe://example.org/x?q", "spiffe://example.org//x", "example.org", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseID("field.name", s)
		if err != nil {
			if !strings.Contains(err.Error(), "field.name") {
				t.Fatalf("ParseID(%q) error %q does not name the field", s, err)
			}
		} else if back, err := spiffeid.FromString(id.String()); err != nil || back != id {
			t.Fatalf("ParseID(%q) = %v, which does not round-trip (%v)", s, id, err)
		}
		if wid, err := ParseWorkloadID("field.name", s); err == nil {
			if wid.Path() == "" {
				t.Fatalf("ParseWorkloadID(%q) accepted an ID without a path", s)
			}
		} else if !strings.Contains(err.Error(), "field.name") {
			t.Fatalf("ParseWorkloadID(%q) error %q does not name the field", s, err)
		}
		if td, err := ParseTrustDomain("field.name", s); err == nil {
			if back, err := spiffeid.TrustDomainFromString(td.Name()); err != nil || back != td {
				t.Fatalf("ParseTrustDomain(%q) = %v, which does not round-trip (%v)", s, td, err)
			}
		} else if !strings.Contains(err.Error(), "field.name") {
			t.Fatalf("ParseTrustDomain(%q) error %q does not name the field", s, err)
		}
	})
}

// FuzzVerifySVID feeds arbitrary DER (seeded with a real SVID, a CA and a
// leaf with two URIs) to VerifySVID: it never panics, every rejection is a
// *VerifyError with a reason, and an accepted leaf is one the fuzzer can
// only have copied from the seeds' trust domain.
func FuzzVerifySVID(f *testing.F) {
	ca := mtlstest.NewCA(f, "example.org")
	good := ca.Issue(f, "spiffe://example.org/ns/default/sa/a")
	f.Add(good.Certificates[0].Raw)
	f.Add(ca.Issue(f, "spiffe://example.org/ns/default/sa/b", mtlstest.AsCA()).Certificates[0].Raw)
	f.Add(ca.Issue(f, "spiffe://example.org/x", mtlstest.WithExtraURI("spiffe://example.org/y")).Certificates[0].Raw)
	bundles := x509bundle.NewSet(ca.Bundle())
	now := time.Now()
	f.Fuzz(func(t *testing.T, der []byte) {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return
		}
		id, chains, err := VerifySVID([]*x509.Certificate{cert}, bundles, now)
		if err != nil {
			var ve *VerifyError
			if !errors.As(err, &ve) || ve.Reason == 0 {
				t.Fatalf("VerifySVID error %T %v is not a *VerifyError with a reason", err, err)
			}
			return
		}
		if id.TrustDomain().Name() != "example.org" || len(chains) == 0 {
			t.Fatalf("accepted %v with %d chains", id, len(chains))
		}
	})
}
