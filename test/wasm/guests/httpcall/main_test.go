package main

import (
	"testing"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/proxytest"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"
)

func TestHTTPCall(t *testing.T) {
	tests := []struct {
		name        string
		respHeaders [][2]string
		body        string
		wantBody    string // x-callout-body on the resumed request
		wantStatus  string // x-callout-status on the response
		wantLocal   uint32 // local response status, 0 if none
	}{
		{name: "ok", respHeaders: [][2]string{{":status", "200"}}, body: " allowed\n", wantBody: "allowed", wantStatus: "200"},
		{name: "empty body", respHeaders: [][2]string{{":status", "204"}}, wantBody: "", wantStatus: "204"},
		{name: "failed callout", respHeaders: nil, wantLocal: 503},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opt := proxytest.NewEmulatorOption().WithVMContext(&vmContext{}).
				WithPluginConfiguration([]byte(`{"cluster":"authz","path":"/check","timeout_ms":500}`))
			host, reset := proxytest.NewHostEmulator(opt)
			defer reset()
			if st := host.StartPlugin(); st != types.OnPluginStartStatusOK {
				t.Fatalf("StartPlugin = %v", st)
			}
			id := host.InitializeHttpContext()
			if act := host.CallOnRequestHeaders(id, [][2]string{{":path", "/"}}, true); act != types.ActionPause {
				t.Fatalf("request action %v, want pause", act)
			}
			calls := host.GetCalloutAttributesFromContext(id)
			if len(calls) != 1 || calls[0].Upstream != "authz" {
				t.Fatalf("callouts %+v, want one to authz", calls)
			}
			var path string
			for _, kv := range calls[0].Headers {
				if kv[0] == ":path" {
					path = kv[1]
				}
			}
			if path != "/check" {
				t.Fatalf("callout path %q", path)
			}
			host.CallOnHttpCallResponse(calls[0].CalloutID, tc.respHeaders, nil, []byte(tc.body))
			if tc.wantLocal != 0 {
				if local := host.GetSentLocalResponse(id); local == nil || local.StatusCode != tc.wantLocal {
					t.Fatalf("local response %+v, want %d", local, tc.wantLocal)
				}
				return
			}
			if act := host.GetCurrentHttpStreamAction(id); act != types.ActionContinue {
				t.Fatalf("stream action after callout %v, want continue", act)
			}
			var got string
			var found bool
			for _, kv := range host.GetCurrentRequestHeaders(id) {
				if kv[0] == "x-callout-body" {
					got, found = kv[1], true
				}
			}
			if !found || got != tc.wantBody {
				t.Fatalf("x-callout-body = %q (present %v), want %q", got, found, tc.wantBody)
			}
			host.CallOnResponseHeaders(id, [][2]string{{":status", "200"}}, true)
			var status string
			for _, kv := range host.GetCurrentResponseHeaders(id) {
				if kv[0] == "x-callout-status" {
					status = kv[1]
				}
			}
			if status != tc.wantStatus {
				t.Fatalf("x-callout-status = %q, want %q", status, tc.wantStatus)
			}
		})
	}
}

func TestMissingCluster(t *testing.T) {
	opt := proxytest.NewEmulatorOption().WithVMContext(&vmContext{}).WithPluginConfiguration([]byte(`{}`))
	host, reset := proxytest.NewHostEmulator(opt)
	defer reset()
	if st := host.StartPlugin(); st != types.OnPluginStartStatusFailed {
		t.Fatalf("StartPlugin = %v, want failed", st)
	}
}
