package route

import (
	"fmt"
	"math"
	"time"

	"meshd.dev/meshd/proxy/http/stream"
)

// ParseGRPCTimeout parses a grpc-timeout header value as the gRPC over
// HTTP/2 spec defines it: 1 to 8 ASCII digits followed by one unit, H (hours),
// M (minutes), S (seconds), m (milliseconds), u (microseconds) or n
// (nanoseconds). Anything else is an error. Values beyond what a
// time.Duration holds saturate at its maximum, as grpc-go does.
func ParseGRPCTimeout(v string) (time.Duration, error) {
	if len(v) < 2 {
		return 0, fmt.Errorf("grpc-timeout %q: want 1-8 digits and a unit", v)
	}
	digits, unit := v[:len(v)-1], v[len(v)-1]
	if len(digits) > 8 {
		return 0, fmt.Errorf("grpc-timeout %q: more than 8 digits", v)
	}
	var n int64
	for i := 0; i < len(digits); i++ {
		c := digits[i]
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("grpc-timeout %q: %q is not a digit", v, c)
		}
		n = n*10 + int64(c-'0')
	}
	var d time.Duration
	switch unit {
	case 'H':
		d = time.Hour
	case 'M':
		d = time.Minute
	case 'S':
		d = time.Second
	case 'm':
		d = time.Millisecond
	case 'u':
		d = time.Microsecond
	case 'n':
		d = time.Nanosecond
	default:
		return 0, fmt.Errorf("grpc-timeout %q: unknown unit %q", v, unit)
	}
	if n > math.MaxInt64/int64(d) {
		return time.Duration(math.MaxInt64), nil
	}
	return time.Duration(n) * d, nil
}

// EffectiveTimeout is the upstream timeout for req on route r, as Envoy's
// router computes it (0 means no timeout):
//
//   - without MaxGRPCTimeout, or for a request that is not gRPC, it is
//     r.Timeout;
//   - otherwise it is the grpc-timeout header's value (0 when absent or
//     malformed), less GRPCTimeoutOffset when the offset is smaller, then
//     capped at *MaxGRPCTimeout when that is non-zero (a missing header thus
//     yields the cap itself).
func EffectiveTimeout(r *Route, req *stream.Request) time.Duration {
	if r.MaxGRPCTimeout == nil || !isGRPC(req) {
		return r.Timeout
	}
	var t time.Duration
	if v, ok := req.Header.Lookup("grpc-timeout"); ok {
		if d, err := ParseGRPCTimeout(v); err == nil {
			t = d
		}
	}
	if off := r.GRPCTimeoutOffset; off > 0 && off < t {
		t -= off
	}
	if max := *r.MaxGRPCTimeout; max > 0 && (t == 0 || t > max) {
		t = max
	}
	return t
}
