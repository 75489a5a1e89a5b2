package testutil

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// MeshdBinEnv names the environment variable that points the tests at a
// prebuilt meshd binary instead of building ./cmd/meshd.
const MeshdBinEnv = "MESHD_BIN"

// buildTimeout bounds one `go build`; a cold module cache on CI is the slow
// case.
const buildTimeout = 5 * time.Minute

// builds caches one result per Go package path for the life of the test
// binary, so each binary is built once however many tests ask for it.
var builds = struct {
	mu   sync.Mutex
	dir  string
	done map[string]*buildResult
}{done: make(map[string]*buildResult)}

type buildResult struct {
	once sync.Once
	path string
	err  error
}

// Main runs the tests of a package that uses BuildMeshd or BuildGoBinary and
// removes the binaries they built afterwards. Call it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(testutil.Main(m)) }
//
// It returns m.Run's exit code.
func Main(m *testing.M) int {
	code := m.Run()
	builds.mu.Lock()
	dir := builds.dir
	builds.mu.Unlock()
	if dir != "" {
		_ = os.RemoveAll(dir)
	}
	return code
}

// BuildMeshd returns the path of a meshd binary: $MESHD_BIN when set (it must
// name an existing file), otherwise ./cmd/meshd of this module built once per
// test binary (with -race under go test -race). It fails the test, with the build output, when there is none.
func BuildMeshd(t testing.TB) string {
	t.Helper()
	if bin := os.Getenv(MeshdBinEnv); bin != "" {
		if _, err := os.Stat(bin); err != nil {
			t.Fatalf("%s=%q: %v", MeshdBinEnv, bin, err)
		}
		return bin
	}
	return BuildGoBinary(t, "./cmd/meshd")
}

// BuildGoBinary builds the main package pkg once per test binary and returns
// the binary's path. Under `go test -race` the binary is built with -race
// too; the harness's process starters (StartSidecar, RunMeshd,
// meshtest.StartControlPlane) collect its data race reports with
// WatchRaces and fail the test with them. pkg is a path relative to the module root
// ("./cmd/meshd") or an import path the module's go.mod resolves
// ("meshd.dev/meshd/test/e2e/internal/interopclient"). A failed build fails
// every test that asks for it, with the compiler's output.
func BuildGoBinary(t testing.TB, pkg string) string {
	t.Helper()
	builds.mu.Lock()
	r, ok := builds.done[pkg]
	if !ok {
		r = &buildResult{}
		builds.done[pkg] = r
	}
	builds.mu.Unlock()
	r.once.Do(func() { r.path, r.err = buildGoBinary(pkg) })
	if r.err != nil {
		t.Fatalf("building %s: %v", pkg, r.err)
	}
	return r.path
}

func buildGoBinary(pkg string) (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	dir, err := buildDir()
	if err != nil {
		return "", err
	}
	name := strings.NewReplacer("/", "_", ".", "_").Replace(strings.Trim(pkg, "./"))
	out := filepath.Join(dir, name)
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	args := []string{"build", "-o", out}
	if raceEnabled {
		args = append(args, "-race")
	}
	cmd := exec.CommandContext(ctx, "go", append(args, pkg)...)
	cmd.Dir = root
	cmd.WaitDelay = time.Second
	output, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		return "", fmt.Errorf("go build %s: no result within %v", pkg, buildTimeout)
	}
	if err != nil {
		return "", fmt.Errorf("go build %s in %s: %w\n%s", pkg, root, err, output)
	}
	return out, nil
}

func buildDir() (string, error) {
	builds.mu.Lock()
	defer builds.mu.Unlock()
	if builds.dir == "" {
		dir, err := os.MkdirTemp("", "meshd-testbin-")
		if err != nil {
			return "", fmt.Errorf("creating the build directory: %w", err)
		}
		builds.dir = dir
	}
	return builds.dir, nil
}

// ModuleRoot returns the directory holding this module's go.mod, found by
// walking up from the working directory (go test runs each package in its
// own directory, always inside the module).
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("finding the module root: %w", err)
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.Contains(string(data), "module meshd.dev/meshd") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("finding the module root: no go.mod of meshd.dev/meshd above the working directory")
		}
		dir = parent
	}
}
