package ca

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
)

// AddRoot adds root to the bundle without issuing from it: the first step
// of a root rotation. Sidecars receive the two-root bundle with their next
// SVID while SVIDs are still issued by the current authority, so both old
// and new SVIDs verify everywhere once every sidecar has renewed; then
// AddAuthority switches issuing to the new root (already trusted), and
// RemoveRoot retires the old one. Adding a root already in the bundle is a
// no-op.
func (c *CA) AddRoot(root *x509.Certificate) error {
	if root == nil || !root.IsCA || !isSelfSigned(root) {
		return fmt.Errorf("ca: AddRoot: want a self-signed CA certificate")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range c.roots {
		if r.Equal(root) {
			return nil
		}
	}
	c.roots = append(c.roots, root)
	return nil
}

// SaveRoot writes a generated root authority (a.Cert == a.Root) to dir's
// CertFile and KeyFile, replacing what LoadOrGenerate persisted there, so a
// restarted control plane issues from it. The key is written first; a
// crash between the two writes leaves a pair that fails to load (the
// restart names the files) rather than a silently different root.
func SaveRoot(dir string, a *Authority) error {
	if a == nil || a.Cert == nil || a.Key == nil || !a.Cert.Equal(a.Root) {
		return fmt.Errorf("ca: SaveRoot: want a self-signed root authority")
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(a.Key)
	if err != nil {
		return fmt.Errorf("ca: encoding root key: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("ca: directory: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(dir, KeyFile), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, CertFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: a.Cert.Raw}), 0o644)
}
