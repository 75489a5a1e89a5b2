package config

import (
	"strings"
	"testing"

	httpcm "meshd.dev/meshd/proxy/http/hcm"
	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/proxy/route"
)

// TestBootstrapBodyBufferLimit loads examples/sidecar.yaml with Envoy 1.40's
// request_body_buffer_limit (and the deprecated
// per_request_buffer_limit_bytes) on the route and virtual host, and the
// listener's per_connection_buffer_limit_bytes: the bootstrap is accepted,
// the listener's limit reaches the connection manager, and the route
// resolves its limit by Envoy's precedence. A zero
// request_body_buffer_limit is rejected with the field's path.
func TestBootstrapBodyBufferLimit(t *testing.T) {
	base := string(exampleFile(t, "sidecar.yaml"))
	const (
		vhLine    = "            - name: backend\n              domains: [\"*\"]\n"
		routeLine = "              - match: { prefix: \"/\" }\n"
		lisLine   = "    filter_chains:\n"
	)
	tests := []struct {
		name    string
		vh      string // fields added to the virtual host
		route   string // fields added to the route
		perConn string // the listener's per_connection_buffer_limit_bytes; "": unset
		want    route.BodyBufferLimit
		// wantBytes is the resolved limit; wantErr, when set, the
		// compile error instead.
		wantBytes int
		wantErr   string
	}{
		{name: "nothing set", want: route.BodyBufferLimit{}, wantBytes: httpcm.DefaultPerRequestBufferLimit},
		{name: "listener limit only", perConn: "32768", wantBytes: 32768},
		{
			name: "route new field over the listener limit", route: "request_body_buffer_limit: 1048576", perConn: "32768",
			want: route.BodyBufferLimit{Set: true, Value: 1 << 20}, wantBytes: 1 << 20,
		},
		{
			name: "virtual host old field capped by the listener", vh: "per_request_buffer_limit_bytes: 1048576", perConn: "32768",
			want: route.BodyBufferLimit{Set: true, Value: 1 << 20, Legacy: true}, wantBytes: 32768,
		},
		{
			name: "both fields on the route", route: "per_request_buffer_limit_bytes: 10\n                request_body_buffer_limit: 4096",
			want: route.BodyBufferLimit{Set: true, Value: 4096}, wantBytes: 4096,
		},
		{
			name: "zero request_body_buffer_limit", route: "request_body_buffer_limit: 0",
			wantErr: "virtual_hosts[0].routes[0].request_body_buffer_limit: must be greater than 0",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var edits []edit
			if tc.vh != "" {
				edits = append(edits, edit{vhLine, vhLine + "              " + tc.vh + "\n"})
			}
			if tc.route != "" {
				edits = append(edits, edit{routeLine, routeLine + "                " + tc.route + "\n"})
			}
			if tc.perConn != "" {
				edits = append(edits, edit{lisLine, "    per_connection_buffer_limit_bytes: " + tc.perConn + "\n" + lisLine})
			}
			doc := mutate(t, base, edits)
			b, err := ParseBootstrap([]byte(doc), "bodylimit.yaml")
			if err == nil {
				var snap *Snapshot
				if snap, err = Compile(b); err == nil {
					h := snap.Listeners[0].HCM
					r, _ := h.Routes.Match(&stream.Request{Method: "POST", Authority: "x", Path: "/"})
					if r == nil {
						t.Fatal("no route for /")
					}
					if r.BodyBufferLimit != tc.want {
						t.Errorf("BodyBufferLimit = %+v, want %+v", r.BodyBufferLimit, tc.want)
					}
					if got := r.BodyBufferLimit.Bytes(h.PerConnectionBufferLimit, httpcm.DefaultPerRequestBufferLimit); got != tc.wantBytes {
						t.Errorf("resolved limit %d (listener limit %d), want %d", got, h.PerConnectionBufferLimit, tc.wantBytes)
					}
				}
			}
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("rejected: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("error = %v, want it to contain %q", err, tc.wantErr)
			}
		})
	}
}
