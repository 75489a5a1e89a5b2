// Command meshd is the meshd service mesh: the sidecar data plane, the xDS
// control plane, and a local mesh runner.
//
// The default build is the full binary. Built with -tags meshd_sidecar it
// is the sidecar-only build: the same `meshd` with only the data-plane
// subcommands (sidecar, capture, version), linking none of the control
// plane, Kubernetes client, doctor or auto-tuning packages, so a sidecar
// process maps and initialises far less (docs/RATIONALE.md). Its other
// subcommands fail with an error naming the build.
//
// Usage:
//
//	meshd sidecar -c BOOTSTRAP.yaml [--admin-address-path FILE] [--drain-time-s N] [--log-level LEVEL]
//	meshd control-plane --config MESH.yaml [--xds-address ADDR] [--admin-address ADDR] [...]
//	meshd bootstrap --workload NAME.NAMESPACE --xds HOST:PORT [-f MESH.yaml] [--delta]
//	meshd up [-f MESH.yaml] [--duration D] [...]
//	meshd doctor [-f MESH.yaml | --admin HOST:PORT | --control-plane HOST:PORT] [--window D] [-o json]
//	meshd inject -f POD_OR_DEPLOYMENT.yaml [...] / meshd injector [...]
//	meshd capture [--inbound-port N] [--outbound-port N] [...]
//	meshd version
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
)

// command is one subcommand: it parses its own flags from args and returns
// the process exit code.
type command struct {
	name    string
	summary string
	run     func(args []string, stdout, stderr io.Writer) int
}

// dataPlaneCommands are in every build, the sidecar-only one included.
var dataPlaneCommands = []command{
	{"sidecar", "run the data plane from an Envoy v3 bootstrap", runSidecar},
	{"capture", "install the pod's traffic-capture rules (iptables or nftables; the init container)", runCapture},
	{"version", "print meshd, Go and dependency versions", runVersion},
}

// fullOnlyCommands names the subcommands of the full build only, in usage
// order; fullCommands (commands_full.go) holds them in that build and the
// sidecar-only build answers them with an error naming the build.
var fullOnlyCommands = []string{"control-plane", "bootstrap", "up", "doctor", "inject", "injector"}

// commands is every subcommand this build has, in usage order.
var commands = slices.Concat(dataPlaneCommands[:1], fullCommands, dataPlaneCommands[1:])

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
	if slices.Contains(fullOnlyCommands, args[0]) {
		fmt.Fprintf(stderr, "meshd: command %q is not in this build: this meshd is the %s; use the full meshd binary (built without -tags meshd_sidecar)\n", args[0], buildName)
		return 2
	}
	fmt.Fprintf(stderr, "meshd: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "usage: meshd COMMAND [flags]\n\ncommands (%s):\n", buildName)
	for _, c := range commands {
		fmt.Fprintf(w, "  %-14s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nmeshd COMMAND --help lists the command's flags.")
}

// parseFlags parses a subcommand's flags from args. When the command must
// not go on it returns done and the exit code: 0 after -h or --help (the
// flags went to the flag set's output, as with the top-level --help), and
// badFlag after a flag that does not parse (the flag package has printed
// the error and the flags).
func parseFlags(fs *flag.FlagSet, args []string, badFlag int) (code int, done bool) {
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: meshd %s [flags]\n\nflags:\n", fs.Name())
		fs.PrintDefaults()
	}
	switch err := fs.Parse(args); {
	case errors.Is(err, flag.ErrHelp):
		return 0, true
	case err != nil:
		return badFlag, true
	}
	return 0, false
}

// newLogger returns the text logger a subcommand writes to stderr at the
// --log-level named by level (debug, info, warn or error, as
// slog.Level.UnmarshalText reads them).
func newLogger(stderr io.Writer, level string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl})), nil
}
