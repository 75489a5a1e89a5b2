// Package wasm is envoy.filters.http.wasm
// (envoy.extensions.filters.http.wasm.v3.Wasm): it runs a proxy-wasm plugin
// (ABI 0.2.0 or 0.2.1) on the wazero-based host of package meshd/wasm and
// adapts its HTTP context to the filter API.
//
// Supported config: config.name, config.root_id, config.configuration
// (google.protobuf.StringValue or BytesValue, the plugin configuration),
// config.fail_open, config.vm_config with vm_id, runtime, code and
// configuration (StringValue or BytesValue, the VM configuration).
// vm_config.code is either local (filename, inline_bytes or inline_string)
// or remote: http_uri.uri is fetched with an HTTP GET (bounded by
// http_uri.timeout, default 10 s) directly, not through http_uri.cluster,
// which is accepted and only named in errors; remote.sha256 is required and
// a module whose sha256 differs is a config error (over xDS: a NACK, the
// previous filter keeps serving). Every runtime name Envoy knows
// (envoy.wasm.runtime.v8, .wamr, .wasmtime, .wavm, .null) and the empty
// string run on wazero, so bootstraps written for Envoy work unchanged;
// any other runtime is an error. Every other field is a config error
// naming it.
//
// Plugins are kept by a Runtime (one per process by default): the key is
// the module's sha256, vm_id, root_id, both configurations and fail_open,
// so an xDS update that repeats a config reuses the running plugin, and a
// changed one starts a new plugin (the module is compiled once per sha256
// by the Engine) while streams that started on the old one finish there.
// A plugin is closed once no Factory refers to it any more (after garbage
// collection of the last one). Each plugin runs a pool of
// max(2, GOMAXPROCS) VM instances; a stream is pinned to one instance.
//
// Failures: a callback that traps, overruns its deadline or finds no
// healthy instance counts wasm.<vm_id>.vm_failed ("default" for an empty
// vm_id) and, with fail_open, lets the stream continue without the filter
// (wasm.<vm_id>.fail_open); without fail_open the request is answered 503
// (wasm.<vm_id>.fail_closed). Guest metrics are exported as
// wasmcustom.<name>, as Envoy names them.
package wasm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	wasmfv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	wasmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/wasm/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"meshd.dev/meshd/filters"
	"meshd.dev/meshd/wasm"
)

// TypeURL is the filter's config type URL.
const TypeURL = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"

// Name is the filter's well-known name.
const Name = "envoy.filters.http.wasm"

// DefaultFetchTimeout bounds the fetch of remote code when http_uri sets
// no timeout.
const DefaultFetchTimeout = 10 * time.Second

// MaxModuleSize bounds a module read from a file or fetched remotely.
const MaxModuleSize = 64 << 20

// runtimes are the vm_config.runtime names accepted; all run on wazero.
var runtimes = map[string]bool{
	"":                            true,
	"envoy.wasm.runtime.v8":       true,
	"envoy.wasm.runtime.wamr":     true,
	"envoy.wasm.runtime.wasmtime": true,
	"envoy.wasm.runtime.wavm":     true,
	"envoy.wasm.runtime.null":     true,
}

func init() {
	filters.Register(TypeURL, func(m proto.Message, ctx filters.FactoryContext) (filters.Factory, error) {
		return Default.Compile(m.(*wasmfv3.Wasm), ctx)
	}, Name)
}

// Default is the Runtime the registered builder uses: the sidecar's WASM
// engine and plugins. It is the package's one piece of process-wide state,
// created on first use, because filter builders have no sidecar-scoped
// context to hang it on (see the package doc).
var Default = NewRuntime(nil)

// Runtime owns a wasm.Engine and the running plugins, keyed by what makes
// them differ. It is safe for concurrent use.
type Runtime struct {
	logger *slog.Logger
	// newPlugin starts a plugin; tests replace it with a fake.
	newPlugin func(ctx context.Context, cfg wasm.Config) (vm, error)

	engOnce sync.Once
	engine  *wasm.Engine
	engErr  error

	closeMu sync.Mutex // serialises plugin Close calls

	mu      sync.Mutex
	plugins map[pluginKey]*pluginEntry // guarded by mu
	fetched map[string][]byte          // remote code by sha256; guarded by mu
	env     hostEnv
}

// NewRuntime returns a Runtime logging to logger (slog.Default when nil).
// Its Engine is created with the first plugin.
func NewRuntime(logger *slog.Logger) *Runtime {
	if logger == nil {
		logger = slog.Default()
	}
	r := &Runtime{logger: logger, plugins: map[pluginKey]*pluginEntry{}, fetched: map[string][]byte{}}
	r.newPlugin = r.startPlugin
	return r
}

// pluginKey identifies a running plugin.
type pluginKey struct {
	sum                    [32]byte
	vmID, rootID, name     string
	pluginConfig, vmConfig string
	failOpen               bool
}

// pluginEntry is one running plugin and the Factories using it.
type pluginEntry struct {
	key  pluginKey
	vm   vm
	refs int // guarded by Runtime.mu
	st   *failStats
}

