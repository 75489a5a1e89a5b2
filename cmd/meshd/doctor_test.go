//go:build !meshd_sidecar

package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDoctorCommand runs `meshd doctor` in-process: the exit code is the
// report's worst severity, 3 when doctor cannot run.
func TestDoctorCommand(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte(`apiVersion: meshd.dev/v1alpha1
kind: Service
metadata: {name: greeter, namespace: demo}
spec: {protocol: grpc, port: 50051, serverLimits: {minPingInterval: 10s}}
---
apiVersion: meshd.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: greeter, namespace: demo}
spec:
  targetRef: {kind: Service, name: greeter}
  http2: {keepalive: {interval: 5s, timeout: 1s}}
  connectionPool: {idleTimeout: 5m}
  outlierDetection: {consecutive5xx: 5}
  timeout: 10s
`), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		args   []string
		code   int
		stdout string // substring
		stderr string // substring
	}{
		{"built-in example", []string{"doctor"}, 0, "meshd doctor (static) built-in example mesh: no findings", ""},
		{"warning", []string{"doctor", "-f", bad}, 1, "fix:      TrafficPolicy demo/greeter: spec.http2.keepalive.interval: 10s", ""},
		{"json", []string{"doctor", "-f", bad, "-o", "json"}, 1, `"rule": "keepalive-below-min-ping"`, ""},
		{"missing file", []string{"doctor", "-f", filepath.Join(dir, "none.yaml")}, 2, "invalid-mesh", ""},
		{"two targets", []string{"doctor", "-f", bad, "--admin", "127.0.0.1:1"}, 3, "", "give one of"},
		{"bad output", []string{"doctor", "-o", "yaml"}, 3, "", `-o "yaml"`},
		{"unreachable admin", []string{"doctor", "--admin", "127.0.0.1:1", "--window", "10ms"}, 3, "", "meshd doctor: admin 127.0.0.1:1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(tt.args, &stdout, &stderr)
			if code != tt.code || !strings.Contains(stdout.String(), tt.stdout) || !strings.Contains(stderr.String(), tt.stderr) {
				t.Errorf("meshd %v: exit %d, want %d\nstdout: %s\nstderr: %s", tt.args, code, tt.code, stdout.String(), stderr.String())
			}
			if tt.name == "json" && !json.Valid(stdout.Bytes()) {
				t.Errorf("-o json printed invalid JSON: %s", stdout.String())
			}
		})
	}
}
