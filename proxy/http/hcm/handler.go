package hcm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"meshd.dev/meshd/filters"
	"meshd.dev/meshd/otel/tracing"
	"meshd.dev/meshd/proxy/accesslog"
	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/proxy/route"
	"meshd.dev/meshd/proxy/stats"
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
	// retryStats caches each cluster's retry stats, keyed by
	// weak.Pointer[upstream.Stats].
	retryStats sync.Map
	// tracers, tracingStats and upstreamAttrs are set by SetTracing
	// (tracing.go).
	tracers       *tracing.Providers
	tracingStats  *tracingStats
	upstreamAttrs *upstreamAttrCache
	// obs receives finished streams (observe.go); set before serving.
	obs Observers
	// shed and overloadClose are set by SetOverload.
	shed          func() bool
	overloadClose *stats.Counter
}

// SetOverload makes the handler refuse new streams for which shed returns
// true (the overload manager's stop_accepting_requests) with Envoy's local
// reply: 503 "envoy overloaded", response flag OL (details "overload" in
// the debug log), counted in downstream_rq_overload_close. Call it before
// serving.
func (h *Handler) SetOverload(shed func() bool) {
	h.shed = shed
	h.overloadClose = h.stats.Scope.Counter("downstream_rq_overload_close")
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
	switch ds.Conn().Proto {
	case "HTTP/2":
		st.RqHTTP2.Inc()
	case "HTTP/3":
		st.RqHTTP3.Inc()
	default:
		st.RqHTTP1.Inc()
	}
	req := ds.Request()
	ex := &exchange{h: h, cfg: cfg, ds: ds, req: req, grpc: isGRPC(req), start: time.Now()}
	if cfg.Tracing != nil && h.tracers != nil {
		ex.startTrace()
	}
	if h.observing(cfg) {
		o := newObservedStream(ds, ex.start, cfg)
		ex.ds, ex.info = o, &o.info
		if t := ex.tr; t != nil && t.span != nil {
			o.info.TraceID = t.traceID.String()
		}
		defer h.finish(cfg, o)
	}
	// Deferred so that filters are destroyed even if a hook panics.
	defer ex.destroyFilters()
	ex.serve()
	st.RqTime.Record(sinceMs(ex.start))
	if ex.tr != nil {
		ex.endTrace()
	}
}

// sinceMs is the time since t in milliseconds, at microsecond resolution,
// the unit of Envoy's *_time histograms.
func sinceMs(t time.Time) float64 {
	return float64(time.Since(t).Microseconds()) / 1000
}

// exchange is one proxied stream.
type exchange struct {
	h     *Handler
	cfg   *Config
	ds    stream.ServerStream
	req   *stream.Request
	grpc  bool
	start time.Time

	// Set by proxy for routes to a cluster: the exchange's context, which
	// every attempt runs under, and its cancel.
	ctx    context.Context
	cancel context.CancelCauseFunc
	wd     *watchdog
	body   *replayBody // nil when the request has no body
	// reqDoneAt is 1 + the offset from start at which the router had
	// received the whole request (requestReceived), 0 before; the body's
	// goroutine may store it.
	reqDoneAt atomic.Int64
	// upEndAt is the offset from start at which the upstream response
	// ended (upstreamEnded); owned by the exchange's goroutine.
	upEndAt time.Duration
	// tried are the distinct hosts attempted so far, in triedBuf unless
	// retries tried more than one.
	tried    []*upstream.Host
	triedBuf [1]*upstream.Host
	// headersSent is set just before the response headers go downstream;
	// from then on a failure resets the stream instead of answering it.
	headersSent atomic.Bool
	// overloaded marks a local reply to a circuit-breaker overflow: it
	// carries x-envoy-overloaded: true, as Envoy's.
	overloaded bool

	// HTTP filters (filters.go); all nil when the router is the only one.
	filters []filters.Filter
	// replied is set once a filter sent a local reply.
	replied bool
	// inResponseFilters is set while response hooks run.
	inResponseFilters bool
	// route is the cached route match; valid when routed.
	route  *route.Route
	routed bool

	// hooks is the body and trailer hook state (bodyfilter.go); nil when
	// no filter has a body or trailer hook.
	hooks *hookState

	// tr is the tracing state (tracing.go); nil when the connection
	// manager does not trace.
	tr *trace

	// info is the access-log record of an observed stream (observe.go);
	// nil when nothing observes the handler's streams.
	info *accesslog.Info
}

func isGRPC(req *stream.Request) bool {
	return strings.HasPrefix(req.Header.Get("content-type"), "application/grpc")
}

func (ex *exchange) serve() {
	req := ex.req
	if ex.h.shed != nil && ex.h.shed() {
		// Envoy sheds as soon as headers are decoded, before any filter.
		ex.h.overloadClose.Inc()
		ex.flag("OL")
		ex.h.logger.Debug("local reply", "status", 503, "details", "overload")
		ex.localReply(503, "envoy overloaded")
		return
	}
	if !ex.checkUnderscores() {
		ex.localReply(400, "")
		return
	}
	if len(ex.cfg.Filters) > 0 && !ex.runRequestFilters() {
		return
	}
	r := ex.Route()
	if r == nil {
		ex.h.stats.NoRoute.Inc()
		ex.flag("NR")
		ex.note(accesslog.NoRouteFound, "route_not_found")
		ex.localReply(404, "")
		return
	}
	if ex.info != nil {
		ex.info.RouteName = r.Name
	}
	if d := r.Direct; d != nil {
		ex.h.stats.RqDirect.Inc()
		ex.note(0, "direct_response")
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
		ex.note(accesslog.NoClusterFound, "cluster_not_found")
		ex.localReply(r.ClusterNotFoundStatus, "")
		return
	}
	ex.proxy(r, c)
}

