//go:build !meshd_sidecar

package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"time"

	"meshd.dev/meshd/doctor"
	"meshd.dev/meshd/examples"
)

// doctorFailed is the exit code when doctor could not diagnose at all (bad
// flags, an admin API it cannot reach); 0, 1 and 2 are the report's worst
// severity (info, warning, error).
const doctorFailed = 3

// runDoctor diagnoses a mesh file (-f; the built-in example mesh when no
// target is given), one sidecar (--admin) or every sidecar of a control
// plane (--control-plane) against docs/scenarios.md, prints the report as a
// table or JSON (-o json) and exits with its worst severity.
func runDoctor(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("doctor", flag.ContinueOnError)
	fs.SetOutput(stderr)
	meshPath := fs.String("f", "", "mesh file to check statically")
	adminAddr := fs.String("admin", "", "a sidecar's admin address HOST:PORT to diagnose live")
	cpAddr := fs.String("control-plane", "", "a control plane's admin address HOST:PORT: diagnose every connected sidecar live")
	window := fs.Duration("window", doctor.DefaultWindow, "live: how long to sample the sidecar(s)")
	stall := fs.Duration("stall-threshold", doctor.DefaultStallThreshold, "live: report streams stuck in one state at least this long")
	procNet := fs.String("proc-net", "/proc/net", `live: where tcp and tcp6 are read for TIME_WAIT sockets ("-": skip)`)
	output := fs.String("o", "text", "output format: text or json")
	if code, done := parseFlags(fs, args, doctorFailed); done {
		return code
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "meshd doctor: unexpected arguments %q\n", fs.Args())
		return doctorFailed
	}
	if *output != "text" && *output != "json" {
		fmt.Fprintf(stderr, "meshd doctor: -o %q: want text or json\n", *output)
		return doctorFailed
	}
	targets := 0
	for _, s := range []string{*meshPath, *adminAddr, *cpAddr} {
		if s != "" {
			targets++
		}
	}
	if targets > 1 {
		fmt.Fprintln(stderr, "meshd doctor: give one of -f, --admin, --control-plane")
		return doctorFailed
	}
	opts := doctor.LiveOptions{Window: *window, StallThreshold: *stall}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	var (
		rep *doctor.Report
		err error
	)
	switch {
	case *adminAddr != "":
		ctx, cancel := context.WithTimeout(ctx, *window+time.Minute)
		defer cancel()
		rep, err = doctor.Live(ctx, &doctor.Sampler{Admin: *adminAddr, ProcNet: *procNet}, opts)
	case *cpAddr != "":
		ctx, cancel := context.WithTimeout(ctx, *window+time.Minute)
		defer cancel()
		rep, err = doctor.Fleet(ctx, *cpAddr, *procNet, opts)
	case *meshPath != "":
		rep = doctor.StaticFile(*meshPath)
	default:
		rep = doctor.StaticBytes(examples.Mesh, "built-in example mesh")
	}
	if err != nil {
		fmt.Fprintf(stderr, "meshd doctor: %v\n", err)
		return doctorFailed
	}
	if *output == "json" {
		err = rep.WriteJSON(stdout)
	} else {
		err = rep.WriteText(stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "meshd doctor: %v\n", err)
		return doctorFailed
	}
	return rep.ExitCode()
}
