// Command sharedtick is a proxy-wasm test guest (SDK v0.24.0 API) using tick
// and shared data: every request increments the shared-data counter
// "sharedtick.requests" with compare-and-swap (so all VM instances count into
// one value); a tick every 100 ms copies that count into the gauge
// "sharedtick.requests" and into the VM's last-seen value, which responses
// carry as x-sharedtick-count.
package main

import (
	"encoding/binary"
	"errors"
	"strconv"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"
)

// main is never called in a c-shared module; the VM context is set in init.
func main() {}

func init() { proxywasm.SetVMContext(&vmContext{}) }

// sharedKey is the shared-data key of the request count.
const sharedKey = "sharedtick.requests"

// tickMillis is the tick period.
const tickMillis = 100

// casAttempts bounds the increment's compare-and-swap loop.
const casAttempts = 32

type vmContext struct{ types.DefaultVMContext }

// NewPluginContext implements types.VMContext.
func (*vmContext) NewPluginContext(uint32) types.PluginContext { return &pluginContext{} }

type pluginContext struct {
	types.DefaultPluginContext
	gauge proxywasm.MetricGauge
	last  uint64 // count seen at the last tick
}

// OnPluginStart defines the gauge and starts the tick.
func (p *pluginContext) OnPluginStart(int) types.OnPluginStartStatus {
	p.gauge = proxywasm.DefineGaugeMetric("sharedtick.requests")
	if err := proxywasm.SetTickPeriodMilliSeconds(tickMillis); err != nil {
		proxywasm.LogCriticalf("sharedtick: set tick period: %v", err)
		return types.OnPluginStartStatusFailed
	}
	return types.OnPluginStartStatusOK
}

// OnTick publishes the shared count.
func (p *pluginContext) OnTick() {
	n, _, err := load()
	if err != nil {
		proxywasm.LogErrorf("sharedtick: %v", err)
		return
	}
	p.gauge.Add(int64(n) - int64(p.last))
	p.last = n
}

// NewHttpContext implements types.PluginContext.
func (p *pluginContext) NewHttpContext(uint32) types.HttpContext {
	return &httpContext{plugin: p}
}

type httpContext struct {
	types.DefaultHttpContext
	plugin *pluginContext
}

// OnHttpRequestHeaders counts the request in shared data.
func (h *httpContext) OnHttpRequestHeaders(int, bool) types.Action {
	for range casAttempts {
		n, cas, err := load()
		if err != nil {
			proxywasm.LogErrorf("sharedtick: %v", err)
			return types.ActionContinue
		}
		buf := binary.LittleEndian.AppendUint64(nil, n+1)
		err = proxywasm.SetSharedData(sharedKey, buf, cas)
		if err == nil {
			return types.ActionContinue
		}
		if !errors.Is(err, types.ErrorStatusCasMismatch) {
			proxywasm.LogErrorf("sharedtick: set %s: %v", sharedKey, err)
			return types.ActionContinue
		}
	}
	proxywasm.LogErrorf("sharedtick: %s stayed contended for %d attempts", sharedKey, casAttempts)
	return types.ActionContinue
}

// OnHttpResponseHeaders reports the count published by the last tick.
func (h *httpContext) OnHttpResponseHeaders(int, bool) types.Action {
	if err := proxywasm.AddHttpResponseHeader("x-sharedtick-count", strconv.FormatUint(h.plugin.last, 10)); err != nil {
		proxywasm.LogErrorf("sharedtick: add header: %v", err)
	}
	return types.ActionContinue
}

// load reads the shared count and its CAS; an absent key is 0 with CAS 0.
func load() (uint64, uint32, error) {
	data, cas, err := proxywasm.GetSharedData(sharedKey)
	switch {
	case errors.Is(err, types.ErrorStatusNotFound):
		return 0, 0, nil
	case err != nil:
		return 0, 0, err
	case len(data) != 8:
		return 0, 0, errors.New("shared data " + sharedKey + ": want 8 bytes, got " + strconv.Itoa(len(data)))
	}
	return binary.LittleEndian.Uint64(data), cas, nil
}
