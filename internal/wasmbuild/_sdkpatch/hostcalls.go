// Real proxy-wasm host calls for guests built with the standard Go toolchain
// (GOOS=wasip1 GOARCH=wasm). The wasmbuild overlay puts this file in place of
// the SDK's proxywasm/internal/abi_hostcalls_mock.go, so the SDK keeps its Go
// signatures while every call goes to the host's `env.proxy_*` import.
//
// The ABI passes pointers and sizes as i32. Go's int is 64-bit on wasm, so
// sizes are narrowed on the way in; out-parameters (**byte, *int) go through
// uint32 slots the host writes and are widened afterwards. Memory the host
// returns was obtained through proxy_on_memory_allocate (exports.go), which
// keeps each buffer referenced until the host call that asked for it returns
// and the SDK holds a Go pointer to it.

//go:build wasip1

package internal

import "unsafe"

//go:wasmimport env proxy_log
func hostLog(level uint32, msg unsafe.Pointer, msgSize uint32) uint32

//go:wasmimport env proxy_send_local_response
func hostSendLocalResponse(status uint32, details unsafe.Pointer, detailsSize uint32, body unsafe.Pointer, bodySize uint32, headers unsafe.Pointer, headersSize uint32, grpcStatus int32) uint32

//go:wasmimport env proxy_get_shared_data
func hostGetSharedData(key unsafe.Pointer, keySize uint32, retData *uint32, retSize *uint32, retCas *uint32) uint32

//go:wasmimport env proxy_set_shared_data
func hostSetSharedData(key unsafe.Pointer, keySize uint32, value unsafe.Pointer, valueSize uint32, cas uint32) uint32

//go:wasmimport env proxy_register_shared_queue
func hostRegisterSharedQueue(name unsafe.Pointer, nameSize uint32, retID *uint32) uint32

//go:wasmimport env proxy_resolve_shared_queue
func hostResolveSharedQueue(vmID unsafe.Pointer, vmIDSize uint32, name unsafe.Pointer, nameSize uint32, retID *uint32) uint32

//go:wasmimport env proxy_dequeue_shared_queue
func hostDequeueSharedQueue(queueID uint32, retData *uint32, retSize *uint32) uint32

//go:wasmimport env proxy_enqueue_shared_queue
func hostEnqueueSharedQueue(queueID uint32, value unsafe.Pointer, valueSize uint32) uint32

//go:wasmimport env proxy_get_header_map_value
func hostGetHeaderMapValue(mapType uint32, key unsafe.Pointer, keySize uint32, retData *uint32, retSize *uint32) uint32

//go:wasmimport env proxy_add_header_map_value
func hostAddHeaderMapValue(mapType uint32, key unsafe.Pointer, keySize uint32, value unsafe.Pointer, valueSize uint32) uint32

//go:wasmimport env proxy_replace_header_map_value
func hostReplaceHeaderMapValue(mapType uint32, key unsafe.Pointer, keySize uint32, value unsafe.Pointer, valueSize uint32) uint32

//go:wasmimport env proxy_remove_header_map_value
func hostRemoveHeaderMapValue(mapType uint32, key unsafe.Pointer, keySize uint32) uint32

//go:wasmimport env proxy_get_header_map_pairs
func hostGetHeaderMapPairs(mapType uint32, retData *uint32, retSize *uint32) uint32

//go:wasmimport env proxy_set_header_map_pairs
func hostSetHeaderMapPairs(mapType uint32, data unsafe.Pointer, size uint32) uint32

//go:wasmimport env proxy_get_buffer_bytes
func hostGetBufferBytes(bufferType uint32, start uint32, maxSize uint32, retData *uint32, retSize *uint32) uint32

//go:wasmimport env proxy_set_buffer_bytes
func hostSetBufferBytes(bufferType uint32, start uint32, maxSize uint32, data unsafe.Pointer, size uint32) uint32

