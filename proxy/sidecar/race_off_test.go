//go:build !race

package sidecar

// raceEnabled is true when the race detector is on: timing assertions skip.
const raceEnabled = false
