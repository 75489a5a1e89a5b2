package header

import (
	"math"
	"strings"
)

// connectionSpecific lists the fields RFC 9113 section 8.2.2 forbids in
// HTTP/2 (and RFC 9114 section 4.2 in HTTP/3): they describe one hop, not the
// message. "te" is allowed only with the value "trailers".
var connectionSpecific = map[string]bool{
	"connection":        true,
	"keep-alive":        true,
	"proxy-connection":  true,
	"transfer-encoding": true,
	"upgrade":           true,
}

// IsConnectionSpecific reports whether name is a hop-by-hop field that a
// proxy must not forward and an HTTP/2 peer must not send.
func IsConnectionSpecific(name string) bool { return connectionSpecific[name] }

// StripHopByHop removes the connection-specific fields, the fields that a
// "connection" field names, and "te" unless its value is "trailers". It is
// what a proxy does before forwarding a message to the next hop
// (RFC 9110 section 7.6.1).
func (h *Header) StripHopByHop() {
	for _, v := range h.Values("connection") {
		for opt := range strings.SplitSeq(v, ",") {
			if opt = strings.ToLower(strings.TrimSpace(opt)); opt != "" {
				h.Del(opt)
			}
		}
	}
	out := h.fields[:0]
	for _, f := range h.fields {
		if connectionSpecific[f.Name] {
			continue
		}
		if f.Name == "te" && !strings.EqualFold(strings.TrimSpace(f.Value), "trailers") {
			continue
		}
		out = append(out, f)
	}
	clear(h.fields[len(out):])
	h.fields = out
}

// ValidName reports whether name is a valid lower-case field name token
// (RFC 9110 section 5.1; HTTP/2 further requires lower case).
func ValidName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		if !tokenLower[name[i]] {
			return false
		}
	}
	return true
}

// ValidValue reports whether v is a valid field value: no NUL, CR or LF, and
// no leading or trailing whitespace (RFC 9113 section 8.2.1).
func ValidValue(v string) bool {
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case c == 0, c == '\r', c == '\n':
			return false
		case c < ' ' && c != '\t', c == 0x7f:
			return false
		}
	}
	if n := len(v); n > 0 && (v[0] == ' ' || v[0] == '\t' || v[n-1] == ' ' || v[n-1] == '\t') {
		return false
	}
	return true
}

var tokenLower = func() (t [256]bool) {
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

// ParseContentLength parses a content-length value as RFC 9110 section
// 8.6 defines it, one or more decimal digits, and reports false for
// anything else: an empty value, a sign, spaces, a comma-separated list, or
// a number above math.MaxInt64. strconv.ParseInt would take "+5" as 5,
// and a proxy that accepts such a value forwards it to a next hop that may
// read it differently.
func ParseContentLength(v string) (int64, bool) {
	if v == "" {
		return 0, false
	}
	var n int64
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		d := int64(c - '0')
		if n > (math.MaxInt64-d)/10 {
			return 0, false
		}
		n = n*10 + d
	}
	return n, true
}
