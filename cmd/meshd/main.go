// Command meshd is the meshd service mesh: the sidecar data plane, the xDS
// control plane, and a local mesh runner.
//
// Usage:
//
//	meshd sidecar -c BOOTSTRAP.yaml [--admin-address-path FILE] [--drain-time-s N] [--log-level LEVEL]
//	meshd control-plane --config MESH.yaml [--xds-address ADDR] [--admin-address ADDR] [...]
//	meshd bootstrap --workload NAME.NAMESPACE --xds HOST:PORT [-f MESH.yaml] [--delta]
//	meshd up [-f MESH.yaml] [--duration D] [...]
//	meshd doctor [-f MESH.yaml | --admin HOST:PORT | --control-plane HOST:PORT] [--window D] [-o json]
//	meshd version
package main

import (
	"fmt"
	"io"
	"os"
)

// command is one subcommand: it parses its own flags from args and returns
// the process exit code.
type command struct {
	name    string
	summary string
	run     func(args []string, stdout, stderr io.Writer) int
}

var commands = []command{
	{"sidecar", "run the data plane from an Envoy v3 bootstrap", runSidecar},
	{"control-plane", "serve xDS (ADS, SotW and delta) from a mesh file", runControlPlane},
	{"bootstrap", "print the sidecar bootstrap of a mesh file's Workload", runBootstrap},
	{"up", "run a local mesh on loopback: control plane, sidecars, sample apps", runUp},
	{"doctor", "diagnose a mesh file, a sidecar or a fleet against the failure scenarios", runDoctor},
	{"version", "print meshd, Go and dependency versions", runVersion},
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands {
		if c.name == args[0] {
			return c.run(args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "meshd: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: meshd COMMAND [flags]\n\ncommands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
}
