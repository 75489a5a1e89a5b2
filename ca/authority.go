package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// RootTTL is the lifetime of a generated root.
const RootTTL = 10 * 365 * 24 * time.Hour

// Files of a CA directory (LoadOrGenerate).
const (
	// CertFile holds the generated root certificate (PEM).
	CertFile = "ca.crt"
	// KeyFile holds the generated root's private key (PKCS#8 PEM, mode 0600).
	KeyFile = "ca.key"
)

// GenerateRoot returns a new self-signed ECDSA P-256 root for td, valid for
// RootTTL from now (backdated by DefaultBackdate), whose URI SAN is the
// trust domain's ID (spiffe://td), as SPIRE's roots carry.
func GenerateRoot(td spiffeid.TrustDomain) (*Authority, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("ca: generating root key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"meshd"}, CommonName: "meshd root CA " + td.Name()},
		NotBefore:             now.Add(-DefaultBackdate),
		NotAfter:              now.Add(RootTTL),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		URIs:                  []*url.URL{td.ID().URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("ca: creating root: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ca: parsing generated root: %w", err)
	}
	return &Authority{Cert: cert, Key: key, Root: cert}, nil
}

// LoadAuthority reads a signing authority from PEM files. certFile holds
// the signing certificate first, then (for an intermediate) the
// certificates up to and including the self-signed root, which goes into
// the bundle. keyFile holds the signing certificate's key as PKCS#8, SEC 1
// (EC) or PKCS#1 (RSA).
func LoadAuthority(certFile, keyFile string) (*Authority, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("ca: certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("ca: key: %w", err)
	}
	a, err := ParseAuthority(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%w (files %s, %s)", err, certFile, keyFile)
	}
	return a, nil
}

// ParseAuthority is LoadAuthority on PEM bytes.
func ParseAuthority(certPEM, keyPEM []byte) (*Authority, error) {
	certs, err := parseCertsPEM(certPEM)
	if err != nil {
		return nil, err
	}
	key, err := parseKeyPEM(keyPEM)
	if err != nil {
		return nil, err
	}
	root := certs[len(certs)-1]
	if !isSelfSigned(root) {
		return nil, fmt.Errorf("ca: the last certificate %q is not a self-signed root; append the chain up to the root", root.Subject)
	}
	a := &Authority{Cert: certs[0], Key: key, Root: root}
	if len(certs) > 2 {
		a.Chain = certs[1 : len(certs)-1]
	}
	if err := a.validate(); err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	return a, nil
}

// LoadOrGenerate returns the root persisted in dir (CertFile, KeyFile), or
// generates one for td, writes it there (dir created 0700, key 0600) and
// returns it. A persisted root for another trust domain is an error, not
// replaced: every SVID in use would stop verifying.
func LoadOrGenerate(dir string, td spiffeid.TrustDomain) (*Authority, error) {
	certPath, keyPath := filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile)
	a, err := LoadAuthority(certPath, keyPath)
	switch {
	case err == nil:
		if len(a.Root.URIs) == 1 && a.Root.URIs[0].String() != td.IDString() {
			return nil, fmt.Errorf("ca: the root in %s is for %s, not trust domain %s", dir, a.Root.URIs[0], td)
		}
		return a, nil
	case !errors.Is(err, fs.ErrNotExist):
		return nil, err
	}
	a, err = GenerateRoot(td)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(a.Key)
	if err != nil {
		return nil, fmt.Errorf("ca: encoding root key: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("ca: directory: %w", err)
	}
	// The key is written first: a crash between the two writes leaves a
	// key without a certificate, which the next start regenerates.
	if err := writeFileAtomic(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, err
	}
	if err := writeFileAtomic(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: a.Cert.Raw}), 0o644); err != nil {
		return nil, err
	}
	return a, nil
}

// EncodeCertsPEM returns certs as concatenated PEM CERTIFICATE blocks.
func EncodeCertsPEM(certs []*x509.Certificate) []byte {
	var b bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return b.Bytes()
}

func parseCertsPEM(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("ca: certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("ca: no PEM CERTIFICATE block")
	}
	return certs, nil
}

func parseKeyPEM(data []byte) (crypto.Signer, error) {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, errors.New("ca: no PEM private key block")
		}
		var (
			key any
			err error
		)
		switch block.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("ca: %s: %w", block.Type, err)
		}
		s, ok := key.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("ca: %T is not a signing key", key)
		}
		return s, nil
	}
}

func isSelfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ea, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ea.Equal(b)
}

// writeFileAtomic writes data to path through a temporary file and a
// rename, so a reader never sees a partial file.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+"-*")
	if err != nil {
		return fmt.Errorf("ca: writing %s: %w", path, err)
	}
	_, werr := tmp.Write(data)
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr, os.Chmod(tmp.Name(), perm)); err != nil {
		_ = os.Remove(tmp.Name())
		return fmt.Errorf("ca: writing %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		_ = os.Remove(tmp.Name())
		return fmt.Errorf("ca: writing %s: %w", path, err)
	}
	return nil
}
