// Package wasmbuild builds proxy-wasm guests written against
// github.com/tetratelabs/proxy-wasm-go-sdk v0.24.0 with the standard Go
// toolchain (GOOS=wasip1 GOARCH=wasm, -buildmode=c-shared).
//
// v0.24.0 targets TinyGo: under standard Go it links mock host calls and
// exports no proxy_* functions. wasmbuild fixes that without vendoring or
// forking the SDK, through a `go build -overlay`:
//
//   - the main module's go.mod is swapped for a copy that adds
//     `replace github.com/tetratelabs/proxy-wasm-go-sdk => ./_meshd_proxywasm_sdk`;
//   - that directory exists only in the overlay: its go.mod and the .go files
//     of proxywasm, proxywasm/types and proxywasm/internal map read-only onto
//     the module cache, except proxywasm/internal/abi_hostcalls_mock.go, which
//     maps to this package's real host calls (//go:wasmimport env proxy_*),
//     plus one added file of //go:wasmexport callbacks.
//
// (The go command refuses overlays that replace files inside the module cache
// itself, hence the replace directive.) A module built without the overlay
// still links, so every build ends with [CheckExports].
//
// Guests must register their VM context in init(): c-shared modules run
// package initialisation from _initialize and never call main.
package wasmbuild

import (
	"bytes"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/tetratelabs/wazero"
)

// SDKModule is the module path of the guest SDK the overlay patches.
const SDKModule = "github.com/tetratelabs/proxy-wasm-go-sdk"

// sdkDirName is the overlay-only directory the replace directive points to.
const sdkDirName = "_meshd_proxywasm_sdk"

// The patch files live in a directory whose name starts with "_", so the go
// command never compiles them as part of this module.
var (
	//go:embed _sdkpatch/hostcalls.go
	hostcallsSrc []byte
	//go:embed _sdkpatch/exports.go
	exportsSrc []byte
	//go:embed _sdkpatch/contexts.go
	contextsSrc []byte
)

// sdkPackages are the SDK package directories a guest links.
var sdkPackages = []string{"proxywasm", "proxywasm/types", "proxywasm/internal"}

// sdkDropped are SDK files left out of the overlay: the mock host calls
// (replaced by hostcalls.go), the context registry and the callbacks that
// use it (replaced by contexts.go), the TinyGo host calls (build-tagged out
// anyway) and helpers that exist only for proxytest.
var sdkDropped = map[string]bool{
	"proxywasm/internal/abi_hostcalls_mock.go":         true,
	"proxywasm/internal/abi_hostcalls.go":              true,
	"proxywasm/internal/abi_callback_test_export.go":   true,
	"proxywasm/internal/vmstate_test_export.go":        true,
	"proxywasm/internal/vmstate.go":                    true,
	"proxywasm/internal/abi_callback_configuration.go": true,
	"proxywasm/internal/abi_callback_l4.go":            true,
	"proxywasm/internal/abi_callback_l7.go":            true,
	"proxywasm/internal/abi_callback_lifecycle.go":     true,
	"proxywasm/internal/abi_callback_queue.go":         true,
	"proxywasm/internal/abi_callback_timers.go":        true,
}

// RequiredExports are the functions a proxy-wasm ABI 0.2.0 guest built by
// this package exports; [CheckExports] rejects a module missing any of them.
var RequiredExports = []string{
	"_initialize",
	"proxy_abi_version_0_2_0",
	"proxy_on_memory_allocate",
	"proxy_on_context_create",
	"proxy_on_vm_start",
	"proxy_on_configure",
	"proxy_on_request_headers",
	"proxy_on_request_body",
	"proxy_on_request_trailers",
	"proxy_on_response_headers",
	"proxy_on_response_body",
	"proxy_on_response_trailers",
	"proxy_on_http_call_response",
	"proxy_on_tick",
	"proxy_on_queue_ready",
	"proxy_on_log",
	"proxy_on_done",
	"proxy_on_delete",
	"proxy_on_new_connection",
	"proxy_on_downstream_data",
	"proxy_on_downstream_connection_close",
	"proxy_on_upstream_data",
	"proxy_on_upstream_connection_close",
	"meshd_on_context_create",
	"meshd_on_request_headers",
	"meshd_on_delete",
	"meshd_scratch_buffer",
}

// Overlay is the JSON document `go build -overlay` reads: build path → file
// on disk.
type Overlay struct {
	Replace map[string]string
}

// Env describes the module a guest is built in.
type Env struct {
	// ModRoot is the directory holding the main module's go.mod.
	ModRoot string
	// SDKDir is the SDK's directory in the module cache.
	SDKDir string
	// GoVersion is the toolchain's `go env GOVERSION`.
	GoVersion string
}

