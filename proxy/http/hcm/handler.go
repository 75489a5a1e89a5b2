package hcm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/proxy/route"
	"meshd.dev/meshd/proxy/upstream"
)

// Handler is the connection manager for one listener's HCM: a
// stream.Handler that routes each downstream stream and proxies it. Its
// config is swapped atomically; a stream keeps the config it started with.
type Handler struct {
	cfg      atomic.Pointer[Config]
	clusters *upstream.Manager
	stats    *Stats
	logger   *slog.Logger
}

// NewHandler returns a handler serving cfg with clusters from cm.
func NewHandler(cfg *Config, cm *upstream.Manager, st *Stats, logger *slog.Logger) *Handler {
	h := &Handler{clusters: cm, stats: st, logger: logger}
	h.cfg.Store(cfg)
	return h
}

// Swap installs a new config for streams that start from now on.
func (h *Handler) Swap(cfg *Config) { h.cfg.Store(cfg) }

// Config returns the current config.
func (h *Handler) Config() *Config { return h.cfg.Load() }

// Stats returns the handler's stats.
func (h *Handler) Stats() *Stats { return h.stats }

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// ServeStream routes and proxies one downstream stream.
func (h *Handler) ServeStream(ds stream.ServerStream) {
	cfg := h.cfg.Load()
	st := h.stats
	st.RqTotal.Inc()
	st.RqActive.Inc()
	defer st.RqActive.Dec()
	if ds.Conn().Proto == "HTTP/2" {
		st.RqHTTP2.Inc()
	} else {
		st.RqHTTP1.Inc()
	}
	req := ds.Request()
	ex := &exchange{h: h, cfg: cfg, ds: ds, req: req, grpc: isGRPC(req), start: time.Now()}
	ex.serve()
}

// exchange is one proxied stream.
type exchange struct {
	h     *Handler
	cfg   *Config
	ds    stream.ServerStream
	req   *stream.Request
	grpc  bool
	start time.Time
}

func isGRPC(req *stream.Request) bool {
	return strings.HasPrefix(req.Header.Get("content-type"), "application/grpc")
}

func (ex *exchange) serve() {
	req := ex.req
	if !ex.checkUnderscores() {
		ex.localReply(400, "")
		return
	}
	r, _ := ex.cfg.Routes.Match(req)
	if r == nil {
		ex.h.stats.NoRoute.Inc()
		ex.localReply(404, "")
		return
	}
	if d := r.Direct; d != nil {
		ex.h.stats.RqDirect.Inc()
		ex.directReply(r, d.Status, d.Body, "")
		return
	}
	if r.Redirect != nil {
		ex.h.stats.RqRedirect.Inc()
		ex.directReply(r, r.Redirect.Status, nil, r.RedirectLocation(req))
		return
	}
	name := r.Cluster
	if name == "" {
		name = r.PickCluster(mrand.Uint64())
	}
	c := ex.h.clusters.Get(name)
	if c == nil {
		ex.h.stats.NoCluster.Inc()
		ex.localReply(r.ClusterNotFoundStatus, "")
		return
	}
	ex.proxy(r, c)
}

// checkUnderscores applies headers_with_underscores_action; false means
// reject the request.
func (ex *exchange) checkUnderscores() bool {
	if ex.cfg.Underscores == UnderscoreAllow {
		return true
	}
	for _, f := range ex.req.Header.Fields() {
		if strings.IndexByte(f.Name, '_') >= 0 {
			if ex.cfg.Underscores == UnderscoreReject {
				return false
			}
			ex.req.Header.Del(f.Name)
			return ex.checkUnderscores()
		}
	}
	return true
}

// upstreamRequest builds the request sent to the cluster: hop-by-hop fields
// removed, the forwarding headers Envoy adds, and the route's mutations.
func (ex *exchange) upstreamRequest(r *route.Route, cluster string, tlsUpstream bool) *stream.Request {
	in := ex.req
	out := &stream.Request{
		Method:        in.Method,
		Scheme:        "http",
		Authority:     in.Authority,
		Path:          in.Path,
		Header:        in.Header.Clone(),
		ContentLength: in.ContentLength,
		EndStream:     in.EndStream,
	}
	if tlsUpstream {
		out.Scheme = "https"
	}
	out.Header.StripHopByHop()
	proto := "http"
	if ex.ds.Conn().TLS != nil {
		proto = "https"
	}
	out.Header.Set("x-forwarded-proto", proto)
	if ex.cfg.GenerateRequestID && !out.Header.Has("x-request-id") {
		out.Header.Set("x-request-id", newRequestID())
	}
	if r.Rewrite(out, cluster) && !out.Header.Has("x-envoy-original-path") {
		out.Header.Set("x-envoy-original-path", in.Path)
	}
	r.RequestHeaders(out, cluster, ex.ds.Conn())
	return out
}

