package hcm

import (
	"os"
	"testing"

	"meshd.dev/meshd/internal/testutil"
)

// TestMain removes the binaries the benchmarks build (the discard
// collector) after the run.
func TestMain(m *testing.M) { os.Exit(testutil.Main(m)) }
