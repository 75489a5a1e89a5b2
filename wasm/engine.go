package wasm

import (
	"context"
	"crypto/sha256"
	"fmt"
	"sync"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
)

// DefaultMemoryLimitPages is the default cap on each guest instance's linear
// memory: 2048 pages of 64 KiB, 128 MiB. A Go guest built with the standard
// toolchain uses a few MiB; a growth past the cap fails memory.grow inside the
// guest (its allocator traps), which the host treats like any other trap.
const DefaultMemoryLimitPages = 2048

// EngineConfig configures an Engine. The zero value is valid.
type EngineConfig struct {
	// MemoryLimitPages caps every instance's linear memory, in 64 KiB pages.
	// 0 means DefaultMemoryLimitPages.
	MemoryLimitPages uint32
	// TrustedGuests skips the loop instrumentation that lets the host stop a
	// callback at its deadline (see instrumentLoops): the module runs as
	// compiled from its own bytes, and a callback that loops forever can no
	// longer be interrupted: it hangs its instance and the streams pinned to
	// it. A callback that overruns Config.CallbackTimeout and then returns
	// still breaks (and replaces) its instance. The instrumentation costs one
	// load and branch per loop iteration, so this saves little; use it only
	// for modules you trust.
	TrustedGuests bool
	// Cache, when set, shares compiled machine code across Engines (for
	// example wazero.NewCompilationCacheWithDir for faster sidecar restarts).
	// Code in a Cache lives until the Cache is closed, even after the last
	// Plugin using it closed.
	Cache wazero.CompilationCache
}

// Engine is one wazero runtime with the proxy-wasm "env" host module and
// WASI instantiated in it, a cache of compiled modules keyed by the sha256 of
// their bytes, and the shared data and shared queues of every VM id. A sidecar
// holds one Engine for its life, so a filter reconfigured with the same module
// compiles nothing and keeps its shared data, as Envoy keeps them per vm_id.
// An Engine is safe for concurrent use.
type Engine struct {
	rt wazero.Runtime
	// cached: compiled code belongs to an EngineConfig.Cache, so release
	// must not delete it from there.
	cached bool
	// trusted: modules are compiled without the interruption checks.
	trusted bool

	mu       sync.Mutex
	compiled map[[32]byte]*compiledEntry // guarded by mu
	shared   sharedStore
}

type compiledEntry struct {
	mod  wazero.CompiledModule
	refs int
}

// NewEngine creates a runtime with the configured memory limit. Guest
// callbacks are bounded by loop instrumentation and a per-plugin watchdog
// (see instrumentLoops), not by wazero's WithCloseOnContextDone, which costs
// a goroutine per guest call and an exit to Go at every loop iteration.
func NewEngine(ctx context.Context, cfg EngineConfig) (*Engine, error) {
	pages := cfg.MemoryLimitPages
	if pages == 0 {
		pages = DefaultMemoryLimitPages
	}
	if pages > 65536 {
		return nil, fmt.Errorf("wasm: memory_limit_pages %d exceeds the 32-bit maximum 65536", pages)
	}
	rc := wazero.NewRuntimeConfig().WithMemoryLimitPages(pages)
	if cfg.Cache != nil {
		rc = rc.WithCompilationCache(cfg.Cache)
	}
	rt := wazero.NewRuntimeWithConfig(ctx, rc)
	if _, err := wasi_snapshot_preview1.Instantiate(ctx, rt); err != nil {
		_ = rt.Close(ctx)
		return nil, fmt.Errorf("wasm: instantiate WASI: %w", err)
	}
	if err := instantiateHostModule(ctx, rt); err != nil {
		_ = rt.Close(ctx)
		return nil, fmt.Errorf("wasm: instantiate proxy-wasm host module: %w", err)
	}
	e := &Engine{rt: rt, compiled: make(map[[32]byte]*compiledEntry), cached: cfg.Cache != nil, trusted: cfg.TrustedGuests}
	e.shared.init()
	return e, nil
}

// Close closes the runtime and every instance created from it.
func (e *Engine) Close(ctx context.Context) error {
	return e.rt.Close(ctx)
}

// compile returns the compiled module for bin, compiling it only when no
// module with the same sha256 is cached. Each call must be paired with
// release(sum) once the caller no longer instantiates the module.
func (e *Engine) compile(ctx context.Context, bin []byte) (wazero.CompiledModule, [32]byte, error) {
	sum := sha256.Sum256(bin)
	e.mu.Lock()
	if c, ok := e.compiled[sum]; ok {
		c.refs++
		e.mu.Unlock()
		return c.mod, sum, nil
	}
	e.mu.Unlock()
	// Compile outside the lock: compiling a multi-MiB module takes seconds.
	code := bin
	if !e.trusted {
		var err error
		if code, err = instrumentLoops(bin); err != nil {
			return nil, sum, fmt.Errorf("compile module sha256 %x: add interruption checks: %w", sum, err)
		}
	}
	mod, err := e.rt.CompileModule(ctx, code)
	if err != nil {
		return nil, sum, fmt.Errorf("compile module sha256 %x: %w", sum, err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if c, ok := e.compiled[sum]; ok { // compiled concurrently
		c.refs++
		_ = mod.Close(ctx)
		return c.mod, sum, nil
	}
	e.compiled[sum] = &compiledEntry{mod: mod, refs: 1}
	return mod, sum, nil
}

// release drops one reference to the compiled module sum and frees its code
// when no plugin uses it any more.
func (e *Engine) release(ctx context.Context, sum [32]byte) {
	e.mu.Lock()
	c, ok := e.compiled[sum]
	last := false
	if ok {
		c.refs--
		if last = c.refs == 0; last {
			delete(e.compiled, sum)
		}
	}
	e.mu.Unlock()
	// Decide under the lock: a concurrent compile of the same module may
	// already have taken a new reference by now.
	if last && !e.cached {
		_ = c.mod.Close(ctx)
	}
}

// cachedModules reports how many compiled modules the engine holds.
func (e *Engine) cachedModules() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.compiled)
}
