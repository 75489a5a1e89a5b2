package wasm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetratelabs/wazero"
)

// DefaultCallbackTimeout bounds one guest callback (headers, body, trailers,
// tick, queue ready, HTTP-call response, log/done/delete). A callback still
// running at the deadline is interrupted (the plugin's watchdog sets the
// instance's interrupt flag, which the guest tests at every loop iteration;
// see instrumentLoops), the instance is replaced, and the call returns an
// error. It is one second, not tens of milliseconds: the deadline is wall
// clock, and on a loaded two-core machine (or under the race detector) a
// healthy callback was seen to overrun 100 ms, which broke its instance and
// failed or failed open a request that had done nothing wrong. A guest that
// loops forever still costs at most one second per broken instance.
const DefaultCallbackTimeout = time.Second

// DefaultStartTimeout bounds instantiation of one VM: _initialize,
// proxy_on_vm_start and proxy_on_configure together. Go guests start their
// runtime in _initialize, which takes milliseconds on an idle machine and
// seconds on a busy one; the bound only catches a guest that never starts.
const DefaultStartTimeout = 30 * time.Second

// ErrUnavailable is returned by callbacks when the stream's instance broke
// (trap, deadline, closed plugin) or no healthy instance exists. The FILTER
// side applies fail_open.
var ErrUnavailable = errors.New("wasm: VM instance unavailable")

// Config configures a Plugin: one proxy-wasm plugin (root context) running in
// a pool of VM instances of one module.
type Config struct {
	// Module is the wasm binary. It is compiled once per Engine, keyed by
	// its sha256.
	Module []byte
	// RootID is the root_id the root context is created for; properties
	// plugin_root_id reads it.
	RootID string
	// VMID scopes shared data and shared queues, like Envoy's vm_id.
	VMID string
	// PluginConfig is the buffer proxy_on_configure reads
	// (BufferPluginConfiguration); VMConfig the one proxy_on_vm_start reads.
	PluginConfig, VMConfig []byte
	// PoolSize is the number of VM instances; 0 means runtime.GOMAXPROCS(0).
	PoolSize int
	// Logger receives proxy_log output and instance lifecycle events; nil
	// means slog.Default().
	Logger *slog.Logger
	// Host provides HTTP calls, metrics and plugin-wide properties. Required.
	Host HostServices
	// Engine is the runtime and compile cache to use. nil gives the Plugin
	// a private Engine closed with it (no sharing of compiled code or shared
	// data with other plugins).
	Engine *Engine
	// CallbackTimeout bounds each guest callback; 0 means
	// DefaultCallbackTimeout.
	CallbackTimeout time.Duration
	// StartTimeout bounds the start of each instance; 0 means
	// DefaultStartTimeout.
	StartTimeout time.Duration

	// standardABI makes the host ignore the guest's meshd_* exports (see
	// doc.go, "Fast ABI"), as any other proxy-wasm host would; tests use
	// it to check that both ABIs behave the same.
	standardABI bool
}

// HostServices is what the proxy provides to guests beyond one stream. The
// FILTER side implements it; its methods may be called concurrently.
type HostServices interface {
	// HTTPCall starts a request to cluster and returns at once; a non-nil
	// error means no call was started (the guest sees BadArgument for an
	// unknown cluster, InternalFailure otherwise). done is called exactly
	// once, from any goroutine, possibly before HTTPCall returns.
	HTTPCall(cluster string, headers [][2]string, body []byte, trailers [][2]string, timeout time.Duration,
		done func(headers [][2]string, body []byte, trailers [][2]string, err error)) error
	// Metric returns the handle for a guest metric; it is called once per
	// name per Plugin and the handle is shared by all instances.
	Metric(name string, kind MetricKind) MetricHandle
	// Property returns a property that does not depend on a stream (node
	// metadata, plugin_name, ...); path is the NUL-split property path.
	Property(path []string) ([]byte, bool)
}

// ErrUnknownCluster is what HostServices.HTTPCall returns (wrapped) for a
// cluster that does not exist; the guest then sees StatusBadArgument.
var ErrUnknownCluster = errors.New("unknown cluster")

// MetricHandle is one guest-defined metric. Counters take Add, gauges Add
// and Record (set), histograms Record.
type MetricHandle interface {
	Add(delta int64)
	Record(value uint64)
	Value() uint64
}

// HeaderMap is one header or trailer map of a stream, edited in place by
// the host during a callback. Names are lower-case, as HTTP/2 carries them.
type HeaderMap interface {
	// Get returns the values of name joined with "," and whether any exists.
	Get(name string) (string, bool)
	// Pairs returns all pairs in order.
	Pairs() [][2]string
	// SetPairs replaces the whole map.
	SetPairs(pairs [][2]string)
	// Add appends a pair.
	Add(name, value string)
	// Set replaces all values of name with value.
	Set(name, value string)
	// Del removes all values of name.
	Del(name string)
}

