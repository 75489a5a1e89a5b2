package hcm

import (
	"crypto/x509"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"time"

	"meshd.dev/meshd/otel/metrics"
	"meshd.dev/meshd/proxy/accesslog"
	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/proxy/upstream"
)

// Observers are where the connection manager reports finished streams:
// access logs and the semantic-convention duration histograms. Both are
// optional; a handler without either serves streams unobserved, at no
// cost.
type Observers struct {
	// AccessLogs writes the lines of the config's AccessLogs.
	AccessLogs *accesslog.Manager
	// Durations records http.server.request.duration per stream and
	// http.client.request.duration per upstream attempt.
	Durations *metrics.HTTPDurations
}

// SetObservers installs o. Call it before the handler serves streams.
func (h *Handler) SetObservers(o Observers) { h.obs = o }

// observing reports whether streams of cfg need an observed stream.
func (h *Handler) observing(cfg *Config) bool {
	return h.obs.Durations != nil || (h.obs.AccessLogs != nil && len(cfg.AccessLogs) > 0)
}

// observedStream wraps the downstream stream to fill the access-log Info:
// body bytes each way, the response and its trailers, and when the request
// and the response ended.
type observedStream struct {
	stream.ServerStream
	info accesslog.Info
	// respDone is set once the response ended (end of stream sent).
	respDone bool
	// The receive side may still be read by the request body pump after
	// ServeStream returned, so what it records is atomic and copied into
	// info by finish.
	received    atomic.Uint64
	requestDone atomic.Int64 // UnixNano; 0: not yet
}

func newObservedStream(ds stream.ServerStream, start time.Time, cfg *Config) *observedStream {
	o := &observedStream{ServerStream: ds}
	o.info.Start = start
	o.info.Request = ds.Request()
	o.info.Conn = ds.Conn()
	o.info.LocalURISAN = cfg.LocalPrincipal
	if o.info.Request.EndStream {
		o.requestDone.Store(start.UnixNano())
	}
	return o
}

// BufferedBody forwards to the wrapped stream when it is a
// stream.BufferedBody, and reports nothing buffered otherwise.
func (o *observedStream) BufferedBody() (n int, complete bool) {
	if b, ok := o.ServerStream.(stream.BufferedBody); ok {
		return b.BufferedBody()
	}
	return 0, false
}

func (o *observedStream) Read(p []byte) (int, error) {
	n, err := o.ServerStream.Read(p)
	o.received.Add(uint64(n))
	if err == io.EOF {
		o.requestDone.CompareAndSwap(0, time.Now().UnixNano())
	}
	return n, err
}

func (o *observedStream) WriteHeader(resp *stream.Response, endStream bool) error {
	if resp.Status >= 200 {
		o.info.Response = resp
	}
	err := o.ServerStream.WriteHeader(resp, endStream)
	if endStream && err == nil {
		o.respDone = true
	}
	return err
}

func (o *observedStream) Write(p []byte) (int, error) {
	n, err := o.ServerStream.Write(p)
	o.info.BytesSent += uint64(n)
	return n, err
}

func (o *observedStream) WriteTrailers(t header.Header) error {
	o.info.Trailers = t
	err := o.ServerStream.WriteTrailers(t)
	o.respDone = err == nil
	return err
}

func (o *observedStream) CloseWrite() error {
	err := o.ServerStream.CloseWrite()
	o.respDone = err == nil
	return err
}

// finish reports the stream to the observers once ServeStream is done.
func (h *Handler) finish(cfg *Config, o *observedStream) {
	i := &o.info
	i.End = time.Now()
	i.BytesReceived = o.received.Load()
	if ns := o.requestDone.Load(); ns != 0 {
		i.RequestDone = time.Unix(0, ns)
	}
	if !o.respDone && i.Flags&(accesslog.DownstreamConnectionTermination|accesslog.UpstreamRemoteReset|
		accesslog.UpstreamConnectionTermination|accesslog.StreamIdleTimeout|accesslog.DurationTimeout|
		accesslog.UpstreamRequestTimeout) == 0 {
		// The response never ended and no cause was noted: the stream was
		// reset locally.
		if o.Context().Err() != nil {
			i.Flags |= accesslog.DownstreamConnectionTermination
		} else {
			i.Flags |= accesslog.LocalReset
		}
	}
	if d := h.obs.Durations; d != nil {
		k := metrics.ServerKey{Method: i.Request.Method, ProtocolVersion: protocolVersion(i.Conn.Proto), Scheme: "http"}
		if i.Conn.TLS != nil {
			k.Scheme = "https"
		}
		if i.Response != nil {
			k.Status = i.Response.Status
			if k.Status >= 500 {
				k.ErrorType = statusErrorType(k.Status)
			}
		}
		if !o.respDone {
			k.ErrorType = "reset"
		}
		d.RecordServer(k, i.End.Sub(i.Start))
	}
	if m := h.obs.AccessLogs; m != nil && len(cfg.AccessLogs) > 0 {
		m.Log(cfg.AccessLogs, i)
	}
}

