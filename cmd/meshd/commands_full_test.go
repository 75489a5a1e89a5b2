//go:build !meshd_sidecar

package main

import (
	"slices"
	"testing"
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