// checkUnderscores applies headers_with_underscores_action, counting
// what it rejects or drops under the request's codec; false means reject
// the request.
func (ex *exchange) checkUnderscores() bool {
	if ex.cfg.Underscores == UnderscoreAllow {
		return true
	}
	var names []string
	for _, f := range ex.req.Header.Fields() {
		if strings.IndexByte(f.Name, '_') >= 0 && !slices.Contains(names, f.Name) {
			names = append(names, f.Name)
		}
	}
	if len(names) == 0 {
		return true
	}
	st := ex.underscoreStats()
	if ex.cfg.Underscores == UnderscoreReject {
		st.Rejected.Inc()
		return false
	}
	for _, n := range names {
		st.Dropped.Add(uint64(len(ex.req.Header.Values(n))))
		ex.req.Header.Del(n)
	}
	return true
}

// underscoreStats returns the underscore counters of the request's codec.
func (ex *exchange) underscoreStats() *UnderscoreStats {
	switch ex.ds.Conn().Proto {
	case "HTTP/2":
		return &ex.h.stats.Underscores[1]
	case "HTTP/3":
		return &ex.h.stats.Underscores[2]
	}
	return &ex.h.stats.Underscores[0]
}

// forwardingFields is room for the fields a proxied request usually gains
// (x-forwarded-proto, x-request-id, traceparent, x-forwarded-client-cert
// or a route's request_headers_to_add), so adding them does not grow the
// cloned list several times.
const forwardingFields = 4

// upstreamRequest builds the request sent to the cluster: hop-by-hop fields
// removed, the forwarding headers Envoy adds, and the route's mutations.
func (ex *exchange) upstreamRequest(r *route.Route, cluster string, tlsUpstream bool) *stream.Request {
	in := ex.req
	out := &stream.Request{
		Method:        in.Method,
		Scheme:        "http",
		Authority:     in.Authority,
		Path:          in.Path,
		Header:        in.Header.CloneGrow(forwardingFields),
		ContentLength: in.ContentLength,
		EndStream:     in.EndStream,
	}
	if tlsUpstream {
		out.Scheme = "https"
	}
	out.Header.StripHopByHop()
	ex.applyXFCC(out)
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

// finishHeaders applies the response header mutations of the route and the
// connection manager.
func (ex *exchange) finishHeaders(r *route.Route, cluster string, resp *stream.Response) {
	if r != nil {
		r.ResponseHeaders(&resp.Header, cluster, ex.ds.Conn())
	}
	if ex.cfg.ServerName != "" {
		resp.Header.Set("server", ex.cfg.ServerName)
	}
	ex.traceResponse(resp)
	ex.h.stats.Scope.ResponseCode("downstream_rq", resp.Status)
}

// grpcStatusFor maps a local reply's HTTP status to a gRPC status code, as
// Envoy does, except that a timeout (504 upstream, 408 downstream) is
// DEADLINE_EXCEEDED.
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
	case 408, 504:
		return 4 // DEADLINE_EXCEEDED
	default:
		return 2 // UNKNOWN
	}
}

// localReply answers the stream from the proxy itself. gRPC requests get a
// trailers-only response carrying grpc-status and grpc-message.
func (ex *exchange) localReply(code int, body string) {
	resp := &stream.Response{Status: code, Header: header.Make(4), ContentLength: int64(len(body))}
	if ex.overloaded {
		resp.Header.Add("x-envoy-overloaded", "true")
	}
	if ex.grpc {
		resp.Status = 200
		resp.ContentLength = -1
		resp.Header.Add("content-type", "application/grpc")
		resp.Header.Add("grpc-status", strconv.Itoa(grpcStatusFor(code)))
		if body != "" {
			resp.Header.Add("grpc-message", encodeGRPCMessage(body))
		}
		ex.finishHeaders(nil, "", resp)
		if ex.runResponseFilters(resp, true) {
			_ = ex.ds.WriteHeader(resp, true)
		}
		return
	}
	if body != "" {
		resp.Header.Add("content-type", "text/plain")
	}
	resp.Header.Add("content-length", strconv.Itoa(len(body)))
	ex.sendReply(nil, resp, len(body), func() error {
		_, err := io.WriteString(ex.ds, body)
		return err
	})
}

// sendReply finishes a reply the proxy makes itself: resp's headers for
// route r (nil for a local reply), the response filters, then resp and
// its n-byte body, which write writes to ex.ds, as one whole reply. A HEAD
// request or an empty body gets the headers alone, ending the stream.
func (ex *exchange) sendReply(r *route.Route, resp *stream.Response, n int, write func() error) {
	ex.finishHeaders(r, "", resp)
	noBody := n == 0 || ex.req.Method == "HEAD"
	if !ex.runResponseFilters(resp, noBody) {
		return
	}
	if noBody {
		_ = ex.ds.WriteHeader(resp, true)
		return
	}
	ex.holdWholeReply()
	if ex.ds.WriteHeader(resp, false) == nil {
		if write() == nil {
			_ = ex.ds.CloseWrite()
		}
	}
}

// holdWholeReply lets a downstream codec that can (HTTP/3) send a reply
// written whole at once (headers, body, end) in one write.
func (ex *exchange) holdWholeReply() {
	if f := ex.downstreamFlusher(); f != nil {
		f.Hold()
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
	ex.sendReply(r, resp, len(body), func() error {
		_, err := ex.ds.Write(body)
		return err
	})
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
