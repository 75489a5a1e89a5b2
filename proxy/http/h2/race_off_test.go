//go:build !race

package h2

// raceEnabled is true when the race detector is on: timing assertions skip.
const raceEnabled = false
