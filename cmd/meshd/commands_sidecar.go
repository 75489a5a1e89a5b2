//go:build meshd_sidecar

package main

// buildName names this build in usage, `meshd version` and the error a
// full-build subcommand gets.
const buildName = "sidecar-only build (-tags meshd_sidecar)"

// fullCommands is empty: this build links only the data plane.
var fullCommands []command
