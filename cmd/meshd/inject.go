//go:build !meshd_sidecar

package main

import (
	"flag"
	"fmt"
	"io"
	"os"

	"meshd.dev/meshd/kube/inject"
)

// injectFlags registers the flags `meshd inject` and `meshd injector`
// share and returns a function building the inject.Config from them.
func injectFlags(fs *flag.FlagSet) func() (inject.Config, error) {
	image := fs.String("image", "meshd:latest", "meshd image of the sidecar and the capture init container: the sidecar-only build (-tags meshd_sidecar) is enough, the full build works too")
	xds := fs.String("xds", "meshd-control-plane.meshd-system.svc:15010", "control plane host:port as pods reach it")
	regular := fs.Bool("regular-container", false, "add the sidecar as a regular container instead of a native sidecar (init container with restartPolicy Always, Kubernetes >= 1.29)")
	inbound := fs.Int("inbound-port", inject.DefaultInboundPort, "sidecar port receiving captured inbound TCP")
	outbound := fs.Int("outbound-port", inject.DefaultOutboundPort, "sidecar port receiving captured outbound TCP")
	admin := fs.Int("admin-port", inject.DefaultAdminPort, "sidecar admin port (on 127.0.0.1)")
	uid := fs.Int64("proxy-uid", inject.DefaultProxyUID, "UID the sidecar runs as; capture exempts its traffic")
	exIn := fs.String("exclude-inbound-ports", "", "comma-separated ports never captured inbound, in every pod")
	exOut := fs.String("exclude-outbound-ports", "", "comma-separated ports never captured outbound, in every pod")
	return func() (inject.Config, error) {
		in, err := portList(*exIn)
		if err != nil {
			return inject.Config{}, fmt.Errorf("--exclude-inbound-ports: %w", err)
		}
		out, err := portList(*exOut)
		if err != nil {
			return inject.Config{}, fmt.Errorf("--exclude-outbound-ports: %w", err)
		}
		c := inject.Config{
			Image: *image, XDSAddress: *xds, RegularContainer: *regular,
			InboundPort: int32(*inbound), OutboundPort: int32(*outbound), AdminPort: int32(*admin),
			ProxyUID: *uid, ExcludeInboundPorts: in, ExcludeOutboundPorts: out,
		}
		return c, c.Validate()
	}
}

func runInject(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("inject", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("f", "", "manifest file (multi-document YAML or a List), - for stdin")
	config := injectFlags(fs)
	if code, done := parseFlags(fs, args, 2); done {
		return code
	}
	if *file == "" || fs.NArg() != 0 {
		fmt.Fprintln(stderr, "meshd inject: usage: meshd inject -f FILE|- [flags]")
		return 2
	}
	cfg, err := config()
	if err != nil {
		fmt.Fprintf(stderr, "meshd inject: %v\n", err)
		return 2
	}
	var data []byte
	if *file == "-" {
		data, err = io.ReadAll(os.Stdin)
	} else {
		data, err = os.ReadFile(*file)
	}
	if err != nil {
		fmt.Fprintf(stderr, "meshd inject: %v\n", err)
		return 1
	}
	out, err := cfg.Manifest(data)
	if err != nil {
		fmt.Fprintf(stderr, "meshd inject: %s: %v\n", *file, err)
		return 1
	}
	if _, err := stdout.Write(out); err != nil {
		fmt.Fprintf(stderr, "meshd inject: %v\n", err)
		return 1
	}
	return 0
}
