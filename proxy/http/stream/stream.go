// Package stream defines the protocol-neutral view of one HTTP exchange that
// meshd's codecs (HTTP/1.1, HTTP/2, HTTP/3) give to the connection manager,
// and the client-side view the upstream pools give to the router.
//
// One exchange is one stream: request headers, a request body of zero or more
// data chunks, optional request trailers; then response headers, a response
// body, optional response trailers. Either side may reset the stream at any
// time. The codec owns framing, flow control and connection state; code above
// this interface never sees frames.
package stream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"

	"meshd.dev/meshd/proxy/http/header"
)

// Request is a request's header section. Pseudo-header fields are separate
// from Header, which holds only regular fields with lower-case names.
type Request struct {
	Method    string
	Scheme    string // "http" or "https"
	Authority string // ":authority", or Host for HTTP/1.1
	Path      string // ":path": path and query, or "*" for OPTIONS
	Header    header.Header
	// ContentLength is the declared body length, or -1 when unknown.
	ContentLength int64
	// EndStream is set by server codecs when the header section ended the
	// request: HTTP/2 or HTTP/3 END_STREAM on HEADERS, or an HTTP/1.1
	// request without a body. There is no body and no trailers to read.
	EndStream bool
}

// Response is a response's header section.
type Response struct {
	Status int
	Header header.Header
	// ContentLength is the declared body length, or -1 when unknown.
	ContentLength int64
	// EndStream is set by client codecs when the header section ended the
	// response (HTTP/2 END_STREAM on HEADERS, as in a gRPC trailers-only
	// response; an HTTP/1.1 response that has no body). A proxy forwards it
	// with WriteHeader(resp, true) so the framing is preserved.
	EndStream bool
}

// ConnInfo describes the downstream connection a stream arrived on.
type ConnInfo struct {
	// ID is unique per connection within one process.
	ID         uint64
	LocalAddr  net.Addr
	RemoteAddr net.Addr
	// TLS is nil for plaintext connections.
	TLS *tls.ConnectionState
	// Proto is "HTTP/1.1", "HTTP/2" or "HTTP/3", or "TCP" for a raw
	// connection handed to a network filter such as tcp_proxy.
	Proto string
}

// ServerStream is one downstream request, handed by a codec to a Handler.
//
// The receive side (Read, Trailers) and the send side (WriteHeader, Write,
// WriteTrailers, CloseWrite) may be used from two different goroutines at
// once; each side is used by one goroutine at a time. Reset and Context are
// safe from any goroutine.
type ServerStream interface {
	// Request returns the request headers. The value is owned by the handler.
	Request() *Request
	// Read reads request body data. It returns io.EOF once the peer ended the
	// stream (after which Trailers is valid) and a *Error if the stream was
	// reset or the connection failed.
	Read(p []byte) (int, error)
	// Trailers returns the request trailers; valid after Read returned io.EOF.
	Trailers() header.Header

	// WriteHeader sends the response headers; endStream ends the response
	// with no body (for gRPC, a trailers-only response is WriteHeader with
	// the grpc-status fields in resp.Header and endStream true). 1xx
	// informational responses may be sent first with endStream false.
	WriteHeader(resp *Response, endStream bool) error
	// Write sends response body data. The codec flushes it to the socket
	// without waiting for more data, so small streamed messages are not
	// delayed. It blocks while flow control allows no more.
	Write(p []byte) (int, error)
	// WriteTrailers sends trailers and ends the response.
	WriteTrailers(t header.Header) error
	// CloseWrite ends the response without trailers.
	CloseWrite() error
	// Reset abandons the stream with code (HTTP/2 RST_STREAM; HTTP/1.1
	// closes the connection). It unblocks pending Read and Write calls.
	Reset(code ErrCode)
	// Context is cancelled when the stream ends for any reason: completed,
	// reset by the peer, or its connection closed.
	Context() context.Context
	// Conn describes the connection the stream arrived on.
	Conn() *ConnInfo
}

