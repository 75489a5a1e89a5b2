//go:build !race

package xds_test

// raceEnabled reports whether the test binary has the race detector, which
// slows the sidecars it builds too much for timing assertions.
const raceEnabled = false
