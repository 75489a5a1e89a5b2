package wasmbuild

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tetratelabs/wazero"
)

const testTimeout = 3 * time.Minute

// guests are every guest package in the repository.
var guests = []string{
	"meshd.dev/meshd/filters/ratelimit/guest",
	"meshd.dev/meshd/test/wasm/guests/headers",
	"meshd.dev/meshd/test/wasm/guests/sharedtick",
	"meshd.dev/meshd/test/wasm/guests/httpcall",
	"meshd.dev/meshd/test/wasm/guests/localresponse",
}

func TestGuestsBuildAndExport(t *testing.T) {
	t.Setenv("MESHD_WASM_CACHE", t.TempDir())
	for _, pkg := range guests {
		t.Run(filepath.Base(pkg), func(t *testing.T) {
			path := Build(t, pkg)
			mod, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			if err := CheckExports(ctx, mod); err != nil {
				t.Fatal(err)
			}
			// Imports come only from the proxy-wasm host and WASI.
			rt := wazero.NewRuntimeWithConfig(ctx, wazero.NewRuntimeConfigInterpreter())
			defer rt.Close(ctx)
			cm, err := rt.CompileModule(ctx, mod)
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range cm.ImportedFunctions() {
				m, name, _ := f.Import()
				ok := (m == "env" && strings.HasPrefix(name, "proxy_")) || m == "wasi_snapshot_preview1"
				if !ok {
					t.Errorf("unexpected import %s.%s", m, name)
				}
			}
			// A second call with unchanged sources is served from the cache.
			if again := Build(t, pkg); again != path {
				t.Fatalf("second Build = %s, want cached %s", again, path)
			}
		})
	}
}

// TestPlainBuildRejected builds a guest without the overlay: it links the
// SDK's mock host calls and exports no callbacks, and CheckExports says so.
func TestPlainBuildRejected(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	env, err := LoadEnv(ctx, ".")
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "plain.wasm")
	if _, err := goOutput(ctx, env.ModRoot, wasmEnv, "build", "-buildmode=c-shared", "-o", out, guests[1]); err != nil {
		t.Fatal(err)
	}
	mod, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	err = CheckExports(ctx, mod)
	if err == nil || !strings.Contains(err.Error(), "proxy_on_request_headers") || !strings.Contains(err.Error(), "overlay") {
		t.Fatalf("CheckExports = %v, want missing proxy_on_request_headers named", err)
	}
}

func TestCheckExportsInvalidModule(t *testing.T) {
	if err := CheckExports(context.Background(), []byte("not wasm")); err == nil {
		t.Fatal("invalid module accepted")
	}
}

func TestWriteOverlay(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	env, err := LoadEnv(ctx, ".")
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	p, err := env.WriteOverlay(work)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var ov Overlay
	if err := json.Unmarshal(data, &ov); err != nil {
		t.Fatal(err)
	}
	internal := filepath.Join(env.ModRoot, sdkDirName, "proxywasm", "internal")
	checks := map[string]string{
		filepath.Join(env.ModRoot, "go.mod"):                               filepath.Join(work, "go.mod"),
		filepath.Join(internal, "abi_hostcalls_mock.go"):                   filepath.Join(work, "hostcalls.go"),
		filepath.Join(internal, "meshd_exports.go"):                        filepath.Join(work, "exports.go"),
		filepath.Join(env.ModRoot, sdkDirName, "go.mod"):                   filepath.Join(env.SDKDir, "go.mod"),
		filepath.Join(internal, "meshd_contexts.go"):                       filepath.Join(work, "contexts.go"),
		filepath.Join(internal, "serde.go"):                                filepath.Join(env.SDKDir, "proxywasm", "internal", "serde.go"),
		filepath.Join(env.ModRoot, sdkDirName, "proxywasm", "hostcall.go"): filepath.Join(env.SDKDir, "proxywasm", "hostcall.go"),
	}
	for from, to := range checks {
		if got := ov.Replace[from]; got != to {
			t.Errorf("overlay[%s] = %q, want %q", from, got, to)
		}
	}
	for from := range ov.Replace {
		if strings.HasSuffix(from, "_test.go") || strings.Contains(from, "proxytest") {
			t.Errorf("overlay maps test file %s", from)
		}
	}
	// The SDK's context registry and the callbacks using it are replaced
	// by contexts.go: linking both would define everything twice.
	for _, name := range []string{"vmstate.go", "abi_callback_l7.go", "abi_callback_lifecycle.go"} {
		if got, ok := ov.Replace[filepath.Join(internal, name)]; ok {
			t.Errorf("overlay maps %s to %s; contexts.go replaces it", name, got)
		}
	}
	mod, err := os.ReadFile(filepath.Join(work, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(mod), "replace "+SDKModule+" => ./"+sdkDirName) {
		t.Fatalf("patched go.mod lacks the replace directive:\n%s", mod)
	}
}

func TestSourceKeyDistinct(t *testing.T) {
	key1, key2 := "", ""
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	env, err := LoadEnv(ctx, ".")
	if err != nil {
		t.Fatal(err)
	}
	if key1, err = env.SourceKey(ctx, guests[1]); err != nil {
		t.Fatal(err)
	}
	if key2, err = env.SourceKey(ctx, guests[2]); err != nil {
		t.Fatal(err)
	}
	if key1 == key2 || len(key1) != 64 {
		t.Fatalf("source keys %q and %q: want distinct sha256 hex digests", key1, key2)
	}
}