//go:wasmimport env proxy_continue_stream
func hostContinueStream(streamType uint32) uint32

//go:wasmimport env proxy_close_stream
func hostCloseStream(streamType uint32) uint32

//go:wasmimport env proxy_http_call
func hostHttpCall(upstream unsafe.Pointer, upstreamSize uint32, headers unsafe.Pointer, headersSize uint32, body unsafe.Pointer, bodySize uint32, trailers unsafe.Pointer, trailersSize uint32, timeout uint32, retCalloutID *uint32) uint32

//go:wasmimport env proxy_call_foreign_function
func hostCallForeignFunction(name unsafe.Pointer, nameSize uint32, param unsafe.Pointer, paramSize uint32, retData *uint32, retSize *uint32) uint32

//go:wasmimport env proxy_set_tick_period_milliseconds
func hostSetTickPeriodMilliseconds(period uint32) uint32

//go:wasmimport env proxy_set_effective_context
func hostSetEffectiveContext(contextID uint32) uint32

//go:wasmimport env proxy_done
func hostDone() uint32

//go:wasmimport env proxy_define_metric
func hostDefineMetric(metricType uint32, name unsafe.Pointer, nameSize uint32, retID *uint32) uint32

//go:wasmimport env proxy_increment_metric
func hostIncrementMetric(metricID uint32, offset int64) uint32

//go:wasmimport env proxy_record_metric
func hostRecordMetric(metricID uint32, value uint64) uint32

//go:wasmimport env proxy_get_metric
func hostGetMetric(metricID uint32, retValue *uint64) uint32

//go:wasmimport env proxy_get_property
func hostGetProperty(path unsafe.Pointer, pathSize uint32, retData *uint32, retSize *uint32) uint32

//go:wasmimport env proxy_set_property
func hostSetProperty(path unsafe.Pointer, pathSize uint32, value unsafe.Pointer, valueSize uint32) uint32

// ptr passes a Go pointer to the host; the call keeps the object alive.
func ptr(p *byte) unsafe.Pointer { return unsafe.Pointer(p) }

// outSlots are the out-parameters of host calls. The compiler cannot see
// what the host does with a pointer passed to a //go:wasmimport function,
// so a local variable passed by address moves to the heap: two allocations
// (address and size) for every host call that returns a value, on every
// header, property and shared-data read. A stack slot would not do either:
// the host may call back into the guest (proxy_on_memory_allocate) during
// the call, and a stack that grows in that callback is copied elsewhere,
// leaving the host writing to the old copy. Package-level slots neither
// allocate nor move. The guest is single threaded, no host call is made
// while a result is still in the slots (callers copy them out at once, and
// proxy_on_memory_allocate makes no host call), so one set serves all calls.
type outSlots struct {
	data, size, u32 uint32
	u64             uint64
}

var out outSlots

// clearOut zeroes the out-slots before a host call, so a call that fails
// without writing them reads zeros, as fresh locals would.
func clearOut() { out = outSlots{} }

// takeOut turns the (address, size) pair the host wrote into the SDK's
// out-parameters. The address must be a buffer proxy_on_memory_allocate handed
// out during this host call (or 0 with size 0); anything else yields nil, 0.
// It then drops the allocator's references: from here the SDK's *byte keeps
// the buffer alive.
//
// A result in the scratch buffer (meshd's host, see exports.go) is copied
// into a new Go slice at once, before any other host call can overwrite it.
func takeOut(addr, size uint32, retData **byte, retSize *int) {
	if size > 0 && size <= scratchSize && addr == scratchAddr() {
		buf := make([]byte, size)
		copy(buf, scratch[:size])
		*retData, *retSize = &buf[0], int(size)
		releaseAllocations()
		return
	}
	*retData, *retSize = claimAllocation(addr, size), int(size)
	if *retData == nil {
		*retSize = 0
	}
	releaseAllocations()
}

