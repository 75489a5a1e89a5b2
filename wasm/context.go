package wasm

import (
	"fmt"
	"sync/atomic"

	"github.com/tetratelabs/wazero/api"
)

// HTTPContext is one stream's proxy-wasm HTTP context, pinned to one VM
// instance for its life. Its callbacks must be called in stream order from
// one goroutine at a time; each returns ErrUnavailable (wrapped) when the
// instance broke, and then the FILTER side applies fail_open. Done must be
// called once at the end of the stream.
type HTTPContext struct {
	p    *Plugin
	inst *instance // nil when no healthy instance existed
	host StreamHost
	id   uint32

	// Owned by the instance lock.
	created bool
	mask    uint32            // the callbacks to run (cb* bits), set at creation
	props   map[string][]byte // set by proxy_set_property
	// ended is set once, by Done under the instance lock; loaded without
	// it, so that the filter's second Done (Envoy's onDestroy after the
	// last response hook) takes no lock.
	ended atomic.Bool
}

// NewHTTPContext pins a new stream to a healthy instance (round robin).
// proxy_on_context_create runs lazily with the first callback, so creating
// a context never calls the guest.
func (p *Plugin) NewHTTPContext(s StreamHost) *HTTPContext {
	c := new(HTTPContext)
	p.InitHTTPContext(c, s)
	return c
}

// InitHTTPContext is NewHTTPContext into storage the caller owns (for
// example a field of its per-stream object, which saves an allocation per
// stream). c must be the zero HTTPContext and must not move or be reused
// while the context lives: until Done returned and no callback of it runs.
func (p *Plugin) InitHTTPContext(c *HTTPContext, s StreamHost) {
	*c = HTTPContext{p: p, host: s}
	if !p.closing.Load() {
		c.inst = p.pick()
	}
	if c.inst != nil {
		c.id = c.inst.nextID.Add(1)
	}
}

// OnRequestHeaders runs proxy_on_request_headers.
func (c *HTTPContext) OnRequestHeaders(numHeaders int, endStream bool) (Action, error) {
	return c.action(cbRequestHeaders, func(f *guestFuncs) api.Function { return f.requestHeaders }, "proxy_on_request_headers", uint64(numHeaders), b2u(endStream))
}

// OnRequestBody runs proxy_on_request_body with the size of the body
// buffered so far.
func (c *HTTPContext) OnRequestBody(size int, endStream bool) (Action, error) {
	return c.action(cbRequestBody, func(f *guestFuncs) api.Function { return f.requestBody }, "proxy_on_request_body", uint64(size), b2u(endStream))
}

// OnRequestTrailers runs proxy_on_request_trailers.
func (c *HTTPContext) OnRequestTrailers(numTrailers int) (Action, error) {
	return c.action(cbRequestTrailers, func(f *guestFuncs) api.Function { return f.requestTrailers }, "proxy_on_request_trailers", uint64(numTrailers))
}

// OnResponseHeaders runs proxy_on_response_headers.
func (c *HTTPContext) OnResponseHeaders(numHeaders int, endStream bool) (Action, error) {
	return c.action(cbResponseHeaders, func(f *guestFuncs) api.Function { return f.responseHeaders }, "proxy_on_response_headers", uint64(numHeaders), b2u(endStream))
}

// OnResponseBody runs proxy_on_response_body.
func (c *HTTPContext) OnResponseBody(size int, endStream bool) (Action, error) {
	return c.action(cbResponseBody, func(f *guestFuncs) api.Function { return f.responseBody }, "proxy_on_response_body", uint64(size), b2u(endStream))
}

// OnResponseTrailers runs proxy_on_response_trailers.
func (c *HTTPContext) OnResponseTrailers(numTrailers int) (Action, error) {
	return c.action(cbResponseTrailers, func(f *guestFuncs) api.Function { return f.responseTrailers }, "proxy_on_response_trailers", uint64(numTrailers))
}

