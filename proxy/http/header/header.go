// Package header holds the protocol-neutral header list that meshd's codecs
// (HTTP/1.1, HTTP/2, HTTP/3) produce and consume.
//
// A Header is an ordered list of fields with lower-case names, the form
// HTTP/2 and HTTP/3 put on the wire. Order and duplicates are preserved, so
// a proxy forwards what it received. Pseudo-header fields (":method", ...)
// never appear in a Header: they live in stream.Request and stream.Response.
package header

import "strings"

// Field is one header field. Name is lower case.
type Field struct {
	Name  string
	Value string
}

// Header is an ordered list of fields. The zero value is an empty header
// ready to use. Methods that take a name expect it in lower case; Add and
// Set lower-case it for callers that may pass mixed case.
type Header struct {
	fields []Field
}

// Make returns a Header with room for n fields.
func Make(n int) Header { return Header{fields: make([]Field, 0, n)} }

// FromFields wraps fs (taken, not copied). Names must already be lower case.
func FromFields(fs []Field) Header { return Header{fields: fs} }

// Len is the number of fields, duplicates included.
func (h *Header) Len() int { return len(h.fields) }

// Fields returns the fields in order. The slice is shared with h; callers
// must not modify it.
func (h *Header) Fields() []Field { return h.fields }

// Add appends a field, keeping any existing ones with the same name.
func (h *Header) Add(name, value string) {
	h.fields = append(h.fields, Field{Name: lower(name), Value: value})
}

// Set replaces all fields named name with one field.
func (h *Header) Set(name, value string) {
	name = lower(name)
	h.Del(name)
	h.fields = append(h.fields, Field{Name: name, Value: value})
}

// Get returns the value of the first field named name, or "".
func (h *Header) Get(name string) string {
	for i := range h.fields {
		if h.fields[i].Name == name {
			return h.fields[i].Value
		}
	}
	return ""
}

// Lookup is Get that also reports whether the field was present.
func (h *Header) Lookup(name string) (string, bool) {
	for i := range h.fields {
		if h.fields[i].Name == name {
			return h.fields[i].Value, true
		}
	}
	return "", false
}

// Values returns every value of fields named name, in order.
func (h *Header) Values(name string) []string {
	var vs []string
	for i := range h.fields {
		if h.fields[i].Name == name {
			vs = append(vs, h.fields[i].Value)
		}
	}
	return vs
}

// Has reports whether a field named name is present.
func (h *Header) Has(name string) bool {
	_, ok := h.Lookup(name)
	return ok
}

// Del removes every field named name. A list without the name is only
// read: most deletions (hop-by-hop fields, a traceparent about to be set)
// find nothing, and rewriting every field would cost a write barrier per
// string while the garbage collector marks.
func (h *Header) Del(name string) {
	i := 0
	for i < len(h.fields) && h.fields[i].Name != name {
		i++
	}
	if i == len(h.fields) {
		return
	}
	out := h.fields[:i]
	for _, f := range h.fields[i+1:] {
		if f.Name != name {
			out = append(out, f)
		}
	}
	clear(h.fields[len(out):])
	h.fields = out
}

// Clone returns a deep copy whose fields can be changed independently.
func (h *Header) Clone() Header {
	if h.fields == nil {
		return Header{}
	}
	return Header{fields: append([]Field(nil), h.fields...)}
}

// CloneGrow is Clone with room for extra more fields, so that adding up
// to extra fields (a proxy's forwarding headers) does not reallocate.
func (h *Header) CloneGrow(extra int) Header {
	fs := make([]Field, len(h.fields), len(h.fields)+max(extra, 0))
	copy(fs, h.fields)
	return Header{fields: fs}
}

// Size is the HPACK size of the list (RFC 7541 section 4.1: name + value +
// 32 per field), the measure SETTINGS_MAX_HEADER_LIST_SIZE limits.
func (h *Header) Size() int {
	n := 0
	for _, f := range h.fields {
		n += len(f.Name) + len(f.Value) + 32
	}
	return n
}

func lower(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; 'A' <= c && c <= 'Z' {
			return strings.ToLower(s)
		}
	}
	return s
}
