package wasm

import (
	"encoding/binary"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"meshd.dev/meshd/filters"
	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/wasm"
)

// PauseTimeout bounds how long a hook waits for a guest that paused the
// stream (proxy_continue_stream or proxy_send_local_response, typically
// after an http_call) besides the stream's own context; a guest that never
// resumes counts as a VM failure and fail_open decides.
const PauseTimeout = 30 * time.Second

// localResp is a guest's proxy_send_local_response.
type localResp struct {
	status  int
	details string
	body    string
	headers [][2]string
	grpc    int32 // -1: none
}

// streamFilter is one stream's filter and its wasm.StreamHost. Hooks run on
// one goroutine at a time (the connection manager serialises them); the
// host calls the StreamHost methods only inside a callback of the stream's
// instance, possibly from a tick or http_call goroutine while a hook waits
// for the paused stream: the instance lock orders those accesses after the
// hook's writes.
type streamFilter struct {
	f  *Factory
	hc httpContext
	// ctx is the storage of hc when the plugin is a *wasm.Plugin: one
	// allocation per stream instead of two.
	ctx    wasm.HTTPContext
	bypass bool // the VM failed and fail_open let the stream pass

	// Set by the running hook for the StreamHost methods.
	cb        filters.Callbacks
	req       *stream.Request
	resp      *stream.Response
	trailers  *header.Header
	trailerOf wasm.MapType
	body      []byte
	bodyOf    wasm.BufferType
	hasBody   bool

	// resume carries one wake-up per Resume or local response; created on
	// first use (resumeCh), as most streams never pause.
	resume chan struct{} // guarded by mu

	// The header maps Headers hands out, kept here so that a host call
	// allocates none.
	reqMap  requestMap
	respMap responseMap
	trMap   fieldMap

	mu    sync.Mutex
	reply *localResp // guarded by mu
	// hasReply is set while reply is: sendReply runs after every
	// callback and most streams never get a local reply, so it looks
	// here before taking mu.
	hasReply atomic.Bool
	// replied is set once the local reply went to the connection
	// manager; the response hook then adds its headers.
	replied *localResp
}

var (
	_ filters.Filter                 = (*streamFilter)(nil)
	_ filters.RequestBodyFilter      = (*streamFilter)(nil)
	_ filters.RequestTrailersFilter  = (*streamFilter)(nil)
	_ filters.ResponseBodyFilter     = (*streamFilter)(nil)
	_ filters.ResponseTrailersFilter = (*streamFilter)(nil)
	_ filters.HookSelector           = (*streamFilter)(nil)
	_ filters.Destroyer              = (*streamFilter)(nil)
	_ wasm.StreamHost                = (*streamFilter)(nil)
)

// begin creates the HTTP context on the first hook.
func (s *streamFilter) begin(cb filters.Callbacks) {
	s.cb = cb
	if s.hc != nil {
		return
	}
	s.f.rt.env.bind(cb)
	s.hc = s.f.entry.vm.NewHTTPContext(s, &s.ctx)
}

// finish ends the HTTP context after the last response hook.
func (s *streamFilter) finish() {
	if s.hc == nil {
		return
	}
	if err := s.hc.Done(); err != nil {
		s.cb.Logger().Debug("wasm: proxy_on_done failed", "err", err)
	}
}

// resumeCh returns the stream's wake-up channel, creating it.
func (s *streamFilter) resumeCh() chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.resume == nil {
		s.resume = make(chan struct{}, 1)
	}
	return s.resume
}

// OnDestroy ends the HTTP context of a stream that ended before its last
// response hook (reset, timeout, local reply); Done is idempotent, so after
// finish it only checks. A body hook racing with it on the request-body
// goroutine is serialised by the instance and finds the context ended.
func (s *streamFilter) OnDestroy() {
	if s.hc != nil {
		_ = s.hc.Done()
	}
}

// after turns a callback's result into the hook's status. buffer is set
// for body hooks before the end of stream, where Pause means
// StopAndBuffer; elsewhere Pause waits for the guest to resume.
func (s *streamFilter) after(name string, act wasm.Action, err error, buffer bool) filters.Status {
	if err != nil {
		return s.failed(name, err)
	}
	if st, ok := s.sendReply(); ok {
		return st
	}
	if act == wasm.Continue {
		return filters.Continue
	}
	if buffer {
		return filters.StopAndBuffer
	}
	t := time.NewTimer(PauseTimeout)
	defer t.Stop()
	select {
	case <-s.resumeCh():
	case <-s.cb.Context().Done():
		return filters.Stop
	case <-t.C:
		return s.failed(name, errPauseTimeout)
	}
	if st, ok := s.sendReply(); ok {
		return st
	}
	return filters.Continue
}

