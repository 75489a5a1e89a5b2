package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"meshd.dev/meshd/ca"
)

// The bench mesh's trust domain and the SPIFFE IDs of the two sidecars of
// the two-hop targets.
const (
	benchTrustDomain = "bench.example"
	benchClientID    = "spiffe://bench.example/ns/bench/sa/client"
	benchServerID    = "spiffe://bench.example/ns/bench/sa/server"
	// svidTTL outlives any harness run.
	svidTTL = 24 * time.Hour
)

// benchPKI holds the SVID files of the client and server sidecars, issued
// by a test CA (meshd's own ca package with a fresh root), as test/e2e
// makes them.
type benchPKI struct {
	Client, Server svidFiles
}

// newBenchPKI creates a root for benchTrustDomain and issues the client's
// and the server's SVIDs into dir. Each side's PeerID is the other's ID.
func newBenchPKI(dir string) (*benchPKI, error) {
	td, err := spiffeid.TrustDomainFromString(benchTrustDomain)
	if err != nil {
		return nil, fmt.Errorf("pki: trust domain: %w", err)
	}
	root, err := ca.GenerateRoot(td)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	authority, err := ca.New(td, ca.Options{DefaultTTL: svidTTL, MaxTTL: svidTTL}, root)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	bundle := filepath.Join(dir, "bundle.pem")
	if err := os.WriteFile(bundle, ca.EncodeCertsPEM(authority.Bundle()), 0o600); err != nil {
		return nil, fmt.Errorf("pki: write bundle: %w", err)
	}
	issue := func(name, id, peer string) (svidFiles, error) {
		f := svidFiles{
			Cert: filepath.Join(dir, name+".pem"), Key: filepath.Join(dir, name+"-key.pem"),
			Bundle: bundle, PeerID: peer,
		}
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return f, fmt.Errorf("pki: %s key: %w", name, err)
		}
		u, err := url.Parse(id)
		if err != nil {
			return f, fmt.Errorf("pki: %s ID %q: %w", name, id, err)
		}
		csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
		if err != nil {
			return f, fmt.Errorf("pki: %s CSR: %w", name, err)
		}
		sid, err := spiffeid.FromString(id)
		if err != nil {
			return f, fmt.Errorf("pki: %s ID %q: %w", name, id, err)
		}
		svid, err := authority.Sign(csr, sid, svidTTL)
		if err != nil {
			return f, fmt.Errorf("pki: sign %s: %w", name, err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return f, fmt.Errorf("pki: %s key: %w", name, err)
		}
		if err := os.WriteFile(f.Cert, ca.EncodeCertsPEM(svid.Chain), 0o600); err != nil {
			return f, fmt.Errorf("pki: write %s: %w", f.Cert, err)
		}
		keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
		if err := os.WriteFile(f.Key, keyPEM, 0o600); err != nil {
			return f, fmt.Errorf("pki: write %s: %w", f.Key, err)
		}
		return f, nil
	}
	p := &benchPKI{}
	if p.Client, err = issue("client", benchClientID, benchServerID); err != nil {
		return nil, err
	}
	if p.Server, err = issue("server", benchServerID, benchClientID); err != nil {
		return nil, err
	}
	return p, nil
}
