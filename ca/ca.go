// Package ca is meshd's built-in certificate authority: it holds one or more
// signing authorities (a root, or an intermediate chaining to one) and
// issues short-lived X.509-SVIDs for workload identities from certificate
// signing requests.
//
// The identity of an issued SVID never comes from the CSR: the caller (the
// gRPC service in this package, after authenticating the sidecar) names it.
// The CSR contributes only its public key, and a CSR that asks for a
// different URI SAN is rejected rather than silently overridden, so a
// misconfigured sidecar finds out.
//
// Leaves follow the SPIFFE X.509-SVID specification: exactly one URI SAN
// (the SPIFFE ID) and no other SAN, CA=false, key usage digitalSignature
// only, extended key usage serverAuth and clientAuth, and a NotBefore
// backdated by Options.Backdate for clock skew.
package ca

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Defaults of Options.
const (
	// DefaultTTL is the lifetime of an SVID when the caller asks for none.
	DefaultTTL = 24 * time.Hour
	// DefaultMaxTTL caps the lifetime a caller may ask for.
	DefaultMaxTTL = 7 * 24 * time.Hour
	// DefaultBackdate is how far before "now" an SVID's NotBefore is set,
	// so a peer whose clock runs a little behind accepts it at once.
	DefaultBackdate = time.Minute
	// MinTTL is the shortest lifetime the CA issues; shorter requests are
	// raised to it. Rotation tests use TTLs of a few seconds.
	MinTTL = time.Second
)

// Options configure a CA. The zero value is usable.
type Options struct {
	// DefaultTTL is the lifetime of SVIDs whose request names none;
	// DefaultTTL when zero.
	DefaultTTL time.Duration
	// MaxTTL caps a requested lifetime; DefaultMaxTTL when zero, and
	// never below DefaultTTL.
	MaxTTL time.Duration
	// Backdate moves NotBefore into the past; DefaultBackdate when zero,
	// none when negative.
	Backdate time.Duration
	// Now is the CA's clock; time.Now when nil.
	Now func() time.Time
}

// Authority is one signing certificate and its key. Chain holds the
// certificates between Cert and Root (empty when Cert is itself the root);
// Root is the self-signed trust anchor that goes into the bundle.
type Authority struct {
	Cert  *x509.Certificate
	Key   crypto.Signer
	Chain []*x509.Certificate
	Root  *x509.Certificate
}

// validate checks that a can sign: a CA certificate with keyCertSign whose
// public key matches Key, and a chain that verifies up to Root.
func (a *Authority) validate() error {
	if a == nil || a.Cert == nil || a.Key == nil || a.Root == nil {
		return errors.New("authority: certificate, key and root are required")
	}
	if !a.Cert.IsCA || !a.Cert.BasicConstraintsValid {
		return fmt.Errorf("authority %q: not a CA certificate (basicConstraints CA:TRUE required)", a.Cert.Subject)
	}
	if a.Cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return fmt.Errorf("authority %q: key usage lacks keyCertSign", a.Cert.Subject)
	}
	if !publicKeysEqual(a.Cert.PublicKey, a.Key.Public()) {
		return fmt.Errorf("authority %q: private key does not match the certificate", a.Cert.Subject)
	}
	roots := x509.NewCertPool()
	roots.AddCert(a.Root)
	inter := x509.NewCertPool()
	for _, c := range a.Chain {
		inter.AddCert(c)
	}
	if _, err := a.Cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("authority %q: does not chain to root %q: %w", a.Cert.Subject, a.Root.Subject, err)
	}
	return nil
}

// SVID is one issued X.509-SVID.
type SVID struct {
	// ID is the identity in the leaf's URI SAN.
	ID spiffeid.ID
	// Chain is the leaf followed by the intermediates up to (excluding)
	// the root, as a TLS peer presents it.
	Chain []*x509.Certificate
	// Bundle is every root the CA trusts at issuance (the newest last):
	// during a root rotation it holds the old and the new one.
	Bundle []*x509.Certificate
}

// ExpiresAt returns the leaf's NotAfter.
func (s *SVID) ExpiresAt() time.Time { return s.Chain[0].NotAfter }

// CA issues X.509-SVIDs for one trust domain. All methods are safe for
// concurrent use.
type CA struct {
	td   spiffeid.TrustDomain
	opts Options

	mu          sync.RWMutex
	authorities []*Authority // issuing is done by the last one
	roots       []*x509.Certificate
}