// errPauseTimeout is a guest that paused longer than PauseTimeout.
var errPauseTimeout = &pauseError{}

type pauseError struct{}

func (*pauseError) Error() string {
	return "guest did not resume the stream within " + PauseTimeout.String()
}

// failed applies fail_open to a failed callback.
func (s *streamFilter) failed(name string, err error) filters.Status {
	st := s.f.entry.st
	st.vmFailed.Add(1)
	s.cb.Logger().Warn("wasm: plugin callback failed", "callback", name, "plugin", s.f.name, "vm_id", s.f.vmID, "fail_open", s.f.failOpen, "err", err)
	if s.f.failOpen {
		st.failOpen.Add(1)
		s.bypass = true
		return filters.Continue
	}
	st.failClosed.Add(1)
	s.cb.SendLocalReply(503, "wasm plugin failed", "wasm_fail_stream")
	return filters.Stop
}

// sendReply sends a pending guest local response; ok reports that one was.
func (s *streamFilter) sendReply() (filters.Status, bool) {
	if !s.hasReply.Load() {
		return filters.Continue, false
	}
	s.mu.Lock()
	r := s.reply
	s.reply = nil
	s.hasReply.Store(false)
	s.mu.Unlock()
	if r == nil {
		return filters.Continue, false
	}
	s.replied = r
	s.cb.SendLocalReply(r.status, r.body, r.details)
	return filters.Stop, true
}

// OnRequestHeaders runs proxy_on_request_headers.
func (s *streamFilter) OnRequestHeaders(cb filters.Callbacks, req *stream.Request, endStream bool) filters.Status {
	s.begin(cb)
	s.req = req
	act, err := s.hc.OnRequestHeaders(countRequest(req), endStream)
	return s.after("proxy_on_request_headers", act, err, false)
}

// OnRequestData runs proxy_on_request_body with the body held so far.
func (s *streamFilter) OnRequestData(cb filters.Callbacks, data []byte, endStream bool) filters.Status {
	if s.bypass || s.hc == nil {
		return filters.Continue
	}
	s.cb = cb
	s.body, s.bodyOf, s.hasBody = data, wasm.BufferRequestBody, true
	defer func() { s.body, s.hasBody = nil, false }()
	act, err := s.hc.OnRequestBody(len(data), endStream)
	return s.after("proxy_on_request_body", act, err, !endStream)
}

// OnRequestTrailers runs proxy_on_request_trailers.
func (s *streamFilter) OnRequestTrailers(cb filters.Callbacks, t *header.Header) filters.Status {
	if s.bypass || s.hc == nil {
		return filters.Continue
	}
	s.cb = cb
	s.trailers, s.trailerOf = t, wasm.MapRequestTrailers
	defer func() { s.trailers = nil }()
	act, err := s.hc.OnRequestTrailers(t.Len())
	return s.after("proxy_on_request_trailers", act, err, false)
}

// OnResponseHeaders adds the headers of the guest's own local response,
// then runs proxy_on_response_headers.
func (s *streamFilter) OnResponseHeaders(cb filters.Callbacks, resp *stream.Response, endStream bool) filters.Status {
	if r := s.replied; r != nil {
		for _, kv := range r.headers {
			resp.Header.Set(kv[0], kv[1])
		}
		if r.grpc >= 0 && resp.Header.Has("grpc-status") {
			resp.Header.Set("grpc-status", strconv.Itoa(int(r.grpc)))
		}
	}
	if s.bypass || s.hc == nil {
		return filters.Continue
	}
	s.cb, s.resp = cb, resp
	act, err := s.hc.OnResponseHeaders(countResponse(resp), endStream)
	st := s.after("proxy_on_response_headers", act, err, false)
	if endStream {
		s.finish()
	}
	return st
}

