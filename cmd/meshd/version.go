package main

import (
	"flag"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"
)

// version is set at link time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

// serverVersion is the version string the sidecar's admin /server_info
// shows, in the slash-separated shape of Envoy's:
// meshd/VERSION/GO_VERSION/BUILD, BUILD being "full" or "sidecar-only".
func serverVersion() string {
	return fmt.Sprintf("meshd/%s/%s/%s", version, runtime.Version(), strings.Fields(buildName)[0])
}

func runVersion(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	fs.SetOutput(stderr)
	if code, done := parseFlags(fs, args, 2); done {
		return code
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "meshd version: unexpected arguments %q\n", fs.Args())
		return 2
	}
	fmt.Fprintf(stdout, "meshd %s\n", version)
	fmt.Fprintf(stdout, "go %s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
	fmt.Fprintln(stdout, buildName)
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return 0
	}
	if bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		fmt.Fprintf(stdout, "module %s %s\n", bi.Main.Path, bi.Main.Version)
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" || s.Key == "vcs.modified" {
			fmt.Fprintf(stdout, "%s %s\n", s.Key, s.Value)
		}
	}
	fmt.Fprintln(stdout, "dependencies:")
	for _, d := range bi.Deps {
		v := d.Version
		if d.Replace != nil {
			v += " => " + d.Replace.Path + " " + d.Replace.Version
		}
		fmt.Fprintf(stdout, "  %s %s\n", d.Path, v)
	}
	return 0
}
