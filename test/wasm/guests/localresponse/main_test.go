package main

import (
	"testing"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/proxytest"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"
)

func TestLocalResponse(t *testing.T) {
	tests := []struct {
		name, config, path string
		wantStatus         uint32 // 0: no local response
	}{
		{name: "default prefix denied", path: "/deny/x", wantStatus: 403},
		{name: "default prefix other path", path: "/ok", wantStatus: 0},
		{name: "configured prefix", config: "/admin\n", path: "/admin/users", wantStatus: 403},
		{name: "configured prefix replaces default", config: "/admin", path: "/deny", wantStatus: 0},
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
			act := host.CallOnRequestHeaders(id, [][2]string{{":path", tc.path}}, true)
			local := host.GetSentLocalResponse(id)
			if tc.wantStatus == 0 {
				if act != types.ActionContinue || local != nil {
					t.Fatalf("action %v local %+v, want continue", act, local)
				}
				return
			}
			if act != types.ActionPause || local == nil || local.StatusCode != tc.wantStatus || string(local.Data) != "denied by wasm" {
				t.Fatalf("action %v local %+v, want %d", act, local, tc.wantStatus)
			}
			if len(local.Headers) != 1 || local.Headers[0] != [2]string{"x-wasm-denied", "true"} {
				t.Fatalf("headers %v", local.Headers)
			}
		})
	}
}
