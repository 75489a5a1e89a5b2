package wasm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
)

// hostFunc is one env.proxy_* import.
type hostFunc struct {
	name   string
	params []api.ValueType
	fn     func(i *instance, ctx context.Context, m api.Module, s []uint64) Status
}

var i32, i64 = api.ValueTypeI32, api.ValueTypeI64

func i32s(n int) []api.ValueType {
	t := make([]api.ValueType, n)
	for k := range t {
		t[k] = i32
	}
	return t
}

// hostFuncs is the complete env module of ABI 0.2.0/0.2.1 as this host
// implements it. A guest importing anything else fails to load.
var hostFuncs = []hostFunc{
	{"proxy_log", i32s(3), hLog},
	{"proxy_get_log_level", i32s(1), hGetLogLevel},
	{"proxy_get_current_time_nanoseconds", i32s(1), hTime},
	{"proxy_set_tick_period_milliseconds", i32s(1), hSetTick},
	{"proxy_get_buffer_bytes", i32s(5), hGetBuffer},
	{"proxy_set_buffer_bytes", i32s(5), hSetBuffer},
	{"proxy_get_header_map_pairs", i32s(3), hGetPairs},
	{"proxy_set_header_map_pairs", i32s(3), hSetPairs},
	{"proxy_get_header_map_size", i32s(2), hGetMapSize},
	{"proxy_get_header_map_value", i32s(5), hGetHeader},
	{"proxy_add_header_map_value", i32s(5), hAddHeader},
	{"proxy_replace_header_map_value", i32s(5), hReplaceHeader},
	{"proxy_remove_header_map_value", i32s(3), hRemoveHeader},
	{"proxy_get_property", i32s(4), hGetProperty},
	{"proxy_set_property", i32s(4), hSetProperty},
	{"proxy_send_local_response", i32s(8), hSendLocalResponse},
	{"proxy_continue_stream", i32s(1), hContinueStream},
	{"proxy_close_stream", i32s(1), hCloseStream},
	{"proxy_get_shared_data", i32s(5), hGetSharedData},
	{"proxy_set_shared_data", i32s(5), hSetSharedData},
	{"proxy_register_shared_queue", i32s(3), hRegisterQueue},
	{"proxy_resolve_shared_queue", i32s(5), hResolveQueue},
	{"proxy_enqueue_shared_queue", i32s(3), hEnqueue},
	{"proxy_dequeue_shared_queue", i32s(3), hDequeue},
	{"proxy_http_call", i32s(10), hHTTPCall},
	{"proxy_define_metric", i32s(4), hDefineMetric},
	{"proxy_increment_metric", []api.ValueType{i32, i64}, hIncrementMetric},
	{"proxy_record_metric", []api.ValueType{i32, i64}, hRecordMetric},
	{"proxy_get_metric", i32s(2), hGetMetric},
	{"proxy_set_effective_context", i32s(1), hSetEffectiveContext},
	{"proxy_done", nil, hDone},
	{"proxy_call_foreign_function", i32s(6), hForeign},
}

// instantiateHostModule builds the "env" module. Every function finds its
// instance in the call's context and never panics on guest input: bad
// pointers give StatusInvalidMemoryAccess.
func instantiateHostModule(ctx context.Context, rt wazero.Runtime) error {
	b := rt.NewHostModuleBuilder("env")
	for _, h := range hostFuncs {
		fn := h.fn
		b.NewFunctionBuilder().WithGoModuleFunction(api.GoModuleFunc(func(ctx context.Context, m api.Module, s []uint64) {
			i, _ := ctx.Value(instKey{}).(*instance)
			if i == nil {
				s[0] = uint64(StatusInternalFailure)
				return
			}
			s[0] = uint64(fn(i, ctx, m, s))
		}), h.params, []api.ValueType{i32}).Export(h.name)
	}
	_, err := b.Instantiate(ctx)
	return err
}

