package wasmbuild

import (
	"context"
	"testing"
	"time"
)

// BuildTimeout bounds one on-demand guest build in [Build].
const BuildTimeout = 5 * time.Minute

// Build returns the path of a checked .wasm for the guest package pkg (an
// import path such as "meshd.dev/meshd/filters/ratelimit/guest"), building it
// on demand into [CacheDir] keyed by its sources, and fails t if that is not
// possible. The first build of a guest takes a few seconds; later calls with
// unchanged sources only hash them.
func Build(t testing.TB, pkg string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), BuildTimeout)
	defer cancel()
	env, err := LoadEnv(ctx, ".")
	if err != nil {
		t.Fatalf("wasmbuild: %v", err)
	}
	path, err := env.Cached(ctx, pkg)
	if err != nil {
		t.Fatalf("wasmbuild: %v", err)
	}
	return path
}
