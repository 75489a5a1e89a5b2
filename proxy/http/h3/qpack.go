package h3

import (
	"fmt"
	"strconv"

	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"
	"golang.org/x/net/http2/hpack"

	"meshd.dev/meshd/proxy/http/header"
)

// QPACK (RFC 9204) as meshd uses it: the static table only. Neither side
// allows a dynamic table (SETTINGS_QPACK_MAX_TABLE_CAPACITY is never sent,
// so it is 0), so a field section is a two-byte prefix of zeros and field
// lines that are static-table references or literals. The encoder writes
// string literals without Huffman coding (RFC 9204 section 4.1.2 leaves it
// to the encoder): between sidecars on a fast path the bytes saved cost
// more CPU than they are worth. The decoder accepts both.

// staticTable is QPACK's static table (RFC 9204 Appendix A).
var staticTable = [...]header.Field{
	{Name: ":authority"}, {Name: ":path", Value: "/"}, {Name: "age", Value: "0"},
	{Name: "content-disposition"}, {Name: "content-length", Value: "0"}, {Name: "cookie"},
	{Name: "date"}, {Name: "etag"}, {Name: "if-modified-since"}, {Name: "if-none-match"},
	{Name: "last-modified"}, {Name: "link"}, {Name: "location"}, {Name: "referer"},
	{Name: "set-cookie"},
	{Name: ":method", Value: "CONNECT"}, {Name: ":method", Value: "DELETE"}, {Name: ":method", Value: "GET"},
	{Name: ":method", Value: "HEAD"}, {Name: ":method", Value: "OPTIONS"}, {Name: ":method", Value: "POST"},
	{Name: ":method", Value: "PUT"},
	{Name: ":scheme", Value: "http"}, {Name: ":scheme", Value: "https"},
	{Name: ":status", Value: "103"}, {Name: ":status", Value: "200"}, {Name: ":status", Value: "304"},
	{Name: ":status", Value: "404"}, {Name: ":status", Value: "503"},
	{Name: "accept", Value: "*/*"}, {Name: "accept", Value: "application/dns-message"},
	{Name: "accept-encoding", Value: "gzip, deflate, br"}, {Name: "accept-ranges", Value: "bytes"},
	{Name: "access-control-allow-headers", Value: "cache-control"},
	{Name: "access-control-allow-headers", Value: "content-type"},
	{Name: "access-control-allow-origin", Value: "*"},
	{Name: "cache-control", Value: "max-age=0"}, {Name: "cache-control", Value: "max-age=2592000"},
	{Name: "cache-control", Value: "max-age=604800"}, {Name: "cache-control", Value: "no-cache"},
	{Name: "cache-control", Value: "no-store"}, {Name: "cache-control", Value: "public, max-age=31536000"},
	{Name: "content-encoding", Value: "br"}, {Name: "content-encoding", Value: "gzip"},
	{Name: "content-type", Value: "application/dns-message"},
	{Name: "content-type", Value: "application/javascript"},
	{Name: "content-type", Value: "application/json"},
	{Name: "content-type", Value: "application/x-www-form-urlencoded"},
	{Name: "content-type", Value: "image/gif"}, {Name: "content-type", Value: "image/jpeg"},
	{Name: "content-type", Value: "image/png"}, {Name: "content-type", Value: "text/css"},
	{Name: "content-type", Value: "text/html; charset=utf-8"}, {Name: "content-type", Value: "text/plain"},
	{Name: "content-type", Value: "text/plain;charset=utf-8"},
	{Name: "range", Value: "bytes=0-"},
	{Name: "strict-transport-security", Value: "max-age=31536000"},
	{Name: "strict-transport-security", Value: "max-age=31536000; includesubdomains"},
	{Name: "strict-transport-security", Value: "max-age=31536000; includesubdomains; preload"},
	{Name: "vary", Value: "accept-encoding"}, {Name: "vary", Value: "origin"},
	{Name: "x-content-type-options", Value: "nosniff"}, {Name: "x-xss-protection", Value: "1; mode=block"},
	{Name: ":status", Value: "100"}, {Name: ":status", Value: "204"}, {Name: ":status", Value: "206"},
	{Name: ":status", Value: "302"}, {Name: ":status", Value: "400"}, {Name: ":status", Value: "403"},
	{Name: ":status", Value: "421"}, {Name: ":status", Value: "425"}, {Name: ":status", Value: "500"},
	{Name: "accept-language"},
	{Name: "access-control-allow-credentials", Value: "FALSE"},
	{Name: "access-control-allow-credentials", Value: "TRUE"},
	{Name: "access-control-allow-headers", Value: "*"},
	{Name: "access-control-allow-methods", Value: "get"},
	{Name: "access-control-allow-methods", Value: "get, post, options"},
	{Name: "access-control-allow-methods", Value: "options"},
	{Name: "access-control-expose-headers", Value: "content-length"},
	{Name: "access-control-request-headers", Value: "content-type"},
	{Name: "access-control-request-method", Value: "get"},
	{Name: "access-control-request-method", Value: "post"},
	{Name: "alt-svc", Value: "clear"}, {Name: "authorization"},
	{Name: "content-security-policy", Value: "script-src 'none'; object-src 'none'; base-uri 'none'"},
	{Name: "early-data", Value: "1"}, {Name: "expect-ct"}, {Name: "forwarded"}, {Name: "if-range"},
	{Name: "origin"}, {Name: "purpose", Value: "prefetch"}, {Name: "server"},
	{Name: "timing-allow-origin", Value: "*"}, {Name: "upgrade-insecure-requests", Value: "1"},
	{Name: "user-agent"}, {Name: "x-forwarded-for"},
	{Name: "x-frame-options", Value: "deny"}, {Name: "x-frame-options", Value: "sameorigin"},
}

