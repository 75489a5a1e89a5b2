// The SDK's context registry and callback dispatch for guests built with the
// standard Go toolchain. The wasmbuild overlay puts this file in place of the
// SDK's proxywasm/internal/vmstate.go and abi_callback_{configuration,l4,l7,
// lifecycle,queue,timers}.go: same functions, same panics on ids the host
// never created, same active-context bookkeeping, but one table instead of
// four Go maps.
//
// Why: the SDK keeps contexts in map[uint32] (plugin, HTTP and TCP contexts,
// plus context id → plugin id), so every stream costs about nine map
// operations (create: two lookups and two inserts; each callback: a lookup;
// delete: a delete and up to three lookups). Compiled to wasm each is a
// 150–300 ns call chain through the runtime's generic map code. Here a
// context is one slot of an open-addressed table keyed by id (Fibonacci
// hashing, linear probing, deletion by backward shift, so no tombstones),
// found with a multiply, a shift and usually one comparison.
//
// Semantics kept from v0.24.0: a plugin context is created when
// pluginContextID is 0 (replacing one with the same id), otherwise an HTTP
// context if the plugin's NewHttpContext returns non-nil, else a TCP context,
// else a panic; a context id created twice panics ("context id
// duplicated"), as do callbacks for unknown ids; proxy_on_log and
// proxy_on_done ignore ids of other kinds; http_call callbacks are dropped
// when their caller was deleted before the response arrived.

//go:build wasip1

package internal

import (
	"time"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"
)

type (
	pluginContextState struct {
		context       types.PluginContext
		httpCallbacks map[uint32]*httpCallbackAttribute
	}

	httpCallbackAttribute struct {
		callback        func(numHeaders, bodySize, numTrailers int)
		callerContextID uint32
	}
)

// Context kinds stored in a slot; kindFree marks an empty slot.
const (
	kindFree uint8 = iota
	kindPlugin
	kindHttp
	kindTcp
)

// contextSlot is one context: its id, the id of its plugin context (its own
// id for a plugin context) and the SDK object of its kind.
type contextSlot struct {
	id     uint32
	rootID uint32
	kind   uint8
	plugin *pluginContextState
	http   types.HttpContext
	tcp    types.TcpContext
}

// contextTable maps context ids to slots: open addressing over a power-of-two
// array, at most 3/4 full.
type contextTable struct {
	slots []contextSlot
	shift uint32 // 32 - log2(len(slots))
	n     int
}

const initialTableBits = 6

func newContextTable() contextTable {
	return contextTable{slots: make([]contextSlot, 1<<initialTableBits), shift: 32 - initialTableBits}
}

// home is id's preferred slot.
func (t *contextTable) home(id uint32) uint32 { return (id * 0x9E3779B1) >> t.shift }

// find returns the slot holding id, or nil.
func (t *contextTable) find(id uint32) *contextSlot {
	if i := t.index(id); i >= 0 {
		return &t.slots[i]
	}
	return nil
}

// index returns the index of id's slot, or -1.
func (t *contextTable) index(id uint32) int {
	mask := uint32(len(t.slots) - 1)
	for i := t.home(id); ; i = (i + 1) & mask {
		s := &t.slots[i]
		if s.kind == kindFree {
			return -1
		}
		if s.id == id {
			return int(i)
		}
	}
}

// insert returns the slot for id, claiming a free one (kind still kindFree,
// for the caller to fill) if id is absent.
func (t *contextTable) insert(id uint32) *contextSlot {
	if (t.n+1)*4 > len(t.slots)*3 {
		t.grow()
	}
	mask := uint32(len(t.slots) - 1)
	for i := t.home(id); ; i = (i + 1) & mask {
		s := &t.slots[i]
		if s.kind == kindFree {
			s.id = id
			t.n++
			return s
		}
		if s.id == id {
			return s
		}
	}
}