// Done ends the stream's context: proxy_on_done, proxy_on_log and
// proxy_on_delete, in Envoy's order. It is idempotent; after it the
// StreamHost is never called again.
func (c *HTTPContext) Done() error {
	i := c.inst
	if i == nil || c.ended.Load() {
		return nil
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	if c.ended.Load() {
		return nil
	}
	c.ended.Store(true)
	defer delete(i.streams, c.id)
	if !c.created || i.broken.Load() {
		return nil
	}
	prev := i.effective
	defer func() { i.effective = prev }()
	for _, cb := range [...]struct {
		fn   api.Function
		name string
		bit  uint32
	}{{i.fns.done, "proxy_on_done", cbDone}, {i.fns.log, "proxy_on_log", cbStreamDone}, {i.fns.deleteContext, "proxy_on_delete", cbDelete}} {
		if cb.fn == nil || c.mask&cb.bit == 0 {
			continue
		}
		if cb.bit == cbDelete && i.fns.deleteBatch != nil {
			// The fast ABI's deferred delete: no guest code of the
			// stream's runs in it (the SDK only drops the context).
			return i.deferDelete(c.id)
		}
		i.effective = c.id
		if _, err := i.call(cb.fn, cb.name, uint64(c.id)); err != nil {
			return err
		}
	}
	return nil
}

// StreamCallbacks says which of a stream's later callbacks call into the
// guest; the others return Continue at once (see BodyCallbacks).
type StreamCallbacks struct {
	RequestBody, RequestTrailers, ResponseBody, ResponseTrailers bool
	// End is proxy_on_log or proxy_on_done, which Done runs.
	End bool
}

// BodyCallbacks reports which body, trailer and end callbacks of the
// stream call into the guest: the ones the guest exports and, on the fast
// ABI, its context implements (see doc.go, "Fast ABI"). Before the context
// exists in the guest (no callback ran yet), and without an instance, it
// reports all of them. The FILTER side uses it after the request headers
// to leave out hooks that would only return Continue: a skipped callback
// never runs, so an instance that breaks later in the stream is noticed by
// the next callback that does run (or not at all).
func (c *HTTPContext) BodyCallbacks() StreamCallbacks {
	all := StreamCallbacks{true, true, true, true, true}
	i := c.inst
	if i == nil {
		return all
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	if !c.created {
		return all
	}
	has := func(fn api.Function, bit uint32) bool { return fn != nil && c.mask&bit != 0 }
	return StreamCallbacks{
		RequestBody:      has(i.fns.requestBody, cbRequestBody),
		RequestTrailers:  has(i.fns.requestTrailers, cbRequestTrailers),
		ResponseBody:     has(i.fns.responseBody, cbResponseBody),
		ResponseTrailers: has(i.fns.responseTrailers, cbResponseTrailers),
		End:              has(i.fns.log, cbStreamDone) || has(i.fns.done, cbDone),
	}
}

// action runs one stream callback: it creates the context on first use,
// makes it the effective context, calls the export (Continue when the guest
// does not export it, or its context leaves bit to the SDK default) and maps
// the result to an Action.
func (c *HTTPContext) action(bit uint32, pick func(*guestFuncs) api.Function, name string, args ...uint64) (Action, error) {
	i := c.inst
	if i == nil {
		return Continue, fmt.Errorf("%s: %w: no healthy instance", name, ErrUnavailable)
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	if c.ended.Load() {
		return Continue, fmt.Errorf("%s: context already done", name)
	}
	if i.broken.Load() {
		return Continue, fmt.Errorf("%s: %w", name, ErrUnavailable)
	}
	prev := i.effective
	defer func() { i.effective = prev }()
	i.effective = c.id
	if !c.created {
		i.streams[c.id] = c
		c.mask = cbAll
		if bit == cbRequestHeaders && i.fns.requestHeadersFused != nil {
			// Fast ABI: create the context and run its request
			// headers in one entry.
			r, err := i.call(i.fns.requestHeadersFused, "meshd_on_request_headers", uint64(c.id), rootContextID, args[0], args[1])
			if err != nil {
				return Continue, err
			}
			c.mask, c.created = uint32(r>>32)&cbHTTP|cbDelete, true
			if uint32(r) == uint32(Continue) {
				return Continue, nil
			}
			return Pause, nil
		}
		if i.fns.contextCreateMask != nil {
			m, err := i.call(i.fns.contextCreateMask, "meshd_on_context_create", uint64(c.id), rootContextID)
			if err != nil {
				return Continue, err
			}
			c.mask = uint32(m)&cbHTTP | cbDelete
		} else if _, err := i.call(i.fns.contextCreate, "proxy_on_context_create", uint64(c.id), rootContextID); err != nil {
			return Continue, err
		}
		c.created = true
	}
	fn := pick(&i.fns)
	if fn == nil || c.mask&bit == 0 {
		return Continue, nil
	}
	var stack [3]uint64
	stack[0] = uint64(c.id)
	copy(stack[1:], args)
	r, err := i.call(fn, name, stack[:1+len(args)]...)
	if err != nil {
		return Continue, err
	}
	if uint32(r) == uint32(Continue) {
		return Continue, nil
	}
	return Pause, nil
}

// The bits of HTTPContext.mask, as meshd_on_context_create and
// meshd_on_request_headers return them (see doc.go, "Fast ABI"): one per HTTP
// context callback the guest implements itself.
const (
	cbRequestHeaders uint32 = 1 << iota
	cbRequestBody
	cbRequestTrailers
	cbResponseHeaders
	cbResponseBody
	cbResponseTrailers
	cbStreamDone // proxy_on_log
	cbDone       // proxy_on_done
	// cbHTTP is every bit a guest may clear.
	cbHTTP = 1<<iota - 1
	// cbDelete is proxy_on_delete, which always runs.
	cbDelete uint32 = 1 << 31
	cbAll           = cbHTTP | cbDelete
)

func b2u(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}