// BufferedBody is implemented by server streams that can tell, without
// blocking, whether the whole request body has already arrived. A proxy
// uses it to forward a small, complete body from the handler's goroutine
// instead of starting a goroutine to pump it.
type BufferedBody interface {
	// BufferedBody returns how many request body bytes are buffered and
	// not yet read, and whether the peer ended the request (END_STREAM
	// received, trailers included) without the stream failing. When
	// complete is true, Read returns those n bytes and then io.EOF without
	// blocking, and Trailers is valid after that.
	BufferedBody() (n int, complete bool)
}

// Handler serves downstream streams. A codec calls ServeStream once per
// stream, on a goroutine of its own; the stream is finished when
// ServeStream returns (a response not ended by then is reset).
type Handler interface {
	ServeStream(s ServerStream)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ServerStream)

// ServeStream calls f(s).
func (f HandlerFunc) ServeStream(s ServerStream) { f(s) }

// ClientStream is one upstream request opened on a ClientConn.
//
// The send side (Write, CloseWrite) and the receive side (Response, Read,
// Trailers) may be used from two goroutines at once.
type ClientStream interface {
	// Write sends request body data, blocking while flow control allows no
	// more.
	Write(p []byte) (int, error)
	// CloseWrite ends the request, with trailers when t is non-empty.
	CloseWrite(t header.Header) error
	// Response waits for the final (non-1xx) response headers.
	Response(ctx context.Context) (*Response, error)
	// Read reads response body data; io.EOF at the end of the stream, after
	// which Trailers is valid; a *Error if the stream was reset.
	Read(p []byte) (int, error)
	// Trailers returns the response trailers; valid after Read returned io.EOF.
	Trailers() header.Header
	// Reset cancels the stream with code (HTTP/2 RST_STREAM) and releases it.
	// Calling Reset after the stream completed is a no-op.
	Reset(code ErrCode)
}

// ContextBound is implemented by client streams that watch the context
// given to NewStream themselves: when it ends before the stream completed,
// the stream is reset with CANCEL, exactly as if Reset(ErrCodeCancel) had
// been called. A caller holding such a stream needs no watcher of its own.
type ContextBound interface {
	// ResetsOnContextDone is a marker; it does nothing.
	ResetsOnContextDone()
}

// Carried is implemented by the client streams of multiplexing codecs
// (HTTP/2, HTTP/3): Conn returns the connection the stream was opened on,
// the same value for every stream of that connection. After an unprocessed
// failure (REFUSED_STREAM, H3_REQUEST_REJECTED) it tells a pool which
// connection refused, so the retry can go to another one.
type Carried interface {
	Conn() ClientConn
}

// ConnOf returns the connection carrying s when s is Carried, else nil.
func ConnOf(s ClientStream) ClientConn {
	if c, ok := s.(Carried); ok {
		return c.Conn()
	}
	return nil
}

// ClientConn is an upstream connection (or, for HTTP/1.1, a pool of them to
// one endpoint) that can carry streams.
type ClientConn interface {
	// NewStream sends req's headers; endStream says the request has no body.
	// An error whose Unprocessed reports true guarantees the peer did not
	// process the request, so it is safe to retry anywhere.
	NewStream(ctx context.Context, req *Request, endStream bool) (ClientStream, error)
	// Close closes the connection at once, failing its streams.
	Close() error
}

// Flusher is implemented by ServerStreams whose codec can hold written
// frames back and send a burst of them in one write: meshd's HTTP/3
// codec, where each write to a QUIC stream wakes the connection's send
// loop and may cost a packet, so a unary response's HEADERS, DATA and
// trailers go out in one write instead of three.
//
// Holding is opt-in, so the promise of Write (flushed without waiting for
// more) holds for every caller that does not ask. After Hold, WriteHeader
// and Write keep their frames in the stream's buffer until Flush, or until
// the message ends (WriteTrailers, CloseWrite, or headers with endStream),
// which sends everything held and the end of the stream in one write. A
// caller that holds must call Flush before it waits for anything (the
// peer, a timer, more data to forward), so nothing it wrote is delayed.
// Flush and Hold belong to the send side: one goroutine at a time.
type Flusher interface {
	// Hold makes later writes wait in the stream's buffer for Flush or
	// the end of the message.
	Hold()
	// Flush sends what is held now; the stream stays in hold mode. It
	// returns the error a held write would have returned.
	Flush() error
}

