//go:build !race

package scenarios

// raceEnabled reports whether the test binary has the race detector, which
// makes timing assertions meaningless (see timing).
const raceEnabled = false
