// Command httpcall is a proxy-wasm test guest (SDK v0.24.0 API) using
// http_call: each request is paused while the guest calls a cluster, then
// resumed with the callout's body (trimmed, up to 256 bytes) in request
// header x-callout-body and its :status in response header x-callout-status.
// A callout that fails or answers without :status gets the client a local 503.
//
// Plugin configuration (JSON): {"cluster": "NAME", "path": "/", "timeout_ms": 1000};
// cluster is required.
package main

import (
	"encoding/json"
	"errors"
	"strings"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"
)

// main is never called in a c-shared module; the VM context is set in init.
func main() {}

func init() { proxywasm.SetVMContext(&vmContext{}) }

// maxBody bounds the callout body copied into the header.
const maxBody = 256

type vmContext struct{ types.DefaultVMContext }

// NewPluginContext implements types.VMContext.
func (*vmContext) NewPluginContext(uint32) types.PluginContext { return &pluginContext{} }

type config struct {
	Cluster   string `json:"cluster"`
	Path      string `json:"path"`
	TimeoutMS uint32 `json:"timeout_ms"`
}

type pluginContext struct {
	types.DefaultPluginContext
	cfg config
}

// OnPluginStart parses the configuration; a missing cluster fails the start.
func (p *pluginContext) OnPluginStart(int) types.OnPluginStartStatus {
	data, err := proxywasm.GetPluginConfiguration()
	if err == nil {
		err = json.Unmarshal(data, &p.cfg)
	}
	if err == nil && p.cfg.Cluster == "" {
		err = errors.New("cluster is required")
	}
	if err != nil {
		proxywasm.LogCriticalf("httpcall: plugin configuration: %v", err)
		return types.OnPluginStartStatusFailed
	}
	if p.cfg.Path == "" {
		p.cfg.Path = "/"
	}
	if p.cfg.TimeoutMS == 0 {
		p.cfg.TimeoutMS = 1000
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
	status string // the callout's :status
}

// OnHttpRequestHeaders dispatches the callout and pauses the request.
func (h *httpContext) OnHttpRequestHeaders(int, bool) types.Action {
	hdrs := [][2]string{{":method", "GET"}, {":path", h.cfg.Path}, {":authority", h.cfg.Cluster}}
	if _, err := proxywasm.DispatchHttpCall(h.cfg.Cluster, hdrs, nil, nil, h.cfg.TimeoutMS, h.onResponse); err != nil {
		proxywasm.LogErrorf("httpcall: dispatch to %s: %v", h.cfg.Cluster, err)
		h.fail()
	}
	return types.ActionPause
}

// onResponse copies the callout's result into the request and resumes it.
func (h *httpContext) onResponse(numHeaders, bodySize, _ int) {
	hdrs, err := proxywasm.GetHttpCallResponseHeaders()
	var status string
	for _, kv := range hdrs {
		if kv[0] == ":status" {
			status = kv[1]
		}
	}
	if err != nil || numHeaders == 0 || status == "" {
		proxywasm.LogErrorf("httpcall: callout to %s failed: %v", h.cfg.Cluster, err)
		h.fail()
		return
	}
	h.status = status
	var body []byte
	if bodySize > 0 {
		if body, err = proxywasm.GetHttpCallResponseBody(0, min(bodySize, maxBody)); err != nil {
			proxywasm.LogErrorf("httpcall: callout body: %v", err)
		}
	}
	if err := proxywasm.ReplaceHttpRequestHeader("x-callout-body", strings.TrimSpace(string(body))); err != nil {
		proxywasm.LogErrorf("httpcall: set request header: %v", err)
	}
	if err := proxywasm.ResumeHttpRequest(); err != nil {
		proxywasm.LogErrorf("httpcall: resume: %v", err)
	}
}

// OnHttpResponseHeaders reports the callout's status.
func (h *httpContext) OnHttpResponseHeaders(int, bool) types.Action {
	if h.status != "" {
		if err := proxywasm.AddHttpResponseHeader("x-callout-status", h.status); err != nil {
			proxywasm.LogErrorf("httpcall: add response header: %v", err)
		}
	}
	return types.ActionContinue
}

// fail answers the paused request with a local 503.
func (h *httpContext) fail() {
	if err := proxywasm.SendHttpResponse(503, nil, []byte("callout failed"), -1); err != nil {
		proxywasm.LogErrorf("httpcall: send 503: %v", err)
	}
}
