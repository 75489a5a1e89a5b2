//go:build race

package h2

// raceEnabled is true when the race detector is on: allocation figures
// skip (timing tests use testutil.Timing).
const raceEnabled = true