// settings is a compiled Wasm config.
type settings struct {
	name, rootID, vmID   string
	pluginConfig, vmConf []byte
	failOpen             bool
	module               []byte
}

// Compile validates cfg, loads its module and returns a Factory running it
// on a plugin of r (started, or reused when one with the same key runs).
// Errors name the field below the Wasm message.
func (r *Runtime) Compile(cfg *wasmfv3.Wasm, fctx filters.FactoryContext) (*Factory, error) {
	s, err := r.settings(cfg)
	if err != nil {
		return nil, err
	}
	e, err := r.acquire(s, fctx)
	if err != nil {
		return nil, err
	}
	f := &Factory{rt: r, entry: e, failOpen: s.failOpen, name: s.name, rootID: s.rootID, vmID: s.vmID}
	runtime.AddCleanup(f, r.release, e)
	return f, nil
}

func (r *Runtime) settings(cfg *wasmfv3.Wasm) (*settings, error) {
	pc := cfg.GetConfig()
	switch {
	case pc == nil:
		return nil, fmt.Errorf("config: required")
	//lint:ignore SA1019 read only to refuse it with an error naming the field
	case pc.GetCapabilityRestrictionConfig() != nil:
		return nil, fmt.Errorf("config.capability_restriction_config: not supported")
	case pc.GetReloadConfig() != nil:
		return nil, fmt.Errorf("config.reload_config: not supported (a trapped VM is always replaced)")
	case pc.GetFailurePolicy() != wasmv3.FailurePolicy_UNSPECIFIED:
		return nil, fmt.Errorf("config.failure_policy: not supported (use fail_open)")
	case pc.GetAllowOnHeadersStopIteration() != nil:
		return nil, fmt.Errorf("config.allow_on_headers_stop_iteration: not supported")
	}
	vc := pc.GetVmConfig()
	if vc == nil {
		return nil, fmt.Errorf("config.vm_config: required")
	}
	switch {
	case !runtimes[vc.GetRuntime()]:
		return nil, fmt.Errorf("config.vm_config.runtime: %q is not supported (envoy.wasm.runtime.v8, .wamr, .wasmtime, .wavm, .null all run on wazero)", vc.GetRuntime())
	case vc.GetEnvironmentVariables() != nil:
		return nil, fmt.Errorf("config.vm_config.environment_variables: not supported")
	case vc.GetCapabilityRestrictionConfig() != nil:
		return nil, fmt.Errorf("config.vm_config.capability_restriction_config: not supported")
	}
	//lint:ignore SA1019 the sidecar's failure mode is fail_open, as Envoy's when failure_policy is unset; failure_policy is refused above
	s := &settings{name: pc.GetName(), rootID: pc.GetRootId(), vmID: vc.GetVmId(), failOpen: pc.GetFailOpen()}
	var err error
	if s.pluginConfig, err = anyBytes("config.configuration", pc.GetConfiguration()); err != nil {
		return nil, err
	}
	if s.vmConf, err = anyBytes("config.vm_config.configuration", vc.GetConfiguration()); err != nil {
		return nil, err
	}
	if s.module, err = r.loadCode(vc.GetCode()); err != nil {
		return nil, err
	}
	return s, nil
}

// anyBytes returns the bytes of a StringValue or BytesValue configuration.
func anyBytes(path string, a *anypb.Any) ([]byte, error) {
	if a == nil {
		return nil, nil
	}
	m, err := a.UnmarshalNew()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	switch v := m.(type) {
	case *wrapperspb.StringValue:
		return []byte(v.GetValue()), nil
	case *wrapperspb.BytesValue:
		return v.GetValue(), nil
	}
	return nil, fmt.Errorf("%s: type %s is not supported (google.protobuf.StringValue, google.protobuf.BytesValue)", path, a.GetTypeUrl())
}

// loadCode reads the module of vm_config.code.
func (r *Runtime) loadCode(code *corev3.AsyncDataSource) ([]byte, error) {
	const path = "config.vm_config.code"
	switch {
	case code.GetLocal() != nil:
		l := code.GetLocal()
		switch {
		case l.GetFilename() != "":
			b, err := readFileLimited(l.GetFilename())
			if err != nil {
				return nil, fmt.Errorf("%s.local.filename: %w", path, err)
			}
			return b, nil
		case len(l.GetInlineBytes()) > 0:
			return l.GetInlineBytes(), nil
		case l.GetInlineString() != "":
			return []byte(l.GetInlineString()), nil
		case l.GetEnvironmentVariable() != "":
			return nil, fmt.Errorf("%s.local.environment_variable: not supported", path)
		}
		return nil, fmt.Errorf("%s.local: one of filename, inline_bytes, inline_string is required", path)
	case code.GetRemote() != nil:
		return r.fetch(code.GetRemote())
	}
	return nil, fmt.Errorf("%s: local or remote is required", path)
}

func readFileLimited(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxModuleSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > MaxModuleSize {
		return nil, fmt.Errorf("module larger than %d bytes", MaxModuleSize)
	}
	return b, nil
}