func ProxyLog(logLevel LogLevel, messageData *byte, messageSize int) Status {
	return Status(hostLog(uint32(logLevel), ptr(messageData), uint32(messageSize)))
}

func ProxySendLocalResponse(statusCode uint32, statusCodeDetailData *byte, statusCodeDetailsSize int,
	bodyData *byte, bodySize int, headersData *byte, headersSize int, grpcStatus int32) Status {
	return Status(hostSendLocalResponse(statusCode, ptr(statusCodeDetailData), uint32(statusCodeDetailsSize),
		ptr(bodyData), uint32(bodySize), ptr(headersData), uint32(headersSize), grpcStatus))
}

func ProxyGetSharedData(keyData *byte, keySize int, returnValueData **byte, returnValueSize *int, returnCas *uint32) Status {
	clearOut()
	st := hostGetSharedData(ptr(keyData), uint32(keySize), &out.data, &out.size, &out.u32)
	*returnCas = out.u32
	takeOut(out.data, out.size, returnValueData, returnValueSize)
	return Status(st)
}

func ProxySetSharedData(keyData *byte, keySize int, valueData *byte, valueSize int, cas uint32) Status {
	return Status(hostSetSharedData(ptr(keyData), uint32(keySize), ptr(valueData), uint32(valueSize), cas))
}

func ProxyRegisterSharedQueue(nameData *byte, nameSize int, returnID *uint32) Status {
	clearOut()
	st := Status(hostRegisterSharedQueue(ptr(nameData), uint32(nameSize), &out.u32))
	*returnID = out.u32
	return st
}

func ProxyResolveSharedQueue(vmIDData *byte, vmIDSize int, nameData *byte, nameSize int, returnID *uint32) Status {
	clearOut()
	st := Status(hostResolveSharedQueue(ptr(vmIDData), uint32(vmIDSize), ptr(nameData), uint32(nameSize), &out.u32))
	*returnID = out.u32
	return st
}

func ProxyDequeueSharedQueue(queueID uint32, returnValueData **byte, returnValueSize *int) Status {
	clearOut()
	st := hostDequeueSharedQueue(queueID, &out.data, &out.size)
	takeOut(out.data, out.size, returnValueData, returnValueSize)
	return Status(st)
}

func ProxyEnqueueSharedQueue(queueID uint32, valueData *byte, valueSize int) Status {
	return Status(hostEnqueueSharedQueue(queueID, ptr(valueData), uint32(valueSize)))
}

func ProxyGetHeaderMapValue(mapType MapType, keyData *byte, keySize int, returnValueData **byte, returnValueSize *int) Status {
	clearOut()
	st := hostGetHeaderMapValue(uint32(mapType), ptr(keyData), uint32(keySize), &out.data, &out.size)
	takeOut(out.data, out.size, returnValueData, returnValueSize)
	return Status(st)
}

func ProxyAddHeaderMapValue(mapType MapType, keyData *byte, keySize int, valueData *byte, valueSize int) Status {
	return Status(hostAddHeaderMapValue(uint32(mapType), ptr(keyData), uint32(keySize), ptr(valueData), uint32(valueSize)))
}

func ProxyReplaceHeaderMapValue(mapType MapType, keyData *byte, keySize int, valueData *byte, valueSize int) Status {
	return Status(hostReplaceHeaderMapValue(uint32(mapType), ptr(keyData), uint32(keySize), ptr(valueData), uint32(valueSize)))
}

func ProxyRemoveHeaderMapValue(mapType MapType, keyData *byte, keySize int) Status {
	return Status(hostRemoveHeaderMapValue(uint32(mapType), ptr(keyData), uint32(keySize)))
}

func ProxyGetHeaderMapPairs(mapType MapType, returnValueData **byte, returnValueSize *int) Status {
	clearOut()
	st := hostGetHeaderMapPairs(uint32(mapType), &out.data, &out.size)
	takeOut(out.data, out.size, returnValueData, returnValueSize)
	return Status(st)
}

