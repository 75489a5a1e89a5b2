//go:build wasip1

// Command faulty is a proxy-wasm test guest (SDK v0.24.0 API) that
// misbehaves on request, as request header x-fault asks, to test how the
// host contains a broken guest:
//
//   - trap: panics in proxy_on_request_headers (a Go panic ends the
//     module through proc_exit: the instance is dead);
//   - loop: spins forever in proxy_on_request_headers;
//   - oob: passes out-of-bounds pointers to proxy_get_header_map_value
//     (a key beyond linear memory, then return slots beyond it) and
//     answers the statuses the host returned in response header
//     x-oob-statuses ("6,6": InvalidMemoryAccess twice), then continues;
//   - no x-fault: the request continues untouched.
//
// It builds only for GOOS=wasip1: the out-of-bounds calls go straight to
// the host import, below the SDK, which has no way to pass bad pointers.
package main

import (
	"math"
	"runtime"
	"strconv"
	"unsafe"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"
)

// main is never called in a c-shared module; the VM context is set in init.
func main() {}

func init() { proxywasm.SetVMContext(&vmContext{}) }

// getHeaderMapValue is the raw ABI import behind
// proxywasm.GetHttpRequestHeader.
//
//go:wasmimport env proxy_get_header_map_value
func getHeaderMapValue(mapType, keyPtr, keySize, retPtr, retSize uint32) uint32

// addr is p as a guest address (wasm32 pointers are 32-bit).
func addr[T any](p *T) uint32 { return uint32(uintptr(unsafe.Pointer(p))) }

// outOfBounds is an address past any linear memory the host allows
// (the host caps memory well below 4 GiB).
const outOfBounds = math.MaxUint32 - 15

type vmContext struct{ types.DefaultVMContext }

// NewPluginContext implements types.VMContext.
func (*vmContext) NewPluginContext(uint32) types.PluginContext { return &pluginContext{} }

type pluginContext struct{ types.DefaultPluginContext }

// NewHttpContext implements types.PluginContext.
func (*pluginContext) NewHttpContext(uint32) types.HttpContext { return &httpContext{} }

type httpContext struct {
	types.DefaultHttpContext
	oob string // statuses of the out-of-bounds calls, for the response
}

// OnHttpRequestHeaders misbehaves as x-fault asks.
func (h *httpContext) OnHttpRequestHeaders(int, bool) types.Action {
	fault, err := proxywasm.GetHttpRequestHeader("x-fault")
	if err != nil {
		return types.ActionContinue
	}
	switch fault {
	case "trap":
		panic("faulty: trap requested")
	case "loop":
		// An empty loop, as in wasm/testdata/guest: Go keeps it, and
		// the host's loop instrumentation ends it.
		//lint:ignore SA5002 spinning forever is the fault this guest injects
		for {
		}
	case "oob":
		key := []byte(":path")
		var ptr, size uint32
		// The key lies beyond linear memory.
		s1 := getHeaderMapValue(0, outOfBounds, uint32(len(key)), addr(&ptr), addr(&size))
		// The key is fine; the return slots lie beyond linear memory.
		s2 := getHeaderMapValue(0, addr(&key[0]), uint32(len(key)), outOfBounds, outOfBounds+4)
		runtime.KeepAlive(key)
		h.oob = strconv.Itoa(int(s1)) + "," + strconv.Itoa(int(s2))
	}
	return types.ActionContinue
}

// OnHttpResponseHeaders reports the out-of-bounds calls' statuses.
func (h *httpContext) OnHttpResponseHeaders(int, bool) types.Action {
	if h.oob != "" {
		if err := proxywasm.AddHttpResponseHeader("x-oob-statuses", h.oob); err != nil {
			proxywasm.LogErrorf("faulty: add header: %v", err)
		}
	}
	return types.ActionContinue
}
