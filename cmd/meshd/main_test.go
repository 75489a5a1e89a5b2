package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRun(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("static_resources:\n  clusterz: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{"no command", nil, 2, "", "usage: meshd COMMAND"},
		{"help", []string{"help"}, 0, "", "sidecar"},
		{"unknown command", []string{"frobnicate"}, 2, "", `unknown command "frobnicate"`},
		{"version", []string{"version"}, 0, "meshd ", ""},
		{"sidecar without -c", []string{"sidecar"}, 2, "", "-c BOOTSTRAP is required"},
		{"sidecar bad flag", []string{"sidecar", "--nope"}, 2, "", "flag provided but not defined"},
		{"sidecar bad log level", []string{"sidecar", "-c", bad, "--log-level", "loud"}, 2, "", "--log-level"},
		{"sidecar negative drain", []string{"sidecar", "-c", bad, "--drain-time-s", "-1"}, 2, "", "--drain-time-s"},
		{"sidecar missing file", []string{"sidecar", "-c", filepath.Join(dir, "none.yaml")}, 1, "", "invalid bootstrap"},
		{"sidecar unknown field", []string{"sidecar", "-c", bad}, 1, "", "clusterz"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := run(tc.args, &out, &errOut)
			if code != tc.wantCode {
				t.Errorf("exit code %d, want %d (stderr %q)", code, tc.wantCode, errOut.String())
			}
			if !strings.Contains(out.String(), tc.wantStdout) {
				t.Errorf("stdout %q does not contain %q", out.String(), tc.wantStdout)
			}
			if !strings.Contains(errOut.String(), tc.wantStderr) {
				t.Errorf("stderr %q does not contain %q", errOut.String(), tc.wantStderr)
			}
		})
	}
}
