//go:build race

package sidecar

// raceEnabled is true when the race detector is on: memory figures skip.
const raceEnabled = true
