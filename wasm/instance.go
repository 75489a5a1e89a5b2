package wasm

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
)

// rootContextID is the id of the root context in every instance; stream
// contexts count up from it.
const rootContextID = 1

type instKey struct{}

// guestCallCtx is the context of an instance's callbacks: it carries the
// instance to host functions (instKey) and nothing else. wazero looks up a
// key in the context of every call into the guest (its snapshotter), which
// walked the instance's whole context chain to the root and missed; here
// that is one type test. Cancellation is not lost: wazero does not watch a
// call's context (the engine leaves WithCloseOnContextDone off, see
// NewEngine), the watchdog bounds callbacks, and closing an instance takes
// its lock, so no callback is running then.
type guestCallCtx struct{ i *instance }

func (guestCallCtx) Deadline() (time.Time, bool) { return time.Time{}, false }
func (guestCallCtx) Done() <-chan struct{}       { return nil }
func (guestCallCtx) Err() error                  { return nil }

func (c guestCallCtx) Value(key any) any {
	if _, ok := key.(instKey); ok {
		return c.i
	}
	return nil
}

// guestFuncs are the guest exports the host calls; a nil entry is an export
// the module does not have, and the host then skips that callback.
type guestFuncs struct {
	malloc, contextCreate, vmStart, configure                    api.Function
	requestHeaders, requestBody, requestTrailers                 api.Function
	responseHeaders, responseBody, responseTrailers              api.Function
	httpCallResponse, tick, queueReady, log, done, deleteContext api.Function

	// meshd's fast ABI (see doc.go, "Fast ABI"): meshd_on_context_create,
	// meshd_on_request_headers and meshd_on_delete; nil unless the guest
	// exports meshd_scratch_buffer and the host uses it.
	contextCreateMask, requestHeadersFused, deleteBatch api.Function
}

// instance is one VM: a module instance with its root context. Guest calls
// are serialized by mu (the ABI is single-threaded per VM).
type instance struct {
	p    *Plugin
	slot int
	mod  api.Module
	fns  guestFuncs

	// ctx carries instKey → the instance; cancelled when the instance
	// closes (which stops the worker).
	ctx    context.Context
	cancel context.CancelFunc
	// callCtx is the context of callbacks (see guestCallCtx).
	callCtx context.Context

	// interrupt is the guest's interruptExport global (nil for trusted
	// guests): the watchdog sets it to stop a callback that overran.
	interrupt api.MutableGlobal
	// The running guest call, for the watchdog (Plugin.watchdog): wdStart
	// is its start on monoNow's clock, 0 while no call runs and wdTripped
	// once the watchdog stopped it; wdLimit is its limit in nanoseconds,
	// stored before wdStart. Atomics, not a mutex: guarded runs for every
	// guest entry, and the watchdog's compare-and-swap on wdStart cannot
	// trip a later call than the one it timed.
	wdStart atomic.Int64
	wdLimit atomic.Int64

	broken atomic.Bool
	closed atomic.Bool
	nextID atomic.Uint32 // context ids

	// scratch is the guest's fast-ABI buffer: host-call results that fit
	// are written there, and meshd_on_delete reads context ids from it.
	// Zero scratchCap: the guest speaks only the standard ABI. Set at start.
	scratchPtr, scratchCap uint32

	mu        sync.Mutex
	names     nameCache               // guarded by mu: header names and values of host calls
	stack     []uint64                // guarded by mu
	deletes   []uint32                // guarded by mu: contexts whose proxy_on_delete is deferred
	streams   map[uint32]*HTTPContext // guarded by mu
	effective uint32                  // guarded by mu: context host calls act on
	callResp  *httpCallResult         // guarded by mu: set during proxy_on_http_call_response
	nextToken uint32                  // guarded by mu

	// Events for the worker goroutine (ticks, queue ready, HTTP-call
	// responses); evMu is never held while calling the guest.
	evMu       sync.Mutex
	tickPeriod time.Duration    // guarded by evMu
	tickDirty  bool             // guarded by evMu
	queueReady map[uint32]bool  // guarded by evMu
	responses  []httpCallResult // guarded by evMu
	signal     chan struct{}
}

