package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

var testTD = spiffeid.RequireTrustDomainFromString("mesh.test")

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func csrFor(t *testing.T, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func newCA(t *testing.T, opts Options) *CA {
	t.Helper()
	root, err := GenerateRoot(testTD)
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(testTD, opts, root)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestSign(t *testing.T) {
	now := time.Now().UTC().Truncate(time.Second)
	c := newCA(t, Options{Now: func() time.Time { return now }, MaxTTL: 48 * time.Hour})
	id := spiffeid.RequireFromString("spiffe://mesh.test/ns/shop/sa/cart")
	key := newKey(t)
	tests := []struct {
		name    string
		csr     *x509.CertificateRequest
		id      spiffeid.ID
		ttl     time.Duration
		wantTTL time.Duration
		wantErr string
	}{
		{name: "no SAN, default TTL", csr: &x509.CertificateRequest{}, id: id, wantTTL: DefaultTTL},
		{name: "subject ignored", csr: &x509.CertificateRequest{Subject: pkix.Name{CommonName: "admin"}}, id: id, wantTTL: DefaultTTL},
		{name: "matching URI SAN", csr: &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, id: id, ttl: time.Hour, wantTTL: time.Hour},
		{name: "TTL of seconds", csr: &x509.CertificateRequest{}, id: id, ttl: 2 * time.Second, wantTTL: 2 * time.Second},
		{name: "TTL below minimum raised", csr: &x509.CertificateRequest{}, id: id, ttl: time.Millisecond, wantTTL: MinTTL},
		{name: "TTL capped", csr: &x509.CertificateRequest{}, id: id, ttl: 1000 * time.Hour, wantTTL: 48 * time.Hour},
		{name: "CSR asks for another ID", csr: &x509.CertificateRequest{URIs: []*url.URL{spiffeid.RequireFromString("spiffe://mesh.test/ns/shop/sa/admin").URL()}}, id: id, wantErr: "differs from the authenticated identity"},
		{name: "CSR with two URI SANs", csr: &x509.CertificateRequest{URIs: []*url.URL{id.URL(), id.URL()}}, id: id, wantErr: "2 URI SANs"},
		{name: "CSR with DNS SAN", csr: &x509.CertificateRequest{DNSNames: []string{"cart.shop"}}, id: id, wantErr: "DNS, IP or e-mail"},
		{name: "identity of another trust domain", csr: &x509.CertificateRequest{}, id: spiffeid.RequireFromString("spiffe://other.test/ns/a/sa/b"), wantErr: "not in trust domain"},
		{name: "identity without path", csr: &x509.CertificateRequest{}, id: testTD.ID(), wantErr: "empty path"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svid, err := c.Sign(csrFor(t, key, tt.csr), tt.id, tt.ttl)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Sign error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Sign: %v", err)
			}
			leaf := svid.Chain[0]
			gotID, _, err := x509svid.Verify(svid.Chain, c.X509Bundle(), x509svid.WithTime(now))
			if err != nil {
				t.Fatalf("x509svid.Verify: %v", err)
			}
			if gotID != tt.id || svid.ID != tt.id {
				t.Errorf("ID = %v (SVID.ID %v), want %v", gotID, svid.ID, tt.id)
			}
			if got := leaf.NotAfter.Sub(now); got != tt.wantTTL {
				t.Errorf("NotAfter - now = %v, want %v", got, tt.wantTTL)
			}
			if got := now.Sub(leaf.NotBefore); got != DefaultBackdate {
				t.Errorf("NotBefore backdated by %v, want %v", got, DefaultBackdate)
			}
			if leaf.IsCA || leaf.KeyUsage != x509.KeyUsageDigitalSignature {
				t.Errorf("IsCA = %v, KeyUsage = %v; want a non-CA leaf with digitalSignature only", leaf.IsCA, leaf.KeyUsage)
			}
			if len(leaf.ExtKeyUsage) != 2 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth || leaf.ExtKeyUsage[1] != x509.ExtKeyUsageClientAuth {
				t.Errorf("ExtKeyUsage = %v, want serverAuth, clientAuth", leaf.ExtKeyUsage)
			}
			if len(leaf.URIs) != 1 || len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
				t.Errorf("SANs: URIs %v DNS %v IP %v email %v; want exactly one URI", leaf.URIs, leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
			}
			if leaf.Subject.String() != "" {
				t.Errorf("Subject = %q, want empty (the CSR's subject is ignored)", leaf.Subject)
			}
			if !publicKeysEqual(leaf.PublicKey, key.Public()) {
				t.Error("leaf public key is not the CSR's")
			}
		})
	}
}

