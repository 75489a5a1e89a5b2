//go:build meshd_sidecar

package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestSidecarBuildRefusesFullCommands: in the sidecar-only build each
// full-build subcommand fails with exit code 2 and an error naming the
// build, not "unknown command", and the data-plane ones are all there.
func TestSidecarBuildRefusesFullCommands(t *testing.T) {
	for _, name := range fullOnlyCommands {
		t.Run(name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := run([]string{name, "--help"}, &out, &errOut)
			if code != 2 {
				t.Errorf("exit code %d, want 2", code)
			}
			for _, want := range []string{`"` + name + `" is not in this build`, "sidecar-only build (-tags meshd_sidecar)", "full meshd binary"} {
				if !strings.Contains(errOut.String(), want) {
					t.Errorf("stderr %q does not contain %q", errOut.String(), want)
				}
			}
		})
	}
	if len(commands) != len(dataPlaneCommands) {
		t.Errorf("%d commands, want the %d data-plane ones", len(commands), len(dataPlaneCommands))
	}
	var out, errOut bytes.Buffer
	if code := run([]string{"version"}, &out, &errOut); code != 0 || !strings.Contains(out.String(), "\nsidecar-only build (-tags meshd_sidecar)\n") {
		t.Errorf("version: exit %d, stdout %q", code, out.String())
	}
}