type httpCallResult struct {
	token             uint32
	headers, trailers [][2]string
	body              []byte
	err               error
}

// startInstance instantiates the module and runs _initialize,
// proxy_on_context_create(root), proxy_on_vm_start and proxy_on_configure.
func (p *Plugin) startInstance(ctx context.Context, slot int) (*instance, error) {
	i := &instance{
		p:          p,
		slot:       slot,
		streams:    make(map[uint32]*HTTPContext),
		names:      make(nameCache),
		queueReady: make(map[uint32]bool),
		signal:     make(chan struct{}, 1),
		stack:      make([]uint64, 8),
	}
	i.nextID.Store(rootContextID)
	ictx, cancel := context.WithCancel(p.ctx)
	i.ctx, i.cancel = context.WithValue(ictx, instKey{}, i), cancel
	i.callCtx = guestCallCtx{i}

	startDeadline := time.Now().Add(p.cfg.StartTimeout)
	sctx, scancel := context.WithDeadline(ctx, startDeadline)
	defer scancel()
	sctx = context.WithValue(sctx, instKey{}, i)
	out := &logWriter{log: p.log, slot: slot}
	mc := wazero.NewModuleConfig().WithName("").WithStartFunctions().
		WithSysWalltime().WithSysNanotime().WithSysNanosleep().WithRandSource(rand.Reader).
		WithStdout(out).WithStderr(out)
	mod, err := p.engine.rt.InstantiateModule(sctx, p.code, mc)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("instantiate: %w", err)
	}
	i.mod = mod
	p.watch(i)
	fail := func(err error) (*instance, error) {
		p.unwatch(i)
		cancel()
		_ = mod.Close(context.Background())
		return nil, err
	}
	if mod.Memory() == nil {
		return fail(errors.New("module exports no memory"))
	}
	if !p.engine.trusted {
		g, ok := mod.ExportedGlobal(interruptExport).(api.MutableGlobal)
		if !ok {
			return fail(fmt.Errorf("instrumented module lacks the mutable global %s", interruptExport))
		}
		i.interrupt = g
	}
	// startCall runs one start step under what is left of StartTimeout,
	// enforced by the watchdog like a callback deadline.
	startCall := func(fn api.Function, name string, args ...uint64) (uint64, error) {
		r, err, overran := i.guarded(sctx, fn, name, time.Until(startDeadline), args...)
		if overran {
			err = fmt.Errorf("%s: exceeded the %v start timeout: %w", name, p.cfg.StartTimeout, errors.Join(err, context.DeadlineExceeded))
		}
		return r, err
	}
	f := mod.ExportedFunction
	i.fns = guestFuncs{
		malloc: f("proxy_on_memory_allocate"), contextCreate: f("proxy_on_context_create"),
		vmStart: f("proxy_on_vm_start"), configure: f("proxy_on_configure"),
		requestHeaders: f("proxy_on_request_headers"), requestBody: f("proxy_on_request_body"),
		requestTrailers: f("proxy_on_request_trailers"), responseHeaders: f("proxy_on_response_headers"),
		responseBody: f("proxy_on_response_body"), responseTrailers: f("proxy_on_response_trailers"),
		httpCallResponse: f("proxy_on_http_call_response"), tick: f("proxy_on_tick"),
		queueReady: f("proxy_on_queue_ready"), log: f("proxy_on_log"), done: f("proxy_on_done"),
		deleteContext: f("proxy_on_delete"), contextCreateMask: f("meshd_on_context_create"),
	}
	if i.fns.malloc == nil {
		i.fns.malloc = f("malloc")
	}
	if i.fns.malloc == nil {
		return fail(errors.New("module exports neither proxy_on_memory_allocate nor malloc"))
	}
	if i.fns.contextCreate == nil {
		return fail(errors.New("module does not export proxy_on_context_create"))
	}
	if init := f("_initialize"); init != nil {
		if _, err := startCall(init, "_initialize"); err != nil {
			return fail(err)
		}
	}
	if sb := f("meshd_scratch_buffer"); sb != nil && !p.cfg.standardABI {
		r, err := startCall(sb, "meshd_scratch_buffer")
		if err != nil {
			return fail(err)
		}
		ptr, size := uint32(r>>32), uint32(r)
		if size < minScratch || !writable(mod, ptr, size) {
			return fail(fmt.Errorf("meshd_scratch_buffer: %d bytes at %#x: want at least %d bytes inside guest memory", size, ptr, minScratch))
		}
		i.scratchPtr, i.scratchCap = ptr, size
		i.fns.requestHeadersFused = f("meshd_on_request_headers")
		i.fns.deleteBatch = f("meshd_on_delete")
		i.deletes = make([]uint32, 0, min(maxDeferredDeletes, size/4))
	} else {
		i.fns.contextCreateMask = nil // the standard ABI only
	}
	i.effective = rootContextID
	if _, err := startCall(i.fns.contextCreate, "proxy_on_context_create(root)", rootContextID, 0); err != nil {
		return fail(err)
	}
	for _, step := range []struct {
		fn   api.Function
		name string
		size int
	}{
		{i.fns.vmStart, "proxy_on_vm_start", len(p.cfg.VMConfig)},
		{i.fns.configure, "proxy_on_configure", len(p.cfg.PluginConfig)},
	} {
		if step.fn == nil {
			continue
		}
		ok, err := startCall(step.fn, step.name, rootContextID, uint64(step.size))
		if err != nil {
			return fail(err)
		}
		if uint32(ok) == 0 {
			return fail(fmt.Errorf("%s returned false (the guest rejected its configuration; see its log)", step.name))
		}
	}
	p.wg.Add(1)
	go i.worker()
	return i, nil
}

