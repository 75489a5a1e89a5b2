package main

import (
	"testing"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/proxytest"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"
)

// TestNoop checks that a request passes through untouched.
func TestNoop(t *testing.T) {
	host, reset := proxytest.NewHostEmulator(proxytest.NewEmulatorOption().WithVMContext(&vmContext{}))
	defer reset()
	if st := host.StartPlugin(); st != types.OnPluginStartStatusOK {
		t.Fatalf("StartPlugin = %v", st)
	}
	id := host.InitializeHttpContext()
	req := [][2]string{{":path", "/"}, {"x-a", "1"}}
	if act := host.CallOnRequestHeaders(id, req, true); act != types.ActionContinue {
		t.Fatalf("request headers: %v", act)
	}
	if act := host.CallOnResponseHeaders(id, [][2]string{{":status", "200"}}, true); act != types.ActionContinue {
		t.Fatalf("response headers: %v", act)
	}
	if got := host.GetCurrentRequestHeaders(id); len(got) != len(req) {
		t.Fatalf("request headers changed: %v", got)
	}
	if local := host.GetSentLocalResponse(id); local != nil {
		t.Fatalf("local response %+v", local)
	}
	host.CompleteHttpContext(id)
}
