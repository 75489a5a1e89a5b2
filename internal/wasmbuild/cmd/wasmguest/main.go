// Command wasmguest builds proxy-wasm guest packages (SDK v0.24.0 API) into
// .wasm modules with the standard Go toolchain, through the wasmbuild overlay,
// and fails if a module lacks the proxy_* exports.
//
//	wasmguest -o DIR PACKAGE...        build each package to DIR/NAME.wasm
//	wasmguest -overlay-dir DIR         only write DIR/overlay.json (and the
//	                                   files it maps) for use with go build -overlay
//
// NAME is the package's last path element, or the one before it when that is
// "guest" (filters/ratelimit/guest → ratelimit.wasm). Package patterns such as
// ./test/wasm/guests/... are expanded by go list.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path"
	"path/filepath"
	"strings"

	"meshd.dev/meshd/internal/wasmbuild"
)

func main() {
	out := flag.String("o", "", "directory to write NAME.wasm modules into")
	overlayDir := flag.String("overlay-dir", "", "write the overlay JSON and its files into this directory and exit")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, *out, *overlayDir, flag.Args()); err != nil {
		slog.Error("wasmguest failed", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, out, overlayDir string, patterns []string) error {
	env, err := wasmbuild.LoadEnv(ctx, ".")
	if err != nil {
		return err
	}
	if overlayDir != "" {
		if err := os.MkdirAll(overlayDir, 0o755); err != nil {
			return err
		}
		abs, err := filepath.Abs(overlayDir)
		if err != nil {
			return err
		}
		p, err := env.WriteOverlay(abs)
		if err != nil {
			return err
		}
		fmt.Println(p)
		return nil
	}
	if out == "" || len(patterns) == 0 {
		return fmt.Errorf("usage: wasmguest -o DIR PACKAGE... | wasmguest -overlay-dir DIR")
	}
	pkgs, err := expand(ctx, patterns)
	if err != nil {
		return err
	}
	// The go command runs in the module root; make out independent of it.
	if out, err = filepath.Abs(out); err != nil {
		return err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	for _, pkg := range pkgs {
		dst := filepath.Join(out, moduleName(pkg)+".wasm")
		if err := env.BuildTo(ctx, pkg, dst); err != nil {
			return err
		}
		slog.Info("built proxy-wasm guest", "package", pkg, "module", dst)
	}
	return nil
}

// moduleName names the .wasm file of an import path.
func moduleName(pkg string) string {
	name := path.Base(pkg)
	if name == "guest" {
		name = path.Base(path.Dir(pkg))
	}
	return name
}

// expand resolves package patterns to import paths with go list (run from the
// current directory, like go generate's).
func expand(ctx context.Context, patterns []string) ([]string, error) {
	args := append([]string{"list", "-f", "{{.ImportPath}}"}, patterns...)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Stderr = os.Stderr
	b, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go list %s: %w", strings.Join(patterns, " "), err)
	}
	return strings.Fields(string(b)), nil
}
