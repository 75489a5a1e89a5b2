package wasm

import (
	"fmt"
	"testing"
	"unsafe"

	"github.com/tetratelabs/wazero/api"
)

// sliceMemory is guest memory for host-function helpers that only read it.
type sliceMemory struct {
	api.Memory
	b []byte
}

func (m *sliceMemory) Read(off, n uint32) ([]byte, bool) {
	if uint64(off)+uint64(n) > uint64(len(m.b)) {
		return nil, false
	}
	return m.b[off : off+n], true
}

type memoryModule struct {
	api.Module
	mem *sliceMemory
}

func (m *memoryModule) Memory() api.Memory { return m.mem }

// TestNameCacheHeader checks the header host calls' name and value reads:
// names come back lowercased, a repeated value is the same string, bad
// pointers fail, and a full cache or a long value still reads correctly.
func TestNameCacheHeader(t *testing.T) {
	long := string(make([]byte, maxInternedValue+1))
	mem := []byte("X-RateLimit-Limit" + "100" + "x-ratelimit-limit" + "99" + long)
	mod := &memoryModule{mem: &sliceMemory{b: mem}}
	const (
		upperName, upperLen = 0, 17
		v100, v100Len       = 17, 3
		lowerName, lowerLen = 20, 17
		v99, v99Len         = 37, 2
		longVal             = 39
	)
	type read struct {
		namePtr, nameSize, valPtr, valSize uint32
		withValue                          bool
		wantName, wantValue                string
		wantOK                             bool
	}
	tests := []struct {
		name  string
		fill  int // names interned before the reads
		reads []read
	}{
		{"lowercased name, no value", 0, []read{
			{upperName, upperLen, 0, 0, false, "x-ratelimit-limit", "", true},
		}},
		{"mixed-case and lower-case names share an entry", 0, []read{
			{upperName, upperLen, v100, v100Len, true, "x-ratelimit-limit", "100", true},
			{lowerName, lowerLen, v99, v99Len, true, "x-ratelimit-limit", "99", true},
			{upperName, upperLen, v99, v99Len, true, "x-ratelimit-limit", "99", true},
		}},
		{"long value", 0, []read{
			{lowerName, lowerLen, longVal, uint32(len(long)), true, "x-ratelimit-limit", long, true},
		}},
		{"name out of bounds", 0, []read{
			{uint32(len(mem)) - 2, 3, 0, 0, false, "", "", false},
		}},
		{"value out of bounds", 0, []read{
			{lowerName, lowerLen, uint32(len(mem)), 1, true, "", "", false},
		}},
		{"full cache", maxInterned, []read{
			{upperName, upperLen, v100, v100Len, true, "x-ratelimit-limit", "100", true},
			{upperName, upperLen, v99, v99Len, true, "x-ratelimit-limit", "99", true},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := make(nameCache)
			for k := range tc.fill {
				c.lookup(fmt.Appendf(nil, "filler-%d", k))
			}
			for _, r := range tc.reads {
				name, value, ok := c.header(mod, r.namePtr, r.nameSize, r.valPtr, r.valSize, r.withValue)
				if ok != r.wantOK || name != r.wantName || value != r.wantValue {
					t.Errorf("header(%d, %d, %d, %d) = %q, %q, %v; want %q, %q, %v", r.namePtr, r.nameSize, r.valPtr, r.valSize,
						name, value, ok, r.wantName, r.wantValue, r.wantOK)
				}
			}
			if len(c) > maxInterned {
				t.Errorf("cache holds %d names, more than %d", len(c), maxInterned)
			}
		})
	}
}

// TestNameCacheReuse checks that a repeated header edit allocates nothing
// and hands out the strings of the first one, and that a changed value is
// a new string.
func TestNameCacheReuse(t *testing.T) {
	mod := &memoryModule{mem: &sliceMemory{b: []byte("x-ratelimit-remaining" + "42" + "41")}}
	c := make(nameCache)
	n1, v1, _ := c.header(mod, 0, 21, 21, 2, true)
	n2, v2, _ := c.header(mod, 0, 21, 21, 2, true)
	if unsafe.StringData(n1) != unsafe.StringData(n2) || unsafe.StringData(v1) != unsafe.StringData(v2) {
		t.Error("a repeated name and value were copied again")
	}
	if allocs := testing.AllocsPerRun(100, func() { c.header(mod, 0, 21, 21, 2, true) }); allocs != 0 {
		t.Errorf("repeated header read: %v allocations, want 0", allocs)
	}
	if _, v3, _ := c.header(mod, 0, 21, 23, 2, true); v3 != "41" {
		t.Errorf("changed value = %q, want 41", v3)
	}
	if _, v4, _ := c.header(mod, 0, 21, 21, 2, true); v4 != "42" {
		t.Errorf("value changed back = %q, want 42", v4)
	}
}
