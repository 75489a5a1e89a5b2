package e2e

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
)

// TestUpDurationBeforeReady: a --duration that runs out before the mesh is
// ready is a failed run (exit 1, the reason on stderr), not a silent clean
// stop; only a signal during start-up is a clean stop.
func TestUpDurationBeforeReady(t *testing.T) {
	bin := testutil.BuildMeshd(t)
	ctx, cancel := context.WithTimeout(context.Background(), upExitTimeout+30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "up", "--duration", "1ms", "--quiet")
	cmd.Dir = t.TempDir()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.WaitDelay = time.Second
	testutil.WatchRaces(t, cmd)
	err := cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("meshd up --duration 1ms: %v (stderr %q), want exit status 1", err, stderr.String())
	}
	if want := "time limit ran out before the mesh was ready"; !strings.Contains(stderr.String(), want) {
		t.Fatalf("stderr %q does not say %q", stderr.String(), want)
	}
}