func (t *contextTable) grow() {
	old := t.slots
	t.slots = make([]contextSlot, 2*len(old))
	t.shift--
	mask := uint32(len(t.slots) - 1)
	for k := range old {
		if old[k].kind == kindFree {
			continue
		}
		i := t.home(old[k].id)
		for t.slots[i].kind != kindFree {
			i = (i + 1) & mask
		}
		t.slots[i] = old[k]
	}
}

// remove frees the slot of id, if any, shifting later members of its probe
// run back so lookups never need tombstones.
func (t *contextTable) remove(id uint32) {
	at := t.index(id)
	if at < 0 {
		return
	}
	mask := uint32(len(t.slots) - 1)
	i := uint32(at)
	t.n--
	for j := (i + 1) & mask; ; j = (j + 1) & mask {
		if t.slots[j].kind == kindFree {
			break
		}
		// Move j into the hole at i unless j's home lies cyclically in (i, j].
		h := t.home(t.slots[j].id)
		if (j > i && (h <= i || h > j)) || (j < i && h <= i && h > j) {
			t.slots[i] = t.slots[j]
			i = j
		}
	}
	t.slots[i] = contextSlot{}
}

type state struct {
	vmContext       types.VMContext
	contexts        contextTable
	activeContextID uint32
}

var currentState = &state{contexts: newContextTable()}

func SetVMContext(vmContext types.VMContext) {
	currentState.vmContext = vmContext
}

func RegisterHttpCallout(calloutID uint32, callback func(numHeaders, bodySize, numTrailers int)) {
	currentState.registerHttpCallOut(calloutID, callback)
}

// pluginContext returns the plugin context id, or nil.
func (s *state) pluginContext(id uint32) *pluginContextState {
	if c := s.contexts.find(id); c != nil && c.kind == kindPlugin {
		return c.plugin
	}
	return nil
}

// httpContext returns the HTTP context id, or nil.
func (s *state) httpContext(id uint32) types.HttpContext {
	if c := s.contexts.find(id); c != nil && c.kind == kindHttp {
		return c.http
	}
	return nil
}

// tcpContext returns the TCP context id, or nil.
func (s *state) tcpContext(id uint32) types.TcpContext {
	if c := s.contexts.find(id); c != nil && c.kind == kindTcp {
		return c.tcp
	}
	return nil
}

func (s *state) createPluginContext(contextID uint32) {
	ctx := s.vmContext.NewPluginContext(contextID)
	c := s.contexts.insert(contextID)
	*c = contextSlot{id: contextID, rootID: contextID, kind: kindPlugin, plugin: &pluginContextState{
		context:       ctx,
		httpCallbacks: map[uint32]*httpCallbackAttribute{},
	}}
}

// createStreamContext creates the HTTP or TCP context contextID of the plugin
// pluginContextID and returns the HTTP context (nil for a TCP one).
func (s *state) createStreamContext(contextID, pluginContextID uint32) types.HttpContext {
	root := s.pluginContext(pluginContextID)
	if root == nil {
		panic("invalid plugin context id")
	}
	if s.contexts.find(contextID) != nil {
		panic("context id duplicated")
	}
	if ctx := root.context.NewHttpContext(contextID); ctx != nil {
		*s.contexts.insert(contextID) = contextSlot{id: contextID, rootID: pluginContextID, kind: kindHttp, http: ctx}
		return ctx
	}
	if ctx := root.context.NewTcpContext(contextID); ctx != nil {
		*s.contexts.insert(contextID) = contextSlot{id: contextID, rootID: pluginContextID, kind: kindTcp, tcp: ctx}
		return nil
	}
	panic("invalid context id on proxy_on_context_create")
}

func (s *state) registerHttpCallOut(calloutID uint32, callback func(numHeaders, bodySize, numTrailers int)) {
	c := s.contexts.find(s.activeContextID)
	if c == nil {
		panic("http call from an unknown context")
	}
	r := s.pluginContext(c.rootID)
	if r == nil {
		panic("http call from a context whose plugin context is gone")
	}
	r.httpCallbacks[calloutID] = &httpCallbackAttribute{callback: callback, callerContextID: s.activeContextID}
}