// StreamHost is one HTTP stream as the FILTER side exposes it to the guest.
// The host calls it only while it runs a callback of the stream's instance
// (callbacks of one instance never overlap); that may be a tick, queue or
// HTTP-call callback on another goroutine than the stream's, while the
// stream is paused.
type StreamHost interface {
	// Headers returns the map of type m (MapRequestHeaders ...
	// MapResponseTrailers) or nil when the stream has no such map now.
	Headers(m MapType) HeaderMap
	// Body returns the buffered body of b (BufferRequestBody or
	// BufferResponseBody) and whether one exists now.
	Body(b BufferType) ([]byte, bool)
	// SetBody replaces the buffered body of b; false when there is none.
	SetBody(b BufferType, data []byte) bool
	// Property returns a per-stream property (request.*, source.address,
	// source.principal, destination.*, ...); path is NUL-split.
	Property(path []string) ([]byte, bool)
	// SendLocalResponse answers the stream; grpcStatus is -1 when the guest
	// gave none. Headers are the guest's extra response headers.
	SendLocalResponse(status int, details string, body []byte, headers [][2]string, grpcStatus int32) error
	// Resume continues the paused direction s.
	Resume(s StreamType)
	// Reset ends the stream (proxy_close_stream).
	Reset(s StreamType)
}

// Plugin is one configured proxy-wasm plugin: a pool of VM instances of one
// module, each with a root context that ran proxy_on_vm_start and
// proxy_on_configure.
//
// Pool policy: a stream is pinned to one instance for its life, because
// proxy-wasm contexts live inside one VM; an instance serves many streams,
// running their callbacks one at a time under its mutex, since the ABI is
// single-threaded per VM. The alternative, one instance per in-flight
// stream, needs as many instances as concurrent streams (each a Go runtime of
// several MiB) and makes root-context state such as ticks per-stream; pinning
// keeps PoolSize instances and costs contention only when more than PoolSize
// callbacks run at once. New streams go round robin to healthy instances.
type Plugin struct {
	cfg     Config
	log     *slog.Logger
	engine  *Engine
	ownEng  bool
	sum     [32]byte
	code    wazero.CompiledModule
	abi     string
	ctx     context.Context // cancelled by Close; parent of instance contexts
	cancel  context.CancelFunc
	wg      sync.WaitGroup // replacement, tick and callback goroutines
	next    atomic.Uint32
	closing atomic.Bool

	watchMu sync.Mutex
	watched map[*instance]struct{} // guarded by watchMu: instances the watchdog checks

	mu        sync.Mutex
	instances []*instance       // guarded by mu; a broken one is replaced in place
	metricIDs map[string]uint32 // guarded by mu
	// metrics is index = metric id - 1, replaced whole (under mu) when a
	// metric is defined, so that the per-request increments read it
	// without a lock shared by all instances.
	metrics atomic.Pointer[[]MetricHandle]
}

// NewPlugin compiles cfg.Module (cached by sha256 in the Engine) and starts
// PoolSize instances, each running _initialize, then proxy_on_context_create
// for the root context, proxy_on_vm_start and proxy_on_configure. The error
// names any import the host does not provide, a missing ABI version export,
// or the callback that failed.
func NewPlugin(ctx context.Context, cfg Config) (*Plugin, error) {
	if cfg.Host == nil {
		return nil, errors.New("wasm: Config.Host is required")
	}
	if len(cfg.Module) == 0 {
		return nil, errors.New("wasm: Config.Module is empty")
	}
	if cfg.PoolSize < 0 {
		return nil, fmt.Errorf("wasm: pool size %d is negative", cfg.PoolSize)
	}
	if cfg.PoolSize == 0 {
		cfg.PoolSize = runtime.GOMAXPROCS(0)
	}
	if cfg.CallbackTimeout <= 0 {
		cfg.CallbackTimeout = DefaultCallbackTimeout
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = DefaultStartTimeout
	}
	p := &Plugin{cfg: cfg, engine: cfg.Engine, metricIDs: make(map[string]uint32)}
	p.log = cfg.Logger
	if p.log == nil {
		p.log = slog.Default()
	}
	p.log = p.log.With("wasm_root_id", cfg.RootID, "wasm_vm_id", cfg.VMID)
	if p.engine == nil {
		e, err := NewEngine(ctx, EngineConfig{})
		if err != nil {
			return nil, err
		}
		p.engine, p.ownEng = e, true
	}
	code, sum, err := p.engine.compile(ctx, cfg.Module)
	if err != nil {
		p.closeEngine()
		return nil, fmt.Errorf("wasm: %w", err)
	}
	p.code, p.sum = code, sum
	if p.abi, err = checkModule(code); err != nil {
		p.engine.release(ctx, sum)
		p.closeEngine()
		return nil, fmt.Errorf("wasm: module sha256 %x: %w", sum, err)
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.watched = make(map[*instance]struct{})
	p.wg.Add(1)
	go p.watchdog()
	p.instances = make([]*instance, cfg.PoolSize)
	for i := range p.instances {
		inst, err := p.startInstance(ctx, i)
		if err != nil {
			p.Close()
			return nil, fmt.Errorf("wasm: instance %d of %d: %w", i, cfg.PoolSize, err)
		}
		p.instances[i] = inst
	}
	return p, nil
}

// ABIVersion returns the proxy-wasm ABI the module exports ("0.2.0" or
// "0.2.1").
func (p *Plugin) ABIVersion() string { return p.abi }

// Close stops ticks, waits for callbacks in flight, runs proxy_on_done and
// proxy_on_delete on every root context and closes the instances. Streams
// still open get ErrUnavailable. Close is idempotent.
func (p *Plugin) Close() {
	if !p.closing.CompareAndSwap(false, true) {
		return
	}
	if p.cancel != nil {
		p.mu.Lock()
		insts := append([]*instance(nil), p.instances...)
		p.mu.Unlock()
		for _, inst := range insts {
			if inst != nil {
				inst.shutdown()
			}
		}
		p.cancel()
		p.wg.Wait()
	}
	p.engine.release(context.Background(), p.sum)
	p.closeEngine()
}

func (p *Plugin) closeEngine() {
	if p.ownEng {
		_ = p.engine.Close(context.Background())
	}
}

// watchPeriod is how often the watchdog checks running calls for a
// callback deadline of d: a quarter of it, between 1 ms and 25 ms, so a
// callback is stopped at most max(d/4, 1 ms, 25 ms) late.
func watchPeriod(d time.Duration) time.Duration {
	return min(max(d/4, time.Millisecond), 25*time.Millisecond)
}

// watchdog stops guest calls that overran their deadline (see
// instance.checkDeadline) until the plugin closes. One goroutine per plugin
// replaces wazero's goroutine per guest call.
func (p *Plugin) watchdog() {
	defer p.wg.Done()
	t := time.NewTicker(watchPeriod(p.cfg.CallbackTimeout))
	defer t.Stop()
	var insts []*instance
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-t.C:
			p.watchMu.Lock()
			for i := range p.watched {
				insts = append(insts, i)
			}
			p.watchMu.Unlock()
			now := monoNow()
			for _, i := range insts {
				i.checkDeadline(now)
			}
			clear(insts)
			insts = insts[:0]
		}
	}
}