// staticName is what the encoder needs to know about a name in the
// static table: the index to reference it by and the entries carrying it,
// whose values may match whole.
type staticName struct {
	index   uint8
	entries []uint8
}

// staticNames indexes staticTable by name; filled once at package init and
// only read afterwards.
var staticNames = func() map[string]staticName {
	m := make(map[string]staticName, 64)
	for i, f := range staticTable {
		e, ok := m[f.Name]
		if !ok {
			e.index = uint8(i)
		}
		e.entries = append(e.entries, uint8(i))
		m[f.Name] = e
	}
	return m
}()

// contentLengthIndex and statusNameIndex are the static-table entries
// that name content-length (with value "0") and :status.
var (
	contentLengthIndex = staticNames["content-length"].index
	statusNameIndex    = staticNames[":status"].index
)

// statusIndex maps the response statuses in the static table to their
// index; 0 (":authority") means none.
var statusIndex = func() (t [600]uint8) {
	for i, f := range staticTable {
		if f.Name == ":status" {
			s, _ := strconv.Atoi(f.Value)
			t[s] = uint8(i)
		}
	}
	return t
}()

// Field line representations (RFC 9204 section 4.5): the pattern bits of
// the first byte, static-table variants (T bit set, N bit clear).
const (
	lineIndexedStatic     = 0xc0 // 11xxxxxx: indexed field line, static
	lineLiteralStaticName = 0x50 // 0101xxxx: literal with a static name reference
	lineLiteralName       = 0x20 // 001NHxxx: literal with a literal name
)

