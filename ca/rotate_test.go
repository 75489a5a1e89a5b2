package ca

import (
	"crypto/x509"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// TestAddRootThenIssue: AddRoot trusts a new root while the old authority
// keeps issuing; AddAuthority of the same root then switches issuing
// without duplicating it in the bundle; a non-root is refused.
func TestAddRootThenIssue(t *testing.T) {
	oldRoot, err := GenerateRoot(testTD)
	if err != nil {
		t.Fatal(err)
	}
	newRoot, err := GenerateRoot(testTD)
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(testTD, Options{}, oldRoot)
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromString("spiffe://mesh.test/ns/a/sa/b")
	sign := func() *SVID {
		t.Helper()
		s, err := c.Sign(csrFor(t, newKey(t), &x509.CertificateRequest{}), id, 0)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}

	if err := c.AddRoot(newRoot.Cert); err != nil {
		t.Fatal(err)
	}
	if err := c.AddRoot(newRoot.Cert); err != nil {
		t.Fatalf("adding the same root again: %v", err)
	}
	trusting := sign()
	if err := trusting.Chain[0].CheckSignatureFrom(oldRoot.Cert); err != nil {
		t.Fatalf("after AddRoot the SVID is not issued by the old root: %v", err)
	}
	if len(trusting.Bundle) != 2 {
		t.Fatalf("after AddRoot the SVID's bundle has %d roots, want 2", len(trusting.Bundle))
	}

	if err := c.AddAuthority(newRoot); err != nil {
		t.Fatal(err)
	}
	if n := len(c.Bundle()); n != 2 {
		t.Fatalf("bundle has %d roots after issuing from the added root, want 2", n)
	}
	issuing := sign()
	if err := issuing.Chain[0].CheckSignatureFrom(newRoot.Cert); err != nil {
		t.Fatalf("after AddAuthority the SVID is not issued by the new root: %v", err)
	}
	for name, s := range map[string]*SVID{"trust step": trusting, "issue step": issuing} {
		if _, _, err := x509svid.Verify(s.Chain, c.X509Bundle()); err != nil {
			t.Errorf("%s SVID does not verify against the two-root bundle: %v", name, err)
		}
	}

	leaf := issuing.Chain[0]
	if err := c.AddRoot(leaf); err == nil {
		t.Error("AddRoot accepted a leaf")
	}
	if err := c.AddRoot(nil); err == nil {
		t.Error("AddRoot accepted nil")
	}
}

// TestSaveRoot: a saved root is what LoadOrGenerate loads next.
func TestSaveRoot(t *testing.T) {
	dir := t.TempDir()
	first, err := LoadOrGenerate(dir, testTD)
	if err != nil {
		t.Fatal(err)
	}
	next, err := GenerateRoot(testTD)
	if err != nil {
		t.Fatal(err)
	}
	if err := SaveRoot(dir, next); err != nil {
		t.Fatal(err)
	}
	loaded, err := LoadOrGenerate(dir, testTD)
	if err != nil {
		t.Fatal(err)
	}
	if !loaded.Cert.Equal(next.Cert) || loaded.Cert.Equal(first.Cert) {
		t.Fatal("LoadOrGenerate after SaveRoot did not load the saved root")
	}
	if err := SaveRoot(dir, &Authority{}); err == nil {
		t.Error("SaveRoot accepted an empty authority")
	}
}
