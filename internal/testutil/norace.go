//go:build !race

package testutil

// raceEnabled reports whether this test binary has the race detector, in
// which case the binaries it builds get it too.
const raceEnabled = false
