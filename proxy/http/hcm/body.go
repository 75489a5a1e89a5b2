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
// neither the route nor its virtual host sets request_body_buffer_limit or
// per_request_buffer_limit_bytes and the listener sets no
// per_connection_buffer_limit_bytes (see route.BodyBufferLimit.Bytes). A
// request whose body grows beyond the limit is still proxied (streamed with
// back-pressure), but it can no longer be retried.
const DefaultPerRequestBufferLimit = 64 << 10

// errBodyNotReplayable ends an attempt that would need request body bytes
// already released because the body outgrew the buffer limit.
var errBodyNotReplayable = errors.New("request body exceeds the route's request body buffer limit, cannot retry")

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
	// changed is closed whenever any field above changes, then cleared;
	// it is made only when a goroutine waits (waitLocked), so a body
	// moved on the handler's goroutine allocates none.
	changed chan struct{}
}

func newReplayBody(limit int) *replayBody {
	return &replayBody{limit: limit}
}

// notifyLocked wakes every goroutine waiting for a change.
func (b *replayBody) notifyLocked() {
	if b.changed != nil {
		close(b.changed)
		b.changed = nil
	}
}

// waitLocked returns a channel closed at the next change.
func (b *replayBody) waitLocked() <-chan struct{} {
	if b.changed == nil {
		b.changed = make(chan struct{})
	}
	return b.changed
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
			if err == io.EOF {
				// Before the end is visible to the upstream side: once it
				// is, the upstream can answer, and the response's end must
				// not be stamped before the request's (upstream_rq_time).
				onComplete()
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
			return
		}
	}
}

// inlineBodyMax bounds the request bodies the router moves on the
// handler's goroutine (fillBuffered, sendBuffered): small enough that the
// upstream codec takes the whole body without waiting on flow control (the
// HTTP/2 client queues 64 KiB per stream, HTTP/2 and HTTP/3 peers open at
// least a 64 KiB window), so an upstream that answers before reading the
// request cannot stall the goroutine that must forward its response.
const inlineBodyMax = 16 << 10

// fillBuffered reads the whole request body and trailers into b without a
// goroutine when ds reports them already received (stream.BufferedBody)
// and at most inlineBodyMax bytes long. It returns false, having read
// nothing, otherwise; the caller then starts fill. Read does not block
// here: the codec promised the bytes and the end of stream are buffered.
func (b *replayBody) fillBuffered(ds stream.ServerStream) bool {
	bb, ok := ds.(stream.BufferedBody)
	if !ok {
		return false
	}
	n, complete := bb.BufferedBody()
	if !complete || n > inlineBodyMax || n > b.limit {
		return false
	}
	var chunk []byte
	if n > 0 {
		chunk = make([]byte, n)
	}
	got := 0
	for {
		k, err := ds.Read(chunk[got:])
		got += k
		if err == io.EOF {
			break
		}
		if err != nil {
			// The stream failed after reporting a complete body: record
			// it as fill would, so senders reset their upstream stream.
			b.mu.Lock()
			b.err = err
			b.notifyLocked()
			b.mu.Unlock()
			return true
		}
		if k == 0 {
			// A codec that reported complete returns data or io.EOF; a
			// read returning neither would loop here.
			b.mu.Lock()
			b.err = errors.New("request body: stream reported complete but Read returned no data and no end of stream")
			b.notifyLocked()
			b.mu.Unlock()
			return true
		}
	}
	b.mu.Lock()
	if got > 0 {
		b.chunks = append(b.chunks, chunk[:got])
		b.size = got
	}
	b.eof = true
	b.trailers = ds.Trailers()
	b.notifyLocked()
	b.mu.Unlock()
	return true
}

// buffered reports whether the whole body was received and is small
// enough for sendBuffered.
func (b *replayBody) buffered() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.eof && !b.overflow && b.size <= inlineBodyMax
}

// sendBuffered writes the body and trailers to us from the calling
// goroutine: the whole of one attempt's request side when buffered
// reported true (the body can no longer change then). A write failure
// ends it early; the failure surfaces on the response side, as in send.
func (b *replayBody) sendBuffered(us stream.ClientStream) {
	b.mu.Lock()
	chunks, t := b.chunks, b.trailers
	b.mu.Unlock()
	for _, c := range chunks {
		if _, err := us.Write(c); err != nil {
			return
		}
	}
	_ = us.CloseWrite(t)
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
		wait := b.waitLocked()
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
			wait := b.waitLocked()
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
