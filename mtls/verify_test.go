package mtls

import (
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"meshd.dev/meshd/mtls/mtlstest"
)

func TestVerifySVID(t *testing.T) {
	ca := mtlstest.NewCA(t, "example.org")
	other := mtlstest.NewCA(t, "other.org")
	impostor := mtlstest.NewCA(t, "example.org") // same name, different key
	bundles := x509bundle.NewSet(ca.Bundle())
	bundlesBoth := x509bundle.NewSet(ca.Bundle(), other.Bundle())
	const id = "spiffe://example.org/ns/default/sa/web"

	tests := []struct {
		name    string
		svid    *x509svid.SVID
		bundles x509bundle.Source
		want    Reason // 0: valid
		errHas  string
	}{
		{"valid", ca.Issue(t, id), bundles, 0, ""},
		{"valid, other trust domain with its bundle", other.Issue(t, "spiffe://other.org/w"), bundlesBoth, 0, ""},
		{"other trust domain", other.Issue(t, "spiffe://other.org/w"), bundles, ReasonUnknownTrustDomain, `no trust bundle for trust domain "other.org"`},
		{"other trust domain's CA claims ours", other.Issue(t, id), bundlesBoth, ReasonUntrusted, `bundle of trust domain "example.org"`},
		{"same name, different root", impostor.Issue(t, id), bundles, ReasonUntrusted, "unknown authority"},
		{"two URI SANs", ca.Issue(t, id, mtlstest.WithExtraURI("spiffe://example.org/admin")), bundles, ReasonURISANCount, "2 URI SANs"},
		{"CA leaf", ca.Issue(t, id, mtlstest.AsCA()), bundles, ReasonCALeaf, "CA=true"},
		{"keyCertSign", ca.Issue(t, id, mtlstest.WithKeyUsage(x509.KeyUsageDigitalSignature|x509.KeyUsageCertSign)), bundles, ReasonKeyUsage, "keyCertSign"},
		{"cRLSign", ca.Issue(t, id, mtlstest.WithKeyUsage(x509.KeyUsageDigitalSignature|x509.KeyUsageCRLSign)), bundles, ReasonKeyUsage, "cRLSign"},
		{"no digitalSignature", ca.Issue(t, id, mtlstest.WithKeyUsage(x509.KeyUsageKeyEncipherment)), bundles, ReasonKeyUsage, "lacks the digitalSignature"},
		{"expired", ca.Issue(t, id, mtlstest.Expired()), bundles, ReasonUntrusted, "expired"},
		{"trust domain ID as leaf", ca.Issue(t, "spiffe://example.org"), bundles, ReasonBadID, "non-empty path"},
		{"not a SPIFFE URI", ca.Issue(t, "https://example.org/w"), bundles, ReasonBadID, "scheme"},
		{"bad path segment", ca.Issue(t, "spiffe://example.org/a/../b"), bundles, ReasonBadID, "dot segments"},
		{"nil bundles", ca.Issue(t, id), nil, ReasonUnknownTrustDomain, "no trust bundles"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			gotID, chains, err := VerifySVID(tt.svid.Certificates, tt.bundles, time.Time{})
			if tt.want == 0 {
				if err != nil {
					t.Fatalf("VerifySVID: %v", err)
				}
				if gotID != tt.svid.ID || len(chains) == 0 {
					t.Fatalf("VerifySVID = %v, %d chains; want %v", gotID, len(chains), tt.svid.ID)
				}
				return
			}
			var ve *VerifyError
			if !errors.As(err, &ve) {
				t.Fatalf("VerifySVID error %v, want *VerifyError %s", err, tt.want)
			}
			if ve.Reason != tt.want || !strings.Contains(err.Error(), tt.errHas) || !strings.Contains(err.Error(), tt.want.String()) {
				t.Fatalf("VerifySVID error %q (reason %s), want reason %s and %q", err, ve.Reason, tt.want, tt.errHas)
			}
		})
	}

	t.Run("no certificate", func(t *testing.T) {
		_, _, err := VerifySVID(nil, bundles, time.Time{})
		var ve *VerifyError
		if !errors.As(err, &ve) || ve.Reason != ReasonNoCertificate {
			t.Fatalf("VerifySVID(nil) error %v, want %s", err, ReasonNoCertificate)
		}
	})
	t.Run("verification time", func(t *testing.T) {
		svid := ca.Issue(t, id)
		if _, _, err := VerifySVID(svid.Certificates, bundles, time.Now().Add(2*time.Hour)); err == nil {
			t.Fatal("VerifySVID two hours later succeeded for a one-hour SVID")
		}
	})
}

func TestReasonString(t *testing.T) {
	seen := map[string]bool{}
	for r := ReasonNoCertificate; r <= ReasonMalformed; r++ {
		s := r.String()
		if strings.HasPrefix(s, "Reason(") || seen[s] {
			t.Errorf("Reason %d has no unique name: %q", int(r), s)
		}
		seen[s] = true
	}
	if got := Reason(99).String(); got != "Reason(99)" {
		t.Errorf("Reason(99).String() = %q", got)
	}
}