// watch and unwatch add and remove an instance from the watchdog's set.
func (p *Plugin) watch(i *instance) {
	p.watchMu.Lock()
	p.watched[i] = struct{}{}
	p.watchMu.Unlock()
}

func (p *Plugin) unwatch(i *instance) {
	p.watchMu.Lock()
	delete(p.watched, i)
	p.watchMu.Unlock()
}

// pick returns a healthy instance, round robin, or nil when all are broken.
func (p *Plugin) pick() *instance {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.instances)
	start := int(p.next.Add(1))
	for i := range n {
		inst := p.instances[(start+i)%n]
		if inst != nil && !inst.isBroken() {
			return inst
		}
	}
	return nil
}

// replace is called once when inst broke: it closes inst and starts a new
// instance in its slot in the background, retrying with backoff while the
// module fails to start.
func (p *Plugin) replace(inst *instance, cause error) {
	p.log.Warn("wasm VM instance broken, replacing", "slot", inst.slot, "error", cause)
	if p.closing.Load() {
		return // Close shuts every slot's instance down
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		inst.close()
		backoff := 100 * time.Millisecond
		for !p.closing.Load() {
			ctx, cancel := context.WithTimeout(p.ctx, p.cfg.StartTimeout)
			fresh, err := p.startInstance(ctx, inst.slot)
			cancel()
			if err == nil {
				p.mu.Lock()
				if p.closing.Load() {
					p.mu.Unlock()
					fresh.shutdown()
					return
				}
				p.instances[inst.slot] = fresh
				p.mu.Unlock()
				p.log.Info("wasm VM instance replaced", "slot", inst.slot)
				return
			}
			if p.closing.Load() {
				return
			}
			p.log.Error("wasm VM instance restart failed", "slot", inst.slot, "error", err)
			select {
			case <-p.ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
		}
	}()
}

// defineMetric returns the plugin-wide id of metric name, defining it.
func (p *Plugin) defineMetric(name string, kind MetricKind) uint32 {
	p.mu.Lock()
	defer p.mu.Unlock()
	if id, ok := p.metricIDs[name]; ok {
		return id
	}
	var ms []MetricHandle
	if cur := p.metrics.Load(); cur != nil {
		ms = *cur
	}
	ms = append(ms[:len(ms):len(ms)], p.cfg.Host.Metric(name, kind))
	p.metrics.Store(&ms)
	id := uint32(len(ms))
	p.metricIDs[name] = id
	return id
}

// metric returns the handle of id, or nil.
func (p *Plugin) metric(id uint32) MetricHandle {
	ms := p.metrics.Load()
	if ms == nil || id == 0 || int(id) > len(*ms) {
		return nil
	}
	return (*ms)[id-1]
}

// healthyInstances reports how many instances are not broken.
func (p *Plugin) healthyInstances() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, inst := range p.instances {
		if inst != nil && !inst.isBroken() {
			n++
		}
	}
	return n
}