// newRequestID returns a random UUID v4, the form Envoy generates.
func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:], b[10:])
	return string(s[:])
}

func (ex *exchange) proxy(r *route.Route, c *upstream.Cluster) {
	cs := c.Stats()
	ctx := ex.ds.Context()
	timeout := route.EffectiveTimeout(r, ex.req)
	var cancel context.CancelFunc
	if timeout > 0 {
		ctx, cancel = context.WithTimeout(ctx, timeout)
	} else {
		ctx, cancel = context.WithCancel(ctx)
	}
	defer cancel()

	host := c.Pick()
	if host == nil {
		cs.NoHealthyUpstream.Inc()
		ex.localReply(503, "no healthy upstream")
		return
	}
	host.LB.Acquire()
	defer host.LB.Release()
	cs.RqTotal.Inc()
	cs.RqActive.Inc()
	defer cs.RqActive.Dec()

	ureq := ex.upstreamRequest(r, c.Spec().Name, c.Spec().TLS != nil)
	us, err := host.NewStream(ctx, ureq, ureq.EndStream)
	if err != nil {
		ex.upstreamFailed(ctx, cs, err)
		return
	}
	// Cancellation and timeout travel upstream as RST_STREAM CANCEL.
	stop := context.AfterFunc(ctx, func() { us.Reset(stream.ErrCodeCancel) })
	defer stop()
	defer us.Reset(stream.ErrCodeCancel) // no-op once the stream completed

	if !ureq.EndStream {
		go ex.pumpRequest(us)
	}
	resp, err := us.Response(ctx)
	if err != nil {
		ex.upstreamFailed(ctx, cs, err)
		return
	}
	cs.Scope.ResponseCode("upstream_rq", resp.Status)
	resp.Header.StripHopByHop()
	resp.Header.Set("x-envoy-upstream-service-time", strconv.FormatInt(time.Since(ex.start).Milliseconds(), 10))
	ex.finishHeaders(r, c.Spec().Name, resp)
	if err := ex.ds.WriteHeader(resp, resp.EndStream); err != nil || resp.EndStream {
		return
	}
	if err := ex.pumpResponse(us); err != nil {
		switch {
		case ctx.Err() == context.DeadlineExceeded && ex.ds.Context().Err() == nil:
			cs.RqTimeout.Inc()
			ex.h.stats.RqTimeout.Inc()
			ex.ds.Reset(stream.ErrCodeCancel)
		case ex.ds.Context().Err() != nil:
			cs.RqCancelled.Inc()
		default:
			cs.RqReset.Inc()
			ex.h.stats.RqTxReset.Inc()
			ex.ds.Reset(stream.CodeOf(err))
		}
	}
}

// finishHeaders applies the response header mutations of the route and the
// connection manager.
func (ex *exchange) finishHeaders(r *route.Route, cluster string, resp *stream.Response) {
	if r != nil {
		r.ResponseHeaders(&resp.Header, cluster, ex.ds.Conn())
	}
	if ex.cfg.ServerName != "" {
		resp.Header.Set("server", ex.cfg.ServerName)
	}
	ex.h.stats.Scope.ResponseCode("downstream_rq", resp.Status)
}

// pumpRequest copies the downstream request body and trailers upstream.
func (ex *exchange) pumpRequest(us stream.ClientStream) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for {
		n, err := ex.ds.Read(buf)
		if n > 0 {
			if _, werr := us.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err == io.EOF {
			_ = us.CloseWrite(ex.ds.Trailers())
			return
		}
		if err != nil {
			us.Reset(stream.ErrCodeCancel)
			return
		}
	}
}