// statusErrorType is error.type for a 5xx: the status code as a string,
// as the semantic conventions prescribe.
func statusErrorType(code int) string {
	switch code {
	case 500:
		return "500"
	case 502:
		return "502"
	case 503:
		return "503"
	case 504:
		return "504"
	}
	return "5xx"
}

func protocolVersion(proto string) string {
	switch proto {
	case "HTTP/2":
		return "2"
	case "HTTP/3":
		return "3"
	case "HTTP/1.0":
		return "1.0"
	}
	return "1.1"
}

// note records a response flag and the response code details on the
// stream's access-log info, when the stream is observed.
func (ex *exchange) note(f accesslog.Flags, details string) {
	if ex.info == nil {
		return
	}
	ex.info.Flags |= f
	if details != "" {
		ex.info.CodeDetails = details
	}
}

// noteAttempt records an upstream attempt to host of cluster.
func (ex *exchange) noteAttempt(cluster string, host *upstream.Host) {
	if ex.info == nil {
		return
	}
	ex.info.Attempts++
	ex.info.UpstreamCluster = cluster
	ex.info.UpstreamHost = host.Addr
}

// noteUpstreamResponse records the arrival of the forwarded attempt's
// response headers on us, and the certificate its upstream presented.
func (ex *exchange) noteUpstreamResponse(us stream.ClientStream) {
	if ex.info == nil {
		return
	}
	ex.info.UpstreamFirstByte = time.Now()
	ex.info.CodeDetails = "via_upstream"
	ex.info.UpstreamPeerCert = nil
	if pc, ok := us.(peerCertificater); ok {
		ex.info.UpstreamPeerCert = pc.PeerCertificate()
	}
}

// peerCertificater is implemented by the upstream codecs' client streams
// (h1, h2, h3): the leaf certificate of the connection's peer.
type peerCertificater interface {
	PeerCertificate() *x509.Certificate
}

// observeAttempt records http.client.request.duration for one attempt
// that started at start and got status (0: none).
func (ex *exchange) observeAttempt(cluster string, host *upstream.Host, start time.Time, statusp *int, failedp *error) {
	d := ex.h.obs.Durations
	status, failed := *statusp, *failedp
	k := metrics.ClientKey{Method: ex.req.Method, Status: status, Cluster: cluster}
	if ap, err := netipAddrPort(host.Addr); err == nil {
		k.ServerAddress, k.ServerPort = ap.host, ap.port
	} else {
		k.ServerAddress = host.Addr
	}
	switch {
	case failed != nil:
		k.ErrorType = errorType(failed)
	case status >= 500:
		k.ErrorType = statusErrorType(status)
	}
	d.RecordClient(k, time.Since(start))
}

type hostPort struct {
	host string
	port int
}

// netipAddrPort splits an "ip:port" host address.
func netipAddrPort(addr string) (hostPort, error) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return hostPort{}, err
	}
	port := 0
	for _, c := range p {
		if c < '0' || c > '9' {
			return hostPort{host: h}, nil
		}
		port = port*10 + int(c-'0')
	}
	return hostPort{host: h, port: port}, nil
}

// errorType classifies an attempt failure for error.type.
func errorType(err error) string {
	switch {
	case isConnectFailure(err):
		return "connect_failure"
	case stream.Unprocessed(err):
		return "refused_stream"
	case errors.Is(err, upstream.ErrOverflow):
		return "overflow"
	}
	return "reset"
}

// noteFilterReply records an HTTP filter's local reply: its details, and
// Envoy's RL flag for the rate limiters' "local_rate_limited".
func (ex *exchange) noteFilterReply(details string) {
	var f accesslog.Flags
	if details == "local_rate_limited" {
		f = accesslog.RateLimited
	}
	ex.note(f, details)
}
