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
		{"version extra argument", []string{"version", "now"}, 2, "", "unexpected arguments"},
		{"sidecar without -c", []string{"sidecar"}, 2, "", "-c BOOTSTRAP is required"},
		{"sidecar stray argument", []string{"sidecar", "-c", bad, "extra", "--drain-time-s", "1"}, 2, "", `unexpected arguments ["extra" "--drain-time-s" "1"]`},
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

// TestSubcommandHelp: -h and --help on every subcommand of this build
// print its flags under a "usage: meshd NAME" line on stderr and exit 0, as
// the top-level --help does; they never run the command (nothing on
// stdout, even for version).
func TestSubcommandHelp(t *testing.T) {
	for _, c := range commands {
		for _, flag := range []string{"-h", "--help"} {
			t.Run(c.name+" "+flag, func(t *testing.T) {
				var out, errOut bytes.Buffer
				if code := run([]string{c.name, flag}, &out, &errOut); code != 0 {
					t.Errorf("exit code %d, want 0 (stderr %q)", code, errOut.String())
				}
				if out.Len() != 0 {
					t.Errorf("stdout %q, want nothing", out.String())
				}
				if want := "usage: meshd " + c.name + " [flags]\n"; !strings.HasPrefix(errOut.String(), want) {
					t.Errorf("stderr %q does not start with %q", errOut.String(), want)
				}
			})
		}
	}
}

// TestUsageAligned: the top-level usage lists every command with its
// summary starting in one column, however long the command's name.
func TestUsageAligned(t *testing.T) {
	var b bytes.Buffer
	usage(&b)
	col := -1
	listed := 0
	for _, line := range strings.Split(b.String(), "\n") {
		for _, c := range commands {
			if !strings.HasPrefix(line, "  "+c.name+" ") {
				continue
			}
			listed++
			i := strings.Index(line, c.summary)
			if i < 0 {
				t.Errorf("line %q lacks the summary %q", line, c.summary)
				continue
			}
			if col < 0 {
				col = i
			} else if i != col {
				t.Errorf("summary of %q starts at column %d, others at %d:\n%s", c.name, i, col, b.String())
			}
		}
	}
	if listed != len(commands) {
		t.Errorf("usage lists %d commands, want %d:\n%s", listed, len(commands), b.String())
	}
}