// pumpResponse copies the upstream response body and trailers downstream,
// each chunk as soon as it arrives.
func (ex *exchange) pumpResponse(us stream.ClientStream) error {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for {
		n, err := us.Read(buf)
		if n > 0 {
			if _, werr := ex.ds.Write(buf[:n]); werr != nil {
				return nil // downstream is gone; the deferred Reset cancels upstream
			}
		}
		if err == io.EOF {
			if t := us.Trailers(); t.Len() > 0 {
				_ = ex.ds.WriteTrailers(t) // a failure means downstream is gone
				return nil
			}
			_ = ex.ds.CloseWrite()
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// upstreamFailed answers a stream whose upstream failed before response
// headers, the way Envoy's router does.
func (ex *exchange) upstreamFailed(ctx context.Context, cs *upstream.Stats, err error) {
	switch {
	case ex.ds.Context().Err() != nil:
		cs.RqCancelled.Inc()
		ex.h.stats.RqRxReset.Inc()
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		cs.RqTimeout.Inc()
		cs.Scope.ResponseCode("upstream_rq", 504)
		ex.localReply(504, "upstream request timeout")
	default:
		cs.Scope.ResponseCode("upstream_rq", 503)
		reason := "remote reset"
		if stream.Unprocessed(err) {
			var se *stream.Error
			if errors.As(err, &se) && se.Reason == "connect failure" {
				reason = "connection failure"
			} else {
				reason = "remote refused stream reset"
			}
		}
		ex.h.logger.Debug("upstream failed", "err", err)
		ex.localReply(503, "upstream connect error or disconnect/reset before headers. reset reason: "+reason)
	}
}

// grpcStatusFor maps a local reply's HTTP status to a gRPC status code, as
// Envoy does, except that a timeout is DEADLINE_EXCEEDED.
func grpcStatusFor(code int) int {
	switch code {
	case 400:
		return 13 // INTERNAL
	case 401:
		return 16 // UNAUTHENTICATED
	case 403:
		return 7 // PERMISSION_DENIED
	case 404:
		return 12 // UNIMPLEMENTED
	case 429, 502, 503:
		return 14 // UNAVAILABLE
	case 504:
		return 4 // DEADLINE_EXCEEDED
	default:
		return 2 // UNKNOWN
	}
}

// localReply answers the stream from the proxy itself. gRPC requests get a
// trailers-only response carrying grpc-status and grpc-message.
func (ex *exchange) localReply(code int, body string) {
	resp := &stream.Response{Status: code, Header: header.Make(4), ContentLength: int64(len(body))}
	if ex.grpc {
		resp.Status = 200
		resp.ContentLength = -1
		resp.Header.Add("content-type", "application/grpc")
		resp.Header.Add("grpc-status", strconv.Itoa(grpcStatusFor(code)))
		if body != "" {
			resp.Header.Add("grpc-message", encodeGRPCMessage(body))
		}
		ex.finishHeaders(nil, "", resp)
		_ = ex.ds.WriteHeader(resp, true)
		return
	}
	if body != "" {
		resp.Header.Add("content-type", "text/plain")
	}
	resp.Header.Add("content-length", strconv.Itoa(len(body)))
	ex.finishHeaders(nil, "", resp)
	if body == "" || ex.req.Method == "HEAD" {
		_ = ex.ds.WriteHeader(resp, true)
		return
	}
	if ex.ds.WriteHeader(resp, false) == nil {
		if _, err := io.WriteString(ex.ds, body); err == nil {
			_ = ex.ds.CloseWrite()
		}
	}
}

// directReply answers a direct_response or redirect route.
func (ex *exchange) directReply(r *route.Route, status int, body []byte, location string) {
	resp := &stream.Response{Status: status, Header: header.Make(4), ContentLength: int64(len(body))}
	if location != "" {
		resp.Header.Add("location", location)
	}
	resp.Header.Add("content-length", strconv.Itoa(len(body)))
	if len(body) > 0 {
		resp.Header.Add("content-type", "text/plain")
	}
	ex.finishHeaders(r, "", resp)
	if len(body) == 0 || ex.req.Method == "HEAD" {
		_ = ex.ds.WriteHeader(resp, true)
		return
	}
	if ex.ds.WriteHeader(resp, false) == nil {
		if _, err := ex.ds.Write(body); err == nil {
			_ = ex.ds.CloseWrite()
		}
	}
}

// encodeGRPCMessage percent-encodes a grpc-message value as the gRPC spec
// requires: bytes outside printable ASCII, and '%', become %XX.
func encodeGRPCMessage(s string) string {
	const hexd = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= ' ' && c <= '~' && c != '%' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hexd[c>>4])
		b.WriteByte(hexd[c&0xf])
	}
	return b.String()
}