func ProxySetHeaderMapPairs(mapType MapType, mapData *byte, mapSize int) Status {
	return Status(hostSetHeaderMapPairs(uint32(mapType), ptr(mapData), uint32(mapSize)))
}

func ProxyGetBufferBytes(bufferType BufferType, start int, maxSize int, returnBufferData **byte, returnBufferSize *int) Status {
	clearOut()
	st := hostGetBufferBytes(uint32(bufferType), uint32(start), uint32(maxSize), &out.data, &out.size)
	takeOut(out.data, out.size, returnBufferData, returnBufferSize)
	return Status(st)
}

func ProxySetBufferBytes(bufferType BufferType, start int, maxSize int, bufferData *byte, bufferSize int) Status {
	return Status(hostSetBufferBytes(uint32(bufferType), uint32(start), uint32(maxSize), ptr(bufferData), uint32(bufferSize)))
}

func ProxyContinueStream(streamType StreamType) Status {
	return Status(hostContinueStream(uint32(streamType)))
}

func ProxyCloseStream(streamType StreamType) Status {
	return Status(hostCloseStream(uint32(streamType)))
}

func ProxyHttpCall(upstreamData *byte, upstreamSize int, headerData *byte, headerSize int,
	bodyData *byte, bodySize int, trailersData *byte, trailersSize int, timeout uint32, calloutIDPtr *uint32,
) Status {
	clearOut()
	st := Status(hostHttpCall(ptr(upstreamData), uint32(upstreamSize), ptr(headerData), uint32(headerSize),
		ptr(bodyData), uint32(bodySize), ptr(trailersData), uint32(trailersSize), timeout, &out.u32))
	*calloutIDPtr = out.u32
	return st
}

func ProxyCallForeignFunction(funcNamePtr *byte, funcNameSize int, paramPtr *byte, paramSize int, returnData **byte, returnSize *int) Status {
	clearOut()
	st := hostCallForeignFunction(ptr(funcNamePtr), uint32(funcNameSize), ptr(paramPtr), uint32(paramSize), &out.data, &out.size)
	takeOut(out.data, out.size, returnData, returnSize)
	return Status(st)
}

func ProxySetTickPeriodMilliseconds(period uint32) Status {
	return Status(hostSetTickPeriodMilliseconds(period))
}

func ProxySetEffectiveContext(contextID uint32) Status {
	return Status(hostSetEffectiveContext(contextID))
}

func ProxyDone() Status { return Status(hostDone()) }

func ProxyDefineMetric(metricType MetricType, metricNameData *byte, metricNameSize int, returnMetricIDPtr *uint32) Status {
	clearOut()
	st := Status(hostDefineMetric(uint32(metricType), ptr(metricNameData), uint32(metricNameSize), &out.u32))
	*returnMetricIDPtr = out.u32
	return st
}

func ProxyIncrementMetric(metricID uint32, offset int64) Status {
	return Status(hostIncrementMetric(metricID, offset))
}

func ProxyRecordMetric(metricID uint32, value uint64) Status {
	return Status(hostRecordMetric(metricID, value))
}

func ProxyGetMetric(metricID uint32, returnMetricValue *uint64) Status {
	clearOut()
	st := Status(hostGetMetric(metricID, &out.u64))
	*returnMetricValue = out.u64
	return st
}

func ProxyGetProperty(pathData *byte, pathSize int, returnValueData **byte, returnValueSize *int) Status {
	clearOut()
	st := hostGetProperty(ptr(pathData), uint32(pathSize), &out.data, &out.size)
	takeOut(out.data, out.size, returnValueData, returnValueSize)
	return Status(st)
}

func ProxySetProperty(pathData *byte, pathSize int, valueData *byte, valueSize int) Status {
	return Status(hostSetProperty(ptr(pathData), uint32(pathSize), ptr(valueData), uint32(valueSize)))
}
