package main

import (
	"testing"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/proxytest"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"
)

func TestHeaders(t *testing.T) {
	tests := []struct {
		name   string
		config string
		req    [][2]string
		want   map[string]string // response headers that must be present
		absent []string
	}{
		{
			name:   "echo and add",
			config: `{"echo":["x-request-id","x-missing"],"add":{"x-guest":"headers"}}`,
			req:    [][2]string{{"x-request-id", "abc"}},
			want:   map[string]string{"x-echo-x-request-id": "abc", "x-guest": "headers"},
			absent: []string{"x-echo-x-missing"},
		},
		{
			name:   "no configuration",
			config: ``,
			req:    [][2]string{{"x-request-id", "abc"}},
			absent: []string{"x-echo-x-request-id", "x-guest"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opt := proxytest.NewEmulatorOption().WithVMContext(&vmContext{}).WithPluginConfiguration([]byte(tc.config))
			host, reset := proxytest.NewHostEmulator(opt)
			defer reset()
			if st := host.StartPlugin(); st != types.OnPluginStartStatusOK {
				t.Fatalf("StartPlugin = %v", st)
			}
			id := host.InitializeHttpContext()
			if act := host.CallOnRequestHeaders(id, tc.req, false); act != types.ActionContinue {
				t.Fatalf("request action %v", act)
			}
			if act := host.CallOnResponseHeaders(id, [][2]string{{":status", "200"}}, false); act != types.ActionContinue {
				t.Fatalf("response action %v", act)
			}
			got := map[string]string{}
			for _, kv := range host.GetCurrentResponseHeaders(id) {
				got[kv[0]] = kv[1]
			}
			for k, v := range tc.want {
				if got[k] != v {
					t.Errorf("response header %s = %q, want %q (all: %v)", k, got[k], v, got)
				}
			}
			for _, k := range tc.absent {
				if _, ok := got[k]; ok {
					t.Errorf("response header %s present", k)
				}
			}
		})
	}
}

func TestBadConfig(t *testing.T) {
	opt := proxytest.NewEmulatorOption().WithVMContext(&vmContext{}).WithPluginConfiguration([]byte(`{"echo":1}`))
	host, reset := proxytest.NewHostEmulator(opt)
	defer reset()
	if st := host.StartPlugin(); st != types.OnPluginStartStatusFailed {
		t.Fatalf("StartPlugin = %v, want failed", st)
	}
}
