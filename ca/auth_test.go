package ca

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"meshd.dev/meshd/examples"
	"meshd.dev/meshd/xds/model"
)

func exampleMesh(t *testing.T) *model.Mesh {
	t.Helper()
	m, err := model.Parse(examples.Mesh, "example")
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestTokenAuthenticator(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	td := spiffeid.RequireTrustDomainFromString("example.org")
	a := NewTokenAuthenticator(secret, td)
	if err := a.SetMesh(exampleMesh(t)); err != nil {
		t.Fatal(err)
	}
	other := BootstrapToken([]byte("another secret, another control plane"), "greeter-client.demo")
	tests := []struct {
		name, token string
		want        string // SPIFFE ID, or "" for ErrUnauthenticated
	}{
		{"server token", BootstrapToken(secret, "greeter-server.demo"), "spiffe://example.org/ns/demo/sa/greeter-server"},
		{"client token", BootstrapToken(secret, "greeter-client.demo"), "spiffe://example.org/ns/demo/sa/greeter-client"},
		{"unknown node", BootstrapToken(secret, "intruder.demo"), ""},
		{"token of another secret", other, ""},
		{"truncated token", BootstrapToken(secret, "greeter-server.demo")[:20], ""},
		{"empty", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := a.Authenticate(context.Background(), tt.token)
			if tt.want == "" {
				if !errors.Is(err, ErrUnauthenticated) {
					t.Fatalf("Authenticate = %v, %v; want ErrUnauthenticated", id, err)
				}
				// A token of another secret points at the likely mistake.
				if tt.token != "" && !strings.Contains(err.Error(), "--ca-dir") {
					t.Errorf("Authenticate error %q does not mention --ca-dir", err)
				}
				return
			}
			if err != nil || id.String() != tt.want {
				t.Fatalf("Authenticate = %v, %v; want %s", id, err, tt.want)
			}
		})
	}

	// A workload removed from the mesh loses its identity.
	m := exampleMesh(t)
	m.Workloads = m.Workloads[:0]
	if err := a.SetMesh(m); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Authenticate(context.Background(), BootstrapToken(secret, "greeter-server.demo")); !errors.Is(err, ErrUnauthenticated) {
		t.Errorf("token of a removed Workload: %v, want ErrUnauthenticated", err)
	}
	// A mesh of another trust domain is refused.
	if err := NewTokenAuthenticator(secret, testTD).SetMesh(exampleMesh(t)); err == nil || !strings.Contains(err.Error(), "trust domain") {
		t.Errorf("SetMesh with another trust domain: %v", err)
	}
}

func TestBootstrapTokenDeterministic(t *testing.T) {
	s := []byte("0123456789abcdef0123456789abcdef")
	a, b := BootstrapToken(s, "a.ns"), BootstrapToken(s, "a.ns")
	if a != b {
		t.Fatal("same secret and node ID gave different tokens")
	}
	if a == BootstrapToken(s, "b.ns") {
		t.Fatal("different node IDs gave the same token")
	}
	if len(a) != 43 { // 32 bytes, base64url without padding
		t.Fatalf("token length %d, want 43", len(a))
	}
}

func TestLoadOrCreateTokenSecret(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	s1, err := LoadOrCreateTokenSecret(dir)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := LoadOrCreateTokenSecret(dir)
	if err != nil {
		t.Fatal(err)
	}
	if string(s1) != string(s2) || len(s1) != 32 {
		t.Fatalf("secret not reused (len %d)", len(s1))
	}
	fi, err := os.Stat(filepath.Join(dir, TokenSecretFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("secret file mode %v, want 0600", fi.Mode().Perm())
	}
	if err := os.WriteFile(filepath.Join(dir, TokenSecretFile), []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateTokenSecret(dir); err == nil || !strings.Contains(err.Error(), "want at least 32") {
		t.Errorf("short secret: %v", err)
	}
}