// appendPrefixInt appends v as an integer with an n-bit prefix (RFC 7541
// section 5.1) whose first byte carries the pattern bits first.
func appendPrefixInt(b []byte, first byte, n uint8, v uint64) []byte {
	limit := uint64(1)<<n - 1
	if v < limit {
		return append(b, first|byte(v))
	}
	b = append(b, first|byte(limit))
	v -= limit
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

// appendString appends a string literal without Huffman coding, its length
// with an n-bit prefix after the pattern bits in first.
func appendString(b []byte, first byte, n uint8, s string) []byte {
	return append(appendPrefixInt(b, first, n, uint64(len(s))), s...)
}

// appendField appends one field line: an indexed line when the static
// table has name and value, a literal with a name reference when it has
// the name, otherwise a literal name and value.
func appendField(b []byte, name, value string) []byte {
	e, ok := staticNames[name]
	if !ok {
		return appendString(appendString(b, lineLiteralName, 3, name), 0, 7, value)
	}
	for _, i := range e.entries {
		if staticTable[i].Value == value {
			return appendPrefixInt(b, lineIndexedStatic, 6, uint64(i))
		}
	}
	return appendString(appendPrefixInt(b, lineLiteralStaticName, 4, uint64(e.index)), 0, 7, value)
}

// appendStatus appends the :status field line of status (100 to 999).
func appendStatus(b []byte, status int) []byte {
	if status < len(statusIndex) && statusIndex[status] != 0 {
		return appendPrefixInt(b, lineIndexedStatic, 6, uint64(statusIndex[status]))
	}
	b = appendPrefixInt(b, lineLiteralStaticName, 4, uint64(statusNameIndex))
	b = append(b, 3) // three digits, not Huffman-coded
	return strconv.AppendInt(b, int64(status), 10)
}

// appendContentLength appends a content-length field line for n (n >= 0).
func appendContentLength(b []byte, n int64) []byte {
	if n == 0 {
		return appendPrefixInt(b, lineIndexedStatic, 6, uint64(contentLengthIndex)) // "content-length: 0"
	}
	var digits [20]byte
	d := strconv.AppendInt(digits[:0], n, 10)
	b = appendPrefixInt(b, lineLiteralStaticName, 4, uint64(contentLengthIndex))
	b = appendPrefixInt(b, 0, 7, uint64(len(d)))
	return append(b, d...)
}

// headersLenRoom is the room beginHeaders leaves for the frame's length:
// a two-byte varint covers field sections up to 16 KiB; endHeaders moves
// the section when it needs another size.
const headersLenRoom = 2

// beginHeaders starts a HEADERS frame at the end of b: the frame type,
// room for its length and the field section prefix (Required Insert Count
// and Base both 0). It returns where the frame starts, for endHeaders.
func beginHeaders(b []byte) ([]byte, int) {
	start := len(b)
	b = append(b, frameHeaders, 0, 0) // type, length room (headersLenRoom)
	return append(b, 0, 0), start
}

// endHeaders writes the length of the HEADERS frame begun at start, moving
// its field section when the length takes other than headersLenRoom bytes.
func endHeaders(b []byte, start int) []byte {
	section := start + 1 + headersLenRoom
	n := uint64(len(b) - section)
	size := quicvarint.Len(n)
	switch {
	case size < headersLenRoom:
		copy(b[start+1+size:], b[section:])
		b = b[:len(b)-(headersLenRoom-size)]
	case size > headersLenRoom:
		b = append(b, make([]byte, size-headersLenRoom)...)
		copy(b[start+1+size:], b[section:len(b)-(size-headersLenRoom)])
	}
	quicvarint.Append(b[start+1:start+1], n)
	return b
}

// errQPACKTruncated is a field section that ends inside a field line.
var errQPACKTruncated = &h3Error{http3.ErrCodeQPACKDecompressionFailed, "field section ends inside a field line"}

// sectionReader decodes a QPACK field section field line by field line.
// It works on one string copy of the section, and literal names and
// values are substrings of it (Huffman-coded ones are decoded into strings
// of their own), so a section costs one allocation however many fields it
// has, and the caller's buffer is free again once init returned.
type sectionReader struct {
	s   string // the section
	off int    // how much of it was consumed
}

// init starts decoding section and checks its prefix: a Required Insert
// Count or Delta Base other than 0 would need the dynamic table meshd
// never allows (RFC 9204 sections 3.2.3 and 4.5.1).
func (r *sectionReader) init(section []byte) error {
	r.s, r.off = string(section), 0
	ric, err := r.int(8)
	if err != nil {
		return err
	}
	if ric != 0 {
		return &h3Error{http3.ErrCodeQPACKDecompressionFailed, "field section references the dynamic table (Required Insert Count > 0)"}
	}
	base, err := r.int(7)
	if err != nil {
		return err
	}
	if base != 0 {
		return &h3Error{http3.ErrCodeQPACKDecompressionFailed, "field section has a Base without a dynamic table"}
	}
	return nil
}

// int reads an integer with an n-bit prefix (RFC 7541 section 5.1).
func (r *sectionReader) int(n uint8) (uint64, error) {
	if r.off >= len(r.s) {
		return 0, errQPACKTruncated
	}
	limit := uint64(1)<<n - 1
	v := uint64(r.s[r.off]) & limit
	r.off++
	if v < limit {
		return v, nil
	}
	for shift := uint(0); r.off < len(r.s); shift += 7 {
		if shift > 56 {
			return 0, &h3Error{http3.ErrCodeQPACKDecompressionFailed, "integer overflow in a field section"}
		}
		c := r.s[r.off]
		r.off++
		v += uint64(c&0x7f) << shift
		if c&0x80 == 0 {
			return v, nil
		}
	}
	return 0, errQPACKTruncated
}

// str reads a string literal whose length has an n-bit prefix and whose
// Huffman flag is the bit just above it.
func (r *sectionReader) str(n uint8) (string, error) {
	if r.off >= len(r.s) {
		return "", errQPACKTruncated
	}
	huffman := r.s[r.off]&(1<<n) != 0
	l, err := r.int(n)
	if err != nil {
		return "", err
	}
	if l > uint64(len(r.s)-r.off) {
		return "", errQPACKTruncated
	}
	v := r.s[r.off : r.off+int(l)]
	r.off += int(l)
	if !huffman {
		return v, nil
	}
	d, err := hpack.HuffmanDecodeToString([]byte(v))
	if err != nil {
		return "", &h3Error{http3.ErrCodeQPACKDecompressionFailed, fmt.Sprintf("Huffman-coded string: %v", err)}
	}
	return d, nil
}

// static returns static table entry i.
func static(i uint64) (header.Field, error) {
	if i >= uint64(len(staticTable)) {
		return header.Field{}, &h3Error{http3.ErrCodeQPACKDecompressionFailed, fmt.Sprintf("static table index %d out of range", i)}
	}
	return staticTable[i], nil
}

// next decodes the next field line; ok is false at the end of the section.
// Every error is an *h3Error with H3_QPACK_DECOMPRESSION_FAILED (RFC 9204
// section 2.2.3), including a reference to the dynamic table.
func (r *sectionReader) next() (f header.Field, ok bool, err error) {
	if r.off >= len(r.s) {
		return f, false, nil
	}
	b := r.s[r.off]
	switch {
	case b&0x80 != 0: // 1Txxxxxx: indexed field line
		if b&0x40 == 0 {
			return f, false, errDynamicRef
		}
		i, err := r.int(6)
		if err != nil {
			return f, false, err
		}
		f, err = static(i)
		return f, err == nil, err
	case b&0xc0 == 0x40: // 01NTxxxx: literal with a name reference
		if b&0x10 == 0 {
			return f, false, errDynamicRef
		}
		i, err := r.int(4)
		if err != nil {
			return f, false, err
		}
		if f, err = static(i); err != nil {
			return f, false, err
		}
		if f.Value, err = r.str(7); err != nil {
			return f, false, err
		}
		return f, true, nil
	case b&0xe0 == 0x20: // 001NHxxx: literal with a literal name
		if f.Name, err = r.str(3); err != nil {
			return f, false, err
		}
		if f.Value, err = r.str(7); err != nil {
			return f, false, err
		}
		return f, true, nil
	default: // 0001xxxx and 0000xxxx: post-base forms, dynamic table only
		return f, false, errDynamicRef
	}
}

// errDynamicRef is a field line referencing the dynamic table.
var errDynamicRef = &h3Error{http3.ErrCodeQPACKDecompressionFailed, "field line references the dynamic table"}

// appendTrailers appends a trailer section as a HEADERS frame, without
// connection-specific fields.
func appendTrailers(b []byte, t header.Header) []byte {
	b, start := beginHeaders(b)
	for _, f := range t.Fields() {
		if !header.IsConnectionSpecific(f.Name) {
			b = appendField(b, f.Name, f.Value)
		}
	}
	return endHeaders(b, start)
}
