package hcm

import (
	"context"
	"errors"
	"io"
	"sync"

	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// DefaultPerRequestBufferLimit is how many request body bytes the router
// keeps so that an attempt can be replayed on another connection, when
// neither the route nor its virtual host sets
// per_request_buffer_limit_bytes. A request whose body grows beyond the
// limit is still proxied (streamed with back-pressure), but it can no longer
// be retried.
const DefaultPerRequestBufferLimit = 64 << 10

// errBodyNotReplayable ends an attempt that would need request body bytes
// already released because the body outgrew the buffer limit.
var errBodyNotReplayable = errors.New("request body exceeds per_request_buffer_limit_bytes, cannot retry")

// replayBody is the downstream request body as the router sees it: one
// goroutine (fill) reads the downstream stream into it, and the current
// attempt's sender reads it from the start. While the body fits in limit
// every chunk is kept, so a later attempt can replay it; once it outgrows
// limit the buffer switches to streaming: chunks are released as the
// current attempt sends them, fill stops reading while limit bytes are
// waiting to be sent (back-pressure through the downstream flow control),
// and no further attempt may start.
type replayBody struct {
	limit int

	mu       sync.Mutex
	chunks   [][]byte // chunks[i] is chunk number base+i
	base     int      // chunks released before chunks[0]; > 0 only after overflow
	size     int      // bytes held in chunks
	overflow bool     // the body outgrew limit: not replayable any more
	eof      bool     // the whole body was received; trailers is valid
	trailers header.Header
	err      error // the downstream read failed
	// changed is closed and replaced whenever any field above changes.
	changed chan struct{}
}

func newReplayBody(limit int) *replayBody {
	return &replayBody{limit: limit, changed: make(chan struct{})}
}

// notifyLocked wakes every goroutine waiting for a change.
func (b *replayBody) notifyLocked() {
	close(b.changed)
	b.changed = make(chan struct{})
}

// fill reads the downstream body and trailers into b until the end of the
// request, a read error, or ctx ending. onActivity is called for each chunk
// and onComplete once the whole request has been received. With a chain,
// every chunk and the trailers pass its hooks first; a hook's local reply
// or buffer overflow ends the body with that error (the hook already
// cancelled the exchange for a reply; fail cancels it for an overflow).
func (b *replayBody) fill(ctx context.Context, ds stream.ServerStream, chain *bodyChain, fail context.CancelCauseFunc, onActivity, onComplete func()) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for {
		n, err := ds.Read(buf)
		if n > 0 {
			onActivity()
			chunk := make([]byte, n)
			copy(chunk, buf[:n])
			if chain != nil {
				var ferr error
				if chunk, ferr = chain.onData(chunk, false); ferr != nil {
					b.fail(ferr, fail)
					return
				}
			}
			if !b.push(ctx, chunk) {
				return
			}
		}
		if err != nil {
			var trailers header.Header
			if err == io.EOF {
				trailers = ds.Trailers()
				if chain != nil {
					var rest []byte
					var ferr error
					if trailers.Len() > 0 {
						rest, ferr = chain.onTrailers(&trailers)
					} else {
						rest, ferr = chain.onData(nil, true)
					}
					if ferr != nil {
						b.fail(ferr, fail)
						return
					}
					if !b.push(ctx, rest) {
						return
					}
				}
			}
			b.mu.Lock()
			if err == io.EOF {
				b.eof = true
				b.trailers = trailers
			} else {
				b.err = err
			}
			b.notifyLocked()
			b.mu.Unlock()
			if err == io.EOF {
				onComplete()
			}
			return
		}
	}
}

// push appends chunk, then waits while the body is over its limit in
// streaming mode. It returns false when ctx ended.
func (b *replayBody) push(ctx context.Context, chunk []byte) bool {
	if len(chunk) == 0 {
		return true
	}
	b.mu.Lock()
	b.chunks = append(b.chunks, chunk)
	b.size += len(chunk)
	if b.size > b.limit {
		b.overflow = true
	}
	b.notifyLocked()
	for b.overflow && b.size > b.limit {
		wait := b.changed
		b.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return false
		}
		b.mu.Lock()
	}
	b.mu.Unlock()
	return true
}

// fail ends the body with a filter's error: senders reset their upstream
// stream, and the exchange ends with cause err.
func (b *replayBody) fail(err error, cancel context.CancelCauseFunc) {
	b.mu.Lock()
	b.err = err
	b.notifyLocked()
	b.mu.Unlock()
	cancel(err)
}

// replayable reports whether a new attempt can send the body from its start.
func (b *replayBody) replayable() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return !b.overflow
}

// send writes the body and trailers to us, from the first byte, until the
// end of the request; it resets us when the downstream body failed, when
// ctx ends first, or when bytes it needs were already released. It is the
// body of one attempt's sender goroutine; only one runs at a time.
func (b *replayBody) send(ctx context.Context, us stream.ClientStream, onActivity func()) {
	next := 0
	for {
		b.mu.Lock()
		switch {
		case next < b.base:
			b.mu.Unlock()
			us.Reset(stream.ErrCodeCancel)
			return
		case next-b.base < len(b.chunks):
			chunk := b.chunks[next-b.base]
			next++
			if b.overflow {
				// Streaming mode: what this attempt sent is released.
				drop := next - b.base
				for i := range drop {
					b.size -= len(b.chunks[i])
					b.chunks[i] = nil
				}
				b.chunks = b.chunks[drop:]
				b.base = next
				b.notifyLocked()
			}
			b.mu.Unlock()
			if _, err := us.Write(chunk); err != nil {
				return
			}
			onActivity()
		case b.eof:
			t := b.trailers
			b.mu.Unlock()
			_ = us.CloseWrite(t) // a failure surfaces on the response side
			return
		case b.err != nil:
			b.mu.Unlock()
			us.Reset(stream.ErrCodeCancel)
			return
		default:
			wait := b.changed
			b.mu.Unlock()
			select {
			case <-wait:
			case <-ctx.Done():
				return
			}
		}
	}
}

// complete reports whether the whole request body has been received.
func (b *replayBody) complete() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.eof
}
