//go:build !meshd_sidecar

package main

import (
	"flag"
	"fmt"
	"io"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"meshd.dev/meshd/ca"
	"meshd.dev/meshd/examples"
	"meshd.dev/meshd/proxy/config"
	"meshd.dev/meshd/xds/model"
	"meshd.dev/meshd/xds/translate"
)

// runBootstrap prints the sidecar bootstrap of one Workload as YAML. The
// output is checked with the sidecar's own strict loader
// (config.ParseBootstrap) before it is printed, so what it prints is what
// `meshd sidecar -c` accepts.
func runBootstrap(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bootstrap", flag.ContinueOnError)
	fs.SetOutput(stderr)
	workload := fs.String("workload", "", "the Workload's node ID, NAME.NAMESPACE")
	xdsAddr := fs.String("xds", "", "the control plane's xDS address, HOST:PORT")
	meshPath := fs.String("f", "", "mesh file (default: the built-in example mesh)")
	delta := fs.Bool("delta", false, "use incremental (delta) ADS instead of state of the world")
	caDir := fs.String("ca-dir", defaultCADir(), "the control plane's --ca-dir: the workload's CA bootstrap token (node.metadata[\"meshd.token\"]) is derived from the secret there (created when missing); empty: no token")
	if code, done := parseFlags(fs, args, 2); done {
		return code
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "meshd bootstrap: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if *workload == "" || *xdsAddr == "" {
		fmt.Fprintln(stderr, "meshd bootstrap: --workload NAME.NS and --xds HOST:PORT are required")
		return 2
	}
	var (
		m   *model.Mesh
		err error
	)
	if *meshPath == "" {
		m, err = model.Parse(examples.Mesh, "built-in example mesh")
	} else {
		m, err = model.Load(*meshPath)
	}
	if err != nil {
		fmt.Fprintf(stderr, "meshd bootstrap: invalid mesh file:\n%v\n", err)
		return 1
	}
	b, err := translate.Bootstrap(m, *workload, *xdsAddr)
	if err != nil {
		fmt.Fprintf(stderr, "meshd bootstrap: %v\n", err)
		return 1
	}
	if *delta {
		b.GetDynamicResources().GetAdsConfig().ApiType = corev3.ApiConfigSource_DELTA_GRPC
	}
	if *caDir != "" {
		secret, err := ca.LoadOrCreateTokenSecret(*caDir)
		if err != nil {
			fmt.Fprintf(stderr, "meshd bootstrap: --ca-dir: %v\n", err)
			return 1
		}
		ca.SetNodeToken(b.Node, ca.BootstrapToken(secret, *workload))
	}
	js, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(b)
	if err != nil {
		fmt.Fprintf(stderr, "meshd bootstrap: encoding: %v\n", err)
		return 1
	}
	out, err := yaml.JSONToYAML(js)
	if err != nil {
		fmt.Fprintf(stderr, "meshd bootstrap: encoding YAML: %v\n", err)
		return 1
	}
	if _, err := config.ParseBootstrap(out, "generated for "+*workload); err != nil {
		fmt.Fprintf(stderr, "meshd bootstrap: the generated bootstrap does not pass the sidecar's checks (a meshd bug):\n%v\n", err)
		return 1
	}
	if _, err := stdout.Write(out); err != nil {
		fmt.Fprintf(stderr, "meshd bootstrap: %v\n", err)
		return 1
	}
	return 0
}
