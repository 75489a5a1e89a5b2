// Package h3 is meshd's HTTP/3 codec (RFC 9114) behind the
// protocol-neutral stream interface (proxy/http/stream), server and client.
//
// quic-go owns QUIC (handshake, loss recovery, flow control, stream limits)
// and QPACK's static-table coding; this package reads and writes HTTP/3
// frames on the control and request streams itself, serves requests as
// stream.ServerStream and sends them as stream.ClientStream, and maps
// HTTP/3 error codes (RFC 9114 section 8.1) onto stream.ErrCode. It tells
// the pool what quic-go does not expose: the peer's bidirectional stream
// credit (initial_max_streams_bidi and MAX_STREAMS, read from the
// connection's qlog events) and the ID of the peer's HTTP/3 GOAWAY, read
// off its control stream.
package h3

import (
	"errors"
	"io"
	"net"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/proxy/stats"
)

// NextProto is the ALPN protocol ID of HTTP/3 (RFC 9114 section 3.1).
const NextProto = http3.NextProtoH3

// Stats are the http3.* counters of a connection manager or cluster
// (Envoy's names where Envoy has the stat), plus quic-go's connection
// metrics (marked meshd).
type Stats struct {
	RxReset       *stats.Counter // rx_reset: a stream reset by the peer
	TxReset       *stats.Counter // tx_reset: a stream reset locally
	GoAwayRx      *stats.Counter // goaway_rx (meshd): HTTP/3 GOAWAY received
	StreamRefused *stats.Counter // stream_refused_errors (meshd): H3_REQUEST_REJECTED received
	// RTTMs is the smoothed RTT of a connection, sampled as each stream
	// ends (meshd histogram rtt_ms).
	RTTMs *stats.Histogram
	// PacketsLost and PacketsSent add up the connections' totals as they
	// close (meshd: packets_lost, packets_sent).
	PacketsLost *stats.Counter
	PacketsSent *stats.Counter
	// IdleTimeout counts connections QUIC closed after idle_network_timeout
	// without network activity (meshd: idle_timeout); keepalive PINGs
	// prevent it while the peer answers.
	IdleTimeout *stats.Counter
}

// NewStats creates the counters in scope, normally one named "http3"
// ("cluster.x.http3.rx_reset"). A nil scope counts in a private store.
func NewStats(scope *stats.Scope) *Stats {
	if scope == nil {
		scope = stats.NewStore().Root()
	}
	return &Stats{
		RxReset:       scope.Counter("rx_reset"),
		TxReset:       scope.Counter("tx_reset"),
		GoAwayRx:      scope.Counter("goaway_rx"),
		StreamRefused: scope.Counter("stream_refused_errors"),
		RTTMs:         scope.Histogram("rtt_ms"),
		PacketsLost:   scope.Counter("packets_lost"),
		PacketsSent:   scope.Counter("packets_sent"),
		IdleTimeout:   scope.Counter("idle_timeout"),
	}
}

// IsIdleTimeout reports whether a connection's close cause is QUIC's idle
// timeout (RFC 9000 section 10.1).
func IsIdleTimeout(cause error) bool {
	_, ok := errors.AsType[*quic.IdleTimeoutError](cause)
	return ok
}

// codeOf maps an HTTP/3 error code to the HTTP/2 code the stream
// interface carries (the correspondence of RFC 9114 section A.4.1).
func codeOf(c http3.ErrCode) stream.ErrCode {
	switch c {
	case http3.ErrCodeNoError:
		return stream.ErrCodeNo
	case http3.ErrCodeInternalError:
		return stream.ErrCodeInternal
	case http3.ErrCodeRequestRejected:
		return stream.ErrCodeRefusedStream
	case http3.ErrCodeRequestCanceled, http3.ErrCodeRequestIncomplete:
		return stream.ErrCodeCancel
	case http3.ErrCodeExcessiveLoad:
		return stream.ErrCodeEnhanceYourCalm
	case http3.ErrCodeConnectError:
		return stream.ErrCodeConnect
	case http3.ErrCodeQPACKDecompressionFailed:
		return stream.ErrCodeCompression
	default:
		return stream.ErrCodeProtocol
	}
}

// h3Code maps a stream.ErrCode to the HTTP/3 code sent for it.
func h3Code(c stream.ErrCode) http3.ErrCode {
	switch c {
	case stream.ErrCodeNo:
		return http3.ErrCodeNoError
	case stream.ErrCodeRefusedStream:
		return http3.ErrCodeRequestRejected
	case stream.ErrCodeCancel:
		return http3.ErrCodeRequestCanceled
	case stream.ErrCodeEnhanceYourCalm:
		return http3.ErrCodeExcessiveLoad
	case stream.ErrCodeConnect:
		return http3.ErrCodeConnectError
	case stream.ErrCodeProtocol:
		return http3.ErrCodeGeneralProtocolError
	default:
		return http3.ErrCodeInternalError
	}
}

// streamError maps a quic-go or http3 error to a *stream.Error. A request
// the peer rejected with H3_REQUEST_REJECTED was not processed (RFC 9114
// section 4.1.1), so it is marked Unprocessed.
func streamError(op string, err error) *stream.Error {
	if se, ok := errors.AsType[*stream.Error](err); ok {
		return se
	}
	if he, ok := errors.AsType[*http3.Error](err); ok {
		code := codeOf(he.ErrorCode)
		return &stream.Error{Code: code, Remote: he.Remote, Unprocessed: he.ErrorCode == http3.ErrCodeRequestRejected, Reason: op, Err: err}
	}
	if qe, ok := errors.AsType[*quic.StreamError](err); ok {
		code := codeOf(http3.ErrCode(qe.ErrorCode))
		return &stream.Error{Code: code, Remote: qe.Remote, Unprocessed: http3.ErrCode(qe.ErrorCode) == http3.ErrCodeRequestRejected, Reason: op, Err: err}
	}
	var ne net.Error
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || errors.As(err, &ne) {
		return &stream.Error{Code: stream.ErrCodeCancel, Remote: true, Reason: op + ": connection closed", Err: err}
	}
	return &stream.Error{Code: stream.ErrCodeProtocol, Remote: true, Reason: op, Err: err}
}