func (s *state) setActiveContextID(contextID uint32) {
	s.activeContextID = contextID
}

func proxyOnContextCreate(contextID uint32, pluginContextID uint32) {
	if recordTiming {
		defer logTiming("proxyOnContextCreate", time.Now())
	}
	if pluginContextID == 0 {
		currentState.createPluginContext(contextID)
	} else {
		currentState.createStreamContext(contextID, pluginContextID)
	}
}

func proxyOnLog(contextID uint32) {
	if recordTiming {
		defer logTiming("proxyOnLog", time.Now())
	}
	c := currentState.contexts.find(contextID)
	if c == nil {
		return
	}
	switch c.kind {
	case kindTcp:
		currentState.setActiveContextID(contextID)
		c.tcp.OnStreamDone()
	case kindHttp:
		currentState.setActiveContextID(contextID)
		c.http.OnHttpStreamDone()
	}
}

func proxyOnDone(contextID uint32) bool {
	if recordTiming {
		defer logTiming("proxyOnDone", time.Now())
	}
	if ctx := currentState.pluginContext(contextID); ctx != nil {
		currentState.setActiveContextID(contextID)
		return ctx.context.OnPluginDone()
	}
	return true
}

func proxyOnDelete(contextID uint32) {
	if recordTiming {
		defer logTiming("proxyOnDelete", time.Now())
	}
	if currentState.contexts.find(contextID) == nil {
		panic("invalid context on proxy_on_delete")
	}
	currentState.contexts.remove(contextID)
}

func proxyOnVMStart(_ uint32, vmConfigurationSize int) types.OnVMStartStatus {
	if recordTiming {
		defer logTiming("proxyOnVMStart", time.Now())
	}
	return currentState.vmContext.OnVMStart(vmConfigurationSize)
}

func proxyOnConfigure(pluginContextID uint32, pluginConfigurationSize int) types.OnPluginStartStatus {
	if recordTiming {
		defer logTiming("proxyOnConfigure", time.Now())
	}
	ctx := currentState.pluginContext(pluginContextID)
	if ctx == nil {
		panic("invalid context on proxy_on_configure")
	}
	currentState.setActiveContextID(pluginContextID)
	return ctx.context.OnPluginStart(pluginConfigurationSize)
}

func proxyOnQueueReady(contextID, queueID uint32) {
	if recordTiming {
		defer logTiming("proxyOnQueueReady", time.Now())
	}
	ctx := currentState.pluginContext(contextID)
	if ctx == nil {
		panic("invalid context")
	}
	currentState.setActiveContextID(contextID)
	ctx.context.OnQueueReady(queueID)
}

func proxyOnTick(pluginContextID uint32) {
	if recordTiming {
		defer logTiming("proxyOnTick", time.Now())
	}
	ctx := currentState.pluginContext(pluginContextID)
	if ctx == nil {
		panic("invalid root_context_id")
	}
	currentState.setActiveContextID(pluginContextID)
	ctx.context.OnTick()
}

// activeTcp returns the TCP context contextID, made active, or panics.
func activeTcp(contextID uint32) types.TcpContext {
	ctx := currentState.tcpContext(contextID)
	if ctx == nil {
		panic("invalid context")
	}
	currentState.setActiveContextID(contextID)
	return ctx
}

func proxyOnNewConnection(contextID uint32) types.Action {
	if recordTiming {
		defer logTiming("proxyOnNewConnection", time.Now())
	}
	return activeTcp(contextID).OnNewConnection()
}

func proxyOnDownstreamData(contextID uint32, dataSize int, endOfStream bool) types.Action {
	if recordTiming {
		defer logTiming("proxyOnDownstreamData", time.Now())
	}
	return activeTcp(contextID).OnDownstreamData(dataSize, endOfStream)
}