// fetch returns the remote module, from the cache when one with the
// configured sha256 was fetched before.
func (r *Runtime) fetch(rd *corev3.RemoteDataSource) ([]byte, error) {
	const path = "config.vm_config.code.remote"
	if rd.GetRetryPolicy() != nil {
		return nil, fmt.Errorf("%s.retry_policy: not supported", path)
	}
	want := strings.ToLower(rd.GetSha256())
	if want == "" {
		return nil, fmt.Errorf("%s.sha256: required", path)
	}
	if b, err := hex.DecodeString(want); err != nil || len(b) != sha256.Size {
		return nil, fmt.Errorf("%s.sha256: %q is not a hex SHA-256 digest", path, rd.GetSha256())
	}
	r.mu.Lock()
	b, ok := r.fetched[want]
	r.mu.Unlock()
	if ok {
		return b, nil
	}
	u := rd.GetHttpUri()
	if u.GetUri() == "" {
		return nil, fmt.Errorf("%s.http_uri.uri: required", path)
	}
	timeout := DefaultFetchTimeout
	if d := u.GetTimeout(); d != nil && d.AsDuration() > 0 {
		timeout = d.AsDuration()
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.GetUri(), nil)
	if err != nil {
		return nil, fmt.Errorf("%s.http_uri.uri: %w", path, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s.http_uri: fetching %s (cluster %q): %w", path, u.GetUri(), u.GetCluster(), err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s.http_uri: fetching %s: status %d", path, u.GetUri(), resp.StatusCode)
	}
	b, err = io.ReadAll(io.LimitReader(resp.Body, MaxModuleSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s.http_uri: fetching %s: %w", path, u.GetUri(), err)
	}
	if len(b) > MaxModuleSize {
		return nil, fmt.Errorf("%s.http_uri: module at %s is larger than %d bytes", path, u.GetUri(), MaxModuleSize)
	}
	sum := sha256.Sum256(b)
	if got := hex.EncodeToString(sum[:]); got != want {
		return nil, fmt.Errorf("%s.sha256: module fetched from %s has sha256 %s, want %s", path, u.GetUri(), got, want)
	}
	r.mu.Lock()
	r.fetched[want] = b
	r.mu.Unlock()
	return b, nil
}

// acquire returns the running plugin for s, starting it when none runs.
func (r *Runtime) acquire(s *settings, fctx filters.FactoryContext) (*pluginEntry, error) {
	key := pluginKey{sum: sha256.Sum256(s.module), vmID: s.vmID, rootID: s.rootID, name: s.name,
		pluginConfig: string(s.pluginConfig), vmConfig: string(s.vmConf), failOpen: s.failOpen}
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.plugins[key]; e != nil {
		e.refs++
		return e, nil
	}
	r.engOnce.Do(func() { r.engine, r.engErr = wasm.NewEngine(context.Background(), wasm.EngineConfig{}) })
	if r.engErr != nil {
		return nil, fmt.Errorf("config.vm_config: %w", r.engErr)
	}
	host := &hostServices{env: &r.env, name: s.name, rootID: s.rootID, vmID: s.vmID}
	v, err := r.newPlugin(context.Background(), wasm.Config{
		Module: s.module, RootID: s.rootID, VMID: s.vmID,
		PluginConfig: s.pluginConfig, VMConfig: s.vmConf,
		PoolSize: max(2, runtime.GOMAXPROCS(0)),
		Logger:   r.logger.With("wasm_plugin", s.name, "http_filter", fctx.Name),
		Host:     host, Engine: r.engine,
	})
	if err != nil {
		return nil, fmt.Errorf("config.vm_config.code: %w", err)
	}
	e := &pluginEntry{key: key, vm: v, refs: 1, st: newFailStats(&r.env, s.vmID)}
	r.plugins[key] = e
	return e, nil
}

// release drops a Factory's reference; the last one closes the plugin.
func (r *Runtime) release(e *pluginEntry) {
	r.mu.Lock()
	e.refs--
	last := e.refs == 0
	if last {
		delete(r.plugins, e.key)
	}
	r.mu.Unlock()
	if last {
		// Cleanups run on concurrent goroutines; plugins close one at a
		// time (wasm.Engine.release reads its refcount after unlocking).
		r.closeMu.Lock()
		defer r.closeMu.Unlock()
		e.vm.Close()
	}
}

// Running returns the number of running plugins.
func (r *Runtime) Running() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.plugins)
}

// startPlugin starts a real plugin.
func (r *Runtime) startPlugin(ctx context.Context, cfg wasm.Config) (vm, error) {
	p, err := wasm.NewPlugin(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return pluginVM{p}, nil
}

// Factory is a compiled Wasm filter config bound to a running plugin. It
// is immutable and safe for concurrent use.
type Factory struct {
	rt                 *Runtime
	entry              *pluginEntry
	failOpen           bool
	name, rootID, vmID string
}

var _ filters.Factory = (*Factory)(nil)

// NewFilter returns the filter for one stream, with its own HTTP context.
func (f *Factory) NewFilter() filters.Filter {
	return &streamFilter{f: f}
}
