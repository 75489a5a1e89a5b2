package wasm

import (
	"strconv"
	"strings"

	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/wasm"
)

// fieldMap is a wasm.HeaderMap over a header list (trailers).
type fieldMap struct{ h *header.Header }

var (
	_ wasm.HeaderMap = (*fieldMap)(nil)
	_ wasm.HeaderMap = (*requestMap)(nil)
	_ wasm.HeaderMap = (*responseMap)(nil)
)

func (m *fieldMap) Get(name string) (string, bool) {
	vs := m.h.Values(strings.ToLower(name))
	if len(vs) == 0 {
		return "", false
	}
	return strings.Join(vs, ","), true
}

func (m *fieldMap) Pairs() [][2]string {
	out := make([][2]string, 0, m.h.Len())
	for _, f := range m.h.Fields() {
		out = append(out, [2]string{f.Name, f.Value})
	}
	return out
}

func (m *fieldMap) SetPairs(pairs [][2]string) {
	*m.h = header.Make(len(pairs))
	for _, kv := range pairs {
		m.h.Add(kv[0], kv[1])
	}
}

func (m *fieldMap) Add(name, value string) { m.h.Add(name, value) }
func (m *fieldMap) Set(name, value string) { m.h.Set(name, value) }
func (m *fieldMap) Del(name string)        { m.h.Del(strings.ToLower(name)) }

// requestMap is a wasm.HeaderMap over a request: the pseudo-headers
// :method, :scheme, :authority and :path, as Envoy shows them to guests,
// then the fields.
type requestMap struct{ r *stream.Request }

func (m *requestMap) pseudo() [][2]string {
	out := make([][2]string, 0, 4)
	for _, kv := range [][2]string{{":authority", m.r.Authority}, {":path", m.r.Path}, {":method", m.r.Method}, {":scheme", m.r.Scheme}} {
		if kv[1] != "" {
			out = append(out, kv)
		}
	}
	return out
}

// field returns a pointer to the request field a pseudo-header names.
func (m *requestMap) field(name string) *string {
	switch name {
	case ":authority":
		return &m.r.Authority
	case ":path":
		return &m.r.Path
	case ":method":
		return &m.r.Method
	case ":scheme":
		return &m.r.Scheme
	}
	return nil
}

func (m *requestMap) Get(name string) (string, bool) {
	name = strings.ToLower(name)
	if p := m.field(name); p != nil {
		return *p, *p != ""
	}
	return (&fieldMap{h: &m.r.Header}).Get(name)
}

func (m *requestMap) Pairs() [][2]string {
	return append(m.pseudo(), (&fieldMap{h: &m.r.Header}).Pairs()...)
}

func (m *requestMap) SetPairs(pairs [][2]string) {
	m.r.Header = header.Make(len(pairs))
	for _, kv := range pairs {
		m.Add(kv[0], kv[1])
	}
}

func (m *requestMap) Add(name, value string) {
	name = strings.ToLower(name)
	if p := m.field(name); p != nil {
		*p = value
		return
	}
	if strings.HasPrefix(name, ":") {
		return // other pseudo-headers do not exist in HTTP/1 or HTTP/2 requests
	}
	m.r.Header.Add(name, value)
}

func (m *requestMap) Set(name, value string) {
	name = strings.ToLower(name)
	if p := m.field(name); p != nil {
		*p = value
		return
	}
	if strings.HasPrefix(name, ":") {
		return
	}
	m.r.Header.Set(name, value)
}

func (m *requestMap) Del(name string) {
	name = strings.ToLower(name)
	if p := m.field(name); p != nil {
		// A request keeps its pseudo-headers; Envoy refuses to remove them too.
		return
	}
	m.r.Header.Del(name)
}

// responseMap is a wasm.HeaderMap over a response: :status, then the
// fields.
type responseMap struct{ r *stream.Response }

func (m *responseMap) Get(name string) (string, bool) {
	name = strings.ToLower(name)
	if name == ":status" {
		return strconv.Itoa(m.r.Status), true
	}
	return (&fieldMap{h: &m.r.Header}).Get(name)
}

func (m *responseMap) Pairs() [][2]string {
	return append([][2]string{{":status", strconv.Itoa(m.r.Status)}}, (&fieldMap{h: &m.r.Header}).Pairs()...)
}

func (m *responseMap) SetPairs(pairs [][2]string) {
	m.r.Header = header.Make(len(pairs))
	for _, kv := range pairs {
		m.Add(kv[0], kv[1])
	}
}

func (m *responseMap) setStatus(v string) {
	if n, err := strconv.Atoi(v); err == nil && n >= 100 && n <= 999 {
		m.r.Status = n
	}
}

func (m *responseMap) Add(name, value string) {
	name = strings.ToLower(name)
	switch {
	case name == ":status":
		m.setStatus(value)
	case strings.HasPrefix(name, ":"):
	default:
		m.r.Header.Add(name, value)
	}
}

func (m *responseMap) Set(name, value string) {
	name = strings.ToLower(name)
	switch {
	case name == ":status":
		m.setStatus(value)
	case strings.HasPrefix(name, ":"):
	default:
		m.r.Header.Set(name, value)
	}
}

func (m *responseMap) Del(name string) {
	name = strings.ToLower(name)
	if !strings.HasPrefix(name, ":") {
		m.r.Header.Del(name)
	}
}