// invoke calls fn with args and returns its first result. It neither locks
// nor applies a deadline: host functions use it for nested calls (the
// guest's allocator), which the enclosing guarded call bounds.
func (i *instance) invoke(ctx context.Context, fn api.Function, name string, args ...uint64) (uint64, error) {
	stack := i.stack
	if len(stack) < len(args) {
		stack = make([]uint64, len(args))
	}
	copy(stack, args)
	if err := fn.CallWithStack(ctx, stack); err != nil {
		return 0, fmt.Errorf("%s: %w", name, err)
	}
	return stack[0], nil
}

// guarded is invoke under a deadline of limit from now, which the plugin's
// watchdog enforces by setting the interrupt global (the guest then traps at
// its next loop iteration). overran reports that the call ran past limit,
// whether or not it was stopped; the instance must then be discarded.
func (i *instance) guarded(ctx context.Context, fn api.Function, name string, limit time.Duration, args ...uint64) (r uint64, err error, overran bool) {
	start := monoNow()
	i.wdLimit.Store(int64(limit))
	i.wdStart.Store(start)
	r, err = i.invoke(ctx, fn, name, args...)
	end := monoNow()
	tripped := i.wdStart.Swap(0) == wdTripped
	return r, err, tripped || time.Duration(end-start) > limit
}

// wdTripped is instance.wdStart once the watchdog stopped the call.
const wdTripped = -1

// monoEpoch is the origin of monoNow's clock, read once at init.
var monoEpoch = time.Now()

// monoNow is the time since monoEpoch in nanoseconds on the monotonic clock
// (one clock read, where time.Now makes two), at least 1 so that 0 can mean
// "no call".
func monoNow() int64 { return int64(time.Since(monoEpoch)) + 1 }

// checkDeadline is the watchdog's test of one instance at now (monoNow): a
// call that has run past its limit is marked tripped and, unless the guest
// is trusted, interrupted. The compare-and-swap fails when that call ended
// (or another began) after the loads, so a later call is never tripped for
// an earlier one's time.
func (i *instance) checkDeadline(now int64) {
	start := i.wdStart.Load()
	if start <= 0 || now-start <= i.wdLimit.Load() {
		return
	}
	if !i.wdStart.CompareAndSwap(start, wdTripped) {
		return
	}
	if i.interrupt != nil {
		i.interrupt.Set(1)
	}
}

