package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"meshd.dev/meshd/kube/capture"
)

// captureTimeout bounds the rule installation.
const captureTimeout = 30 * time.Second

func runCapture(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("capture", flag.ContinueOnError)
	fs.SetOutput(stderr)
	inbound := fs.Uint("inbound-port", capture.DefaultInboundPort, "sidecar port receiving redirected inbound TCP")
	outbound := fs.Uint("outbound-port", capture.DefaultOutboundPort, "sidecar port receiving redirected outbound TCP")
	uid := fs.Uint("proxy-uid", capture.DefaultProxyUID, "the sidecar's UID, whose traffic is never redirected")
	exIn := fs.String("exclude-inbound-ports", "", "comma-separated inbound destination ports left alone")
	exOut := fs.String("exclude-outbound-ports", "", "comma-separated outbound destination ports left alone")
	backend := fs.String("backend", "", "iptables or nft; default: iptables when iptables-restore is in PATH, else nft")
	dryRun := fs.Bool("dry-run", false, "print the rules instead of installing them")
	if code, done := parseFlags(fs, args, 2); done {
		return code
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "meshd capture: unexpected arguments %q\n", fs.Args())
		return 2
	}
	in, err := portList(*exIn)
	if err != nil {
		fmt.Fprintf(stderr, "meshd capture: --exclude-inbound-ports: %v\n", err)
		return 2
	}
	out, err := portList(*exOut)
	if err != nil {
		fmt.Fprintf(stderr, "meshd capture: --exclude-outbound-ports: %v\n", err)
		return 2
	}
	if *inbound > 65535 || *outbound > 65535 || *uid > 1<<31 {
		fmt.Fprintln(stderr, "meshd capture: --inbound-port and --outbound-port must be ports, --proxy-uid a UID")
		return 2
	}
	c := capture.Config{InboundPort: uint16(*inbound), OutboundPort: uint16(*outbound), ProxyUID: uint32(*uid)}
	for _, p := range in {
		c.ExcludeInboundPorts = append(c.ExcludeInboundPorts, uint16(p))
	}
	for _, p := range out {
		c.ExcludeOutboundPorts = append(c.ExcludeOutboundPorts, uint16(p))
	}
	if err := c.Validate(); err != nil {
		fmt.Fprintf(stderr, "meshd capture: %v\n", err)
		return 2
	}
	if *dryRun {
		b := *backend
		if b == "" {
			b = capture.BackendIPTables
		}
		switch b {
		case capture.BackendIPTables:
			fmt.Fprint(stdout, c.IPTablesRules(true))
		case capture.BackendNFT:
			fmt.Fprint(stdout, c.NFTRules())
		default:
			fmt.Fprintf(stderr, "meshd capture: --backend %q is not iptables or nft\n", b)
			return 2
		}
		return 0
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	ctx, cancelT := context.WithTimeout(ctx, captureTimeout)
	defer cancelT()
	if err := capture.Apply(ctx, c, *backend); err != nil {
		fmt.Fprintf(stderr, "meshd capture: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "meshd capture: inbound TCP -> :%d, outbound TCP -> :%d (uid %d exempt)\n", c.InboundPort, c.OutboundPort, c.ProxyUID)
	_ = os.Stdout.Sync()
	return 0
}

// portList parses "80,443".
func portList(s string) ([]int32, error) {
	var out []int32
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		p, err := strconv.ParseUint(f, 10, 16)
		if err != nil || p == 0 {
			return nil, fmt.Errorf("%q is not a port in 1..65535", f)
		}
		out = append(out, int32(p))
	}
	return out, nil
}
