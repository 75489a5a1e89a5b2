// Package wasm is meshd's proxy-wasm host: it runs proxy-wasm ABI 0.2.0 and
// 0.2.1 modules (reactors, `_initialize` first) on wazero, pure Go, and
// exposes a Go API that filters/wasm drives. It imports nothing from
// filters/ or proxy/: the proxy side comes in through HostServices (HTTP
// calls, metrics, plugin-wide properties) and StreamHost (one stream's
// header maps, bodies, properties, local replies, resume/reset).
//
// # Lifecycle
//
// An Engine is one wazero runtime with WASI (wasi_snapshot_preview1) and the
// "env" host module, a compile cache keyed by sha256, and shared data and
// shared queues per vm_id. NewPlugin starts PoolSize instances; each runs
// _initialize, proxy_on_context_create(root), proxy_on_vm_start and
// proxy_on_configure. A stream's HTTPContext runs proxy_on_context_create,
// then header/body/trailer callbacks (Pause tells the FILTER side to buffer
// and wait for StreamHost.Resume), and Done runs proxy_on_done, proxy_on_log
// and proxy_on_delete. Guest memory for results is allocated with the
// guest's proxy_on_memory_allocate, or malloc for modules built that way.
//
// # Imports
//
// The env functions are listed in hostFuncs: logging, time, ticks, buffers,
// header maps, properties, local responses, stream continue/close, shared
// data with CAS, shared queues, http_call, metrics, effective context, done
// and call_foreign_function (always NotFound: no foreign functions are
// registered). A module importing anything else (including gRPC calls) fails
// NewPlugin with an error naming every missing import.
//
// # Limits and robustness
//
//   - Memory: each instance's linear memory is capped by
//     EngineConfig.MemoryLimitPages (DefaultMemoryLimitPages, 128 MiB).
//   - Time: each callback has Config.CallbackTimeout (DefaultCallbackTimeout,
//     1 s); instance start has Config.StartTimeout. The engine rewrites
//     every module before compiling it (instrumentLoops): each loop head
//     tests an exported interrupt global, and every 4096 iterations exits
//     to Go once (a memory.grow of 0 pages) so the goroutine can be
//     preempted. One watchdog goroutine per Plugin, ticking every quarter of
//     the callback timeout (1 to 25 ms), sets the global of an instance
//     whose call has overrun; the guest traps at its next loop iteration.
//     So an infinite loop ends within the deadline plus one tick, and a
//     guest call costs no goroutine (wazero's WithCloseOnContextDone starts
//     one per call and exits to Go at every loop iteration). Trusted guests
//     (EngineConfig.TrustedGuests) are not rewritten and cannot be stopped.
//   - Guest pointers: every pointer and length from the guest is
//     bounds-checked; out of range gives StatusInvalidMemoryAccess, never a
//     host panic.
//   - A trap, a deadline overrun or a failing allocator breaks the instance:
//     the call returns an error wrapping ErrUnavailable (the FILTER side
//     applies fail_open), the instance's streams fail fast, and a new
//     instance is started in its slot in the background (backoff 100 ms to
//     5 s while starting fails).
//
// # Fast ABI
//
// Guests built by internal/wasmbuild also export meshd_* functions, which
// this host uses instead of some standard calls; other hosts never call
// them, and a module without them (any proxy-wasm module from elsewhere)
// runs on the standard ABI alone. The host negotiates by the presence of
// meshd_scratch_buffer, which it calls once after _initialize:
//
//   - meshd_scratch_buffer returns a guest buffer (address and size) that
//     stays valid for the module's life. A host call's result that fits
//     (header value, property, shared data, buffer bytes) is written there
//     instead of into memory from proxy_on_memory_allocate, so a result
//     costs no entry into the guest; the guest copies it out before its
//     next host call. Larger results still use the allocator.
//   - meshd_on_request_headers creates a stream's context and runs its
//     request-header callback in one entry, and returns the callbacks the
//     context's type implements (as meshd_on_context_create does); the
//     host skips the others.
//   - meshd_on_delete(n) deletes the n contexts whose ids the host wrote
//     into the scratch buffer. The host defers proxy_on_delete of finished
//     streams (which runs no guest code of theirs: the SDK only drops the
//     context) and delivers at most maxDeferredDeletes at once, before any
//     root-context callback and at shutdown. proxy_on_log and proxy_on_done
//     still run when the stream ends.
//
// Deadlines, traps and memory bounds apply to these calls as to any other.
//
// # Pool
//
// Streams are pinned to an instance for their life (contexts live in one
// VM) and spread round robin; callbacks of one instance are serialized by a
// mutex, since the ABI is single-threaded per VM. Ticks, queue readiness and
// HTTP-call responses run on one worker goroutine per instance, under the
// same mutex. PoolSize defaults to GOMAXPROCS so that, with one callback per
// core in flight, callbacks rarely wait.
package wasm
