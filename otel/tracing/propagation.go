package tracing

// SpanContext is the trace context a request carries: W3C trace context
// (traceparent and tracestate), or B3.
type SpanContext struct {
	TraceID TraceID
	SpanID  SpanID
	Sampled bool
	// TraceState is the tracestate value, forwarded unchanged.
	TraceState string
	// B3 marks a context extracted from B3 headers (and no traceparent);
	// it is injected upstream in both formats.
	B3 bool
}

// IsValid reports whether both IDs are set.
func (sc SpanContext) IsValid() bool { return sc.TraceID.IsValid() && sc.SpanID.IsValid() }

// Headers is the read side of a header list.
type Headers interface {
	Get(name string) string
}

// Extract reads the trace context of a request: a valid W3C traceparent
// wins (with its tracestate); otherwise B3 (single "b3" header, then the
// multi-header x-b3-* form). ok is false when there is none or it is
// malformed, in which case the request starts a new trace.
func Extract(h Headers) (sc SpanContext, ok bool) {
	if tp := h.Get("traceparent"); tp != "" {
		if sc, ok = ParseTraceparent(tp); ok {
			sc.TraceState = h.Get("tracestate")
			return sc, true
		}
	}
	if b := h.Get("b3"); b != "" {
		if sc, ok = parseB3Single(b); ok {
			return sc, true
		}
	}
	if tid := h.Get("x-b3-traceid"); tid != "" {
		return parseB3Multi(tid, h.Get("x-b3-spanid"), h.Get("x-b3-sampled"), h.Get("x-b3-flags"))
	}
	return SpanContext{}, false
}

// ParseTraceparent parses a W3C traceparent header value (trace-context
// level 1, section 3.2): version 00 exactly, or a later version whose
// first four fields are version 00's. All-zero IDs and version ff are
// invalid.
func ParseTraceparent(v string) (SpanContext, bool) {
	var sc SpanContext
	if len(v) < 55 || v[2] != '-' || v[35] != '-' || v[52] != '-' {
		return sc, false
	}
	ver, ok := hexByte(v[0], v[1])
	if !ok || ver == 0xff || (ver == 0 && len(v) != 55) || (ver != 0 && len(v) > 55 && v[55] != '-') {
		return sc, false
	}
	if !decodeHex(sc.TraceID[:], v[3:35]) || !decodeHex(sc.SpanID[:], v[36:52]) {
		return sc, false
	}
	flags, ok := hexByte(v[53], v[54])
	if !ok || !sc.IsValid() {
		return SpanContext{}, false
	}
	sc.Sampled = flags&1 == 1
	return sc, true
}

// FormatTraceparent returns the version-00 traceparent of a span.
func FormatTraceparent(t TraceID, s SpanID, sampled bool) string {
	var b [TraceparentLen]byte
	return string(AppendTraceparent(b[:0], t, s, sampled))
}

// TraceparentLen is the length of a version-00 traceparent value.
const TraceparentLen = 55

// AppendTraceparent appends the version-00 traceparent value of t and s
// (the same bytes FormatTraceparent returns) to dst, so a caller can build
// it in memory it owns instead of a new string per call.
func AppendTraceparent(dst []byte, t TraceID, s SpanID, sampled bool) []byte {
	n := len(dst)
	dst = append(dst, make([]byte, TraceparentLen)...)
	b := dst[n:]
	b[0], b[1], b[2] = '0', '0', '-'
	encodeHex(b[3:35], t[:])
	b[35] = '-'
	encodeHex(b[36:52], s[:])
	b[52], b[53], b[54] = '-', '0', '0'
	if sampled {
		b[54] = '1'
	}
	return dst
}

// FormatB3 returns the single-header B3 value of a span.
func FormatB3(t TraceID, s SpanID, sampled bool) string {
	var b [16*2 + 1 + 8*2 + 2]byte
	encodeHex(b[0:32], t[:])
	b[32] = '-'
	encodeHex(b[33:49], s[:])
	b[49] = '-'
	b[50] = '0'
	if sampled {
		b[50] = '1'
	}
	return string(b[:])
}

// parseB3Single parses "traceid-spanid[-sampled[-parentspanid]]"; a lone
// sampling state ("0", "1", "d") carries no IDs and is not a context.
func parseB3Single(v string) (SpanContext, bool) {
	var tid, sid, sampled string
	i := indexDash(v, 0)
	if i < 0 {
		return SpanContext{}, false
	}
	tid = v[:i]
	j := indexDash(v, i+1)
	if j < 0 {
		sid = v[i+1:]
	} else {
		sid = v[i+1 : j]
		k := indexDash(v, j+1)
		if k < 0 {
			sampled = v[j+1:]
		} else {
			sampled = v[j+1 : k]
		}
	}
	flags := ""
	if sampled == "d" {
		sampled, flags = "", "1"
	}
	return parseB3Multi(tid, sid, sampled, flags)
}

func parseB3Multi(tid, sid, sampled, flags string) (SpanContext, bool) {
	var sc SpanContext
	switch len(tid) {
	case 32:
		if !decodeHex(sc.TraceID[:], tid) {
			return SpanContext{}, false
		}
	case 16: // 64-bit trace IDs are left-padded with zeros
		if !decodeHex(sc.TraceID[8:], tid) {
			return SpanContext{}, false
		}
	default:
		return SpanContext{}, false
	}
	if len(sid) != 16 || !decodeHex(sc.SpanID[:], sid) || !sc.IsValid() {
		return SpanContext{}, false
	}
	// An absent sampling state defers the decision; meshd then samples
	// as for a request that carried the IDs with sampled set, so a B3
	// trace is not cut at the proxy.
	sc.Sampled = sampled == "1" || sampled == "true" || flags == "1" || (sampled == "" && flags == "")
	sc.B3 = true
	return sc, true
}

func indexDash(s string, from int) int {
	for i := from; i < len(s); i++ {
		if s[i] == '-' {
			return i
		}
	}
	return -1
}

const hexDigits = "0123456789abcdef"

func encodeHex(dst, src []byte) {
	for i, c := range src {
		dst[2*i], dst[2*i+1] = hexDigits[c>>4], hexDigits[c&0xf]
	}
}

// decodeHex decodes lower-case hex s into dst (len(s) == 2*len(dst)).
func decodeHex(dst []byte, s string) bool {
	if len(s) != 2*len(dst) {
		return false
	}
	for i := range dst {
		b, ok := hexByte(s[2*i], s[2*i+1])
		if !ok {
			return false
		}
		dst[i] = b
	}
	return true
}

func hexByte(a, b byte) (byte, bool) {
	x, ok1 := nibble(a)
	y, ok2 := nibble(b)
	return x<<4 | y, ok1 && ok2
}

// nibbles maps a lower-case hex digit to its value and every other byte
// to 0xff: trace-context accepts lower-case hex only.
var nibbles = func() (t [256]byte) {
	for i := range t {
		t[i] = 0xff
	}
	for i, c := range []byte(hexDigits) {
		t[c] = byte(i)
	}
	return t
}()

func nibble(c byte) (byte, bool) {
	v := nibbles[c]
	return v, v != 0xff
}
