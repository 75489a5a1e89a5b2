package testutil

import (
	"strings"
	"testing"
	"time"
)

// RaceEnabled reports whether this test binary has the race detector (and
// so whether the meshd binaries it builds have it too). The detector slows
// code 2–20× unevenly, so time figures measured under it mean nothing.
const RaceEnabled = raceEnabled

// TimingMark is the word a test's name must contain when its assertions
// are time figures: .ci/run's non-race step runs every test matching it,
// in every package that has one, one package at a time.
const TimingMark = "Timing"

// timingStep is how a skipped or relaxed check names the step that
// enforces it.
const timingStep = ".ci/run's non-race step enforces it: go test -count=1 -p 1 -run Timing <package>"

// checkTimingName fails t when its name lacks TimingMark: the non-race CI
// step selects timing tests by name and would never run it.
func checkTimingName(t testing.TB, helper string) {
	t.Helper()
	if !strings.Contains(t.Name(), TimingMark) {
		t.Fatalf("%s calls testutil.%s but its name lacks %q: .ci/run's non-race step (-run %s) would never run it", t.Name(), helper, TimingMark, TimingMark)
	}
}

// Timing marks t as a test whose point is a time figure (latency,
// deadlines, convergence, throughput): it is skipped under the race
// detector, and fails at once if its name lacks TimingMark, so the
// non-race CI step is sure to run it. Call it first in the test.
func Timing(t testing.TB) {
	t.Helper()
	checkTimingName(t, "Timing")
	if RaceEnabled {
		t.Skip("timing test: skipped under -race (the detector distorts time figures); " + timingStep)
	}
}

// TimingAtMost checks a time figure of a test that also asserts behaviour
// worth running under the race detector: without -race it fails t (not
// fatally) when got exceeds bound; under -race it only logs the figure.
// Either way the figure is logged. It reports whether got is within bound.
// Like Timing, it fails at once if t's name lacks TimingMark.
func TimingAtMost(t testing.TB, what string, got, bound time.Duration) bool {
	t.Helper()
	checkTimingName(t, "TimingAtMost")
	ok := got <= bound
	switch {
	case ok:
		t.Logf("%s: %v (bound %v)", what, got, bound)
	case RaceEnabled:
		t.Logf("%s: %v, over the bound of %v; not asserted under -race (%s)", what, got, bound, timingStep)
	default:
		t.Errorf("%s: %v, want at most %v", what, got, bound)
	}
	return ok
}
