package header

import "testing"

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