// OnResponseData runs proxy_on_response_body with the body held so far.
func (s *streamFilter) OnResponseData(cb filters.Callbacks, data []byte, endStream bool) filters.Status {
	if s.bypass || s.hc == nil {
		return filters.Continue
	}
	s.cb = cb
	s.body, s.bodyOf, s.hasBody = data, wasm.BufferResponseBody, true
	defer func() { s.body, s.hasBody = nil, false }()
	act, err := s.hc.OnResponseBody(len(data), endStream)
	st := s.after("proxy_on_response_body", act, err, !endStream)
	if endStream {
		s.finish()
	}
	return st
}

// OnResponseTrailers runs proxy_on_response_trailers.
func (s *streamFilter) OnResponseTrailers(cb filters.Callbacks, t *header.Header) filters.Status {
	if s.bypass || s.hc == nil {
		return filters.Continue
	}
	s.cb = cb
	s.trailers, s.trailerOf = t, wasm.MapResponseTrailers
	defer func() { s.trailers = nil }()
	act, err := s.hc.OnResponseTrailers(t.Len())
	st := s.after("proxy_on_response_trailers", act, err, false)
	s.finish()
	return st
}

// bodyCallbacks is implemented by *wasm.HTTPContext.
type bodyCallbacks interface{ BodyCallbacks() wasm.StreamCallbacks }

// BodyHooks implements filters.HookSelector: the body and trailer hooks
// whose guest callbacks run. A stream that failed open needs none, nor one
// whose guest implements none of them; the response hooks stay while the
// guest has an end callback (proxy_on_log), so that it runs when the
// response ends rather than when the stream's context is cancelled.
func (s *streamFilter) BodyHooks() filters.Hooks {
	if s.bypass || s.hc == nil {
		return 0
	}
	bc, ok := s.hc.(bodyCallbacks)
	if !ok {
		return filters.AllHooks
	}
	cbs := bc.BodyCallbacks()
	var h filters.Hooks
	if cbs.RequestBody {
		h |= filters.HookRequestData
	}
	if cbs.RequestTrailers {
		h |= filters.HookRequestTrailers
	}
	if cbs.ResponseBody || cbs.End {
		h |= filters.HookResponseData
	}
	if cbs.ResponseTrailers || cbs.End {
		h |= filters.HookResponseTrailers
	}
	return h
}

// Headers implements wasm.StreamHost.
func (s *streamFilter) Headers(m wasm.MapType) wasm.HeaderMap {
	switch m {
	case wasm.MapRequestHeaders:
		if s.req != nil {
			s.reqMap.r = s.req
			return &s.reqMap
		}
	case wasm.MapResponseHeaders:
		if s.resp != nil {
			s.respMap.r = s.resp
			return &s.respMap
		}
	case wasm.MapRequestTrailers, wasm.MapResponseTrailers:
		if s.trailers != nil && s.trailerOf == m {
			s.trMap.h = s.trailers
			return &s.trMap
		}
	}
	return nil
}

// Body implements wasm.StreamHost: the data the running body hook holds.
func (s *streamFilter) Body(b wasm.BufferType) ([]byte, bool) {
	if !s.hasBody || b != s.bodyOf {
		return nil, false
	}
	return s.body, true
}

// SetBody implements wasm.StreamHost. The filter API lets a hook change
// body bytes in place only, so a replacement of another length is refused
// (the guest sees a failure status).
func (s *streamFilter) SetBody(b wasm.BufferType, data []byte) bool {
	if !s.hasBody || b != s.bodyOf || len(data) != len(s.body) {
		return false
	}
	copy(s.body, data)
	return true
}

// SendLocalResponse implements wasm.StreamHost: the reply is sent by the
// hook that ran the callback, or by the hook waiting for a paused stream.
func (s *streamFilter) SendLocalResponse(status int, details string, body []byte, headers [][2]string, grpcStatus int32) error {
	s.mu.Lock()
	if s.reply == nil {
		s.reply = &localResp{status: status, details: details, body: string(body), headers: headers, grpc: grpcStatus}
		s.hasReply.Store(true)
	}
	s.mu.Unlock()
	s.wake()
	return nil
}

// Resume implements wasm.StreamHost.
func (s *streamFilter) Resume(wasm.StreamType) { s.wake() }

// Reset implements wasm.StreamHost. The filter API has no stream reset, so
// proxy_close_stream answers 503 while the response has not started.
func (s *streamFilter) Reset(wasm.StreamType) {
	_ = s.SendLocalResponse(503, "wasm_close_stream", nil, nil, -1)
}

func (s *streamFilter) wake() {
	select {
	case s.resumeCh() <- struct{}{}:
	default:
	}
}