// checkModule reports imports the host does not provide (all of them, by
// module.name) and returns the ABI version the module exports.
func checkModule(code wazero.CompiledModule) (string, error) {
	env := make(map[string]bool, len(hostFuncs))
	for _, h := range hostFuncs {
		env[h.name] = true
	}
	var missing []string
	for _, d := range code.ImportedFunctions() {
		mod, name, _ := d.Import()
		switch {
		case mod == "env" && env[name]:
		case mod == "wasi_snapshot_preview1":
			// wazero's WASI reports an unknown WASI function at instantiation.
		default:
			missing = append(missing, mod+"."+name)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return "", fmt.Errorf("imports not provided by this proxy-wasm 0.2.0/0.2.1 host: %s", strings.Join(missing, ", "))
	}
	exports := code.ExportedFunctions()
	switch {
	case exports["proxy_abi_version_0_2_1"] != nil:
		return "0.2.1", nil
	case exports["proxy_abi_version_0_2_0"] != nil:
		return "0.2.0", nil
	case exports["proxy_abi_version_0_1_0"] != nil:
		return "", errors.New("proxy-wasm ABI 0.1.0 is not supported (only 0.2.0 and 0.2.1)")
	}
	return "", errors.New("module exports no proxy_abi_version_0_2_0 or proxy_abi_version_0_2_1 function " +
		"(not a proxy-wasm module, or a Go SDK guest built without the adapter overlay)")
}

// read returns a copy of guest memory [ptr, ptr+size).
func read(m api.Module, ptr, size uint32) ([]byte, bool) {
	if size == 0 {
		return nil, true
	}
	v, ok := m.Memory().Read(ptr, size)
	if !ok {
		return nil, false
	}
	return bytes.Clone(v), true
}

func readString(m api.Module, ptr, size uint32) (string, bool) {
	if size == 0 {
		return "", true
	}
	v, ok := m.Memory().Read(ptr, size)
	return string(v), ok
}

// writable reports whether n bytes at ptr are inside guest memory.
func writable(m api.Module, ptr, n uint32) bool {
	_, ok := m.Memory().Read(ptr, n)
	return ok
}

// writeResult copies data into a buffer allocated by the guest and stores
// its address and size in the u32 slots at retPtr and retSize. With the
// fast ABI, data that fits goes into the guest's scratch buffer instead,
// which saves an entry into the guest (its allocator) per result.
func (i *instance) writeResult(ctx context.Context, m api.Module, data []byte, retPtr, retSize uint32) Status {
	if !writable(m, retPtr, 4) || !writable(m, retSize, 4) {
		return StatusInvalidMemoryAccess
	}
	var addr uint32
	if len(data) > 0 && uint64(len(data)) <= uint64(i.scratchCap) {
		addr = i.scratchPtr
		m.Memory().Write(addr, data) // checked at start: the buffer is inside memory
	} else if len(data) > 0 {
		stack := [1]uint64{uint64(len(data))}
		if err := i.fns.malloc.CallWithStack(ctx, stack[:]); err != nil {
			i.fail(fmt.Errorf("guest allocator: %w", err))
			return StatusInternalFailure
		}
		addr = uint32(stack[0])
		if addr == 0 || !m.Memory().Write(addr, data) {
			return StatusInvalidMemoryAccess
		}
	}
	m.Memory().WriteUint32Le(retPtr, addr)
	m.Memory().WriteUint32Le(retSize, uint32(len(data)))
	return StatusOK
}

func u32(s []uint64, k int) uint32 { return uint32(s[k]) }

func hLog(i *instance, _ context.Context, m api.Module, s []uint64) Status {
	msg, ok := readString(m, u32(s, 1), u32(s, 2))
	if !ok {
		return StatusInvalidMemoryAccess
	}
	lvl := slog.LevelInfo
	switch u32(s, 0) {
	case 0, 1:
		lvl = slog.LevelDebug
	case 3:
		lvl = slog.LevelWarn
	case 4, 5:
		lvl = slog.LevelError
	}
	i.p.log.Log(context.Background(), lvl, msg, "wasm_slot", i.slot)
	return StatusOK
}

func hGetLogLevel(i *instance, _ context.Context, m api.Module, s []uint64) Status {
	lvl := uint32(2) // info
	switch {
	case i.p.log.Enabled(context.Background(), slog.LevelDebug):
		lvl = 1
	case !i.p.log.Enabled(context.Background(), slog.LevelInfo):
		lvl = 3
	}
	if !m.Memory().WriteUint32Le(u32(s, 0), lvl) {
		return StatusInvalidMemoryAccess
	}
	return StatusOK
}

func hTime(_ *instance, _ context.Context, m api.Module, s []uint64) Status {
	if !m.Memory().WriteUint64Le(u32(s, 0), uint64(time.Now().UnixNano())) {
		return StatusInvalidMemoryAccess
	}
	return StatusOK
}

func hSetTick(i *instance, _ context.Context, _ api.Module, s []uint64) Status {
	if i.effective != rootContextID {
		return StatusBadArgument
	}
	i.setTick(time.Duration(u32(s, 0)) * time.Millisecond)
	return StatusOK
}

func (i *instance) stream() *HTTPContext { return i.streams[i.effective] }

func hGetBuffer(i *instance, ctx context.Context, m api.Module, s []uint64) Status {
	var data []byte
	switch BufferType(u32(s, 0)) {
	case BufferVMConfiguration:
		data = i.p.cfg.VMConfig
	case BufferPluginConfiguration:
		data = i.p.cfg.PluginConfig
	case BufferHTTPCallResponseBody:
		if i.callResp == nil {
			return StatusNotFound
		}
		data = i.callResp.body
	case BufferRequestBody, BufferResponseBody:
		c := i.stream()
		if c == nil {
			return StatusNotFound
		}
		b, ok := c.host.Body(BufferType(u32(s, 0)))
		if !ok {
			return StatusNotFound
		}
		data = b
	default:
		return StatusBadArgument
	}
	start, max := uint64(u32(s, 1)), uint64(u32(s, 2))
	if start > uint64(len(data)) {
		return StatusBadArgument
	}
	end := min(start+max, uint64(len(data)))
	return i.writeResult(ctx, m, data[start:end], u32(s, 3), u32(s, 4))
}

func hSetBuffer(i *instance, _ context.Context, m api.Module, s []uint64) Status {
	bt := BufferType(u32(s, 0))
	if bt != BufferRequestBody && bt != BufferResponseBody {
		return StatusBadArgument
	}
	data, ok := read(m, u32(s, 3), u32(s, 4))
	if !ok {
		return StatusInvalidMemoryAccess
	}
	c := i.stream()
	if c == nil {
		return StatusNotFound
	}
	cur, ok := c.host.Body(bt)
	if !ok {
		return StatusNotFound
	}
	// Envoy's splice: [start, start+length) of the current body becomes data.
	start := min(uint64(u32(s, 1)), uint64(len(cur)))
	end := min(start+uint64(u32(s, 2)), uint64(len(cur)))
	next := make([]byte, 0, uint64(len(cur))-(end-start)+uint64(len(data)))
	next = append(append(append(next, cur[:start]...), data...), cur[end:]...)
	if !c.host.SetBody(bt, next) {
		return StatusNotFound
	}
	return StatusOK
}

// headerMap resolves a map type for the effective context.
func (i *instance) headerMap(t MapType) (HeaderMap, [][2]string, Status) {
	switch t {
	case MapHTTPCallResponseHeaders, MapHTTPCallResponseTrailers:
		if i.callResp == nil {
			return nil, nil, StatusNotFound
		}
		if t == MapHTTPCallResponseHeaders {
			return nil, i.callResp.headers, StatusOK
		}
		return nil, i.callResp.trailers, StatusOK
	case MapRequestHeaders, MapRequestTrailers, MapResponseHeaders, MapResponseTrailers:
		c := i.stream()
		if c == nil {
			return nil, nil, StatusNotFound
		}
		h := c.host.Headers(t)
		if h == nil {
			return nil, nil, StatusNotFound
		}
		return h, nil, StatusOK
	}
	return nil, nil, StatusBadArgument
}

func hGetPairs(i *instance, ctx context.Context, m api.Module, s []uint64) Status {
	h, pairs, st := i.headerMap(MapType(u32(s, 0)))
	if st != StatusOK {
		return st
	}
	if h != nil {
		pairs = h.Pairs()
	}
	return i.writeResult(ctx, m, encodeMap(pairs), u32(s, 1), u32(s, 2))
}

func hGetMapSize(i *instance, _ context.Context, m api.Module, s []uint64) Status {
	h, pairs, st := i.headerMap(MapType(u32(s, 0)))
	if st != StatusOK {
		return st
	}
	if h != nil {
		pairs = h.Pairs()
	}
	if !m.Memory().WriteUint32Le(u32(s, 1), uint32(len(encodeMap(pairs)))) {
		return StatusInvalidMemoryAccess
	}
	return StatusOK
}

// mutableMap is headerMap for edits: HTTP-call response maps are read-only.
func (i *instance) mutableMap(t MapType) (HeaderMap, Status) {
	h, _, st := i.headerMap(t)
	if st == StatusOK && h == nil {
		return nil, StatusBadArgument
	}
	return h, st
}

func hSetPairs(i *instance, _ context.Context, m api.Module, s []uint64) Status {
	b, ok := read(m, u32(s, 1), u32(s, 2))
	if !ok {
		return StatusInvalidMemoryAccess
	}
	pairs, err := decodeMap(b)
	if err != nil {
		return StatusBadArgument
	}
	h, st := i.mutableMap(MapType(u32(s, 0)))
	if st != StatusOK {
		return st
	}
	h.SetPairs(pairs)
	return StatusOK
}

func hGetHeader(i *instance, ctx context.Context, m api.Module, s []uint64) Status {
	key, _, ok := i.names.header(m, u32(s, 1), u32(s, 2), 0, 0, false)
	if !ok {
		return StatusInvalidMemoryAccess
	}
	h, pairs, st := i.headerMap(MapType(u32(s, 0)))
	if st != StatusOK {
		return st
	}
	var v string
	if h != nil {
		v, ok = h.Get(key)
	} else {
		v, ok = getPair(pairs, key)
	}
	if !ok {
		return StatusNotFound
	}
	return i.writeResult(ctx, m, []byte(v), u32(s, 3), u32(s, 4))
}

// getPair joins the values of name with "," like HeaderMap.Get.
func getPair(pairs [][2]string, name string) (string, bool) {
	var vals []string
	for _, p := range pairs {
		if strings.EqualFold(p[0], name) {
			vals = append(vals, p[1])
		}
	}
	return strings.Join(vals, ","), len(vals) > 0
}

// editHeader reads a header-map edit's name (lowercased) and, withValue,
// its value, then applies edit to the map the call names.
func editHeader(i *instance, m api.Module, s []uint64, withValue bool, edit func(h HeaderMap, k, v string)) Status {
	var valPtr, valSize uint32
	if withValue {
		valPtr, valSize = u32(s, 3), u32(s, 4)
	}
	key, val, ok := i.names.header(m, u32(s, 1), u32(s, 2), valPtr, valSize, withValue)
	if !ok {
		return StatusInvalidMemoryAccess
	}
	h, st := i.mutableMap(MapType(u32(s, 0)))
	if st != StatusOK {
		return st
	}
	edit(h, key, val)
	return StatusOK
}

func hAddHeader(i *instance, _ context.Context, m api.Module, s []uint64) Status {
	return editHeader(i, m, s, true, func(h HeaderMap, k, v string) { h.Add(k, v) })
}

func hReplaceHeader(i *instance, _ context.Context, m api.Module, s []uint64) Status {
	return editHeader(i, m, s, true, func(h HeaderMap, k, v string) { h.Set(k, v) })
}

func hRemoveHeader(i *instance, _ context.Context, m api.Module, s []uint64) Status {
	return editHeader(i, m, s, false, func(h HeaderMap, k, _ string) { h.Del(k) })
}

func hGetProperty(i *instance, ctx context.Context, m api.Module, s []uint64) Status {
	raw, ok := readString(m, u32(s, 0), u32(s, 1))
	if !ok {
		return StatusInvalidMemoryAccess
	}
	v, found := i.property(raw)
	if !found {
		return StatusNotFound
	}
	return i.writeResult(ctx, m, v, u32(s, 2), u32(s, 3))
}

// property resolves a NUL-separated property path: values the guest set on
// the stream, then the stream's, then the host's own (plugin_root_id,
// plugin_vm_id), then HostServices.
func (i *instance) property(raw string) ([]byte, bool) {
	path := strings.Split(strings.TrimRight(raw, "\x00"), "\x00")
	if c := i.stream(); c != nil {
		if v, ok := c.props[raw]; ok {
			return v, true
		}
		if v, ok := c.host.Property(path); ok {
			return v, true
		}
	}
	if len(path) == 1 {
		switch path[0] {
		case "plugin_root_id":
			return []byte(i.p.cfg.RootID), true
		case "plugin_vm_id":
			return []byte(i.p.cfg.VMID), true
		}
	}
	return i.p.cfg.Host.Property(path)
}

func hSetProperty(i *instance, _ context.Context, m api.Module, s []uint64) Status {
	key, ok := readString(m, u32(s, 0), u32(s, 1))
	if !ok {
		return StatusInvalidMemoryAccess
	}
	v, ok := read(m, u32(s, 2), u32(s, 3))
	if !ok {
		return StatusInvalidMemoryAccess
	}
	c := i.stream()
	if c == nil {
		return StatusNotFound
	}
	if c.props == nil {
		c.props = make(map[string][]byte)
	}
	c.props[key] = v
	return StatusOK
}

func hSendLocalResponse(i *instance, _ context.Context, m api.Module, s []uint64) Status {
	details, ok1 := readString(m, u32(s, 1), u32(s, 2))
	body, ok2 := read(m, u32(s, 3), u32(s, 4))
	hb, ok3 := read(m, u32(s, 5), u32(s, 6))
	if !ok1 || !ok2 || !ok3 {
		return StatusInvalidMemoryAccess
	}
	headers, err := decodeMap(hb)
	if err != nil {
		return StatusBadArgument
	}
	status := u32(s, 0)
	if status < 100 || status > 999 {
		return StatusBadArgument
	}
	c := i.stream()
	if c == nil {
		return StatusNotFound
	}
	if err := c.host.SendLocalResponse(int(status), details, body, headers, int32(u32(s, 7))); err != nil {
		i.p.log.Debug("wasm send_local_response failed", "error", err)
		return StatusInternalFailure
	}
	return StatusOK
}

func hContinueStream(i *instance, _ context.Context, _ api.Module, s []uint64) Status {
	st := StreamType(u32(s, 0))
	if st != StreamRequest && st != StreamResponse {
		return StatusBadArgument
	}
	c := i.stream()
	if c == nil {
		return StatusNotFound
	}
	c.host.Resume(st)
	return StatusOK
}

func hCloseStream(i *instance, _ context.Context, _ api.Module, s []uint64) Status {
	st := StreamType(u32(s, 0))
	if st != StreamRequest && st != StreamResponse {
		return StatusBadArgument
	}
	c := i.stream()
	if c == nil {
		return StatusNotFound
	}
	c.host.Reset(st)
	return StatusOK
}

func hGetSharedData(i *instance, ctx context.Context, m api.Module, s []uint64) Status {
	key, ok := readString(m, u32(s, 0), u32(s, 1))
	if !ok || !writable(m, u32(s, 4), 4) {
		return StatusInvalidMemoryAccess
	}
	v, cas, st := i.p.engine.shared.get(i.p.cfg.VMID, key)
	if st != StatusOK {
		return st
	}
	if st := i.writeResult(ctx, m, v, u32(s, 2), u32(s, 3)); st != StatusOK {
		return st
	}
	m.Memory().WriteUint32Le(u32(s, 4), cas)
	return StatusOK
}

func hSetSharedData(i *instance, _ context.Context, m api.Module, s []uint64) Status {
	key, ok1 := readString(m, u32(s, 0), u32(s, 1))
	v, ok2 := read(m, u32(s, 2), u32(s, 3))
	if !ok1 || !ok2 {
		return StatusInvalidMemoryAccess
	}
	return i.p.engine.shared.set(i.p.cfg.VMID, key, v, u32(s, 4))
}

func hRegisterQueue(i *instance, _ context.Context, m api.Module, s []uint64) Status {
	name, ok := readString(m, u32(s, 0), u32(s, 1))
	if !ok || !writable(m, u32(s, 2), 4) {
		return StatusInvalidMemoryAccess
	}
	id := i.p.engine.shared.register(i.p.cfg.VMID, name, i)
	m.Memory().WriteUint32Le(u32(s, 2), id)
	return StatusOK
}

func hResolveQueue(i *instance, _ context.Context, m api.Module, s []uint64) Status {
	vmID, ok1 := readString(m, u32(s, 0), u32(s, 1))
	name, ok2 := readString(m, u32(s, 2), u32(s, 3))
	if !ok1 || !ok2 || !writable(m, u32(s, 4), 4) {
		return StatusInvalidMemoryAccess
	}
	if vmID == "" {
		vmID = i.p.cfg.VMID
	}
	id, st := i.p.engine.shared.resolve(vmID, name)
	if st != StatusOK {
		return st
	}
	m.Memory().WriteUint32Le(u32(s, 4), id)
	return StatusOK
}

func hEnqueue(i *instance, _ context.Context, m api.Module, s []uint64) Status {
	v, ok := read(m, u32(s, 1), u32(s, 2))
	if !ok {
		return StatusInvalidMemoryAccess
	}
	sub, st := i.p.engine.shared.enqueue(u32(s, 0), v)
	if sub != nil {
		sub.queueNotify(u32(s, 0))
	}
	return st
}

func hDequeue(i *instance, ctx context.Context, m api.Module, s []uint64) Status {
	if !writable(m, u32(s, 1), 4) || !writable(m, u32(s, 2), 4) {
		return StatusInvalidMemoryAccess
	}
	v, st := i.p.engine.shared.dequeue(u32(s, 0))
	if st != StatusOK {
		return st
	}
	return i.writeResult(ctx, m, v, u32(s, 1), u32(s, 2))
}

func hHTTPCall(i *instance, _ context.Context, m api.Module, s []uint64) Status {
	cluster, ok1 := readString(m, u32(s, 0), u32(s, 1))
	hb, ok2 := read(m, u32(s, 2), u32(s, 3))
	body, ok3 := read(m, u32(s, 4), u32(s, 5))
	tb, ok4 := read(m, u32(s, 6), u32(s, 7))
	if !ok1 || !ok2 || !ok3 || !ok4 || !writable(m, u32(s, 9), 4) {
		return StatusInvalidMemoryAccess
	}
	headers, err := decodeMap(hb)
	if err != nil {
		return StatusBadArgument
	}
	trailers, err := decodeMap(tb)
	if err != nil {
		return StatusBadArgument
	}
	i.nextToken++
	if i.nextToken == 0 {
		i.nextToken = 1
	}
	token := i.nextToken
	timeout := time.Duration(u32(s, 8)) * time.Millisecond
	err = i.p.cfg.Host.HTTPCall(cluster, headers, body, trailers, timeout,
		func(h [][2]string, b []byte, t [][2]string, err error) {
			i.httpCallDone(httpCallResult{token: token, headers: h, body: b, trailers: t, err: err})
		})
	if err != nil {
		i.p.log.Debug("wasm http_call not started", "cluster", cluster, "error", err)
		if errors.Is(err, ErrUnknownCluster) {
			return StatusBadArgument
		}
		return StatusInternalFailure
	}
	m.Memory().WriteUint32Le(u32(s, 9), token)
	return StatusOK
}

func hDefineMetric(i *instance, _ context.Context, m api.Module, s []uint64) Status {
	kind := MetricKind(u32(s, 0))
	if kind > MetricHistogram {
		return StatusBadArgument
	}
	name, ok := readString(m, u32(s, 1), u32(s, 2))
	if !ok || !writable(m, u32(s, 3), 4) {
		return StatusInvalidMemoryAccess
	}
	if name == "" {
		return StatusBadArgument
	}
	m.Memory().WriteUint32Le(u32(s, 3), i.p.defineMetric(name, kind))
	return StatusOK
}

func hIncrementMetric(i *instance, _ context.Context, _ api.Module, s []uint64) Status {
	h := i.p.metric(u32(s, 0))
	if h == nil {
		return StatusNotFound
	}
	h.Add(int64(s[1]))
	return StatusOK
}

func hRecordMetric(i *instance, _ context.Context, _ api.Module, s []uint64) Status {
	h := i.p.metric(u32(s, 0))
	if h == nil {
		return StatusNotFound
	}
	h.Record(s[1])
	return StatusOK
}

func hGetMetric(i *instance, _ context.Context, m api.Module, s []uint64) Status {
	h := i.p.metric(u32(s, 0))
	if h == nil {
		return StatusNotFound
	}
	if !m.Memory().WriteUint64Le(u32(s, 1), h.Value()) {
		return StatusInvalidMemoryAccess
	}
	return StatusOK
}

func hSetEffectiveContext(i *instance, _ context.Context, _ api.Module, s []uint64) Status {
	id := u32(s, 0)
	if id != rootContextID && i.streams[id] == nil {
		return StatusBadArgument
	}
	i.effective = id
	return StatusOK
}

func hDone(i *instance, _ context.Context, _ api.Module, _ []uint64) Status {
	i.p.log.Debug("wasm root context done", "wasm_slot", i.slot)
	return StatusOK
}

func hForeign(i *instance, _ context.Context, m api.Module, s []uint64) Status {
	name, ok := readString(m, u32(s, 0), u32(s, 1))
	if !ok {
		return StatusInvalidMemoryAccess
	}
	i.p.log.Debug("wasm call_foreign_function: no foreign functions are registered", "function", name)
	return StatusNotFound
}