func proxyOnDownstreamConnectionClose(contextID uint32, pType types.PeerType) {
	if recordTiming {
		defer logTiming("proxyOnDownstreamConnectionClose", time.Now())
	}
	activeTcp(contextID).OnDownstreamClose(pType)
}

func proxyOnUpstreamData(contextID uint32, dataSize int, endOfStream bool) types.Action {
	if recordTiming {
		defer logTiming("proxyOnUpstreamData", time.Now())
	}
	return activeTcp(contextID).OnUpstreamData(dataSize, endOfStream)
}

func proxyOnUpstreamConnectionClose(contextID uint32, pType types.PeerType) {
	if recordTiming {
		defer logTiming("proxyOnUpstreamConnectionClose", time.Now())
	}
	activeTcp(contextID).OnUpstreamClose(pType)
}

// activeHttp returns the HTTP context contextID, made active, or panics with
// the SDK's message for callback.
func activeHttp(contextID uint32, callback string) types.HttpContext {
	ctx := currentState.httpContext(contextID)
	if ctx == nil {
		panic("invalid context on " + callback)
	}
	currentState.setActiveContextID(contextID)
	return ctx
}

func proxyOnRequestHeaders(contextID uint32, numHeaders int, endOfStream bool) types.Action {
	if recordTiming {
		defer logTiming("proxyOnRequestHeaders", time.Now())
	}
	return activeHttp(contextID, "proxy_on_request_headers").OnHttpRequestHeaders(numHeaders, endOfStream)
}

func proxyOnRequestBody(contextID uint32, bodySize int, endOfStream bool) types.Action {
	if recordTiming {
		defer logTiming("proxyOnRequestBody", time.Now())
	}
	return activeHttp(contextID, "proxy_on_request_body").OnHttpRequestBody(bodySize, endOfStream)
}

func proxyOnRequestTrailers(contextID uint32, numTrailers int) types.Action {
	if recordTiming {
		defer logTiming("proxyOnRequestTrailers", time.Now())
	}
	return activeHttp(contextID, "proxy_on_request_trailers").OnHttpRequestTrailers(numTrailers)
}

func proxyOnResponseHeaders(contextID uint32, numHeaders int, endOfStream bool) types.Action {
	if recordTiming {
		defer logTiming("proxyOnResponseHeaders", time.Now())
	}
	return activeHttp(contextID, "proxy_on_response_headers").OnHttpResponseHeaders(numHeaders, endOfStream)
}

func proxyOnResponseBody(contextID uint32, bodySize int, endOfStream bool) types.Action {
	if recordTiming {
		defer logTiming("proxyOnResponseBody", time.Now())
	}
	return activeHttp(contextID, "proxy_on_response_body").OnHttpResponseBody(bodySize, endOfStream)
}

func proxyOnResponseTrailers(contextID uint32, numTrailers int) types.Action {
	if recordTiming {
		defer logTiming("proxyOnResponseTrailers", time.Now())
	}
	return activeHttp(contextID, "proxy_on_response_trailers").OnHttpResponseTrailers(numTrailers)
}

func proxyOnHttpCallResponse(pluginContextID, calloutID uint32, numHeaders, bodySize, numTrailers int) {
	if recordTiming {
		defer logTiming("proxyOnHttpCallResponse", time.Now())
	}
	root := currentState.pluginContext(pluginContextID)
	if root == nil {
		panic("http_call_response on invalid plugin context")
	}
	cb := root.httpCallbacks[calloutID]
	if cb == nil {
		panic("invalid callout id")
	}
	ctxID := cb.callerContextID
	currentState.setActiveContextID(ctxID)
	delete(root.httpCallbacks, calloutID)
	// The caller may have been deleted before the response arrived (its
	// stream ended); its callback then must not run, since it could act on
	// a stream that no longer exists.
	if currentState.contexts.find(ctxID) != nil {
		ProxySetEffectiveContext(ctxID)
		cb.callback(numHeaders, bodySize, numTrailers)
	}
}
