package main

import (
	"math"
	"strings"
	"testing"
)

// FuzzParseConfig feeds arbitrary plugin configurations (xDS carries them
// to every VM) to parseConfig: an error names the plugin configuration,
// and an accepted one has buckets whose time to refill, as a duration
// (untilFull) and as the x-ratelimit-reset seconds (resetSeconds), is
// never negative and never shorter for an emptier bucket.
func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{
		`{"requests_per_unit": 100, "unit": "second", "burst": 10, "key": "header:x-user"}`,
		`{"requests_per_unit": 1, "unit": "minute", "burst": 4000000000}`,
		`{"requests_per_unit": 9223372036854775807, "burst": 9223372036854775807, "max_keys": 1}`,
		`{"requests_per_unit": 5, "enable_x_ratelimit_headers": "DRAFT_VERSION_03", "key": "path", "dry_run": true}`,
		`{"requests_per_unit": 0}`,
		`{"requests_per_unit": 1, "unknown": 1}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := parseConfig(data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "plugin configuration: ") {
				t.Fatalf("error %q does not name the plugin configuration", err)
			}
			return
		}
		l := s.limits
		if !(l.capacity > 0 && l.perNano > 0 && l.lease >= 1) {
			t.Fatalf("limits %+v", l)
		}
		prevUntil, prevReset := int64(math.MaxInt64), int64(math.MaxInt64)
		for _, tokens := range []float64{0, l.capacity / 2, max(l.capacity-1, l.capacity/2), l.capacity} { // ascending
			b := bucketState{tokens: tokens, last: 1}
			until, reset := l.untilFull(b), l.resetSeconds(b)
			if until < 0 || reset < 0 || until > prevUntil || reset > prevReset {
				t.Fatalf("limits %+v, %v tokens: untilFull %d (before %d), resetSeconds %d (before %d)", l, tokens, until, prevUntil, reset, prevReset)
			}
			prevUntil, prevReset = until, reset
		}
	})
}