// New returns a CA for trust domain td that issues with the last of
// authorities and trusts the roots of all of them. At least one is
// required.
func New(td spiffeid.TrustDomain, opts Options, authorities ...*Authority) (*CA, error) {
	if td.IsZero() {
		return nil, errors.New("ca: trust domain is required")
	}
	if len(authorities) == 0 {
		return nil, errors.New("ca: at least one authority is required")
	}
	if opts.DefaultTTL <= 0 {
		opts.DefaultTTL = DefaultTTL
	}
	if opts.DefaultTTL < MinTTL {
		opts.DefaultTTL = MinTTL
	}
	if opts.MaxTTL <= 0 {
		opts.MaxTTL = DefaultMaxTTL
	}
	opts.MaxTTL = max(opts.MaxTTL, opts.DefaultTTL)
	if opts.Backdate == 0 {
		opts.Backdate = DefaultBackdate
	}
	opts.Backdate = max(opts.Backdate, 0)
	if opts.Now == nil {
		opts.Now = time.Now
	}
	c := &CA{td: td, opts: opts}
	for _, a := range authorities {
		if err := c.AddAuthority(a); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// TrustDomain returns the CA's trust domain.
func (c *CA) TrustDomain() spiffeid.TrustDomain { return c.td }

// AddAuthority makes a the issuing authority and adds its root to the
// bundle (once). The previous authorities' roots stay trusted until
// RemoveRoot, which is how a root rotation keeps every handshake working:
// add the new root, let sidecars pick up the two-root bundle and
// reissued SVIDs, then remove the old one.
func (c *CA) AddAuthority(a *Authority) error {
	if err := a.validate(); err != nil {
		return fmt.Errorf("ca: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.authorities = append(c.authorities, a)
	for _, r := range c.roots {
		if r.Equal(a.Root) {
			return nil
		}
	}
	c.roots = append(c.roots, a.Root)
	return nil
}

// RemoveRoot drops root from the bundle, along with every authority that
// chains to it. Removing the root of the issuing authority is an error:
// the CA would issue SVIDs its own bundle does not verify.
func (c *CA) RemoveRoot(root *x509.Certificate) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.authorities[len(c.authorities)-1].Root.Equal(root) {
		return fmt.Errorf("ca: root %q is the issuing authority's root", root.Subject)
	}
	roots := c.roots[:0:0]
	found := false
	for _, r := range c.roots {
		if r.Equal(root) {
			found = true
			continue
		}
		roots = append(roots, r)
	}
	if !found {
		return fmt.Errorf("ca: root %q is not in the bundle", root.Subject)
	}
	auths := c.authorities[:0:0]
	for _, a := range c.authorities {
		if !a.Root.Equal(root) {
			auths = append(auths, a)
		}
	}
	c.roots, c.authorities = roots, auths
	return nil
}

// Bundle returns the trusted roots, oldest first. The slice is a copy; the
// certificates are shared and must not be modified.
func (c *CA) Bundle() []*x509.Certificate {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return append([]*x509.Certificate(nil), c.roots...)
}

// X509Bundle returns Bundle as a go-spiffe bundle of the CA's trust
// domain, for x509svid.Verify and tlsconfig.
func (c *CA) X509Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(c.td, c.Bundle())
}

// WorkloadID returns spiffe://<trust domain>/ns/<namespace>/sa/<serviceAccount>.
func (c *CA) WorkloadID(namespace, serviceAccount string) (spiffeid.ID, error) {
	id, err := spiffeid.FromSegments(c.td, "ns", namespace, "sa", serviceAccount)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("ca: namespace %q, service account %q: %w", namespace, serviceAccount, err)
	}
	return id, nil
}

// Sign issues an SVID for id with the public key of the PKCS#10 request
// csrDER. ttl is the requested lifetime: zero means Options.DefaultTTL, and
// it is clamped to [MinTTL, Options.MaxTTL]. The request's signature must
// verify; if it carries URI SANs, there must be exactly one and it must be
// id; DNS, IP and e-mail SANs are refused (an SVID carries only the URI).
// The CSR's subject is ignored.
func (c *CA) Sign(csrDER []byte, id spiffeid.ID, ttl time.Duration) (*SVID, error) {
	if !id.MemberOf(c.td) {
		return nil, fmt.Errorf("ca: identity %q is not in trust domain %q", id, c.td)
	}
	if id.Path() == "" {
		return nil, fmt.Errorf("ca: identity %q has an empty path (not allowed in an SVID)", id)
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, fmt.Errorf("ca: parsing CSR: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("ca: CSR signature: %w", err)
	}
	if err := checkCSRNames(csr, id); err != nil {
		return nil, err
	}
	switch ttl {
	case 0:
		ttl = c.opts.DefaultTTL
	default:
		ttl = min(max(ttl, MinTTL), c.opts.MaxTTL)
	}

	c.mu.RLock()
	a := c.authorities[len(c.authorities)-1]
	bundle := append([]*x509.Certificate(nil), c.roots...)
	c.mu.RUnlock()

	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := c.opts.Now()
	notAfter := now.Add(ttl)
	// A leaf must not outlive its issuer: verifiers reject the chain
	// once the issuer expires, whatever the leaf says.
	if notAfter.After(a.Cert.NotAfter) {
		notAfter = a.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{},
		NotBefore:             now.Add(-c.opts.Backdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
		URIs:                  []*url.URL{id.URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.Cert, csr.PublicKey, a.Key)
	if err != nil {
		return nil, fmt.Errorf("ca: signing SVID for %q: %w", id, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ca: parsing issued SVID: %w", err)
	}
	chain := make([]*x509.Certificate, 0, 2+len(a.Chain))
	chain = append(chain, leaf)
	if !a.Cert.Equal(a.Root) {
		chain = append(chain, a.Cert)
	}
	chain = append(chain, a.Chain...)
	return &SVID{ID: id, Chain: chain, Bundle: bundle}, nil
}

// checkCSRNames enforces that the CSR asks for id or for nothing.
func checkCSRNames(csr *x509.CertificateRequest, id spiffeid.ID) error {
	if len(csr.DNSNames)+len(csr.IPAddresses)+len(csr.EmailAddresses) > 0 {
		return errors.New("ca: CSR has DNS, IP or e-mail SANs; an X.509-SVID carries only its SPIFFE ID")
	}
	switch len(csr.URIs) {
	case 0:
		return nil
	case 1:
		if csr.URIs[0].String() != id.String() {
			return fmt.Errorf("ca: CSR URI SAN %q differs from the authenticated identity %q", csr.URIs[0], id)
		}
		return nil
	default:
		return fmt.Errorf("ca: CSR has %d URI SANs; an X.509-SVID has exactly one", len(csr.URIs))
	}
}

// newSerial returns a random positive 128-bit serial number (RFC 5280
// allows up to 20 octets).
func newSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("ca: serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}
