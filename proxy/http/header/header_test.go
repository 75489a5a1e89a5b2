package header

import (
	"math"
	"slices"
	"testing"
)

// TestDel: every field of the name goes, the others keep their order, and
// the freed tail holds no strings.
func TestDel(t *testing.T) {
	f := func(name, value string) Field { return Field{Name: name, Value: value} }
	for _, tc := range []struct {
		name string
		in   []Field
		del  string
		want []Field
	}{
		{"empty", nil, "a", nil},
		{"absent", []Field{f("a", "1"), f("b", "2")}, "c", []Field{f("a", "1"), f("b", "2")}},
		{"first", []Field{f("a", "1"), f("b", "2")}, "a", []Field{f("b", "2")}},
		{"last", []Field{f("a", "1"), f("b", "2")}, "b", []Field{f("a", "1")}},
		{"duplicates", []Field{f("a", "1"), f("x", "1"), f("b", "2"), f("x", "2"), f("c", "3")}, "x",
			[]Field{f("a", "1"), f("b", "2"), f("c", "3")}},
		{"all", []Field{f("x", "1"), f("x", "2")}, "x", []Field{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := FromFields(slices.Clone(tc.in))
			h.Del(tc.del)
			if got := h.Fields(); !slices.Equal(got, tc.want) {
				t.Errorf("after Del(%q): %v, want %v", tc.del, got, tc.want)
			}
			for i, fl := range h.fields[len(h.fields):cap(h.fields)] {
				if fl != (Field{}) {
					t.Errorf("freed slot %d still holds %v", len(h.fields)+i, fl)
				}
			}
		})
	}
}

// TestCloneGrow: the copy holds the same fields, is independent of the
// original, and takes extra fields without reallocating.
func TestCloneGrow(t *testing.T) {
	for _, tc := range []struct {
		name  string
		in    []Field
		extra int
	}{
		{"nil", nil, 4},
		{"some", []Field{{Name: "a", Value: "1"}, {Name: "b", Value: "2"}}, 4},
		{"negative extra", []Field{{Name: "a", Value: "1"}}, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := FromFields(tc.in)
			c := h.CloneGrow(tc.extra)
			if c.Len() != len(tc.in) {
				t.Fatalf("Len %d, want %d", c.Len(), len(tc.in))
			}
			for i, f := range c.Fields() {
				if f != tc.in[i] {
					t.Errorf("field %d %v, want %v", i, f, tc.in[i])
				}
			}
			if cap(c.fields)-len(c.fields) != max(tc.extra, 0) {
				t.Errorf("room %d, want %d", cap(c.fields)-len(c.fields), max(tc.extra, 0))
			}
			before := &c.fields[:cap(c.fields)][0]
			for i := range max(tc.extra, 0) {
				c.Set("x-added", string(rune('a'+i)))
				c.Add("x-more", "v")
				c.Del("x-more")
			}
			if tc.extra > 0 && &c.fields[0] != before {
				t.Errorf("adding %d fields reallocated the list", tc.extra)
			}
			if len(tc.in) > 0 {
				c.Set(tc.in[0].Name, "changed")
				if h.Get(tc.in[0].Name) != tc.in[0].Value {
					t.Errorf("changing the clone changed the original")
				}
			}
		})
	}
}

func TestParseContentLength(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true},
		{"5", 5, true},
		{"0005", 5, true},
		{"9223372036854775807", math.MaxInt64, true},
		{"9223372036854775808", 0, false},
		{"99999999999999999999", 0, false},
		{"", 0, false},
		{"+5", 0, false},
		{"-1", 0, false},
		{" 5", 0, false},
		{"5 ", 0, false},
		{"5,5", 0, false},
		{"0x10", 0, false},
		{"1e3", 0, false},
	} {
		got, ok := ParseContentLength(tc.in)
		if got != tc.want || ok != tc.ok {
			t.Errorf("ParseContentLength(%q) = %d, %v; want %d, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}
