package h2

// perRequestValue reports whether a field's value is new on every request:
// trace context and request IDs. Such a field is sent as a literal without
// indexing (RFC 7541 section 6.2.2) rather than added to the dynamic
// table, where it could never be referenced again and would only evict
// the entries that are (an entry per request churns the 4 KiB table
// every few dozen requests, and each eviction costs both encoder and
// decoder their table bookkeeping and re-sends a stable field in full).
// Unlike "never indexed" (section 6.2.3) the representation binds no
// later hop: a peer re-encoding the field may index it.
func perRequestValue(name string) bool {
	switch name {
	case "traceparent", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-request-id", "x-client-trace-id":
		return true
	}
	return false
}

// appendLiteralUnindexed appends the HPACK representation "literal header
// field without indexing, new name" (RFC 7541 section 6.2.2) of name and
// value, both as raw octets. Huffman coding would save about a quarter of
// a hex ID's length but costs the encoder, and every decoder on the path,
// far more CPU than the bytes it saves (measured in docs/RATIONALE.md).
func appendLiteralUnindexed(dst []byte, name, value string) []byte {
	dst = append(dst, 0) // 0000 and a zero name index: a literal name follows
	dst = appendHpackInt(dst, 0, uint64(len(name)))
	dst = append(dst, name...)
	dst = appendHpackInt(dst, 0, uint64(len(value)))
	return append(dst, value...)
}

// appendHpackInt appends i with a 7-bit prefix (RFC 7541 section 5.1),
// the prefix's byte carrying the flag bits of first (the H bit of a
// string's length).
func appendHpackInt(dst []byte, first byte, i uint64) []byte {
	const max = 1<<7 - 1
	if i < max {
		return append(dst, first|byte(i))
	}
	dst = append(dst, first|max)
	for i -= max; i >= 128; i >>= 7 {
		dst = append(dst, byte(i&0x7f)|0x80)
	}
	return append(dst, byte(i))
}
