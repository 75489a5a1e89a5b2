package main

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// sidecarForbidden are import-path prefixes the sidecar-only build
// (-tags meshd_sidecar) must not link: the control plane, the Kubernetes
// client and API types, go-control-plane's xDS server and snapshot cache,
// doctor, auto-tuning and the local mesh. Each one is in the full build,
// which the test checks too, so a renamed package cannot make a prefix
// match nothing.
var sidecarForbidden = []string{
	"k8s.io/",
	"sigs.k8s.io/json",
	"sigs.k8s.io/structured-merge-diff/",
	"github.com/envoyproxy/go-control-plane/pkg/cache/",
	"github.com/envoyproxy/go-control-plane/pkg/server/",
	"meshd.dev/meshd/xds/server",
	"meshd.dev/meshd/xds/source",
	"meshd.dev/meshd/xds/translate",
	"meshd.dev/meshd/xds/autotune",
	"meshd.dev/meshd/kube/inject",
	"meshd.dev/meshd/kube/source",
	"meshd.dev/meshd/kube/tokenreview",
	"meshd.dev/meshd/doctor",
	"meshd.dev/meshd/internal/localmesh",
	"meshd.dev/meshd/internal/wasmbuild",
}

// sidecarAllowed are packages under a forbidden prefix that the sidecar
// needs: sigs.k8s.io/yaml converts YAML bootstraps to JSON (it is not a
// Kubernetes client package and pulls none).
var sidecarAllowed = []string{"sigs.k8s.io/yaml"}

func goListDeps(t *testing.T, tags string) []string {
	t.Helper()
	return goList(t, tags, "-deps", ".")
}

// goList runs go list with args (and -tags tags when set) in this
// package's directory and returns the words it prints.
func goList(t *testing.T, tags string, args ...string) []string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to list the build's packages: %v", err)
	}
	args = append([]string{"list"}, args...)
	if tags != "" {
		args = slices.Insert(args, 1, "-tags", tags)
	}
	out, err := exec.Command(goBin, args...).Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, stderr)
	}
	return strings.Fields(string(out))
}

func forbiddenIn(pkg string) (prefix string, ok bool) {
	for _, a := range sidecarAllowed {
		if pkg == a || strings.HasPrefix(pkg, a+"/") {
			return "", false
		}
	}
	for _, p := range sidecarForbidden {
		if strings.HasPrefix(pkg, p) {
			return p, true
		}
	}
	return "", false
}

// TestSidecarBuildLinks lists (without building) the packages of the
// sidecar-only build and fails on any it must not link, and checks that
// every forbidden prefix does match a package of the full build.
func TestSidecarBuildLinks(t *testing.T) {
	slim := goListDeps(t, "meshd_sidecar")
	for _, pkg := range slim {
		if p, bad := forbiddenIn(pkg); bad {
			t.Errorf("the sidecar-only build links %s (forbidden prefix %q)", pkg, p)
		}
	}
	full := goListDeps(t, "")
	matched := map[string]bool{}
	for _, pkg := range full {
		if p, bad := forbiddenIn(pkg); bad {
			matched[p] = true
		}
	}
	for _, p := range sidecarForbidden {
		if !matched[p] {
			t.Errorf("forbidden prefix %q matches no package of the full build: update sidecarForbidden", p)
		}
	}
	if len(slim) >= len(full) {
		t.Errorf("the sidecar-only build has %d packages, the full one %d", len(slim), len(full))
	}
	t.Logf("packages: sidecar-only build %d, full build %d", len(slim), len(full))

	// The sidecar decodes only the Envoy types it links (proxy/config's
	// registry), so every Envoy API package the control plane's
	// translator uses must be linked into the sidecar-only build too, or
	// it would NACK what meshd control-plane sends.
	for _, pkg := range goList(t, "", "-f", `{{join .Deps "\n"}}`, "meshd.dev/meshd/xds/translate") {
		if strings.HasPrefix(pkg, "github.com/envoyproxy/go-control-plane/envoy/") && !slices.Contains(slim, pkg) {
			t.Errorf("xds/translate uses %s, which the sidecar-only build does not link", pkg)
		}
	}
}
