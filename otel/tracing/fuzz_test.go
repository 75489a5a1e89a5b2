package tracing

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// FuzzParseTraceparent checks ParseTraceparent against the OpenTelemetry
// SDK's W3C propagator on the same value: the same verdict and, when
// valid, the same IDs and sampled flag; an accepted context also survives
// FormatTraceparent. Two differences are meshd's choice and are allowed:
// version 00 must be exactly 55 bytes (OpenTelemetry accepts a trailing
// "-"), and trace-flags bits other than sampled and random are ignored
// (OpenTelemetry rejects them in version 00).
func FuzzParseTraceparent(f *testing.F) {
	for _, s := range []string{
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
		"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
		"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
		"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
	} {
		f.Add(s)
	}
	prop := propagation.TraceContext{}
	f.Fuzz(func(t *testing.T, v string) {
		sc, ok := ParseTraceparent(v)
		ref := trace.SpanContextFromContext(prop.Extract(context.Background(), propagation.MapCarrier{"traceparent": v}))
		if ok {
			if !sc.IsValid() {
				t.Fatalf("ParseTraceparent(%q) accepted invalid IDs %+v", v, sc)
			}
			again, ok2 := ParseTraceparent(FormatTraceparent(sc.TraceID, sc.SpanID, sc.Sampled))
			if !ok2 || again != sc {
				t.Fatalf("round trip of %q: %+v, want %+v", v, again, sc)
			}
		}
		version00 := len(v) >= 2 && v[:2] == "00"
		switch {
		case ok == ref.IsValid():
		case !ok && version00 && len(v) == TraceparentLen+1 && v[TraceparentLen] == '-':
			return // OpenTelemetry accepts "00-...-xx-"; version 00 has no more fields
		case ok && version00 && len(v) == TraceparentLen && hexFlags(v[53:55]) > 3:
			return // OpenTelemetry rejects reserved flag bits; meshd ignores them
		default:
			t.Fatalf("ParseTraceparent(%q) ok=%v, OpenTelemetry valid=%v", v, ok, ref.IsValid())
		}
		if !ok {
			return
		}
		if TraceID(ref.TraceID()) != sc.TraceID || SpanID(ref.SpanID()) != sc.SpanID || ref.IsSampled() != sc.Sampled {
			t.Fatalf("ParseTraceparent(%q) = %+v, OpenTelemetry %v-%v sampled=%v", v, sc, ref.TraceID(), ref.SpanID(), ref.IsSampled())
		}
	})
}

// hexFlags is the value of two lower-case hex digits, 0 when malformed.
func hexFlags(s string) byte {
	b, _ := hexByte(s[0], s[1])
	return b
}

// FuzzExtract feeds arbitrary traceparent, b3 and x-b3-* values to
// Extract: an extracted context is valid, a B3 one survives FormatB3, and
// a W3C one carries the tracestate unchanged.
func FuzzExtract(f *testing.F) {
	f.Add("", "", "", "", "", "")
	f.Add("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "k=v", "", "", "", "")
	f.Add("", "", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90", "", "", "")
	f.Add("", "", "a3ce929d0e0e4736-00f067aa0ba902b7-d", "", "", "")
	f.Add("", "", "", "a3ce929d0e0e4736", "00f067aa0ba902b7", "0")
	f.Add("bad", "", "1", "80f198ee56343ba864fe8b2a57d3eff7", "e457b5a2e4d86bd1", "true")
	f.Fuzz(func(t *testing.T, tp, ts, b3, tid, sid, sampled string) {
		h := mapHeaders{"traceparent": tp, "tracestate": ts, "b3": b3, "x-b3-traceid": tid, "x-b3-spanid": sid, "x-b3-sampled": sampled}
		sc, ok := Extract(h)
		if !ok {
			if sc != (SpanContext{}) {
				t.Fatalf("Extract failed but returned %+v", sc)
			}
			return
		}
		if !sc.IsValid() {
			t.Fatalf("Extract returned invalid %+v", sc)
		}
		if !sc.B3 {
			if sc.TraceState != ts {
				t.Fatalf("tracestate %q, want %q", sc.TraceState, ts)
			}
			return
		}
		again, ok := parseB3Single(FormatB3(sc.TraceID, sc.SpanID, sc.Sampled))
		if !ok || again != sc {
			t.Fatalf("B3 round trip: %+v, want %+v", again, sc)
		}
	})
}
