//go:build !meshd_sidecar

package main

import (
	"bytes"
	"path/filepath"
	"testing"

	"meshd.dev/meshd/ca"
	"meshd.dev/meshd/proxy/config"
)

// TestBootstrapCAToken: with --ca-dir the printed bootstrap carries the
// workload's token in node.metadata, the sidecar's loader accepts it, and
// the token is the one the control plane derives from the same directory.
func TestBootstrapCAToken(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	var out, errOut bytes.Buffer
	if code := run([]string{"bootstrap", "--workload", "greeter-client.demo", "--xds", "127.0.0.1:15010", "--ca-dir", dir}, &out, &errOut); code != 0 {
		t.Fatalf("exit code %d: %s", code, errOut.String())
	}
	b, err := config.ParseBootstrap(out.Bytes(), "printed")
	if err != nil {
		t.Fatalf("the printed bootstrap fails the sidecar's loader: %v\n%s", err, out.String())
	}
	got, ok := ca.NodeToken(b.GetNode())
	if !ok {
		t.Fatalf("no %s in node.metadata:\n%s", ca.TokenMetadataKey, out.String())
	}
	secret, err := ca.LoadOrCreateTokenSecret(dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := ca.BootstrapToken(secret, "greeter-client.demo"); got != want {
		t.Errorf("token %q, want %q", got, want)
	}
}
