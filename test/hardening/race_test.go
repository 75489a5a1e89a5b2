//go:build race

package hardening

// raceEnabled reports whether the test binary (and so the meshd it builds)
// has the race detector, which makes CPU and latency bounds meaningless.
const raceEnabled = true
