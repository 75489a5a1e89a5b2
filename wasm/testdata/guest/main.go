//go:build wasip1

// Command guest is the wasm package's test guest: a proxy-wasm 0.2.0 module
// written against the raw ABI with //go:wasmimport and //go:wasmexport. Its
// plugin configuration names the behaviour under test.
package main

import (
	"encoding/binary"
	"strconv"
	"strings"
	"unsafe"
)

func main() {}

//go:wasmimport env proxy_log
func proxyLog(level uint32, ptr unsafe.Pointer, size uint32) uint32

//go:wasmimport env proxy_get_buffer_bytes
func proxyGetBufferBytes(t, start, max uint32, retPtr, retSize *uint32) uint32

//go:wasmimport env proxy_set_buffer_bytes
func proxySetBufferBytes(t, start, length uint32, ptr unsafe.Pointer, size uint32) uint32

//go:wasmimport env proxy_get_header_map_value
func proxyGetHeaderMapValue(t uint32, kp unsafe.Pointer, ks uint32, retPtr, retSize *uint32) uint32

//go:wasmimport env proxy_add_header_map_value
func proxyAddHeaderMapValue(t uint32, kp unsafe.Pointer, ks uint32, vp unsafe.Pointer, vs uint32) uint32

//go:wasmimport env proxy_replace_header_map_value
func proxyReplaceHeaderMapValue(t uint32, kp unsafe.Pointer, ks uint32, vp unsafe.Pointer, vs uint32) uint32

//go:wasmimport env proxy_remove_header_map_value
func proxyRemoveHeaderMapValue(t uint32, kp unsafe.Pointer, ks uint32) uint32

//go:wasmimport env proxy_get_header_map_pairs
func proxyGetHeaderMapPairs(t uint32, retPtr, retSize *uint32) uint32

//go:wasmimport env proxy_get_property
func proxyGetProperty(pp unsafe.Pointer, ps uint32, retPtr, retSize *uint32) uint32

//go:wasmimport env proxy_send_local_response
func proxySendLocalResponse(status uint32, dp unsafe.Pointer, ds uint32, bp unsafe.Pointer, bs uint32, hp unsafe.Pointer, hs uint32, grpc int32) uint32

//go:wasmimport env proxy_get_shared_data
func proxyGetSharedData(kp unsafe.Pointer, ks uint32, retPtr, retSize *uint32, cas *uint32) uint32

//go:wasmimport env proxy_set_shared_data
func proxySetSharedData(kp unsafe.Pointer, ks uint32, vp unsafe.Pointer, vs uint32, cas uint32) uint32

//go:wasmimport env proxy_register_shared_queue
func proxyRegisterSharedQueue(np unsafe.Pointer, ns uint32, id *uint32) uint32

//go:wasmimport env proxy_enqueue_shared_queue
func proxyEnqueueSharedQueue(id uint32, vp unsafe.Pointer, vs uint32) uint32

//go:wasmimport env proxy_dequeue_shared_queue
func proxyDequeueSharedQueue(id uint32, retPtr, retSize *uint32) uint32

//go:wasmimport env proxy_set_tick_period_milliseconds
func proxySetTickPeriod(ms uint32) uint32

//go:wasmimport env proxy_http_call
func proxyHTTPCall(up unsafe.Pointer, us uint32, hp unsafe.Pointer, hs uint32, bp unsafe.Pointer, bs uint32, tp unsafe.Pointer, ts uint32, timeout uint32, token *uint32) uint32

//go:wasmimport env proxy_set_effective_context
func proxySetEffectiveContext(id uint32) uint32

//go:wasmimport env proxy_continue_stream
func proxyContinueStream(t uint32) uint32

//go:wasmimport env proxy_define_metric
func proxyDefineMetric(kind uint32, np unsafe.Pointer, ns uint32, id *uint32) uint32

//go:wasmimport env proxy_increment_metric
func proxyIncrementMetric(id uint32, delta int64) uint32

//go:wasmimport env proxy_get_metric
func proxyGetMetric(id uint32, v *uint64) uint32

//go:wasmimport env proxy_call_foreign_function
func proxyCallForeign(np unsafe.Pointer, ns uint32, ap unsafe.Pointer, as uint32, retPtr, retSize *uint32) uint32

// allocs keeps buffers handed to the host alive until the next callback.
var allocs [][]byte

//go:wasmexport proxy_on_memory_allocate
func onMemoryAllocate(size uint32) unsafe.Pointer {
	b := make([]byte, size)
	allocs = append(allocs, b)
	return unsafe.Pointer(&b[0])
}

//go:wasmexport proxy_abi_version_0_2_0
func abiVersion() {}

func ptr(s string) (unsafe.Pointer, uint32) {
	if s == "" {
		return nil, 0
	}
	return unsafe.Pointer(unsafe.StringData(s)), uint32(len(s))
}