// call runs one callback under the callback deadline; i.mu must be held.
// Any failure (trap, deadline, closed module) breaks the instance, which is
// then replaced in the background, and returns an error wrapping
// ErrUnavailable.
func (i *instance) call(fn api.Function, name string, args ...uint64) (uint64, error) {
	if i.broken.Load() {
		return 0, ErrUnavailable
	}
	r, err, overran := i.guarded(i.callCtx, fn, name, i.p.cfg.CallbackTimeout, args...)
	if overran {
		// Even a call that finished is suspect after the deadline (the
		// watchdog may have set the interrupt flag as it returned), so the
		// instance is not used again.
		err = fmt.Errorf("%s: exceeded the %v callback deadline: %w", name, i.p.cfg.CallbackTimeout, errors.Join(err, context.DeadlineExceeded))
	}
	if err == nil && i.broken.Load() {
		err = fmt.Errorf("%s: instance broke during the call", name)
	}
	if err != nil {
		i.fail(err)
		return 0, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return r, nil
}

// fail marks the instance broken once and hands it to the plugin for
// replacement.
func (i *instance) fail(err error) {
	if i.broken.CompareAndSwap(false, true) {
		i.p.replace(i, err)
	}
}

func (i *instance) isBroken() bool { return i.broken.Load() }
func (i *instance) isClosed() bool { return i.closed.Load() }

// close stops the worker and closes the module; in-flight callbacks finish
// (or hit their deadline) first.
func (i *instance) close() {
	i.broken.Store(true)
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.closed.Swap(true) {
		return
	}
	i.cancel()
	i.p.unwatch(i)
	_ = i.mod.Close(context.Background())
}

// minScratch is the smallest scratch buffer the host accepts from
// meshd_scratch_buffer.
const minScratch = 64

// maxDeferredDeletes bounds the contexts whose proxy_on_delete is deferred
// in one instance (see deferDelete); the scratch buffer may bound it lower.
const maxDeferredDeletes = 4

// deferDelete queues proxy_on_delete of context id for the next batch,
// delivering the batch once it is full; i.mu must be held.
func (i *instance) deferDelete(id uint32) error {
	i.deletes = append(i.deletes, id)
	if len(i.deletes) < cap(i.deletes) {
		return nil
	}
	return i.flushDeletes()
}

// flushDeletes runs meshd_on_delete for the deferred contexts, their ids
// written into the guest's scratch buffer; i.mu must be held. It runs
// before every root-context callback and at shutdown, so a root callback
// never sees a finished stream's context still alive.
func (i *instance) flushDeletes() error {
	if len(i.deletes) == 0 || i.broken.Load() {
		i.deletes = i.deletes[:0]
		return nil
	}
	mem := i.mod.Memory()
	for k, id := range i.deletes {
		mem.WriteUint32Le(i.scratchPtr+4*uint32(k), id)
	}
	n := len(i.deletes)
	i.deletes = i.deletes[:0]
	prev := i.effective
	i.effective = rootContextID
	_, err := i.call(i.fns.deleteBatch, "meshd_on_delete", uint64(n))
	i.effective = prev
	return err
}

// shutdown runs proxy_on_done and proxy_on_delete on the root context of a
// healthy instance, then closes it.
func (i *instance) shutdown() {
	i.mu.Lock()
	if !i.broken.Load() && !i.closed.Load() {
		_ = i.flushDeletes()
		i.effective = rootContextID
		if i.fns.done != nil {
			_, _ = i.call(i.fns.done, "proxy_on_done(root)", rootContextID)
		}
		if i.fns.deleteContext != nil && !i.broken.Load() {
			_, _ = i.call(i.fns.deleteContext, "proxy_on_delete(root)", rootContextID)
		}
	}
	i.broken.Store(true)
	i.mu.Unlock()
	i.close()
}

// notify wakes the worker.
func (i *instance) notify() {
	select {
	case i.signal <- struct{}{}:
	default:
	}
}

// setTick records a new tick period for the worker (0 stops ticks).
func (i *instance) setTick(d time.Duration) {
	i.evMu.Lock()
	i.tickPeriod, i.tickDirty = d, true
	i.evMu.Unlock()
	i.notify()
}

// queueNotify asks the worker to run proxy_on_queue_ready(root, id);
// notifications for one queue coalesce until the callback runs.
func (i *instance) queueNotify(id uint32) {
	i.evMu.Lock()
	i.queueReady[id] = true
	i.evMu.Unlock()
	i.notify()
}

// httpCallDone queues an HTTP-call response for the worker.
func (i *instance) httpCallDone(r httpCallResult) {
	i.evMu.Lock()
	i.responses = append(i.responses, r)
	i.evMu.Unlock()
	i.notify()
}

// worker runs the root context's asynchronous callbacks: ticks, queue
// readiness and HTTP-call responses, each under i.mu like stream callbacks.
// It exits when the instance's context ends (close, deadline, plugin Close).
func (i *instance) worker() {
	defer i.p.wg.Done()
	var ticker *time.Ticker
	var tickC <-chan time.Time
	defer func() {
		if ticker != nil {
			ticker.Stop()
		}
	}()
	for {
		select {
		case <-i.ctx.Done():
			return
		case <-tickC:
			i.rootCallback(i.fns.tick, "proxy_on_tick", rootContextID)
		case <-i.signal:
			i.evMu.Lock()
			period, dirty := i.tickPeriod, i.tickDirty
			i.tickDirty = false
			var queues []uint32
			for id := range i.queueReady {
				queues = append(queues, id)
			}
			clear(i.queueReady)
			responses := i.responses
			i.responses = nil
			i.evMu.Unlock()
			if dirty {
				if ticker != nil {
					ticker.Stop()
					ticker, tickC = nil, nil
				}
				if period > 0 {
					ticker = time.NewTicker(period)
					tickC = ticker.C
				}
			}
			sort.Slice(queues, func(a, b int) bool { return queues[a] < queues[b] })
			for _, id := range queues {
				i.rootCallback(i.fns.queueReady, "proxy_on_queue_ready", rootContextID, uint64(id))
			}
			for _, r := range responses {
				i.deliverHTTPCall(r)
			}
		}
	}
}

// rootCallback runs fn on the root context if the module exports it.
func (i *instance) rootCallback(fn api.Function, name string, args ...uint64) {
	if fn == nil {
		return
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.broken.Load() || i.flushDeletes() != nil {
		return
	}
	i.effective = rootContextID
	_, _ = i.call(fn, name, args...)
}

// deliverHTTPCall runs proxy_on_http_call_response on the root context that
// dispatched the call; a failed call is delivered with no headers, body or
// trailers, as Envoy does.
func (i *instance) deliverHTTPCall(r httpCallResult) {
	if i.fns.httpCallResponse == nil {
		return
	}
	if r.err != nil {
		i.p.log.Debug("wasm http_call failed", "token", r.token, "error", r.err)
		r.headers, r.body, r.trailers = nil, nil, nil
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.broken.Load() || i.flushDeletes() != nil {
		return
	}
	i.effective = rootContextID
	i.callResp = &r
	_, _ = i.call(i.fns.httpCallResponse, "proxy_on_http_call_response", rootContextID, uint64(r.token),
		uint64(len(r.headers)), uint64(len(r.body)), uint64(len(r.trailers)))
	i.callResp = nil
}

// logWriter sends a guest's stdout/stderr to the plugin logger, one record
// per line (Go guests write a panic trace in many small writes). Lines
// longer than maxGuestLine are split.
type logWriter struct {
	log  *slog.Logger
	slot int
	mu   sync.Mutex
	buf  []byte
}

const maxGuestLine = 4096

func (w *logWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, b...)
	for {
		n := bytes.IndexByte(w.buf, '\n')
		if n < 0 && len(w.buf) < maxGuestLine {
			return len(b), nil
		}
		if n < 0 {
			n = maxGuestLine
		}
		w.log.Info("wasm guest output", "wasm_slot", w.slot, "text", string(w.buf[:n]))
		w.buf = w.buf[min(n+1, len(w.buf)):]
	}
}

var _ io.Writer = (*logWriter)(nil)
