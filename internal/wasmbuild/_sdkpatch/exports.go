// proxy-wasm ABI 0.2.0 exports for guests built with the standard Go
// toolchain. The wasmbuild overlay adds this file to the SDK's
// proxywasm/internal package, whose go.mod says go 1.19 (so no newer
// language features here); each export converts the ABI's i32 values and
// calls the SDK's own callback (which carries a TinyGo-only //export comment
// that standard Go ignores).
//
// The guest is a reactor (-buildmode=c-shared): the host calls _initialize,
// which runs package init functions (where the guest must call
// proxywasm.SetVMContext) but never main.

//go:build wasip1

package internal

import (
	"unsafe"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"
)

// allocations holds every buffer handed to the host by
// proxy_on_memory_allocate until the host call that needed it has returned
// and the SDK references it through a Go pointer (see takeOut). Without it the
// GC could free memory the host is about to write into. Guests are single
// threaded and the host calls into one VM at a time, so no lock is needed.
var allocations = map[uint32][]byte{}

//go:wasmexport proxy_on_memory_allocate
func exportOnMemoryAllocate(size uint32) uint32 {
	// A zero-size request still gets a distinct, valid address.
	if size == 0 {
		size = 1
	}
	buf := make([]byte, size)
	addr := uint32(uintptr(unsafe.Pointer(&buf[0])))
	allocations[addr] = buf
	return addr
}

// claimAllocation returns the Go pointer for a buffer proxy_on_memory_allocate
// handed out at addr with room for size bytes, or nil if there is none.
func claimAllocation(addr, size uint32) *byte {
	buf, ok := allocations[addr]
	if !ok || uint32(len(buf)) < size {
		return nil
	}
	return &buf[0]
}

// releaseAllocations drops the allocator's references once the SDK holds its own.
func releaseAllocations() {
	for addr := range allocations {
		delete(allocations, addr)
	}
}

func boolOf(v uint32) bool { return v != 0 }

func u32Of(b bool) uint32 {
	if b {
		return 1
	}
	return 0
}

//go:wasmexport proxy_abi_version_0_2_0
func exportABIVersion() { proxyABIVersion() }

//go:wasmexport proxy_on_context_create
func exportOnContextCreate(contextID, pluginContextID uint32) {
	proxyOnContextCreate(contextID, pluginContextID)
}

//go:wasmexport proxy_on_vm_start
func exportOnVMStart(pluginContextID, vmConfigurationSize uint32) uint32 {
	return u32Of(bool(proxyOnVMStart(pluginContextID, int(vmConfigurationSize))))
}

//go:wasmexport proxy_on_configure
func exportOnConfigure(pluginContextID, pluginConfigurationSize uint32) uint32 {
	return u32Of(bool(proxyOnConfigure(pluginContextID, int(pluginConfigurationSize))))
}

//go:wasmexport proxy_on_request_headers
func exportOnRequestHeaders(contextID, numHeaders, endOfStream uint32) uint32 {
	return uint32(proxyOnRequestHeaders(contextID, int(numHeaders), boolOf(endOfStream)))
}

//go:wasmexport proxy_on_request_body
func exportOnRequestBody(contextID, bodySize, endOfStream uint32) uint32 {
	return uint32(proxyOnRequestBody(contextID, int(bodySize), boolOf(endOfStream)))
}

//go:wasmexport proxy_on_request_trailers
func exportOnRequestTrailers(contextID, numTrailers uint32) uint32 {
	return uint32(proxyOnRequestTrailers(contextID, int(numTrailers)))
}

//go:wasmexport proxy_on_response_headers
func exportOnResponseHeaders(contextID, numHeaders, endOfStream uint32) uint32 {
	return uint32(proxyOnResponseHeaders(contextID, int(numHeaders), boolOf(endOfStream)))
}

//go:wasmexport proxy_on_response_body
func exportOnResponseBody(contextID, bodySize, endOfStream uint32) uint32 {
	return uint32(proxyOnResponseBody(contextID, int(bodySize), boolOf(endOfStream)))
}

//go:wasmexport proxy_on_response_trailers
func exportOnResponseTrailers(contextID, numTrailers uint32) uint32 {
	return uint32(proxyOnResponseTrailers(contextID, int(numTrailers)))
}

//go:wasmexport proxy_on_http_call_response
func exportOnHttpCallResponse(pluginContextID, calloutID, numHeaders, bodySize, numTrailers uint32) {
	proxyOnHttpCallResponse(pluginContextID, calloutID, int(numHeaders), int(bodySize), int(numTrailers))
}

//go:wasmexport proxy_on_tick
func exportOnTick(pluginContextID uint32) { proxyOnTick(pluginContextID) }

//go:wasmexport proxy_on_queue_ready
func exportOnQueueReady(contextID, queueID uint32) { proxyOnQueueReady(contextID, queueID) }

//go:wasmexport proxy_on_log
func exportOnLog(contextID uint32) { proxyOnLog(contextID) }

//go:wasmexport proxy_on_done
func exportOnDone(contextID uint32) uint32 { return u32Of(proxyOnDone(contextID)) }

//go:wasmexport proxy_on_delete
func exportOnDelete(contextID uint32) { proxyOnDelete(contextID) }

//go:wasmexport proxy_on_new_connection
func exportOnNewConnection(contextID uint32) uint32 {
	return uint32(proxyOnNewConnection(contextID))
}

//go:wasmexport proxy_on_downstream_data
func exportOnDownstreamData(contextID, dataSize, endOfStream uint32) uint32 {
	return uint32(proxyOnDownstreamData(contextID, int(dataSize), boolOf(endOfStream)))
}

//go:wasmexport proxy_on_downstream_connection_close
func exportOnDownstreamConnectionClose(contextID, peerType uint32) {
	proxyOnDownstreamConnectionClose(contextID, types.PeerType(peerType))
}

//go:wasmexport proxy_on_upstream_data
func exportOnUpstreamData(contextID, dataSize, endOfStream uint32) uint32 {
	return uint32(proxyOnUpstreamData(contextID, int(dataSize), boolOf(endOfStream)))
}

//go:wasmexport proxy_on_upstream_connection_close
func exportOnUpstreamConnectionClose(contextID, peerType uint32) {
	proxyOnUpstreamConnectionClose(contextID, types.PeerType(peerType))
}
