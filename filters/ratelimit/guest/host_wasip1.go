//go:build wasip1

package main

import (
	"time"
	"unsafe"
)

// hostCurrentTime is proxy-wasm's proxy_get_current_time_nanoseconds, which
// the SDK v0.24.0 does not wrap.
//
//go:wasmimport env proxy_get_current_time_nanoseconds
func hostCurrentTime(ret *uint64) uint32

// clockSlot receives hostCurrentTime's result. A local passed by address to
// a //go:wasmimport function would move to the heap (the compiler cannot
// see that the host keeps no reference): one allocation per request. The
// guest is single threaded and the value is read right after the call.
var clockSlot uint64

// hostNow is the host's wall clock in Unix ns: one host call, where
// time.Now under wasip1 makes two WASI clock calls (wall and monotonic) and
// builds a time.Time. Falls back to time.Now if the host refuses.
func hostNow() int64 {
	if hostCurrentTime(&clockSlot) != 0 {
		return time.Now().UnixNano()
	}
	return int64(clockSlot)
}

// hostString returns b as a string to pass to a host call without copying:
// a proxy-wasm host copies what it reads from guest memory during the call
// and keeps no reference, so b may be reused once the call returns.
func hostString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }
