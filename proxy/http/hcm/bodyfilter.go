package hcm

import (
	"context"
	"errors"
	"sync"

	"meshd.dev/meshd/filters"
	"meshd.dev/meshd/proxy/http/header"
)

// errFilterReply ends the exchange when a request body or trailer hook
// sent a local reply: the reply is sent by the stream's goroutine once the
// upstream attempt has been torn down.
var errFilterReply = errors.New("local reply from an http filter's body hook")

// errBufferLimit ends a direction whose StopAndBuffer hooks held more than
// the buffer limit.
var errBufferLimit = errors.New("http filter buffered more than the route's request body buffer limit")

// hookState is an exchange's body and trailer hook state, allocated only
// for chains that have such hooks.
type hookState struct {
	// reqChain and respChain are nil when no filter hooks that direction.
	reqChain, respChain *bodyChain
	// mu serialises the stream's hooks: request body hooks run on the body
	// reader's goroutine.
	mu sync.Mutex
	// inBodyReader is set (under mu) while request body hooks run, so
	// that SendLocalReply records pending instead of answering from the
	// body reader's goroutine.
	inBodyReader bool
	// pending is the local reply a request body hook asked for; guarded
	// by mu.
	pending *pendingReply
	// cancel ends the exchange's context (set by proxy).
	cancel context.CancelCauseFunc
}

// pendingReply is a local reply requested by a request body hook.
type pendingReply struct {
	status int
	body   string
}

// bodyChain runs one direction's body and trailer hooks, in the order they
// run (request: http_filters order; response: reverse), keeping what
// StopAndBuffer holds per filter. It is used by one goroutine at a time
// (request: the body reader; response: the stream's goroutine), and every
// call holds the exchange's hookMu, so hooks of one stream never run
// concurrently.
type bodyChain struct {
	ex       *exchange
	data     []func(cb filters.Callbacks, data []byte, end bool) filters.Status
	trailers []func(cb filters.Callbacks, t *header.Header) filters.Status
	// held[i] is the data filter i (in data) asked to hold, older than
	// anything that reaches filter i later.
	held     [][]byte
	heldSize int
	limit    int
	request  bool // the request direction: hooks run on the body reader
}

// empty reports whether the chain has no hooks.
func (c *bodyChain) empty() bool { return len(c.data) == 0 && len(c.trailers) == 0 }

// onData passes chunk through the data hooks and returns what moves on
// (nil while held). end marks the last chunk.
func (c *bodyChain) onData(chunk []byte, end bool) ([]byte, error) {
	c.ex.hooks.mu.Lock()
	defer c.ex.hooks.mu.Unlock()
	if c.request {
		c.ex.hooks.inBodyReader = true
		defer func() { c.ex.hooks.inBodyReader = false }()
	}
	d := chunk
	for i, hook := range c.data {
		if h := c.held[i]; h != nil {
			c.held[i] = nil
			c.heldSize -= len(h)
			d = append(h, d...)
		}
		st := hook(c.ex, d, end)
		if c.ex.hooks.pending != nil {
			return nil, errFilterReply
		}
		switch st {
		case filters.StopAndBuffer:
			if end {
				continue
			}
			c.held[i] = d
			c.heldSize += len(d)
			if c.heldSize > c.limit {
				return nil, errBufferLimit
			}
			return nil, nil
		case filters.Stop:
			return d, nil
		}
	}
	return d, nil
}

// onTrailers moves held data on (each holding filter sees it again only
// when data from the filters before it joined it) and runs the trailer
// hooks on t. It returns the data to send before the trailers.
func (c *bodyChain) onTrailers(t *header.Header) ([]byte, error) {
	c.ex.hooks.mu.Lock()
	defer c.ex.hooks.mu.Unlock()
	if c.request {
		c.ex.hooks.inBodyReader = true
		defer func() { c.ex.hooks.inBodyReader = false }()
	}
	var carry []byte
	for i, hook := range c.data {
		h := c.held[i]
		c.held[i] = nil
		if len(carry) == 0 {
			carry = h
			continue
		}
		carry = append(h, carry...)
		hook(c.ex, carry, false)
		if c.ex.hooks.pending != nil {
			return nil, errFilterReply
		}
	}
	c.heldSize = 0
	for _, hook := range c.trailers {
		st := hook(c.ex, t)
		if c.ex.hooks.pending != nil {
			return nil, errFilterReply
		}
		if st != filters.Continue {
			break
		}
	}
	return carry, nil
}

// buildBodyChains sets the exchange's request and response chains from its
// filters; both stay nil when no filter has a body or trailer hook.
func (ex *exchange) buildBodyChains() {
	var req, resp bodyChain
	for _, f := range ex.filters {
		use := hooksOf(f)
		if h, ok := f.(filters.RequestBodyFilter); ok && use&filters.HookRequestData != 0 {
			req.data = append(req.data, h.OnRequestData)
		}
		if h, ok := f.(filters.RequestTrailersFilter); ok && use&filters.HookRequestTrailers != 0 {
			req.trailers = append(req.trailers, h.OnRequestTrailers)
		}
	}
	for i := len(ex.filters) - 1; i >= 0; i-- {
		f := ex.filters[i]
		use := hooksOf(f)
		if h, ok := f.(filters.ResponseBodyFilter); ok && use&filters.HookResponseData != 0 {
			resp.data = append(resp.data, h.OnResponseData)
		}
		if h, ok := f.(filters.ResponseTrailersFilter); ok && use&filters.HookResponseTrailers != 0 {
			resp.trailers = append(resp.trailers, h.OnResponseTrailers)
		}
	}
	if req.empty() && resp.empty() {
		return
	}
	// Copies escape, so req and resp stay on the stack for the common
	// stream without hooks.
	ex.hooks = &hookState{}
	if !req.empty() {
		rc := req
		rc.ex, rc.held, rc.request = ex, make([][]byte, len(rc.data)), true
		ex.hooks.reqChain = &rc
	}
	if !resp.empty() {
		rc := resp
		rc.ex, rc.held = ex, make([][]byte, len(rc.data))
		ex.hooks.respChain = &rc
	}
}

// hooksOf returns the body and trailer hooks f asks for: all it implements
// unless it is a filters.HookSelector.
func hooksOf(f filters.Filter) filters.Hooks {
	if hs, ok := f.(filters.HookSelector); ok {
		return hs.BodyHooks()
	}
	return filters.AllHooks
}

// reqChain returns the request chain, nil when there is none.
func (ex *exchange) reqChain() *bodyChain {
	if ex.hooks == nil {
		return nil
	}
	return ex.hooks.reqChain
}

// respChain returns the response chain, nil when there is none.
func (ex *exchange) respChain() *bodyChain {
	if ex.hooks == nil {
		return nil
	}
	return ex.hooks.respChain
}

// setBufferLimit sets both chains' held-bytes limit.
func (ex *exchange) setBufferLimit(limit int) {
	if c := ex.reqChain(); c != nil {
		c.limit = limit
	}
	if c := ex.respChain(); c != nil {
		c.limit = limit
	}
}

// hooksShared reports whether hooks of this stream may run on two
// goroutines, so that every hook call must hold hooks.mu.
func (ex *exchange) hooksShared() bool { return ex.reqChain() != nil }
