//go:build !meshd_sidecar

package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"meshd.dev/meshd/examples"
	"meshd.dev/meshd/proxy/config"
)

// TestBootstrapCommand: the printed bootstrap passes the sidecar's strict
// loader and carries the node, admin and ADS settings; bad input exits
// non-zero with the reason.
func TestBootstrapCommand(t *testing.T) {
	dir := t.TempDir()
	meshPath := filepath.Join(dir, "mesh.yaml")
	if err := os.WriteFile(meshPath, examples.Mesh, 0o600); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("apiVersion: meshd.dev/v1alpha1\nkind: Nope\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantNode   string
		wantAdmin  uint32
		wantDelta  bool
		wantStderr string
	}{
		{"built-in server", []string{"--workload", "greeter-server.demo", "--xds", "127.0.0.1:15010"}, 0, "greeter-server.demo", 15001, false, ""},
		{"file client delta", []string{"--workload", "greeter-client.demo", "--xds", "127.0.0.1:15010", "-f", meshPath, "--delta"}, 0, "greeter-client.demo", 15002, true, ""},
		{"dns control plane", []string{"--workload", "greeter-client.demo", "--xds", "control-plane.meshd:15010"}, 0, "greeter-client.demo", 15002, false, ""},
		{"unknown workload", []string{"--workload", "nobody.demo", "--xds", "127.0.0.1:15010"}, 1, "", 0, false, `no Workload "nobody.demo"`},
		{"bad xds address", []string{"--workload", "greeter-client.demo", "--xds", "no-port"}, 1, "", 0, false, "xDS address"},
		{"bad mesh file", []string{"--workload", "a.b", "--xds", "127.0.0.1:1", "-f", bad}, 1, "", 0, false, "Nope"},
		{"missing flags", []string{"--workload", "a.b"}, 2, "", 0, false, "--xds HOST:PORT are required"},
		{"stray argument", []string{"--workload", "a.b", "--xds", "h:1", "extra"}, 2, "", 0, false, "unexpected arguments"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := run(append([]string{"bootstrap", "--ca-dir", t.TempDir()}, tc.args...), &out, &errOut)
			if code != tc.wantCode {
				t.Fatalf("exit code %d, want %d (stderr %q)", code, tc.wantCode, errOut.String())
			}
			if !strings.Contains(errOut.String(), tc.wantStderr) {
				t.Errorf("stderr %q does not contain %q", errOut.String(), tc.wantStderr)
			}
			if tc.wantCode != 0 {
				return
			}
			b, err := config.ParseBootstrap(out.Bytes(), "printed")
			if err != nil {
				t.Fatalf("the printed bootstrap fails the sidecar's loader: %v\n%s", err, out.String())
			}
			if got := b.GetNode().GetId(); got != tc.wantNode {
				t.Errorf("node.id = %q, want %q", got, tc.wantNode)
			}
			if got := b.GetAdmin().GetAddress().GetSocketAddress().GetPortValue(); got != tc.wantAdmin {
				t.Errorf("admin port = %d, want %d", got, tc.wantAdmin)
			}
			want := corev3.ApiConfigSource_GRPC
			if tc.wantDelta {
				want = corev3.ApiConfigSource_DELTA_GRPC
			}
			if got := b.GetDynamicResources().GetAdsConfig().GetApiType(); got != want {
				t.Errorf("ads_config.api_type = %v, want %v", got, want)
			}
		})
	}
}