// ReadReadier is implemented by receive sides that can tell whether their
// next Read returns without waiting for the peer (data, the end of the
// body or an error is already there). A proxy holding its writes with
// Flusher asks it before a Read, and flushes when the Read may wait.
type ReadReadier interface {
	// ReadReady reports whether the next Read returns at once. False
	// means it may wait (a codec that cannot tell says false).
	ReadReady() bool
}

// ErrCode is an HTTP/2 error code (RFC 9113 section 7). HTTP/1.1 and HTTP/3
// codecs map their errors onto these.
type ErrCode uint32

// The error codes of RFC 9113 section 7.
const (
	ErrCodeNo                 ErrCode = 0x0
	ErrCodeProtocol           ErrCode = 0x1
	ErrCodeInternal           ErrCode = 0x2
	ErrCodeFlowControl        ErrCode = 0x3
	ErrCodeSettingsTimeout    ErrCode = 0x4
	ErrCodeStreamClosed       ErrCode = 0x5
	ErrCodeFrameSize          ErrCode = 0x6
	ErrCodeRefusedStream      ErrCode = 0x7
	ErrCodeCancel             ErrCode = 0x8
	ErrCodeCompression        ErrCode = 0x9
	ErrCodeConnect            ErrCode = 0xa
	ErrCodeEnhanceYourCalm    ErrCode = 0xb
	ErrCodeInadequateSecurity ErrCode = 0xc
	ErrCodeHTTP11Required     ErrCode = 0xd
)

var codeNames = [...]string{
	"NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR",
	"SETTINGS_TIMEOUT", "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM",
	"CANCEL", "COMPRESSION_ERROR", "CONNECT_ERROR", "ENHANCE_YOUR_CALM",
	"INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED",
}

// String returns the code's RFC 9113 name, or UNKNOWN_ERROR_0x%x for a
// code outside section 7's table.
func (c ErrCode) String() string {
	if int(c) < len(codeNames) {
		return codeNames[c]
	}
	return fmt.Sprintf("UNKNOWN_ERROR_0x%x", uint32(c))
}

// Error is a stream that ended abnormally: reset by either side, refused,
// or lost with its connection.
type Error struct {
	Code ErrCode
	// Remote is true when the peer reset the stream or closed the connection.
	Remote bool
	// Unprocessed is true when the peer is known not to have processed the
	// request (REFUSED_STREAM, or a stream above a GOAWAY's last-stream-id),
	// so it can be retried safely.
	Unprocessed bool
	// Reason is a short human-readable cause, e.g. "connection closed".
	Reason string
	// Err is the underlying cause, if any.
	Err error
}

// Error describes the reset: its code, which side reset, the reason and
// the underlying cause.
func (e *Error) Error() string {
	side := "local"
	if e.Remote {
		side = "remote"
	}
	s := fmt.Sprintf("stream reset (%s, %s)", e.Code, side)
	if e.Reason != "" {
		s += ": " + e.Reason
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns the underlying cause, nil when there is none.
func (e *Error) Unwrap() error { return e.Err }

// Unprocessed reports whether err says the peer did not process the request.
func Unprocessed(err error) bool {
	var se *Error
	return errors.As(err, &se) && se.Unprocessed
}

// CodeOf returns the ErrCode err carries, or ErrCodeInternal.
func CodeOf(err error) ErrCode {
	var se *Error
	if errors.As(err, &se) {
		return se.Code
	}
	return ErrCodeInternal
}

// ServerConn is one served downstream connection of any protocol.
type ServerConn interface {
	// Serve runs the connection until it is closed; it returns nil after a
	// graceful close and the cause otherwise.
	Serve() error
	// Shutdown starts a graceful close: no new streams are accepted
	// (HTTP/2 GOAWAY, HTTP/1.1 "Connection: close"), streams in flight run
	// to completion, then the connection closes. It does not block.
	Shutdown()
	// Close closes the connection at once, resetting its streams.
	Close() error
}
