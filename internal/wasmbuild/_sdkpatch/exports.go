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
	"reflect"
	"runtime"
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
	if len(allocations) == 0 {
		return
	}
	for addr := range allocations {
		delete(allocations, addr)
	}
}

// scratchSize is the size of scratch.
const scratchSize = 4096

// scratch is the guest's half of meshd's fast ABI (see
// meshd_scratch_buffer): meshd's host writes a host call's result here
// when it fits, instead of asking proxy_on_memory_allocate for a buffer
// (an entry into the guest, an allocation and map updates per value), and
// writes the context ids of meshd_on_delete here. A package-level array
// never moves (Go's collector does not move objects), so its address is
// valid for the life of the module. Its contents are valid only until the
// next host call: takeOut copies a result out at once.
var scratch [scratchSize]byte

// scratchAddr is the guest address of scratch.
func scratchAddr() uint32 { return uint32(uintptr(unsafe.Pointer(&scratch[0]))) }

// exportScratchBuffer returns scratch's address (high 32 bits) and size
// (low 32 bits). meshd's host calls it once per VM, before any other
// callback but after _initialize; its presence is how the host knows the
// guest takes results in the scratch buffer. Other hosts never call it and
// keep using proxy_on_memory_allocate.
//
//go:wasmexport meshd_scratch_buffer
func exportScratchBuffer() uint64 {
	return uint64(scratchAddr())<<32 | scratchSize
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

// The bits meshd_on_context_create returns: the HTTP-context callbacks the
// new context implements itself (meshd's wasm host skips the others).
const (
	cbRequestHeaders uint32 = 1 << iota
	cbRequestBody
	cbRequestTrailers
	cbResponseHeaders
	cbResponseBody
	cbResponseTrailers
	cbStreamDone // proxy_on_log
	cbDone       // proxy_on_done; the SDK ignores it for HTTP contexts
	cbAll        = 1<<iota - 1
)

// httpCallbackMethods maps types.HttpContext methods to their bits.
var httpCallbackMethods = []struct {
	name string
	bit  uint32
}{
	{"OnHttpRequestHeaders", cbRequestHeaders},
	{"OnHttpRequestBody", cbRequestBody},
	{"OnHttpRequestTrailers", cbRequestTrailers},
	{"OnHttpResponseHeaders", cbResponseHeaders},
	{"OnHttpResponseBody", cbResponseBody},
	{"OnHttpResponseTrailers", cbResponseTrailers},
	{"OnHttpStreamDone", cbStreamDone},
}

// callbackMasks caches httpCallbackMask per concrete context type;
// lastType and lastMask short-cut the map for the common case of one HTTP
// context type per plugin.
var (
	callbackMasks = map[reflect.Type]uint32{}
	lastType      reflect.Type
	lastMask      uint32
)

// defaultHttpContext is the SDK's no-op HTTP context.
var defaultHttpContext = reflect.TypeOf(types.DefaultHttpContext{})

// httpCallbackMask returns the callbacks ctx implements itself: every
// method unless its type (a struct, or a pointer to one) embeds
// types.DefaultHttpContext directly and does not declare the method, which
// then is the SDK default (Continue, no host call). "Does not declare" is
// read from the method's code: the compiler generates the promoted method
// of the outer type, positioned at "<autogenerated>"; a method written in
// the guest has its source file.
func httpCallbackMask(ctx types.HttpContext) uint32 {
	t := reflect.TypeOf(ctx)
	if t == lastType && t != nil {
		return lastMask
	}
	if m, ok := callbackMasks[t]; ok {
		lastType, lastMask = t, m
		return m
	}
	st := t
	if st.Kind() == reflect.Ptr {
		st = st.Elem()
	}
	embedsDefault := false
	if st.Kind() == reflect.Struct {
		for i := 0; i < st.NumField(); i++ {
			if f := st.Field(i); f.Anonymous && f.Type == defaultHttpContext {
				embedsDefault = true
			}
		}
	}
	m := cbAll &^ cbDone
	if embedsDefault {
		for _, cb := range httpCallbackMethods {
			if meth, ok := t.MethodByName(cb.name); ok && generated(meth) {
				m &^= cb.bit
			}
		}
	}
	callbackMasks[t] = m
	lastType, lastMask = t, m
	return m
}

// generated reports whether the method's code is compiler-generated.
func generated(m reflect.Method) bool {
	f := runtime.FuncForPC(m.Func.Pointer())
	if f == nil {
		return false
	}
	file, _ := f.FileLine(f.Entry())
	return file == "<autogenerated>"
}

// exportMeshdOnContextCreate is proxy_on_context_create that also returns,
// for an HTTP context, the callbacks it implements (cb* bits; all for other
// contexts). meshd's host calls it instead of proxy_on_context_create when
// exported and then skips the callbacks a context leaves to the SDK's
// defaults; other hosts never call it.
//
//go:wasmexport meshd_on_context_create
func exportMeshdOnContextCreate(contextID, pluginContextID uint32) uint32 {
	_, mask := createContext(contextID, pluginContextID)
	return mask
}

// createContext is proxy_on_context_create returning the new HTTP context
// (nil for other kinds) and its callback bits.
func createContext(contextID, pluginContextID uint32) (types.HttpContext, uint32) {
	if pluginContextID == 0 {
		currentState.createPluginContext(contextID)
		return nil, cbAll
	}
	ctx := currentState.createStreamContext(contextID, pluginContextID)
	if ctx == nil {
		return nil, cbAll
	}
	return ctx, httpCallbackMask(ctx)
}

// exportMeshdOnRequestHeaders creates the HTTP context contextID, as
// meshd_on_context_create does, and runs proxy_on_request_headers on it if
// the context implements OnHttpRequestHeaders: one entry into the guest
// instead of two for the start of every stream. It returns the callback
// bits (high 32 bits, as meshd_on_context_create returns them) and the
// types.Action (low 32 bits; Continue when the callback did not run).
//
//go:wasmexport meshd_on_request_headers
func exportMeshdOnRequestHeaders(contextID, pluginContextID, numHeaders, endOfStream uint32) uint64 {
	ctx, mask := createContext(contextID, pluginContextID)
	act := types.ActionContinue
	if ctx != nil && mask&cbRequestHeaders != 0 {
		currentState.setActiveContextID(contextID)
		act = ctx.OnHttpRequestHeaders(int(numHeaders), boolOf(endOfStream))
	} else if ctx == nil && mask&cbRequestHeaders != 0 {
		// Not an HTTP context: let the SDK's callback panic as it would.
		act = proxyOnRequestHeaders(contextID, int(numHeaders), boolOf(endOfStream))
	}
	return uint64(mask)<<32 | uint64(uint32(act))
}

// exportMeshdOnDelete runs proxy_on_delete for n contexts whose ids meshd's
// host wrote into scratch as little-endian u32s, in order: the host defers
// the deletes of finished streams and delivers them in batches, saving an
// entry into the guest per stream. n is at most scratchSize/4.
//
//go:wasmexport meshd_on_delete
func exportMeshdOnDelete(n uint32) {
	if n > scratchSize/4 {
		panic("meshd_on_delete: more context ids than the scratch buffer holds")
	}
	for k := uint32(0); k < n; k++ {
		b := scratch[4*k : 4*k+4]
		proxyOnDelete(uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24)
	}
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
