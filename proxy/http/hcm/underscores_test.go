package hcm

import (
	"fmt"
	"sync"
	"testing"

	"meshd.dev/meshd/proxy/http/h2"
	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// TestHeadersWithUnderscores: common_http_protocol_options.
// headers_with_underscores_action on the connection manager lets a request
// header named with an underscore through (ALLOW, the default), answers the
// request 400 without reaching the upstream (REJECT_REQUEST), or removes
// every such header and forwards the rest (DROP_HEADER).
func TestHeadersWithUnderscores(t *testing.T) {
	tests := []struct {
		name       string
		action     string // "" leaves the field unset
		wantStatus int
		wantUp     bool // the request reaches the upstream
		wantUnder  bool // with its underscore headers
		// wantRejected and wantDropped are the codec's
		// requests_rejected_with_underscores_in_headers and
		// dropped_headers_with_underscores, counted under the request's
		// codec.
		wantRejected, wantDropped uint64
	}{
		{name: "default allows", wantStatus: 200, wantUp: true, wantUnder: true},
		{name: "ALLOW", action: "ALLOW", wantStatus: 200, wantUp: true, wantUnder: true},
		{name: "REJECT_REQUEST", action: "REJECT_REQUEST", wantStatus: 400, wantRejected: 1},
		{name: "DROP_HEADER", action: "DROP_HEADER", wantStatus: 200, wantUp: true, wantDropped: 3},
	}
	for _, tt := range tests {
		for _, codec := range []struct{ proto, stat, other string }{{"HTTP/2", "http2", "http1"}, {"HTTP/1.1", "http1", "http2"}} {
			t.Run(tt.name+"/"+codec.proto, func(t *testing.T) {
				var mu sync.Mutex
				var got []header.Header
				up := startH2Upstream(t, h2.ServerConfig{}, func(s stream.ServerStream) {
					mu.Lock()
					got = append(got, s.Request().Header.Clone())
					mu.Unlock()
					respond(s, 200, "", header.Header{})
				})
				extra := ""
				if tt.action != "" {
					extra = fmt.Sprintf(`"common_http_protocol_options":{"headers_with_underscores_action":%q}`, tt.action)
				}
				e := newEnv(t, hcmJSON(`{"match":{"prefix":"/"},"route":{"cluster":"backend"}}`, extra), clusterJSON([]string{up.addr}, ""))
				h := header.Make(3)
				h.Add("x_one", "1")
				h.Add("x-kept", "k")
				h.Add("x_two", "2")
				h.Add("x_two", "2b")
				fs := newFakeStream("GET", "/", h, nil)
				fs.info.Proto = codec.proto
				e.serve(t, fs)
				if r := fs.result(); r.status != tt.wantStatus {
					t.Fatalf("status %d, want %d", r.status, tt.wantStatus)
				}
				for name, want := range map[string]uint64{
					codec.stat + ".requests_rejected_with_underscores_in_headers":  tt.wantRejected,
					codec.stat + ".dropped_headers_with_underscores":               tt.wantDropped,
					codec.other + ".requests_rejected_with_underscores_in_headers": 0,
					codec.other + ".dropped_headers_with_underscores":              0,
				} {
					if got := e.counter(name); got != want {
						t.Errorf("%s = %d, want %d", name, got, want)
					}
				}
				mu.Lock()
				defer mu.Unlock()
				if (len(got) > 0) != tt.wantUp {
					t.Fatalf("upstream saw %d requests, want reached=%v", len(got), tt.wantUp)
				}
				if !tt.wantUp {
					return
				}
				hdr := got[0]
				if hdr.Get("x-kept") != "k" {
					t.Errorf("x-kept = %q upstream, want k", hdr.Get("x-kept"))
				}
				for _, n := range []string{"x_one", "x_two"} {
					if hdr.Has(n) != tt.wantUnder {
						t.Errorf("upstream has %s = %v, want %v", n, hdr.Has(n), tt.wantUnder)
					}
				}
			})
		}
	}
}
