//go:build !race

package e2e

// raceEnabled reports whether the test binary has the race detector, which
// it passes on to the meshd binary the tests build.
const raceEnabled = false