func TestSignRejectsBadCSR(t *testing.T) {
	c := newCA(t, Options{})
	id := spiffeid.RequireFromString("spiffe://mesh.test/ns/a/sa/b")
	good := csrFor(t, newKey(t), &x509.CertificateRequest{})
	tampered := append([]byte(nil), good...)
	tampered[len(tampered)-1] ^= 0xff
	for _, tt := range []struct {
		name, want string
		der        []byte
	}{
		{"garbage", "parsing CSR", []byte("not a CSR")},
		{"bad signature", "CSR", tampered},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := c.Sign(tt.der, id, 0); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Sign error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

// TestIntermediate issues from an intermediate: the chain carries it, the
// bundle only the root, and go-spiffe verifies the chain.
func TestIntermediate(t *testing.T) {
	root, err := GenerateRoot(testTD)
	if err != nil {
		t.Fatal(err)
	}
	ikey := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "intermediate"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root.Cert, ikey.Public(), root.Key)
	if err != nil {
		t.Fatal(err)
	}
	inter, _ := x509.ParseCertificate(der)
	keyDER, _ := x509.MarshalPKCS8PrivateKey(ikey)
	a, err := ParseAuthority(EncodeCertsPEM([]*x509.Certificate{inter, root.Cert}), pemBlock("PRIVATE KEY", keyDER))
	if err != nil {
		t.Fatalf("ParseAuthority: %v", err)
	}
	c, err := New(testTD, Options{}, a)
	if err != nil {
		t.Fatal(err)
	}
	svid, err := c.Sign(csrFor(t, newKey(t), &x509.CertificateRequest{}), spiffeid.RequireFromString("spiffe://mesh.test/ns/a/sa/b"), 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if len(svid.Chain) != 2 || !svid.Chain[1].Equal(inter) || len(svid.Bundle) != 1 || !svid.Bundle[0].Equal(root.Cert) {
		t.Fatalf("chain %d certs, bundle %d certs; want leaf+intermediate and the root", len(svid.Chain), len(svid.Bundle))
	}
	if svid.ExpiresAt().After(inter.NotAfter) {
		t.Errorf("leaf expires %v, after its issuer %v", svid.ExpiresAt(), inter.NotAfter)
	}
	if _, _, err := x509svid.Verify(svid.Chain, c.X509Bundle()); err != nil {
		t.Fatalf("x509svid.Verify: %v", err)
	}
	if _, err := ParseAuthority(EncodeCertsPEM([]*x509.Certificate{inter}), pemBlock("PRIVATE KEY", keyDER)); err == nil || !strings.Contains(err.Error(), "not a self-signed root") {
		t.Errorf("intermediate without its root: error = %v, want one naming the missing root", err)
	}
	wrongKey, _ := x509.MarshalPKCS8PrivateKey(newKey(t))
	if _, err := ParseAuthority(EncodeCertsPEM([]*x509.Certificate{inter, root.Cert}), pemBlock("PRIVATE KEY", wrongKey)); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("mismatched key: error = %v, want one saying it does not match", err)
	}
}

// TestBundleRotation: add a new root (old and new both trusted, the new
// one issues), then remove the old one.
func TestBundleRotation(t *testing.T) {
	oldRoot, err := GenerateRoot(testTD)
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(testTD, Options{}, oldRoot)
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromString("spiffe://mesh.test/ns/a/sa/b")
	before, err := c.Sign(csrFor(t, newKey(t), &x509.CertificateRequest{}), id, 0)
	if err != nil {
		t.Fatal(err)
	}
	newRoot, err := GenerateRoot(testTD)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.AddAuthority(newRoot); err != nil {
		t.Fatal(err)
	}
	if b := c.Bundle(); len(b) != 2 || !b[0].Equal(oldRoot.Cert) || !b[1].Equal(newRoot.Cert) {
		t.Fatalf("bundle after AddAuthority has %d roots; want old then new", len(b))
	}
	after, err := c.Sign(csrFor(t, newKey(t), &x509.CertificateRequest{}), id, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := after.Chain[0].CheckSignatureFrom(newRoot.Cert); err != nil {
		t.Fatalf("SVID after rotation is not issued by the new root: %v", err)
	}
	if len(after.Bundle) != 2 {
		t.Fatalf("SVID bundle has %d roots, want 2", len(after.Bundle))
	}
	// Both generations verify against the two-root bundle.
	for name, s := range map[string]*SVID{"before": before, "after": after} {
		if _, _, err := x509svid.Verify(s.Chain, c.X509Bundle()); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := c.RemoveRoot(newRoot.Cert); err == nil {
		t.Error("RemoveRoot of the issuing root succeeded")
	}
	if err := c.RemoveRoot(oldRoot.Cert); err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(before.Chain, c.X509Bundle()); err == nil {
		t.Error("an SVID of the removed root still verifies")
	}
	if _, _, err := x509svid.Verify(after.Chain, c.X509Bundle()); err != nil {
		t.Errorf("SVID of the new root: %v", err)
	}
}

func TestLoadOrGeneratePersists(t *testing.T) {
	dir := t.TempDir() + "/ca"
	first, err := LoadOrGenerate(dir, testTD)
	if err != nil {
		t.Fatal(err)
	}
	second, err := LoadOrGenerate(dir, testTD)
	if err != nil {
		t.Fatal(err)
	}
	if !first.Cert.Equal(second.Cert) || !publicKeysEqual(first.Key.Public(), second.Key.Public()) {
		t.Fatal("second LoadOrGenerate did not reuse the persisted root")
	}
	if !first.Cert.IsCA || first.Cert.NotAfter.Sub(first.Cert.NotBefore) < RootTTL {
		t.Errorf("root: IsCA %v, lifetime %v; want a CA valid %v", first.Cert.IsCA, first.Cert.NotAfter.Sub(first.Cert.NotBefore), RootTTL)
	}
	// An SVID issued before the "restart" verifies against the reloaded CA.
	c1, _ := New(testTD, Options{}, first)
	c2, _ := New(testTD, Options{}, second)
	svid, err := c1.Sign(csrFor(t, newKey(t), &x509.CertificateRequest{}), spiffeid.RequireFromString("spiffe://mesh.test/ns/a/sa/b"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(svid.Chain, c2.X509Bundle()); err != nil {
		t.Fatalf("SVID from before the restart: %v", err)
	}
	if _, err := LoadOrGenerate(dir, spiffeid.RequireTrustDomainFromString("other.test")); err == nil || !strings.Contains(err.Error(), "not trust domain") {
		t.Errorf("reusing the directory for another trust domain: error = %v", err)
	}
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}
