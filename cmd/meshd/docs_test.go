//go:build !meshd_sidecar

package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

var (
	// docCommandRE finds "meshd COMMAND ARGS" up to the end of the line
	// or of the inline code span.
	docCommandRE = regexp.MustCompile("meshd (" + strings.Join(commandNames(), "|") + `)\b([^\n` + "`" + `]*)`)
	// docFlagRE finds the flags in ARGS: -x or --name, not inside a word.
	docFlagRE = regexp.MustCompile(`(?:^|[\s\[|(])--?([a-z][a-z0-9-]*)`)
	// helpFlagRE finds the flags in the flag package's PrintDefaults.
	helpFlagRE = regexp.MustCompile(`(?m)^  -([a-z][a-z0-9-]*)`)
)

func commandNames() []string {
	var names []string
	for _, c := range commands {
		names = append(names, regexp.QuoteMeta(c.name))
	}
	return names
}

// TestDocsFlagsExist: every flag the README and docs/*.md give a meshd
// subcommand ("meshd up [-f MESH.yaml] [--duration D]", in code blocks and
// inline) is one that subcommand's --help lists, so a documented command
// line never fails with "flag provided but not defined".
func TestDocsFlagsExist(t *testing.T) {
	flags := map[string][]string{}
	for _, c := range commands {
		var out, errOut bytes.Buffer
		if code := run([]string{c.name, "--help"}, &out, &errOut); code != 0 {
			t.Fatalf("meshd %s --help: exit %d", c.name, code)
		}
		for _, m := range helpFlagRE.FindAllStringSubmatch(errOut.String(), -1) {
			flags[c.name] = append(flags[c.name], m[1])
		}
	}
	docs, err := filepath.Glob("../../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	docs = append(docs, "../../README.md")
	checked := 0
	for _, path := range docs {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range docCommandRE.FindAllStringSubmatch(string(b), -1) {
			for _, f := range docFlagRE.FindAllStringSubmatch(m[2], -1) {
				checked++
				if f[1] == "h" || f[1] == "help" {
					continue
				}
				if !slices.Contains(flags[m[1]], f[1]) {
					t.Errorf("%s: %q: meshd %s has no flag -%s", filepath.Base(path), strings.TrimSpace(m[0]), m[1], f[1])
				}
			}
		}
	}
	if checked < 50 {
		t.Errorf("checked %d documented flags; the README alone has more: is the pattern still right?", checked)
	}
	t.Logf("%d documented flags checked", checked)
}
