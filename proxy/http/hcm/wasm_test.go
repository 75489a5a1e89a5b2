package hcm

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	wasmfilter "meshd.dev/meshd/filters/wasm"
	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/internal/wasmbuild"
	"meshd.dev/meshd/proxy/http/h2"
	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// wasmFilter is an envoy.filters.http.wasm entry, written the way Envoy's
// documentation writes it, running the module at path with a StringValue
// plugin configuration.
func wasmFilter(path, configuration string) string {
	return fmt.Sprintf(`{"name":"envoy.filters.http.wasm","typed_config":{
		"@type":"type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
		"config":{"name":"test","root_id":"","configuration":{"@type":"type.googleapis.com/google.protobuf.StringValue","value":%q},
		"vm_config":{"runtime":"envoy.wasm.runtime.v8","code":{"local":{"filename":%q}}}}}}`, configuration, path)
}

// TestWasmGuestsInChain runs SDK v0.24.0 test guests built with the
// standard toolchain in front of an upstream: headers from the plugin
// configuration, and a send_local_response with its header.
func TestWasmGuestsInChain(t *testing.T) {
	if testing.Short() {
		t.Skip("builds wasm guests")
	}
	headersWasm := wasmbuild.Build(t, "meshd.dev/meshd/test/wasm/guests/headers")
	denyWasm := wasmbuild.Build(t, "meshd.dev/meshd/test/wasm/guests/localresponse")
	testutil.CheckGoroutines(t)
	t.Cleanup(func() { waitPluginsClosed(t) })
	runGuests(t, headersWasm, denyWasm)
}

// waitPluginsClosed waits until the plugins of the test's (collected)
// factories are closed, so that their VM goroutines are gone.
func waitPluginsClosed(t testing.TB) {
	deadline := time.Now().Add(10 * time.Second)
	for wasmfilter.Default.Running() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d wasm plugins still running after their filter configs were dropped", wasmfilter.Default.Running())
		}
		runtime.GC()
		time.Sleep(20 * time.Millisecond)
	}
}

func runGuests(t *testing.T, headersWasm, denyWasm string) {
	up := startH2Upstream(t, h2.ServerConfig{}, func(s stream.ServerStream) { respond(s, 200, "ok", header.Header{}) })
	routes := `{"match":{"prefix":"/"},"route":{"cluster":"backend"}}`
	chain := []string{
		wasmFilter(headersWasm, `{"echo":["x-request-id"],"add":{"x-guest":"headers"}}`),
		wasmFilter(denyWasm, "/deny"),
		routerFilter,
	}
	e := newEnv(t, hcmJSON(routes, `"http_filters":[`+strings.Join(chain, ",")+`]`), clusterJSON([]string{up.addr}, ""))
	tests := []struct {
		path       string
		wantStatus int
		wantBody   string
		want       map[string]string
	}{
		{path: "/ok", wantStatus: 200, wantBody: "ok", want: map[string]string{"x-guest": "headers", "x-echo-x-request-id": "id-1"}},
		{path: "/deny/x", wantStatus: 403, wantBody: "denied by wasm", want: map[string]string{"x-wasm-denied": "true", "x-guest": "headers"}},
	}
	for _, tc := range tests {
		hdr := header.Make(1)
		hdr.Add("x-request-id", "id-1")
		s := newFakeStream("GET", tc.path, hdr, nil)
		e.serve(t, s)
		r := s.result()
		if r.status != tc.wantStatus || r.body != tc.wantBody {
			t.Errorf("%s: got %d %q, want %d %q", tc.path, r.status, r.body, tc.wantStatus, tc.wantBody)
		}
		for k, v := range tc.want {
			if got := r.header.Get(k); got != v {
				t.Errorf("%s: response header %s = %q, want %q (all: %v)", tc.path, k, got, v, r.header.Fields())
			}
		}
	}
}

// TestWasmHTTPCallGuest runs the SDK http_call test guest: the request is
// paused while the guest calls cluster backend, then resumed with the
// callout's body in a request header; a callout to an unknown cluster gets
// the guest's local 503.
func TestWasmHTTPCallGuest(t *testing.T) {
	if testing.Short() {
		t.Skip("builds wasm guests")
	}
	callWasm := wasmbuild.Build(t, "meshd.dev/meshd/test/wasm/guests/httpcall")
	testutil.CheckGoroutines(t)
	t.Cleanup(func() { waitPluginsClosed(t) })
	up := startH2Upstream(t, h2.ServerConfig{}, func(s stream.ServerStream) {
		if s.Request().Path == "/callout" {
			respond(s, 200, "from-callout", header.Header{})
			return
		}
		respond(s, 200, "saw:"+s.Request().Header.Get("x-callout-body"), header.Header{})
	})
	routes := `{"match":{"prefix":"/"},"route":{"cluster":"backend"}}`
	tests := []struct {
		name, config string
		wantStatus   int
		wantBody     string
		wantCallout  string
	}{
		{name: "callout to backend", config: `{"cluster":"backend","path":"/callout","timeout_ms":2000}`,
			wantStatus: 200, wantBody: "saw:from-callout", wantCallout: "200"},
		{name: "unknown cluster", config: `{"cluster":"nowhere","path":"/callout","timeout_ms":2000}`,
			wantStatus: 503, wantBody: "callout failed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			chain := wasmFilter(callWasm, tc.config) + "," + routerFilter
			e := newEnv(t, hcmJSON(routes, `"http_filters":[`+chain+`]`), clusterJSON([]string{up.addr}, ""))
			s := newFakeStream("GET", "/app", header.Make(0), nil)
			e.serve(t, s)
			r := s.result()
			if r.status != tc.wantStatus || r.body != tc.wantBody || r.header.Get("x-callout-status") != tc.wantCallout {
				t.Errorf("got %d %q x-callout-status %q, want %d %q %q", r.status, r.body, r.header.Get("x-callout-status"),
					tc.wantStatus, tc.wantBody, tc.wantCallout)
			}
		})
	}
}
