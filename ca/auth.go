package ca

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync/atomic"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"meshd.dev/meshd/xds/model"
)

// ErrUnauthenticated is wrapped by every Authenticator error caused by the
// credential (missing, unknown, not for a current workload), as opposed to
// an internal failure. The gRPC service answers it with Unauthenticated.
var ErrUnauthenticated = errors.New("unauthenticated")

// Authenticator turns the bearer credential a sidecar presented into the
// identity it may be issued. File mode uses TokenAuthenticator; on
// Kubernetes a TokenReview of the projected service-account token does the
// same job.
type Authenticator interface {
	// Authenticate returns the SPIFFE ID the holder of token is, or an
	// error wrapping ErrUnauthenticated.
	Authenticate(ctx context.Context, token string) (spiffeid.ID, error)
}

// TokenSecretFile is the file in a CA directory holding the bootstrap-token
// secret (32 random bytes, mode 0600).
const TokenSecretFile = "token.key"

// tokenLabel separates bootstrap-token MACs from any other use of the
// secret and versions the derivation.
const tokenLabel = "meshd bootstrap token v1\x00"

// BootstrapToken returns the file-mode bootstrap token of the sidecar with
// node ID nodeID: base64url (no padding) of HMAC-SHA256(secret,
// "meshd bootstrap token v1\x00" + nodeID), 256 bits that look random to
// anyone without the secret. Deriving it, rather than storing random
// tokens, makes every control-plane replica and restart that shares the
// secret agree on every token without any shared state; rotating the secret
// revokes them all.
func BootstrapToken(secret []byte, nodeID string) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(tokenLabel))
	m.Write([]byte(nodeID))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// LoadOrCreateTokenSecret returns the secret in dir/TokenSecretFile,
// creating it (32 bytes from crypto/rand, dir 0700, file 0600) when absent.
// `meshd control-plane` and `meshd bootstrap` pointed at the same directory
// therefore agree on every token.
func LoadOrCreateTokenSecret(dir string) ([]byte, error) {
	path := filepath.Join(dir, TokenSecretFile)
	secret, err := os.ReadFile(path)
	switch {
	case err == nil:
		if len(secret) < 32 {
			return nil, fmt.Errorf("ca: token secret %s: %d bytes, want at least 32", path, len(secret))
		}
		return secret, nil
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("ca: token secret: %w", err)
	}
	secret = make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return nil, fmt.Errorf("ca: token secret: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("ca: directory: %w", err)
	}
	if err := writeFileAtomic(path, secret, 0o600); err != nil {
		return nil, err
	}
	return secret, nil
}

// TokenAuthenticator authenticates file-mode bootstrap tokens against the
// current mesh: token → node ID → Workload → its namespace and
// serviceAccount → spiffe://<trust domain>/ns/<ns>/sa/<sa>. Only SHA-256
// digests of the tokens are kept, in a table rebuilt by SetMesh, so a
// memory dump does not hand out credentials and lookups take the same time
// whatever prefix of a token an attacker guessed. Safe for concurrent use.
type TokenAuthenticator struct {
	secret []byte
	td     spiffeid.TrustDomain
	table  atomic.Pointer[map[[sha256.Size]byte]spiffeid.ID]
}

// NewTokenAuthenticator returns an authenticator for the tokens derived
// from secret, issuing IDs in trust domain td. It knows no workload until
// SetMesh.
func NewTokenAuthenticator(secret []byte, td spiffeid.TrustDomain) *TokenAuthenticator {
	a := &TokenAuthenticator{secret: append([]byte(nil), secret...), td: td}
	a.table.Store(&map[[sha256.Size]byte]spiffeid.ID{})
	return a
}

// SetMesh replaces the workloads whose tokens are accepted with those of m.
// A workload removed from the mesh is refused from then on. A mesh of
// another trust domain than the authenticator's, or a workload whose namespace or service account does not form a valid SPIFFE ID is an
// error and nothing changes.
func (a *TokenAuthenticator) SetMesh(m *model.Mesh) error {
	if m.Spec.TrustDomain != a.td.Name() {
		return fmt.Errorf("ca: the mesh's trust domain %q is not the CA's %q", m.Spec.TrustDomain, a.td.Name())
	}
	table := make(map[[sha256.Size]byte]spiffeid.ID, len(m.Workloads))
	for _, w := range m.Workloads {
		id, err := spiffeid.FromSegments(a.td, "ns", w.Metadata.Namespace, "sa", w.Spec.ServiceAccount)
		if err != nil {
			return fmt.Errorf("ca: Workload %s: namespace %q, serviceAccount %q: %w", w.NodeID(), w.Metadata.Namespace, w.Spec.ServiceAccount, err)
		}
		table[sha256.Sum256([]byte(BootstrapToken(a.secret, w.NodeID())))] = id
	}
	a.table.Store(&table)
	return nil
}

// Authenticate implements Authenticator.
func (a *TokenAuthenticator) Authenticate(_ context.Context, token string) (spiffeid.ID, error) {
	if token == "" {
		return spiffeid.ID{}, fmt.Errorf("%w: no bootstrap token", ErrUnauthenticated)
	}
	id, ok := (*a.table.Load())[sha256.Sum256([]byte(token))]
	if !ok {
		// The two ways a user gets here: the Workload left the mesh
		// file, or `meshd bootstrap` derived the token from another
		// --ca-dir's secret than this control plane's.
		return spiffeid.ID{}, fmt.Errorf("%w: bootstrap token matches no Workload of the mesh (Workload removed from the mesh, or the bootstrap was made with another --ca-dir than the control plane's)", ErrUnauthenticated)
	}
	return id, nil
}

var _ Authenticator = (*TokenAuthenticator)(nil)
