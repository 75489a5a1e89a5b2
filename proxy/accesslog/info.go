// Package accesslog is meshd's access logging: Envoy's
// envoy.access_loggers.file / stdout / stderr with Envoy's substitution
// format strings (text and JSON) and access-log filters.
//
// A format is compiled once, at config time, into a list of appenders that
// write into a caller-provided byte slice, so producing a line allocates
// nothing on the request path. Lines go to a Sink owned by a Manager that
// outlives config swaps: a sink buffers lines in memory up to a bound and a
// goroutine of its own writes them out, so a slow disk or a full pipe drops
// lines (counted in access_logs.dropped) and never blocks a request.
package accesslog

import (
	"crypto/x509"
	"strings"
	"time"

	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// Info is what one access-log line describes: Envoy's StreamInfo for one
// downstream HTTP stream or for one downstream connection. The connection
// manager fills it per stream; tcp_proxy fills it per proxied connection
// (Request nil, Proto "TCP"); a listener fills it for a connection it
// closed before any filter chain served it (TLS handshake failure, no
// matching filter chain). The owner hands it to the loggers once the
// stream or connection is over; a logger never keeps it. Every format
// applies to every kind of record: an operator without a value for it
// (%REQ(...)% on a TCP connection) renders "-", as in Envoy.
type Info struct {
	// Start is when the request headers were received, or when the
	// connection was accepted for a connection record.
	Start time.Time
	// RequestDone is when the last byte of the request was received; zero
	// when the request never completed.
	RequestDone time.Time
	// UpstreamFirstByte is when the response headers of the forwarded
	// attempt arrived from upstream; zero for local replies.
	UpstreamFirstByte time.Time
	// End is when the last byte of the response was sent downstream (or the
	// stream ended otherwise).
	End time.Time

	// Request is the downstream request as received (before the upstream
	// rewrites); nil for a connection record.
	Request *stream.Request
	// Response is the response sent downstream; nil when none was sent.
	Response *stream.Response
	// Trailers are the response trailers sent downstream.
	Trailers header.Header
	// Conn is the downstream connection.
	Conn *stream.ConnInfo

	// Flags are Envoy's response flags (%RESPONSE_FLAGS%).
	Flags Flags
	// CodeDetails is Envoy's %RESPONSE_CODE_DETAILS% ("via_upstream",
	// "route_not_found", ...); "" when unset.
	CodeDetails string
	// BytesReceived and BytesSent count downstream body bytes, or every
	// byte read from and written to the downstream connection for a
	// connection record.
	BytesReceived uint64
	BytesSent     uint64

	// RouteName is the matched route's name.
	RouteName string
	// UpstreamCluster is the routed cluster's name.
	UpstreamCluster string
	// UpstreamHost is the address (ip:port) of the last upstream attempt.
	UpstreamHost string
	// UpstreamTransportFailureReason is why connecting upstream failed.
	UpstreamTransportFailureReason string
	// DownstreamTransportFailureReason is why the downstream TLS handshake
	// failed (%DOWNSTREAM_TRANSPORT_FAILURE_REASON%).
	DownstreamTransportFailureReason string
	// TerminationDetails is why meshd closed the connection
	// (%CONNECTION_TERMINATION_DETAILS%: "idle_timeout",
	// "filter_chain_not_found", ...); "" when the peers closed it.
	TerminationDetails string
	// UpstreamPeerCert is the leaf certificate the upstream peer of the
	// last attempt that got a response presented; nil over plaintext or
	// when the upstream codec does not report it.
	UpstreamPeerCert *x509.Certificate
	// Attempts counts upstream attempts (%UPSTREAM_REQUEST_ATTEMPT_COUNT%).
	Attempts int
	// LocalURISAN is the listener certificate's URI SAN (its SPIFFE ID).
	LocalURISAN string
	// TraceID is the request's trace ID in hex (%TRACE_ID%); the tracing
	// code sets it when the request is traced, "" otherwise.
	TraceID string
}

// Duration returns End - Start.
func (i *Info) Duration() time.Duration { return i.End.Sub(i.Start) }

// Flags is a set of Envoy response flags.
type Flags uint32

// The response flags, in Envoy's order (CoreResponseFlag), which is also the
// order %RESPONSE_FLAGS% lists them in.
const (
	FailedLocalHealthCheck Flags = 1 << iota
	NoHealthyUpstream
	UpstreamRequestTimeout
	LocalReset
	UpstreamRemoteReset
	UpstreamConnectionFailure
	UpstreamConnectionTermination
	UpstreamOverflow
	NoRouteFound
	DelayInjected
	FaultInjected
	RateLimited
	UnauthorizedExternalService
	RateLimitServiceError
	DownstreamConnectionTermination
	UpstreamRetryLimitExceeded
	StreamIdleTimeout
	InvalidEnvoyRequestHeaders
	DownstreamProtocolError
	UpstreamMaxStreamDurationReached
	ResponseFromCacheFilter
	NoFilterConfigFound
	DurationTimeout
	UpstreamProtocolError
	NoClusterFound
	OverloadManager
	DNSResolutionFailed
	DropOverload
	DownstreamRemoteReset
	numFlags = iota
)

// flagNames are Envoy's short names, indexed by bit.
var flagNames = [numFlags]string{
	"LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL",
	"UAEX", "RLSE", "DC", "URX", "SI", "IH", "DPE", "UMSDR", "RFCF", "NFCF",
	"DT", "UPE", "NC", "OM", "DF", "DO", "DR",
}

// FlagByName returns the flag an Envoy short name ("UH") denotes.
func FlagByName(name string) (Flags, bool) {
	for i, n := range flagNames {
		if n == name {
			return 1 << i, true
		}
	}
	return 0, false
}

// AppendFlags appends Envoy's rendering of f: the short names joined by
// ',', or "-" when f is empty.
func AppendFlags(dst []byte, f Flags) []byte {
	if f == 0 {
		return append(dst, '-')
	}
	first := true
	for i := range numFlags {
		if f&(1<<i) == 0 {
			continue
		}
		if !first {
			dst = append(dst, ',')
		}
		first = false
		dst = append(dst, flagNames[i]...)
	}
	return dst
}

// String returns the %RESPONSE_FLAGS% rendering.
func (f Flags) String() string { return string(AppendFlags(nil, f)) }

// grpcStatus returns the response's grpc-status (trailers first, then a
// trailers-only response's headers) and whether there is one.
func (i *Info) grpcStatus() (string, bool) {
	if v := i.Trailers.Get("grpc-status"); v != "" {
		return v, true
	}
	if i.Response != nil {
		if v := i.Response.Header.Get("grpc-status"); v != "" {
			return v, true
		}
	}
	return "", false
}

// isGRPC reports whether the request is gRPC.
func (i *Info) isGRPC() bool {
	return i.Request != nil && strings.HasPrefix(i.Request.Header.Get("content-type"), "application/grpc")
}
