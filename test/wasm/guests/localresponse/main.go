// Command localresponse is a proxy-wasm test guest (SDK v0.24.0 API) that
// answers requests itself with send_local_response: a request whose path
// starts with the configured prefix (plugin configuration, plain text;
// default "/deny") gets 403 with body "denied by wasm" and header
// x-wasm-denied: true; other requests continue upstream.
package main

import (
	"strings"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"
)

// main is never called in a c-shared module; the VM context is set in init.
func main() {}

func init() { proxywasm.SetVMContext(&vmContext{}) }

type vmContext struct{ types.DefaultVMContext }

// NewPluginContext implements types.VMContext.
func (*vmContext) NewPluginContext(uint32) types.PluginContext {
	return &pluginContext{prefix: "/deny"}
}

type pluginContext struct {
	types.DefaultPluginContext
	prefix string
}

// OnPluginStart reads the path prefix to deny.
func (p *pluginContext) OnPluginStart(int) types.OnPluginStartStatus {
	if data, err := proxywasm.GetPluginConfiguration(); err == nil && len(data) > 0 {
		p.prefix = strings.TrimSpace(string(data))
	}
	return types.OnPluginStartStatusOK
}

// NewHttpContext implements types.PluginContext.
func (p *pluginContext) NewHttpContext(uint32) types.HttpContext {
	return &httpContext{prefix: p.prefix}
}

type httpContext struct {
	types.DefaultHttpContext
	prefix string
}

// OnHttpRequestHeaders denies matching paths with a local 403.
func (h *httpContext) OnHttpRequestHeaders(int, bool) types.Action {
	path, err := proxywasm.GetHttpRequestHeader(":path")
	if err != nil || !strings.HasPrefix(path, h.prefix) {
		return types.ActionContinue
	}
	if err := proxywasm.SendHttpResponse(403, [][2]string{{"x-wasm-denied", "true"}}, []byte("denied by wasm"), -1); err != nil {
		proxywasm.LogErrorf("localresponse: send 403: %v", err)
		return types.ActionContinue
	}
	return types.ActionPause
}
