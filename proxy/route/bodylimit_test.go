package route

import (
	"math"
	"testing"
)

// TestBodyBufferLimitCompile covers request_body_buffer_limit and the
// deprecated per_request_buffer_limit_bytes on a route and on its virtual
// host: which one a route ends up with, and the errors.
func TestBodyBufferLimitCompile(t *testing.T) {
	legacy := func(v uint64) BodyBufferLimit { return BodyBufferLimit{Set: true, Value: v, Legacy: true} }
	body := func(v uint64) BodyBufferLimit { return BodyBufferLimit{Set: true, Value: v} }
	tests := []struct {
		name    string
		vh      []string // fields of the virtual host, "name: value"
		route   []string // fields of the route
		want    BodyBufferLimit
		wantErr string
	}{
		{name: "none", want: BodyBufferLimit{}},
		{name: "route new field", route: []string{"request_body_buffer_limit: 4194304"}, want: body(4 << 20)},
		{name: "route old field", route: []string{"per_request_buffer_limit_bytes: 2048"}, want: legacy(2048)},
		{name: "new field above uint32", route: []string{"request_body_buffer_limit: 8589934592"}, want: body(8 << 30)},
		{
			name:  "both on the route: the new field wins",
			route: []string{"per_request_buffer_limit_bytes: 100", "request_body_buffer_limit: 200000"},
			want:  body(200000),
		},
		{
			name:  "both on the route, new one smaller: still the new field",
			route: []string{"per_request_buffer_limit_bytes: 200000", "request_body_buffer_limit: 100"},
			want:  body(100),
		},
		{name: "virtual host new field inherited", vh: []string{"request_body_buffer_limit: 3000"}, want: body(3000)},
		{name: "virtual host old field inherited", vh: []string{"per_request_buffer_limit_bytes: 3000"}, want: legacy(3000)},
		{
			name: "both on the virtual host: the new field wins",
			vh:   []string{"per_request_buffer_limit_bytes: 1", "request_body_buffer_limit: 3000"},
			want: body(3000),
		},
		{
			name:  "route old field beats virtual host new field",
			vh:    []string{"request_body_buffer_limit: 3000"},
			route: []string{"per_request_buffer_limit_bytes: 10"},
			want:  legacy(10),
		},
		{
			name:  "route new field beats virtual host old field",
			vh:    []string{"per_request_buffer_limit_bytes: 3000"},
			route: []string{"request_body_buffer_limit: 10"},
			want:  body(10),
		},
		{
			name:  "old field 0 on the route reads as unset",
			vh:    []string{"request_body_buffer_limit: 3000"},
			route: []string{"per_request_buffer_limit_bytes: 0"},
			want:  body(3000),
		},
		{
			name:    "new field 0 on the route",
			route:   []string{"request_body_buffer_limit: 0"},
			wantErr: "virtual_hosts[0].routes[0].request_body_buffer_limit: must be greater than 0",
		},
		{
			name:    "new field 0 on the virtual host",
			vh:      []string{"request_body_buffer_limit: 0", "per_request_buffer_limit_bytes: 5"},
			wantErr: "virtual_hosts[0].request_body_buffer_limit: must be greater than 0",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			y := "virtual_hosts:\n- name: v\n  domains: [\"*\"]\n"
			for _, f := range tc.vh {
				y += "  " + f + "\n"
			}
			y += "  routes:\n  - match: {prefix: /}\n    route: {cluster: c}\n"
			for _, f := range tc.route {
				y += "    " + f + "\n"
			}
			tbl, err := Compile(parseYAML(t, y))
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Fatalf("Compile error = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Compile: %v", err)
			}
			r, _ := tbl.Match(req("h", "/x"))
			if r == nil {
				t.Fatal("no route")
			}
			if r.BodyBufferLimit != tc.want {
				t.Errorf("BodyBufferLimit = %+v, want %+v", r.BodyBufferLimit, tc.want)
			}
		})
	}
}

// TestBodyBufferLimitBytes covers Envoy's precedence between the route's
// limit, the listener's per_connection_buffer_limit_bytes and meshd's
// default.
func TestBodyBufferLimitBytes(t *testing.T) {
	const def = 64 << 10
	tests := []struct {
		name          string
		limit         BodyBufferLimit
		perConnection uint32
		want          int
	}{
		{"nothing set: meshd default", BodyBufferLimit{}, 0, def},
		{"nothing set: listener limit", BodyBufferLimit{}, 32 << 10, 32 << 10},
		{"nothing set: listener limit above the default", BodyBufferLimit{}, 1 << 20, 1 << 20},
		{"new field, no listener limit", BodyBufferLimit{Set: true, Value: 5 << 20}, 0, 5 << 20},
		{"new field above the listener limit", BodyBufferLimit{Set: true, Value: 5 << 20}, 32 << 10, 5 << 20},
		{"new field below the listener limit", BodyBufferLimit{Set: true, Value: 100}, 32 << 10, 100},
		{"old field, no listener limit", BodyBufferLimit{Set: true, Value: 5 << 20, Legacy: true}, 0, 5 << 20},
		{"old field capped by the listener limit", BodyBufferLimit{Set: true, Value: 5 << 20, Legacy: true}, 32 << 10, 32 << 10},
		{"old field below the listener limit", BodyBufferLimit{Set: true, Value: 100, Legacy: true}, 32 << 10, 100},
		{"new field beyond int", BodyBufferLimit{Set: true, Value: math.MaxUint64}, 0, math.MaxInt},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.limit.Bytes(tc.perConnection, def); got != tc.want {
				t.Errorf("Bytes(%d, %d) = %d, want %d", tc.perConnection, def, got, tc.want)
			}
		})
	}
}
