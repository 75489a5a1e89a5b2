//go:build !meshd_sidecar

package main

// buildName names this build in usage and `meshd version`.
const buildName = "full build"

// fullCommands are the subcommands beyond the data plane's: the control
// plane, the local mesh, diagnosis and Kubernetes injection. Their names,
// in this order, are fullOnlyCommands.
var fullCommands = []command{
	{"control-plane", "serve xDS (ADS, SotW and delta) from a mesh file", runControlPlane},
	{"bootstrap", "print the sidecar bootstrap of a mesh file's Workload", runBootstrap},
	{"up", "run a local mesh on loopback: control plane, sidecars, sample apps", runUp},
	{"doctor", "diagnose a mesh file, a sidecar or a fleet against the failure scenarios", runDoctor},
	{"inject", "print Kubernetes manifests with the meshd sidecar injected", runInject},
	{"injector", "serve sidecar injection as a mutating admission webhook (HTTPS)", runInjector},
}
