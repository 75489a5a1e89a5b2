package observe

import (
	"math"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// FuzzParse builds the observation Struct a sidecar reports from
// arbitrary numbers (the control plane reads what any sidecar sends) and
// checks Parse: it accepts exactly the non-negative numbers up to 2^53,
// never yields a negative duration, and the Struct of what it accepted is
// a fixed point (Struct then Parse gives it back).
func FuzzParse(f *testing.F) {
	f.Add(100.0, 30000.0, 250.0, 12.0, 1e6)
	f.Add(0.0, 0.0, 0.0, 0.0, 0.0)
	f.Add(-1.0, math.NaN(), math.Inf(1), 1.5, float64(1<<53))
	f.Add(float64(1<<53), float64(1<<53), float64(1<<53), float64(1<<53), float64(1<<53))
	f.Fuzz(func(t *testing.T, mcs, keepalive, rtt, wait, throughput float64) {
		in := map[string]float64{fPeerMCS: mcs, fKeepalive: keepalive, fRTT: rtt, fWait: wait, fThroughput: throughput,
			fPings: mcs, fPeak: rtt, fOverflow: wait, fStreamWin: keepalive, fConnWin: throughput}
		s := &structpb.Struct{Fields: map[string]*structpb.Value{}}
		valid := true
		for k, v := range in {
			s.Fields[k] = structpb.NewNumberValue(v)
			valid = valid && v >= 0 && v <= maxSafeFloat
		}
		e, err := Parse(s)
		if (err == nil) != valid {
			t.Fatalf("Parse(%v) error %v, want valid=%v", in, err, valid)
		}
		if err != nil {
			return
		}
		if e.KeepaliveInterval < 0 || e.RTT < 0 || e.MaxStreamWait < 0 {
			t.Fatalf("Parse(%v) = negative duration in %+v", in, e)
		}
		again, err := Parse(e.Struct())
		if err != nil || !proto.Equal(again.Struct(), e.Struct()) {
			t.Fatalf("round trip of %+v: %+v, %v", e, again, err)
		}
	})
}

// TestParseDurationsSaturate: a reported keepalive interval, RTT or wait
// too large for a time.Duration used to wrap to a negative one (2^53 ms
// times time.Millisecond overflows int64); found by FuzzParse.
func TestParseDurationsSaturate(t *testing.T) {
	for _, tc := range []struct {
		name  string
		field string
		v     float64
		get   func(Endpoint) time.Duration
		want  time.Duration
	}{
		{"keepalive fits", fKeepalive, 30000, func(e Endpoint) time.Duration { return e.KeepaliveInterval }, 30 * time.Second},
		{"keepalive 2^53 ms", fKeepalive, maxSafeFloat, func(e Endpoint) time.Duration { return e.KeepaliveInterval }, math.MaxInt64},
		{"keepalive just past int64", fKeepalive, math.MaxInt64/1e6 + 1, func(e Endpoint) time.Duration { return e.KeepaliveInterval }, math.MaxInt64},
		{"rtt 2^53 us", fRTT, maxSafeFloat, func(e Endpoint) time.Duration { return e.RTT }, time.Duration(maxSafeFloat) * time.Microsecond},
		{"wait fraction", fWait, 1.5, func(e Endpoint) time.Duration { return e.MaxStreamWait }, time.Microsecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, err := Parse(&structpb.Struct{Fields: map[string]*structpb.Value{tc.field: structpb.NewNumberValue(tc.v)}})
			if err != nil {
				t.Fatal(err)
			}
			if got := tc.get(e); got != tc.want {
				t.Fatalf("%s = %v: got %v, want %v", tc.field, tc.v, got, tc.want)
			}
		})
	}
}
