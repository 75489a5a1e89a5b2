package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"meshd.dev/meshd/ca"
	"meshd.dev/meshd/kube/inject"
	"meshd.dev/meshd/proxy/config"
)

func init() {
	commands = append(commands,
		command{"inject", "print Kubernetes manifests with the meshd sidecar injected", runInject},
		command{"injector", "serve sidecar injection as a mutating admission webhook (HTTPS)", runInjector},
	)
}

// injectFlags registers the flags `meshd inject` and `meshd injector`
// share and returns a function building the inject.Config from them.
func injectFlags(fs *flag.FlagSet) func() (inject.Config, error) {
	image := fs.String("image", "meshd:latest", "meshd image of the sidecar and the capture init container")
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

func runInject(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("inject", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("f", "", "manifest file (multi-document YAML or a List), - for stdin")
	config := injectFlags(fs)
	if err := fs.Parse(args); err != nil {
		return 2
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

// loadSidecarBootstrap loads the bootstrap from path or, when path is
// empty, from the YAML string inline; then sets node.id to serviceNode
// (when set) and node.metadata["meshd.token"] to the contents of
// tokenFile (when set). This is how an injected pod's sidecar gets its
// per-pod node ID (downward API) and its service-account token.
func loadSidecarBootstrap(path, inline, serviceNode, tokenFile string) (*bootstrapv3.Bootstrap, error) {
	var b *bootstrapv3.Bootstrap
	var err error
	if path != "" {
		b, err = config.LoadBootstrap(path)
	} else {
		path = "--config-yaml"
		b, err = config.ParseBootstrap([]byte(inline), path)
	}
	if err != nil {
		return nil, fmt.Errorf("invalid bootstrap %s:\n%w", path, err)
	}
	if serviceNode != "" {
		if b.Node == nil {
			b.Node = &corev3.Node{}
		}
		b.Node.Id = serviceNode
	}
	if tokenFile != "" {
		tok, err := os.ReadFile(tokenFile)
		if err != nil {
			return nil, fmt.Errorf("--token-file: %w", err)
		}
		t := strings.TrimSpace(string(tok))
		if t == "" {
			return nil, fmt.Errorf("--token-file %s: empty", tokenFile)
		}
		if b.Node == nil {
			b.Node = &corev3.Node{}
		}
		ca.SetNodeToken(b.Node, t)
	}
	return b, nil
}