// LoadEnv finds the main module enclosing dir and the SDK version it requires.
func LoadEnv(ctx context.Context, dir string) (Env, error) {
	gomod, err := goOutput(ctx, dir, nil, "env", "GOMOD")
	if err != nil {
		return Env{}, err
	}
	if gomod == "" || gomod == os.DevNull {
		return Env{}, fmt.Errorf("wasmbuild: %s is not inside a Go module", dir)
	}
	root := filepath.Dir(gomod)
	sdkDir, err := goOutput(ctx, root, nil, "list", "-m", "-f", "{{.Dir}}", SDKModule)
	if err != nil {
		return Env{}, fmt.Errorf("wasmbuild: locate %s in the module cache: %w", SDKModule, err)
	}
	if sdkDir == "" {
		return Env{}, fmt.Errorf("wasmbuild: %s is required by %s but not downloaded (run go mod download %s)", SDKModule, gomod, SDKModule)
	}
	ver, err := goOutput(ctx, root, nil, "env", "GOVERSION")
	if err != nil {
		return Env{}, err
	}
	return Env{ModRoot: root, SDKDir: sdkDir, GoVersion: ver}, nil
}

// WriteOverlay writes the patch files and the patched go.mod into workDir and
// returns the path of the overlay JSON that maps them, with the SDK's files,
// under e.ModRoot. workDir is the caller's; files in it must outlive the build.
func (e Env) WriteOverlay(workDir string) (string, error) {
	if _, err := os.Stat(filepath.Join(e.ModRoot, sdkDirName)); err == nil {
		return "", fmt.Errorf("wasmbuild: %s exists on disk; the overlay needs that name free", filepath.Join(e.ModRoot, sdkDirName))
	}
	modSrc, err := os.ReadFile(filepath.Join(e.ModRoot, "go.mod"))
	if err != nil {
		return "", fmt.Errorf("wasmbuild: read go.mod: %w", err)
	}
	if bytes.Contains(modSrc, []byte("replace "+SDKModule)) {
		return "", fmt.Errorf("wasmbuild: go.mod already replaces %s; remove that replace to build guests", SDKModule)
	}
	patched := append(bytes.Clone(modSrc), []byte("\nreplace "+SDKModule+" => ./"+sdkDirName+"\n")...)

	ov := Overlay{Replace: map[string]string{}}
	files := map[string][]byte{"go.mod": patched, "hostcalls.go": hostcallsSrc, "exports.go": exportsSrc, "contexts.go": contextsSrc}
	for name, data := range files {
		p := filepath.Join(workDir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			return "", fmt.Errorf("wasmbuild: write overlay file %s: %w", name, err)
		}
	}
	ov.Replace[filepath.Join(e.ModRoot, "go.mod")] = filepath.Join(workDir, "go.mod")

	sdk := filepath.Join(e.ModRoot, sdkDirName)
	ov.Replace[filepath.Join(sdk, "go.mod")] = filepath.Join(e.SDKDir, "go.mod")
	for _, pkg := range sdkPackages {
		entries, err := os.ReadDir(filepath.Join(e.SDKDir, pkg))
		if err != nil {
			return "", fmt.Errorf("wasmbuild: read SDK package %s: %w", pkg, err)
		}
		for _, ent := range entries {
			name := ent.Name()
			rel := pkg + "/" + name
			if ent.IsDir() || !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") || sdkDropped[rel] {
				continue
			}
			ov.Replace[filepath.Join(sdk, filepath.FromSlash(rel))] = filepath.Join(e.SDKDir, filepath.FromSlash(rel))
		}
	}
	internal := filepath.Join(sdk, "proxywasm", "internal")
	ov.Replace[filepath.Join(internal, "abi_hostcalls_mock.go")] = filepath.Join(workDir, "hostcalls.go")
	ov.Replace[filepath.Join(internal, "meshd_exports.go")] = filepath.Join(workDir, "exports.go")
	ov.Replace[filepath.Join(internal, "meshd_contexts.go")] = filepath.Join(workDir, "contexts.go")

	data, err := json.MarshalIndent(ov, "", "\t")
	if err != nil {
		return "", fmt.Errorf("wasmbuild: encode overlay: %w", err)
	}
	path := filepath.Join(workDir, "overlay.json")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return "", fmt.Errorf("wasmbuild: write overlay: %w", err)
	}
	return path, nil
}

// BuildTo compiles the guest package pkg (an import path or a path relative to
// e.ModRoot) into the file out and checks its exports. The build runs in a
// fresh temporary directory for the overlay, removed afterwards.
func (e Env) BuildTo(ctx context.Context, pkg, out string) error {
	work, err := os.MkdirTemp("", "meshd-wasmbuild-")
	if err != nil {
		return fmt.Errorf("wasmbuild: %w", err)
	}
	defer os.RemoveAll(work)
	overlay, err := e.WriteOverlay(work)
	if err != nil {
		return err
	}
	if _, err := goOutput(ctx, e.ModRoot, wasmEnv, "build", "-buildmode=c-shared", "-trimpath",
		"-overlay", overlay, "-o", out, pkg); err != nil {
		return fmt.Errorf("wasmbuild: build %s: %w", pkg, err)
	}
	mod, err := os.ReadFile(out)
	if err != nil {
		return fmt.Errorf("wasmbuild: %w", err)
	}
	if err := CheckExports(ctx, mod); err != nil {
		return fmt.Errorf("wasmbuild: %s: %w", pkg, err)
	}
	return nil
}