func bytesAt(p, n uint32) []byte {
	if n == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(uintptr(p))), n)
}

func log(msg string) {
	p, n := ptr(msg)
	proxyLog(2, p, n)
}

func getHeader(t uint32, k string) (string, uint32) {
	kp, ks := ptr(k)
	var rp, rs uint32
	st := proxyGetHeaderMapValue(t, kp, ks, &rp, &rs)
	return string(bytesAt(rp, rs)), st
}

func addHeader(t uint32, k, v string) uint32 {
	kp, ks := ptr(k)
	vp, vs := ptr(v)
	return proxyAddHeaderMapValue(t, kp, ks, vp, vs)
}

func getProperty(path ...string) (string, uint32) {
	pp, ps := ptr(strings.Join(path, "\x00"))
	var rp, rs uint32
	st := proxyGetProperty(pp, ps, &rp, &rs)
	return string(bytesAt(rp, rs)), st
}

func encodeMap(pairs [][2]string) []byte {
	b := binary.LittleEndian.AppendUint32(nil, uint32(len(pairs)))
	for _, p := range pairs {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(p[0])))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(p[1])))
	}
	for _, p := range pairs {
		b = append(append(append(append(b, p[0]...), 0), p[1]...), 0)
	}
	return b
}

var (
	mode     string // the first word of the plugin configuration
	arg      string // the rest
	queueID  uint32
	metricID uint32
	// pending maps an http_call token to the stream context waiting on it.
	pending = map[uint32]uint32{}
)

//go:wasmexport proxy_on_context_create
func onContextCreate(id, parent uint32) { allocs = allocs[:0] }

//go:wasmexport proxy_on_vm_start
func onVMStart(root, size uint32) bool { return true }

//go:wasmexport proxy_on_configure
func onConfigure(root, size uint32) bool {
	allocs = allocs[:0]
	var rp, rs uint32
	if proxyGetBufferBytes(7, 0, size, &rp, &rs) != 0 {
		return false
	}
	cfg := string(bytesAt(rp, rs))
	mode, arg, _ = strings.Cut(cfg, " ")
	switch mode {
	case "reject":
		log("rejecting configuration")
		return false
	case "tick":
		proxySetTickPeriod(5)
	case "queue":
		np, ns := ptr("q")
		proxyRegisterSharedQueue(np, ns, &queueID)
	case "metrics":
		np, ns := ptr("wasm_test_requests")
		proxyDefineMetric(0, np, ns, &metricID)
	}
	return true
}

// incr adds 1 to shared key with a CAS retry loop and returns the new value.
func incr(key string) int {
	kp, ks := ptr(key)
	for range 1000 {
		var rp, rs, cas uint32
		n := 0
		if proxyGetSharedData(kp, ks, &rp, &rs, &cas) == 0 {
			n, _ = strconv.Atoi(string(bytesAt(rp, rs)))
		}
		v := strconv.Itoa(n + 1)
		vp, vs := ptr(v)
		switch proxySetSharedData(kp, ks, vp, vs, cas) {
		case 0:
			return n + 1
		case 8: // CasMismatch: retry
		default:
			return -1
		}
	}
	return -1
}

