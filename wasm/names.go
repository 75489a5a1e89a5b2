package wasm

import (
	"strings"

	"github.com/tetratelabs/wazero/api"
)

// maxInterned bounds the header names one instance interns, and
// maxInternedValue the length of a value it remembers: a guest that sets
// ever new names or long values gets fresh strings, as without the cache.
const (
	maxInterned      = 64
	maxInternedValue = 64
)

// nameCache interns the header names a guest passes to the header-map host
// calls, lowercased, with the last value set under each, so that a filter
// setting the same few headers on every stream allocates a string only for
// a value that changed (a Go map lookup keyed by string(b) copies nothing).
// Owned by the instance lock, like every host call.
type nameCache map[string]*internedName

type internedName struct {
	name  string // lowercased
	value string // the last value set under name
}

// lookup returns the entry of the guest's name b, creating it while the
// cache has room; nil when it is full and b is new.
func (c nameCache) lookup(b []byte) *internedName {
	if e, ok := c[string(b)]; ok {
		return e
	}
	if len(c) >= maxInterned {
		return nil
	}
	k := string(b)
	e := &internedName{name: strings.ToLower(k)}
	c[k] = e
	return e
}

// header returns the lowercased header name at [namePtr, namePtr+nameSize)
// of guest memory and, with withValue, the value at [valPtr,
// valPtr+valSize), reusing the strings of earlier calls where it can; ok is
// false when either lies outside guest memory.
func (c nameCache) header(m api.Module, namePtr, nameSize, valPtr, valSize uint32, withValue bool) (name, value string, ok bool) {
	mem := m.Memory()
	nb, ok := mem.Read(namePtr, nameSize)
	if !ok {
		return "", "", false
	}
	e := c.lookup(nb)
	if e != nil {
		name = e.name
	} else {
		name = strings.ToLower(string(nb))
	}
	if !withValue {
		return name, "", true
	}
	vb, ok := mem.Read(valPtr, valSize)
	switch {
	case !ok:
		return "", "", false
	case e == nil || len(vb) > maxInternedValue:
		value = string(vb)
	default:
		if e.value != string(vb) {
			e.value = string(vb)
		}
		value = e.value
	}
	return name, value, true
}
