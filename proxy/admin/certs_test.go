package admin

import (
	"crypto/x509"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	"google.golang.org/protobuf/encoding/protojson"
)

// certBackend is a fakeBackend that also lists certificates.
type certBackend struct {
	*fakeBackend
	certs []CertificateStatus
}

func (b *certBackend) Certificates() []CertificateStatus { return b.certs }

func TestCerts(t *testing.T) {
	id, _ := url.Parse("spiffe://example.org/ns/demo/sa/web")
	now := time.Now()
	leaf := &x509.Certificate{SerialNumber: big.NewInt(0xabc), URIs: []*url.URL{id}, NotBefore: now.Add(-time.Minute), NotAfter: now.Add(49 * time.Hour)}
	root := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: now.Add(-time.Hour), NotAfter: now.Add(-time.Second)}
	for _, tc := range []struct {
		name    string
		backend Backend
		want    func(*testing.T, *adminv3.Certificates)
	}{
		{"backend without certificates", newFakeBackend(), func(t *testing.T, c *adminv3.Certificates) {
			if len(c.GetCertificates()) != 0 {
				t.Errorf("certificates = %v, want none", c.GetCertificates())
			}
		}},
		{"one SDS identity", &certBackend{fakeBackend: newFakeBackend(), certs: []CertificateStatus{{
			Path: "default from cluster meshd_identity", CertChain: []*x509.Certificate{leaf}, CACerts: []*x509.Certificate{root},
		}}}, func(t *testing.T, c *adminv3.Certificates) {
			if len(c.GetCertificates()) != 1 {
				t.Fatalf("certificates = %v, want one", c.GetCertificates())
			}
			chain := c.GetCertificates()[0].GetCertChain()
			if len(chain) != 1 || chain[0].GetSerialNumber() != "abc" || chain[0].GetDaysUntilExpiration() != 2 ||
				chain[0].GetSubjectAltNames()[0].GetUri() != id.String() || chain[0].GetPath() != "default from cluster meshd_identity" {
				t.Errorf("cert_chain = %v", chain)
			}
			ca := c.GetCertificates()[0].GetCaCert()
			if len(ca) != 1 || ca[0].GetDaysUntilExpiration() != 0 || !ca[0].GetExpirationTime().AsTime().Equal(root.NotAfter.Truncate(time.Nanosecond)) {
				t.Errorf("ca_cert = %v (an expired root has 0 days left)", ca)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := start(t, newFakeBackend(), testStore())
			h.srv.backend = tc.backend
			r := h.do(t, "GET", "/certs")
			if r.code != 200 || !strings.HasPrefix(r.hdr.Get("Content-Type"), "application/json") {
				t.Fatalf("GET /certs = %d %q: %s", r.code, r.hdr.Get("Content-Type"), r.body)
			}
			var got adminv3.Certificates
			if err := protojson.Unmarshal([]byte(r.body), &got); err != nil {
				t.Fatalf("body %s: %v", r.body, err)
			}
			tc.want(t, &got)
		})
	}
}