// CheckExports compiles module with wazero (interpreter, nothing is run) and
// returns an error naming every function of [RequiredExports] it does not
// export, as happens when the SDK is built without the overlay.
func CheckExports(ctx context.Context, module []byte) error {
	rt := wazero.NewRuntimeWithConfig(ctx, wazero.NewRuntimeConfigInterpreter())
	defer rt.Close(ctx)
	cm, err := rt.CompileModule(ctx, module)
	if err != nil {
		return fmt.Errorf("compile module: %w", err)
	}
	exported := cm.ExportedFunctions()
	var missing []string
	for _, name := range RequiredExports {
		if _, ok := exported[name]; !ok {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("module does not export %d proxy-wasm functions (%s); was it built without the wasmbuild overlay?",
			len(missing), strings.Join(missing, ", "))
	}
	return nil
}

// SourceKey returns a hex digest of everything a build of pkg depends on: the
// toolchain version, the SDK directory (versioned by the module cache), the
// patch files, go.mod/go.sum, and the Go files of every main-module package
// pkg imports under GOOS=wasip1.
func (e Env) SourceKey(ctx context.Context, pkg string) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "go=%s\nsdk=%s\npkg=%s\n", e.GoVersion, e.SDKDir, pkg)
	h.Write(hostcallsSrc)
	h.Write(exportsSrc)
	h.Write(contextsSrc)
	for _, f := range []string{"go.mod", "go.sum"} {
		data, err := os.ReadFile(filepath.Join(e.ModRoot, f))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("wasmbuild: %w", err)
		}
		fmt.Fprintf(h, "%s %d\n", f, len(data))
		h.Write(data)
	}
	list, err := goOutput(ctx, e.ModRoot, wasmEnv, "list", "-deps",
		"-f", `{{if .Module}}{{if .Module.Main}}{{.Dir}}{{"\t"}}{{join .GoFiles ","}}{{"\t"}}{{join .EmbedFiles ","}}{{end}}{{end}}`, pkg)
	if err != nil {
		return "", fmt.Errorf("wasmbuild: list dependencies of %s: %w", pkg, err)
	}
	lines := strings.Split(list, "\n")
	sort.Strings(lines)
	for _, line := range lines {
		dir, rest, _ := strings.Cut(line, "\t")
		if dir == "" {
			continue
		}
		goFiles, embeds, _ := strings.Cut(rest, "\t")
		names := slices.Concat(strings.Split(goFiles, ","), strings.Split(embeds, ","))
		for _, name := range names {
			if name == "" {
				continue
			}
			data, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil {
				return "", fmt.Errorf("wasmbuild: hash %s: %w", name, err)
			}
			rel, _ := filepath.Rel(e.ModRoot, filepath.Join(dir, name))
			fmt.Fprintf(h, "%s %d\n", filepath.ToSlash(rel), len(data))
			h.Write(data)
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// CacheDir is where [Env.Cached] keeps modules: $MESHD_WASM_CACHE if set,
// else meshd/wasm under the user cache directory, else under the temp dir.
// It is never inside the repository.
func CacheDir() string {
	if d := os.Getenv("MESHD_WASM_CACHE"); d != "" {
		return d
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "meshd", "wasm")
	}
	return filepath.Join(os.TempDir(), "meshd-wasm-cache")
}

// Cached returns the path of a checked module for pkg in [CacheDir], named by
// [Env.SourceKey], building it first when absent. Concurrent callers may
// both build; the rename that publishes a module is atomic, so readers never
// see a partial file.
func (e Env) Cached(ctx context.Context, pkg string) (string, error) {
	key, err := e.SourceKey(ctx, pkg)
	if err != nil {
		return "", err
	}
	dir := CacheDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("wasmbuild: cache dir: %w", err)
	}
	path := filepath.Join(dir, key+".wasm")
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	tmp, err := os.CreateTemp(dir, key+".*.tmp")
	if err != nil {
		return "", fmt.Errorf("wasmbuild: %w", err)
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	if err := e.BuildTo(ctx, pkg, tmp.Name()); err != nil {
		return "", err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", fmt.Errorf("wasmbuild: publish %s: %w", path, err)
	}
	return path, nil
}

// wasmEnv is the environment of guest builds.
var wasmEnv = []string{"GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0"}

// goOutput runs the go command in dir with extra environment and returns its
// trimmed stdout; a failure's error carries stderr.
func goOutput(ctx context.Context, dir string, env []string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}