//go:wasmexport proxy_on_request_headers
func onRequestHeaders(id, n uint32, end bool) uint32 {
	allocs = allocs[:0]
	switch mode {
	case "headers":
		path, _ := getHeader(0, ":path")
		addHeader(0, "x-wasm-path", path)
		kp, ks := ptr("x-replace")
		vp, vs := ptr("replaced")
		proxyReplaceHeaderMapValue(0, kp, ks, vp, vs)
		kp, ks = ptr("x-remove")
		proxyRemoveHeaderMapValue(0, kp, ks)
		var rp, rs uint32
		proxyGetHeaderMapPairs(0, &rp, &rs)
		addHeader(0, "x-wasm-count", strconv.Itoa(int(binary.LittleEndian.Uint32(bytesAt(rp, rs)))))
		addHeader(0, "x-wasm-n", strconv.Itoa(int(n)))
	case "props":
		for _, p := range [][]string{{"request", "path"}, {"source", "principal"}, {"plugin_root_id"}, {"plugin_name"}} {
			v, st := getProperty(p...)
			addHeader(0, "x-prop-"+strings.Join(p, "-"), v+"/"+strconv.Itoa(int(st)))
		}
		_, st := getProperty("no", "such")
		addHeader(0, "x-prop-missing", strconv.Itoa(int(st)))
	case "local":
		dp, ds := ptr("denied_by_wasm")
		bp, bs := ptr("nope")
		h := encodeMap([][2]string{{"x-deny", arg}})
		proxySendLocalResponse(403, dp, ds, bp, bs, unsafe.Pointer(&h[0]), uint32(len(h)), -1)
		return 1
	case "shared":
		incr("count")
	case "queue":
		path, _ := getHeader(0, ":path")
		vp, vs := ptr(path)
		proxyEnqueueSharedQueue(queueID, vp, vs)
	case "metrics":
		proxyIncrementMetric(metricID, 1)
		var v uint64
		proxyGetMetric(metricID, &v)
		addHeader(0, "x-metric", strconv.FormatUint(v, 10))
	case "httpcall":
		up, us := ptr(arg)
		h := encodeMap([][2]string{{":method", "GET"}, {":path", "/auth"}, {":authority", "auth"}})
		bp, bs := ptr("ping")
		var token uint32
		st := proxyHTTPCall(up, us, unsafe.Pointer(&h[0]), uint32(len(h)), bp, bs, nil, 0, 1000, &token)
		if st != 0 {
			addHeader(0, "x-call-status", strconv.Itoa(int(st)))
			return 0
		}
		pending[token] = id
		return 1
	case "foreign":
		np, ns := ptr("compress")
		var rp, rs uint32
		addHeader(0, "x-foreign", strconv.Itoa(int(proxyCallForeign(np, ns, nil, 0, &rp, &rs))))
	case "oob":
		// Pointers past the end of memory must give InvalidMemoryAccess (6).
		bad := unsafe.Pointer(uintptr(0xfffffff0))
		st1 := proxyLog(2, bad, 64)
		st2 := proxyAddHeaderMapValue(0, bad, 100, nil, 0)
		var rp uint32
		st3 := proxyGetHeaderMapPairs(0, &rp, (*uint32)(bad))
		addHeader(0, "x-oob", strconv.Itoa(int(st1))+","+strconv.Itoa(int(st2))+","+strconv.Itoa(int(st3)))
	case "panic":
		panic("guest panic on request headers")
	case "grow":
		// 64 MiB: past a 32 MiB memory limit, memory.grow fails and the Go
		// runtime aborts.
		big := make([]byte, 64<<20)
		big[len(big)-1] = 1
		allocs = append(allocs, big)
	case "loop":
		for {
		}
	case "slow":
		// Busy for about a millisecond: within the default deadline.
		var v uint64
		for k := 0; k < 1_000_000; k++ {
			v += uint64(k)
		}
		if v == 1 {
			return 1
		}
	}
	return 0
}

//go:wasmexport proxy_on_request_body
func onRequestBody(id, size uint32, end bool) uint32 {
	allocs = allocs[:0]
	if mode != "body" {
		return 0
	}
	if !end {
		return 1
	}
	var rp, rs uint32
	proxyGetBufferBytes(0, 0, size, &rp, &rs)
	up := strings.ToUpper(string(bytesAt(rp, rs)))
	vp, vs := ptr(up)
	proxySetBufferBytes(0, 0, size, vp, vs)
	return 0
}

//go:wasmexport proxy_on_request_trailers
func onRequestTrailers(id, n uint32) uint32 { return 0 }

//go:wasmexport proxy_on_response_headers
func onResponseHeaders(id, n uint32, end bool) uint32 {
	allocs = allocs[:0]
	if mode == "headers" {
		addHeader(2, "x-wasm-config", arg)
	}
	return 0
}

//go:wasmexport proxy_on_response_body
func onResponseBody(id, size uint32, end bool) uint32 { return 0 }

//go:wasmexport proxy_on_response_trailers
func onResponseTrailers(id, n uint32) uint32 { return 0 }

//go:wasmexport proxy_on_http_call_response
func onHTTPCallResponse(root, token, nh, bs, nt uint32) {
	allocs = allocs[:0]
	id, ok := pending[token]
	if !ok {
		return
	}
	delete(pending, token)
	status, _ := getHeader(6, ":status")
	var rp, rs uint32
	proxyGetBufferBytes(4, 0, bs, &rp, &rs)
	body := string(bytesAt(rp, rs))
	proxySetEffectiveContext(id)
	addHeader(0, "x-call", status+"/"+body+"/"+strconv.Itoa(int(nh)))
	proxyContinueStream(0)
}

//go:wasmexport proxy_on_tick
func onTick(root uint32) {
	allocs = allocs[:0]
	incr("ticks")
}

//go:wasmexport proxy_on_queue_ready
func onQueueReady(root, id uint32) {
	allocs = allocs[:0]
	for range 100 {
		var rp, rs uint32
		if proxyDequeueSharedQueue(id, &rp, &rs) != 0 {
			return
		}
		incr("dequeued:" + string(bytesAt(rp, rs)))
	}
}

//go:wasmexport proxy_on_log
func onLog(id uint32) {}

//go:wasmexport proxy_on_done
func onDone(id uint32) bool {
	if mode == "done" {
		incr("done")
	}
	return true
}

//go:wasmexport proxy_on_delete
func onDelete(id uint32) {}
