// Package mtlstest issues X.509-SVIDs for tests: a small CA per trust
// domain whose Issue options produce the malformed SVIDs the SPIFFE
// specification forbids (two URI SANs, a CA leaf, missing
// digitalSignature, expired), so tests anywhere in meshd can check that
// they are refused. Keys are ECDSA P-256. Not for production use.
package mtlstest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// CA is a self-signed root for one trust domain. Its fields are read-only.
type CA struct {
	TrustDomain spiffeid.TrustDomain
	Cert        *x509.Certificate
	Key         crypto.Signer
}

// NewCA returns a root CA for trustDomain (a name such as "example.org"),
// valid from an hour ago for a day. It fails tb on any error.
func NewCA(tb testing.TB, trustDomain string) *CA {
	tb.Helper()
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil {
		tb.Fatalf("mtlstest: trust domain %q: %v", trustDomain, err)
	}
	key := newKey(tb)
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(tb),
		Subject:               pkix.Name{Organization: []string{"meshd test"}, CommonName: "root " + trustDomain},
		URIs:                  []*url.URL{td.ID().URL()},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		tb.Fatalf("mtlstest: create root: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatalf("mtlstest: parse root: %v", err)
	}
	return &CA{TrustDomain: td, Cert: cert, Key: key}
}

// Bundle returns a new bundle holding only this CA's root.
func (ca *CA) Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(ca.TrustDomain, []*x509.Certificate{ca.Cert})
}

// BundlePEM returns the root certificate in PEM.
func (ca *CA) BundlePEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
}

// Option changes the leaf certificate template before it is signed.
type Option func(*x509.Certificate)

// WithExtraURI adds a second (or further) URI SAN, which the SPIFFE
// specification forbids.
func WithExtraURI(uri string) Option {
	return func(c *x509.Certificate) {
		u, err := url.Parse(uri)
		if err != nil {
			panic("mtlstest: WithExtraURI: " + err.Error())
		}
		c.URIs = append(c.URIs, u)
	}
}

// AsCA makes the leaf a CA certificate (basicConstraints CA=true).
func AsCA() Option {
	return func(c *x509.Certificate) {
		c.IsCA = true
		c.BasicConstraintsValid = true
	}
}

// WithKeyUsage replaces the leaf's key usage (the default is
// digitalSignature only).
func WithKeyUsage(ku x509.KeyUsage) Option {
	return func(c *x509.Certificate) { c.KeyUsage = ku }
}

// WithValidity sets the leaf's validity window.
func WithValidity(notBefore, notAfter time.Time) Option {
	return func(c *x509.Certificate) {
		c.NotBefore, c.NotAfter = notBefore, notAfter
	}
}

// Expired makes the leaf's validity end a minute ago.
func Expired() Option {
	now := time.Now()
	return WithValidity(now.Add(-2*time.Hour), now.Add(-time.Minute))
}

// Issue signs a leaf for id (a SPIFFE ID string; it need not be valid, nor
// in ca's trust domain, so tests can forge) valid for an hour, with the
// digitalSignature key usage and the serverAuth and clientAuth extended key
// usages, and returns it as an SVID. The SVID is built directly, not by
// x509svid.Parse, so forbidden forms survive. It fails tb on any error.
func (ca *CA) Issue(tb testing.TB, id string, opts ...Option) *x509svid.SVID {
	tb.Helper()
	u, err := url.Parse(id)
	if err != nil {
		tb.Fatalf("mtlstest: ID %q: %v", id, err)
	}
	key := newKey(tb)
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(tb),
		Subject:               pkix.Name{Organization: []string{"meshd test"}},
		URIs:                  []*url.URL{u},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(time.Hour),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, o := range opts {
		o(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		tb.Fatalf("mtlstest: issue %s: %v", id, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatalf("mtlstest: parse leaf %s: %v", id, err)
	}
	sid, _ := spiffeid.FromURI(u) // zero for a forged, invalid ID
	return &x509svid.SVID{ID: sid, Certificates: []*x509.Certificate{cert}, PrivateKey: key}
}

// TLSCertificate returns svid as a tls.Certificate: its chain (leaf
// first, also parsed into Leaf) and its private key.
func TLSCertificate(svid *x509svid.SVID) tls.Certificate {
	cert := tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
	for _, c := range svid.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	return cert
}

// WriteFiles writes svid's chain and key and bundle's roots as PEM files
// into dir, through a temporary file and a rename each so a polling reader
// never sees half a file, and returns their paths.
func WriteFiles(tb testing.TB, dir string, svid *x509svid.SVID, bundle *x509bundle.Bundle) (certFile, keyFile, bundleFile string) {
	tb.Helper()
	certPEM, keyPEM, err := svid.Marshal()
	if err != nil {
		tb.Fatalf("mtlstest: marshal SVID: %v", err)
	}
	bundlePEM, err := bundle.Marshal()
	if err != nil {
		tb.Fatalf("mtlstest: marshal bundle: %v", err)
	}
	certFile = filepath.Join(dir, "svid.pem")
	keyFile = filepath.Join(dir, "svid_key.pem")
	bundleFile = filepath.Join(dir, "bundle.pem")
	for _, f := range []struct {
		path string
		data []byte
	}{{certFile, certPEM}, {keyFile, keyPEM}, {bundleFile, bundlePEM}} {
		WriteFileAtomic(tb, f.path, f.data)
	}
	return certFile, keyFile, bundleFile
}

// WriteFileAtomic writes data to path through a temporary file in the same
// directory and a rename. It fails tb on any error.
func WriteFileAtomic(tb testing.TB, path string, data []byte) {
	tb.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		tb.Fatalf("mtlstest: %v", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		tb.Fatalf("mtlstest: %v", err)
	}
}

func newKey(tb testing.TB) *ecdsa.PrivateKey {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatalf("mtlstest: generate key: %v", err)
	}
	return key
}

func serial(tb testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		tb.Fatalf("mtlstest: serial: %v", err)
	}
	return n
}