// Property implements wasm.StreamHost for the per-stream attributes Envoy
// defines: request.*, response.code, source.*, destination.*,
// connection.*. Integers are 8-byte little-endian, as Envoy encodes them.
func (s *streamFilter) Property(path []string) ([]byte, bool) {
	if len(path) < 2 || s.cb == nil {
		return nil, false
	}
	conn := s.cb.Conn()
	switch path[0] {
	case "request":
		return requestProperty(s.req, conn, path[1:])
	case "response":
		if path[1] == "code" && s.resp != nil {
			return le64(int64(s.resp.Status)), true
		}
	case "source":
		switch path[1] {
		case "address":
			return addrString(conn.RemoteAddr)
		case "port":
			return addrPort(conn.RemoteAddr)
		case "principal":
			if id, ok := s.cb.PeerPrincipal(); ok {
				return []byte(id), true
			}
		}
	case "destination":
		switch path[1] {
		case "address":
			return addrString(conn.LocalAddr)
		case "port":
			return addrPort(conn.LocalAddr)
		}
	case "connection":
		switch path[1] {
		case "id":
			return le64(int64(conn.ID)), true
		case "mtls":
			_, ok := s.cb.PeerPrincipal()
			return []byte{b2byte(ok)}, true
		case "uri_san_peer_certificate":
			if id, ok := s.cb.PeerPrincipal(); ok {
				return []byte(id), true
			}
		}
	}
	return nil, false
}

func requestProperty(r *stream.Request, conn *stream.ConnInfo, path []string) ([]byte, bool) {
	if r == nil {
		return nil, false
	}
	switch path[0] {
	case "path":
		return []byte(r.Path), true
	case "url_path":
		p, _, _ := strings.Cut(r.Path, "?")
		return []byte(p), true
	case "query":
		_, q, _ := strings.Cut(r.Path, "?")
		return []byte(q), true
	case "host":
		return []byte(r.Authority), true
	case "scheme":
		return []byte(r.Scheme), true
	case "method":
		return []byte(r.Method), true
	case "protocol":
		return []byte(conn.Proto), true
	case "id":
		return headerValue(r, "x-request-id")
	case "referer":
		return headerValue(r, "referer")
	case "useragent":
		return headerValue(r, "user-agent")
	case "headers":
		if len(path) == 2 {
			return headerValue(r, strings.ToLower(path[1]))
		}
		return encodeMap((&requestMap{r: r}).Pairs()), true
	}
	return nil, false
}

func headerValue(r *stream.Request, name string) ([]byte, bool) {
	vs := r.Header.Values(name)
	if len(vs) == 0 {
		return nil, false
	}
	return []byte(strings.Join(vs, ",")), true
}

func addrString(a net.Addr) ([]byte, bool) {
	if a == nil {
		return nil, false
	}
	return []byte(a.String()), true
}

func addrPort(a net.Addr) ([]byte, bool) {
	if a == nil {
		return nil, false
	}
	_, p, err := net.SplitHostPort(a.String())
	if err != nil {
		return nil, false
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		return nil, false
	}
	return le64(int64(n)), true
}

func le64(v int64) []byte { return binary.LittleEndian.AppendUint64(nil, uint64(v)) }

func b2byte(b bool) byte {
	if b {
		return 1
	}
	return 0
}

// encodeMap serializes pairs in the proxy-wasm map format (count, then
// key and value sizes, then NUL-terminated keys and values).
func encodeMap(pairs [][2]string) []byte {
	n := 4 + 8*len(pairs)
	for _, kv := range pairs {
		n += len(kv[0]) + len(kv[1]) + 2
	}
	b := make([]byte, 0, n)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(pairs)))
	for _, kv := range pairs {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(kv[0])))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(kv[1])))
	}
	for _, kv := range pairs {
		b = append(append(append(append(b, kv[0]...), 0), kv[1]...), 0)
	}
	return b
}

// countRequest is the number of request header pairs a guest sees,
// pseudo-headers included.
func countRequest(r *stream.Request) int {
	n := r.Header.Len()
	for _, v := range [...]string{r.Authority, r.Path, r.Method, r.Scheme} {
		if v != "" {
			n++
		}
	}
	return n
}

// countResponse is the number of response header pairs, :status included.
func countResponse(r *stream.Response) int { return 1 + r.Header.Len() }
