//go:build !meshd_sidecar

package main

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"meshd.dev/meshd/examples"
)

// TestFullCommands: the full build registers exactly the subcommands
// fullOnlyCommands names (the sidecar-only build refuses those names with
// its error), and every name once.
func TestFullCommands(t *testing.T) {
	var full []string
	for _, c := range fullCommands {
		full = append(full, c.name)
	}
	if !slices.Equal(full, fullOnlyCommands) {
		t.Errorf("fullCommands are %q, fullOnlyCommands %q", full, fullOnlyCommands)
	}
	seen := map[string]bool{}
	for _, c := range commands {
		if seen[c.name] {
			t.Errorf("command %q registered twice", c.name)
		}
		seen[c.name] = true
	}
	if len(commands) != len(dataPlaneCommands)+len(fullOnlyCommands) {
		t.Errorf("%d commands, want %d data-plane + %d full-only", len(commands), len(dataPlaneCommands), len(fullOnlyCommands))
	}
}

// TestControlPlaneCAErrors: a built-in CA that cannot be loaded stops
// the control plane at start (exit 1) with an error naming the flag and
// the file.
func TestControlPlaneCAErrors(t *testing.T) {
	dir := t.TempDir()
	mesh := filepath.Join(dir, "mesh.yaml")
	if err := os.WriteFile(mesh, examples.Mesh, 0o600); err != nil {
		t.Fatal(err)
	}
	notDir := filepath.Join(dir, "file")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")
	tests := []struct {
		name  string
		flags []string
		want  []string
	}{
		{"missing --ca-cert", []string{"--ca-cert", missing, "--ca-key", missing}, []string{"--ca-cert/--ca-key: ", missing, "no such file"}},
		{"--ca-dir under a file", []string{"--ca-dir", filepath.Join(notDir, "ca")}, []string{"--ca-dir " + filepath.Join(notDir, "ca") + ": ", "not a directory"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"control-plane", "--config", mesh, "--xds-address", "127.0.0.1:0", "--admin-address", "127.0.0.1:0"}, tc.flags...)
			var out, errOut bytes.Buffer
			if code := run(args, &out, &errOut); code != 1 {
				t.Errorf("exit code %d, want 1 (stderr %q)", code, errOut.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(errOut.String(), w) {
					t.Errorf("stderr %q lacks %q", errOut.String(), w)
				}
			}
		})
	}
}

// TestControlPlaneKubeConfigErrors: --kube that cannot reach a cluster
// stops at start (exit 1) and says what to give: outside a pod without
// --kubeconfig it names --kubeconfig; a missing kubeconfig file is named.
func TestControlPlaneKubeConfigErrors(t *testing.T) {
	// Outside a pod, whatever the machine running the test is.
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBERNETES_SERVICE_PORT", "")
	missing := filepath.Join(t.TempDir(), "kubeconfig")
	tests := []struct {
		name  string
		flags []string
		want  []string
	}{
		{"not in a pod", nil, []string{"--kube: no --kubeconfig, and not in a pod: ", "KUBERNETES_SERVICE_HOST"}},
		{"missing kubeconfig", []string{"--kubeconfig", missing}, []string{"--kubeconfig " + missing + ": "}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"control-plane", "--kube", "--ca-dir", t.TempDir(), "--xds-address", "127.0.0.1:0", "--admin-address", "127.0.0.1:0"}, tc.flags...)
			var out, errOut bytes.Buffer
			if code := run(args, &out, &errOut); code != 1 {
				t.Errorf("exit code %d, want 1 (stderr %q)", code, errOut.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(errOut.String(), w) {
					t.Errorf("stderr %q lacks %q", errOut.String(), w)
				}
			}
		})
	}
}
