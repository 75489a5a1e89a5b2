package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"meshd.dev/meshd/ca"
)

// TestSidecarBootstrapFlags checks --config-yaml, --service-node and
// --token-file, which the injected sidecar runs with.
func TestSidecarBootstrapFlags(t *testing.T) {
	dir := t.TempDir()
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte("eyJhbGciOi.projected.token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	inline := "node: {id: pod.namespace, cluster: c}\nadmin: {address: {socket_address: {address: 127.0.0.1, port_value: 15000}}}\n"
	b, err := loadSidecarBootstrap("", inline, "web-5d8f-x2x.demo", tok)
	if err != nil {
		t.Fatal(err)
	}
	if b.Node.Id != "web-5d8f-x2x.demo" || b.Node.Cluster != "c" {
		t.Fatalf("node = %v", b.Node)
	}
	if got, ok := ca.NodeToken(b.Node); !ok || got != "eyJhbGciOi.projected.token" {
		t.Fatalf("token = %q, %v", got, ok)
	}
	for _, tt := range []struct{ name, inline, token, want string }{
		{"bad yaml", "node: {idd: x}\n", "", "idd"},
		{"missing token", inline, filepath.Join(dir, "none"), "--token-file"},
		{"empty token", inline, os.DevNull, "empty"},
	} {
		if _, err := loadSidecarBootstrap("", tt.inline, "", tt.token); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want %q", tt.name, err, tt.want)
		}
	}
	var out, errOut bytes.Buffer
	if code := run([]string{"sidecar", "-c", "x.yaml", "--config-yaml", inline}, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), "not both") {
		t.Fatalf("-c with --config-yaml: exit %d, %q", code, errOut.String())
	}
}
