// Command headers is a proxy-wasm test guest (SDK v0.24.0 API): it copies
// configured request headers into response headers and adds fixed response
// headers, both taken from its JSON plugin configuration:
//
//	{"echo": ["x-request-id"], "add": {"x-guest": "headers"}}
//
// Each request header named in echo is returned as response header
// "x-echo-<name>"; each pair of add is appended to every response.
package main

import (
	"encoding/json"
	"fmt"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"
)

// main is never called in a c-shared module; the VM context is set in init.
func main() {}

func init() { proxywasm.SetVMContext(&vmContext{}) }

type vmContext struct{ types.DefaultVMContext }

// NewPluginContext implements types.VMContext.
func (*vmContext) NewPluginContext(uint32) types.PluginContext { return &pluginContext{} }

// config is the plugin configuration.
type config struct {
	Echo []string          `json:"echo"`
	Add  map[string]string `json:"add"`
}

type pluginContext struct {
	types.DefaultPluginContext
	cfg config
}

// OnPluginStart parses the configuration; invalid JSON fails the plugin start.
func (p *pluginContext) OnPluginStart(size int) types.OnPluginStartStatus {
	data, err := proxywasm.GetPluginConfiguration()
	if err != nil && err != types.ErrorStatusNotFound {
		proxywasm.LogCriticalf("headers: read plugin configuration: %v", err)
		return types.OnPluginStartStatusFailed
	}
	if len(data) == 0 {
		return types.OnPluginStartStatusOK
	}
	if err := json.Unmarshal(data, &p.cfg); err != nil {
		proxywasm.LogCriticalf("headers: plugin configuration: %v", err)
		return types.OnPluginStartStatusFailed
	}
	return types.OnPluginStartStatusOK
}

// NewHttpContext implements types.PluginContext.
func (p *pluginContext) NewHttpContext(uint32) types.HttpContext {
	return &httpContext{cfg: &p.cfg}
}

type httpContext struct {
	types.DefaultHttpContext
	cfg    *config
	echoed [][2]string
}

// OnHttpRequestHeaders remembers the values of the echoed headers.
func (h *httpContext) OnHttpRequestHeaders(int, bool) types.Action {
	for _, name := range h.cfg.Echo {
		v, err := proxywasm.GetHttpRequestHeader(name)
		if err != nil {
			continue // absent header: nothing to echo
		}
		h.echoed = append(h.echoed, [2]string{"x-echo-" + name, v})
	}
	return types.ActionContinue
}

// OnHttpResponseHeaders adds the echoed and the configured headers.
func (h *httpContext) OnHttpResponseHeaders(int, bool) types.Action {
	for _, kv := range h.echoed {
		if err := proxywasm.AddHttpResponseHeader(kv[0], kv[1]); err != nil {
			proxywasm.LogErrorf("headers: add %s: %v", kv[0], err)
		}
	}
	for k, v := range h.cfg.Add {
		if err := proxywasm.AddHttpResponseHeader(k, v); err != nil {
			proxywasm.LogErrorf("headers: add %s: %v", k, err)
		}
	}
	proxywasm.LogInfo(fmt.Sprintf("headers: added %d response headers", len(h.echoed)+len(h.cfg.Add)))
	return types.ActionContinue
}
