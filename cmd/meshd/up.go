//go:build !meshd_sidecar

package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"meshd.dev/meshd/ca"
	"meshd.dev/meshd/internal/localmesh"
)

// runUp runs the local mesh (internal/localmesh) until SIGINT, SIGTERM or
// --duration, then stops it cleanly and exits 0.
func runUp(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	fs.SetOutput(stderr)
	meshPath := fs.String("f", "", "mesh file to run and watch (default: the built-in example mesh)")
	// The default is decided below from -f; the flag's own default is not
	// printed so that --help does not contradict it.
	samples := fs.Bool("samples", false, "run the sample gRPC server and client (default: on for the built-in mesh, off with -f)")
	duration := fs.Duration("duration", 0, "stop cleanly after this long (0: run until Ctrl-C)")
	keepLogs := fs.Bool("keep-logs", false, "keep the temporary directory with bootstraps and logs")
	quiet := fs.Bool("quiet", false, "print no live progress (the start-up block, mesh-file edit reports and summary still print)")
	rate := fs.Float64("rate", localmesh.DefaultRate, "sample calls per second, all callers together (negative: as fast as possible)")
	callers := fs.Int("callers", localmesh.DefaultCallers, "concurrent sample callers per outbound port")
	svidTTL := fs.Duration("svid-ttl", ca.DefaultTTL, "lifetime of the sidecars' SVIDs from the built-in CA (at least 1s; renewed at half-life)")
	rlWasm := fs.String("ratelimit-wasm", "", "the rate-limit proxy-wasm module for RateLimitPolicies with engine wasm (default: built from filters/ratelimit/guest when the mesh has one)")
	if code, done := parseFlags(fs, args, 2); done {
		return code
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "meshd up: unexpected arguments %q\n", fs.Args())
		return 2
	}
	samplesSet := false
	fs.Visit(func(f *flag.Flag) { samplesSet = samplesSet || f.Name == "samples" })
	if !samplesSet {
		*samples = *meshPath == ""
	}
	switch {
	case *duration < 0:
		fmt.Fprintln(stderr, "meshd up: --duration: must not be negative")
		return 2
	case *rate == 0:
		fmt.Fprintln(stderr, "meshd up: --rate: must not be 0")
		return 2
	case *callers <= 0:
		fmt.Fprintln(stderr, "meshd up: --callers: must be positive")
		return 2
	case *svidTTL < ca.MinTTL:
		fmt.Fprintf(stderr, "meshd up: --svid-ttl: %v is below the minimum %v\n", *svidTTL, ca.MinTTL)
		return 2
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintf(stderr, "meshd up: finding the meshd binary for the sidecars: %v\n", err)
		return 1
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	err = localmesh.Run(ctx, localmesh.Options{
		MeshPath:      *meshPath,
		Executable:    exe,
		Samples:       *samples,
		Callers:       *callers,
		Rate:          *rate,
		KeepLogs:      *keepLogs,
		RateLimitWasm: *rlWasm,
		Out:           stdout,
		Terminal:      isTerminal(stdout),
		Quiet:         *quiet,
		SVIDTTL:       *svidTTL,
	})
	if err != nil {
		fmt.Fprintf(stderr, "meshd up: %v\n", err)
		return 1
	}
	return 0
}

// isTerminal reports whether w is a character device (a terminal), where
// the live block is redrawn in place.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
