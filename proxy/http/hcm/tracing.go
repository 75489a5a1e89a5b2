package hcm

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"meshd.dev/meshd/filters"
	"meshd.dev/meshd/otel/tracing"
	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/proxy/stats"
	"meshd.dev/meshd/proxy/upstream"
)

// Span attribute keys: OpenTelemetry's HTTP and gRPC semantic conventions,
// Envoy's own tag names where Envoy has one, and meshd's.
const (
	attrMethod        = "http.request.method"
	attrPath          = "url.path"
	attrScheme        = "url.scheme"
	attrStatus        = "http.response.status_code"
	attrGRPCStatus    = "rpc.grpc.status_code"
	attrRPCSystem     = "rpc.system"
	attrServerAddr    = "server.address"
	attrServerPort    = "server.port"
	attrPeerAddr      = "network.peer.address"
	attrProtoVersion  = "network.protocol.version"
	attrUserAgent     = "user_agent.original"
	attrErrorType     = "error.type"
	attrCluster       = "upstream_cluster"
	attrUpstreamAddr  = "upstream_address"
	attrResponseFlags = "response_flags"
	attrRequestID     = "guid:x-request-id"
	attrComponent     = "component"
	// AttrPeerSPIFFEID is the downstream peer's SPIFFE ID (server span).
	AttrPeerSPIFFEID = "meshd.peer.spiffe_id"
	// AttrUpstreamSPIFFEID is the upstream peer's SPIFFE ID (client span,
	// and the server span when no client span is spawned).
	AttrUpstreamSPIFFEID = "meshd.upstream.spiffe_id"
	// AttrAttempt numbers a client span's attempt from 1.
	AttrAttempt = "meshd.attempt"
)

// NewTracers returns the exporters of the connection managers sharing
// clusters cm: each exports OTLP/gRPC to an endpoint of its provider's
// cluster, dialled directly (picked by the cluster's load balancer, with
// the cluster's connect_timeout and TLS context), and counts into
// Envoy's tracing.opentelemetry.* stats of store.
func NewTracers(cm *upstream.Manager, store *stats.Store, logger *slog.Logger) *tracing.Providers {
	sc := store.Root().Scope("tracing").Scope("opentelemetry")
	st := tracing.ExporterStats{
		SpansSent:    sc.Counter("spans_sent"),
		SpansDropped: sc.Counter("spans_dropped"),
		TimerFlushed: sc.Counter("timer_flushed"),
	}
	return tracing.NewProviders(ClusterDialer(cm), st, logger)
}

// ClusterDialer returns a dial function for collectors and other gRPC
// services named by cluster (tracing providers, OpenTelemetry access
// logs): each call connects to an endpoint the cluster's load balancer
// picks, with the cluster's connect_timeout and, when it has one, its TLS
// context (ALPN h2).
func ClusterDialer(cm *upstream.Manager) func(ctx context.Context, cluster string) (net.Conn, error) {
	return func(ctx context.Context, cluster string) (net.Conn, error) {
		c := cm.Get(cluster)
		if c == nil {
			return nil, fmt.Errorf("cluster %q: not found", cluster)
		}
		h := c.Pick()
		if h == nil {
			return nil, fmt.Errorf("cluster %q: no healthy upstream", cluster)
		}
		d := net.Dialer{Timeout: c.Spec().ConnectTimeout}
		conn, err := d.DialContext(ctx, "tcp", h.Addr)
		if err != nil {
			return nil, err
		}
		if cfg := c.Spec().TLS; cfg != nil {
			cfg = cfg.Clone()
			cfg.NextProtos = []string{"h2"}
			tc := tls.Client(conn, cfg)
			if err := tc.HandshakeContext(ctx); err != nil {
				conn.Close()
				return nil, fmt.Errorf("cluster %q: %w", cluster, err)
			}
			return tc, nil
		}
		return conn, nil
	}
}

// SetTracing makes the handler record spans with the exporters of p for
// connection manager configs that have tracing; nil turns tracing off.
// Call it before the handler serves.
func (h *Handler) SetTracing(p *tracing.Providers) {
	h.tracers = p
	if p != nil && h.tracingStats == nil {
		h.tracingStats = newTracingStats(h.stats.Scope)
		h.upstreamAttrs = &upstreamAttrCache{seed: maphash.MakeSeed()}
	}
}

// serverConstAttrs are the server span's attributes fixed by the
// downstream connection and the request's protocol, encoded once:
// component, url.scheme, network.protocol.version and, for gRPC,
// rpc.system. Indexed by [TLS][gRPC][protoIndex].
var serverConstAttrs = func() (t [2][2][len(knownProtos)]tracing.Attrs) {
	for tlsOn := range 2 {
		scheme := "http"
		if tlsOn == 1 {
			scheme = "https"
		}
		for grpcOn := range 2 {
			rpc := ""
			if grpcOn == 1 {
				rpc = "grpc"
			}
			for i, p := range knownProtos {
				t[tlsOn][grpcOn][i] = tracing.EncodeAttrs(
					tracing.Attr{Key: attrComponent, Str: "proxy"},
					tracing.Attr{Key: attrScheme, Str: scheme},
					tracing.Attr{Key: attrProtoVersion, Str: strings.TrimPrefix(p, "HTTP/")},
					tracing.Attr{Key: attrRPCSystem, Str: rpc},
				)
			}
		}
	}
	return t
}()

// knownProtos are the downstream protocols serverConstAttrs has blocks
// for; "" stands for any other, whose version is set per span.
var knownProtos = [...]string{"", "HTTP/1.1", "HTTP/2", "HTTP/3", "HTTP/1.0"}

// protoIndex is proto's index in knownProtos, 0 when it has none.
func protoIndex(proto string) int {
	for i := 1; i < len(knownProtos); i++ {
		if knownProtos[i] == proto {
			return i
		}
	}
	return 0
}

// upstreamAttrs are the span attributes an upstream host determines,
// encoded once per host rather than per span: the server span's
// upstream_cluster and upstream_address, and a client span's, which add
// server.address and server.port.
type upstreamAttrs struct {
	host    *upstream.Host
	cluster string
	server  tracing.Attrs
	client  tracing.Attrs
}

func newUpstreamAttrs(cluster string, h *upstream.Host) *upstreamAttrs {
	ua := &upstreamAttrs{host: h, cluster: cluster}
	clusterAttr := tracing.Attr{Key: attrCluster, Str: cluster}
	addrAttr := tracing.Attr{Key: attrUpstreamAddr, Str: h.Addr}
	ua.server = tracing.EncodeAttrs(clusterAttr, addrAttr)
	attrs := make([]tracing.Attr, 0, 4)
	if host, port, err := net.SplitHostPort(h.Addr); err == nil {
		attrs = append(attrs, tracing.Attr{Key: attrServerAddr, Str: host})
		if p, err := strconv.Atoi(port); err == nil {
			attrs = append(attrs, tracing.Attr{Key: attrServerPort, Int: int64(p), IsInt: true})
		}
	}
	ua.client = tracing.EncodeAttrs(append(attrs, clusterAttr, addrAttr)...)
	return ua
}

// upstreamAttrSlots is the size of a handler's upstreamAttrCache.
const upstreamAttrSlots = 256

// upstreamAttrCache holds the upstreamAttrs of recently used hosts,
// direct-mapped by a hash of the host's address: bounded however many
// hosts come and go, lock-free, and a collision costs one encoding.
type upstreamAttrCache struct {
	seed  maphash.Seed
	slots [upstreamAttrSlots]atomic.Pointer[upstreamAttrs]
}

// get returns the attributes of host h of cluster, encoding them when the
// slot holds another host's.
func (c *upstreamAttrCache) get(cluster string, h *upstream.Host) *upstreamAttrs {
	slot := &c.slots[maphash.String(c.seed, h.Addr)%upstreamAttrSlots]
	if ua := slot.Load(); ua != nil && ua.host == h && ua.cluster == cluster {
		return ua
	}
	ua := newUpstreamAttrs(cluster, h)
	slot.Store(ua)
	return ua
}

// tracingStats are Envoy's http.<stat_prefix>.tracing.* counters.
type tracingStats struct {
	random, client, parent, notTraced *stats.Counter
}

func newTracingStats(sc *stats.Scope) *tracingStats {
	t := sc.Scope("tracing")
	return &tracingStats{
		random:    t.Counter("random_sampling"),
		client:    t.Counter("client_enabled"),
		parent:    t.Counter("service_forced"),
		notTraced: t.Counter("not_traceable"),
	}
}

// trace is one exchange's tracing state.
type trace struct {
	cfg *tracing.Config
	exp *tracing.Exporter
	// traceID, parentID, state and b3 come from the request's context (or
	// a new trace); spanID is the server span's.
	traceID  tracing.TraceID
	parentID tracing.SpanID
	spanID   tracing.SpanID
	state    string
	b3       bool
	sampled  bool
	// propagate is false for an unsampled request that carried a context:
	// its headers go upstream unchanged.
	propagate bool

	span *tracing.Span // the server span; nil when not sampled

	// Set as the exchange runs.
	status     int
	grpcStatus string
	flags      []string
	up         *upstreamAttrs // the last attempt's host; nil before one
	upstreamID string
	attempts   int

	att     *tracing.Span // the current attempt's client span
	attGRPC int           // the attempt's grpc-status, -1 until known

	// tp holds the first attempt's traceparent value, written once and
	// never again: the upstream request's header reads it as a string
	// (see traceparent), so a traced request allocates no string for it.
	// Later attempts get strings of their own.
	tp [tracing.TraceparentLen]byte
}

// traceparent returns the traceparent value of span id for attempt
// t.attempts. The first attempt's value is a string over t.tp, whose
// bytes are never modified after it is formed: t is not pooled, so the
// garbage collector keeps t alive while any header holds that string.
func (t *trace) traceparent(id tracing.SpanID) string {
	if t.attempts != 1 {
		return tracing.FormatTraceparent(t.traceID, id, t.sampled)
	}
	b := tracing.AppendTraceparent(t.tp[:0], t.traceID, id, t.sampled)
	return unsafe.String(&b[0], len(b))
}

// startTrace decides sampling and starts the server span. It is called
// only when the config has tracing and the handler has exporters.
func (ex *exchange) startTrace() {
	cfg := ex.cfg.Tracing
	exp := ex.h.tracers.Get(cfg.Provider)
	if exp == nil {
		return
	}
	req := ex.req
	parent, hasParent := tracing.Extract(&req.Header)
	sampled, reason := cfg.Sample(parent, hasParent, req.Header.Has("x-client-trace-id"))
	t := &trace{cfg: cfg, exp: exp, sampled: sampled, propagate: sampled || !hasParent}
	if hasParent {
		t.traceID, t.parentID, t.state, t.b3 = parent.TraceID, parent.SpanID, parent.TraceState, parent.B3
	} else {
		t.traceID = tracing.NewTraceID()
	}
	t.spanID = tracing.NewSpanID()
	ts := ex.h.tracingStats
	if !sampled {
		ts.notTraced.Inc()
		ex.tr = t
		return
	}
	switch reason {
	case tracing.ReasonParent:
		ts.parent.Inc()
	case tracing.ReasonClient:
		ts.client.Inc()
	default:
		ts.random.Inc()
	}
	s := tracing.NewSpan()
	s.TraceID, s.SpanID, s.ParentSpanID, s.TraceState = t.traceID, t.spanID, t.parentID, t.state
	s.Kind = tracing.KindServer
	s.Name = spanName(req)
	s.Start = ex.start
	t.span = s
	ex.tr = t
}

// now is the time for a span's timestamps: the exchange's start plus the
// monotonic time elapsed since. It reads one clock where time.Now reads
// two (wall and monotonic), and a wall-clock step during the exchange
// does not skew its spans' durations.
func (ex *exchange) now() time.Time { return ex.start.Add(time.Since(ex.start)) }

// spanName is the gRPC method ("pkg.Service/Method") for gRPC, else the
// HTTP method, the low-cardinality names of OTel's conventions.
func spanName(req *stream.Request) string {
	if strings.HasPrefix(req.Header.Get("content-type"), "application/grpc") && len(req.Path) > 1 {
		return req.Path[1:]
	}
	return req.Method
}

// endTrace ends the server span and hands it to the exporter.
func (ex *exchange) endTrace() {
	t := ex.tr
	s := t.span
	if s == nil {
		return
	}
	t.span = nil
	req := ex.req
	s.End = ex.now()
	conn := ex.ds.Conn()
	tlsOn, grpcOn, proto := 0, 0, protoIndex(conn.Proto)
	if conn.TLS != nil {
		tlsOn = 1
	}
	if ex.grpc {
		grpcOn = 1
	}
	s.AddAttrs(serverConstAttrs[tlsOn][grpcOn][proto])
	if proto == 0 {
		s.SetStr(attrProtoVersion, strings.TrimPrefix(conn.Proto, "HTTP/"))
	}
	s.SetStr(attrMethod, req.Method)
	path := req.Path
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	if len(path) > t.cfg.MaxPathTagLength {
		path = path[:t.cfg.MaxPathTagLength]
	}
	s.SetStr(attrPath, path)
	s.SetStr(attrServerAddr, req.Authority)
	if a, ok := conn.RemoteAddr.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(a.IP)
		s.SetAddr(attrPeerAddr, ip)
	}
	s.SetStr(attrUserAgent, req.Header.Get("user-agent"))
	s.SetStr(attrRequestID, req.Header.Get("x-request-id"))
	if id, ok := filters.PeerPrincipal(conn.TLS); ok {
		s.SetStr(AttrPeerSPIFFEID, id)
	}
	if t.up != nil {
		s.AddAttrs(t.up.server)
	}
	if !t.cfg.SpawnUpstreamSpan {
		s.SetStr(AttrUpstreamSPIFFEID, t.upstreamID)
	}
	if len(t.flags) > 0 {
		s.SetStr(attrResponseFlags, strings.Join(t.flags, ","))
	}
	for _, ct := range t.cfg.CustomTags {
		v := ct.Value
		if ct.Header != "" {
			if hv, ok := req.Header.Lookup(ct.Header); ok {
				v = hv
			}
		}
		s.SetStr(ct.Tag, v)
	}
	if t.status != 0 {
		s.SetInt(attrStatus, int64(t.status))
	}
	if ex.grpc {
		if code, err := strconv.Atoi(t.grpcStatus); err == nil {
			s.SetInt(attrGRPCStatus, int64(code))
			s.Error = grpcServerError(code)
		}
	}
	switch {
	case t.status == 0:
		s.Error, s.StatusMessage = true, "no response"
		s.SetStr(attrErrorType, "reset")
	case t.status >= 500:
		s.Error = true
		s.SetStr(attrErrorType, strconv.Itoa(t.status))
	}
	t.exp.Export(s)
}

// grpcServerError reports whether a gRPC status is an error on a server
// span (OTel's gRPC conventions: UNKNOWN, DEADLINE_EXCEEDED,
// UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS).
func grpcServerError(code int) bool {
	switch code {
	case 2, 4, 12, 13, 14, 15:
		return true
	}
	return false
}

// SetSpanTag implements filters.SpanTagger: the tag goes on the server
// span of a sampled stream.
func (ex *exchange) SetSpanTag(key, value string) {
	if ex.tr != nil && ex.tr.span != nil {
		ex.tr.span.SetStr(key, value)
	}
}

var _ filters.SpanTagger = (*exchange)(nil)

// flag records one of Envoy's response flags ("UH", "UF", ...).
func (ex *exchange) flag(f string) {
	if t := ex.tr; t != nil && t.span != nil {
		for _, g := range t.flags {
			if g == f {
				return
			}
		}
		t.flags = append(t.flags, f)
	}
}

// traceResponse records the status of the response going downstream.
func (ex *exchange) traceResponse(resp *stream.Response) {
	if t := ex.tr; t != nil {
		t.status = resp.Status
		if v, ok := resp.Header.Lookup("grpc-status"); ok {
			t.grpcStatus = v
		}
	}
}

// traceTrailers records the grpc-status of forwarded response trailers.
func (ex *exchange) traceTrailers(tr *header.Header) {
	if t := ex.tr; t != nil {
		if v, ok := tr.Lookup("grpc-status"); ok {
			t.grpcStatus = v
		}
		if t.att != nil {
			if code, err := strconv.Atoi(t.grpcStatus); err == nil {
				t.attGRPC = code
			}
		}
	}
}

// beginAttempt starts the client span of an upstream attempt and sets the
// trace context headers of ureq for it.
func (ex *exchange) beginAttempt(c *upstream.Cluster, host *upstream.Host, ureq *stream.Request) {
	t := ex.tr
	t.attempts++
	t.up = ex.h.upstreamAttrs.get(c.Spec().Name, host)
	if !t.propagate {
		return
	}
	id := t.spanID
	if t.sampled && t.cfg.SpawnUpstreamSpan {
		a := tracing.NewSpan()
		a.TraceID, a.SpanID, a.ParentSpanID, a.TraceState = t.traceID, tracing.NewSpanID(), t.spanID, t.state
		a.Kind = tracing.KindClient
		a.Name = t.span.Name
		a.Start = ex.now()
		t.att, t.attGRPC = a, -1
		id = a.SpanID
	} else if t.sampled && t.attempts > 1 {
		t.span.AddEvent("upstream retry", ex.now(), tracing.Attr{Key: AttrAttempt, Int: int64(t.attempts), IsInt: true})
	}
	ureq.Header.Set("traceparent", t.traceparent(id))
	if t.b3 {
		for _, n := range [...]string{"x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags"} {
			ureq.Header.Del(n)
		}
		ureq.Header.Set("b3", tracing.FormatB3(t.traceID, id, t.sampled))
	}
}

// attemptResponse records an attempt's response headers and the upstream
// peer's identity.
func (ex *exchange) attemptResponse(us stream.ClientStream, resp *stream.Response) {
	t := ex.tr
	if !t.sampled {
		return
	}
	if cs, ok := us.(interface{ ConnectionState() *tls.ConnectionState }); ok {
		if id, ok := filters.PeerPrincipal(cs.ConnectionState()); ok {
			t.upstreamID = id
		}
	}
	if a := t.att; a != nil {
		a.SetInt(attrStatus, int64(resp.Status))
		a.Error = resp.Status >= 400
		if v, ok := resp.Header.Lookup("grpc-status"); ok {
			if code, err := strconv.Atoi(v); err == nil {
				t.attGRPC = code
			}
		}
	}
}

// endAttempt ends the current attempt's client span; err is why the
// attempt failed before a response, nil otherwise.
func (ex *exchange) endAttempt(err error) {
	t := ex.tr
	a := t.att
	if a == nil {
		return
	}
	t.att = nil
	a.End = ex.now()
	a.SetStr(attrMethod, ex.req.Method)
	a.AddAttrs(t.up.client)
	a.SetStr(AttrUpstreamSPIFFEID, t.upstreamID)
	a.SetInt(AttrAttempt, int64(t.attempts))
	if ex.grpc {
		a.SetStr(attrRPCSystem, "grpc")
	}
	// grpc-status is set once, from the trailers when they came, else
	// from a trailers-only response's headers.
	if t.attGRPC >= 0 {
		a.SetInt(attrGRPCStatus, int64(t.attGRPC))
		a.Error = a.Error || t.attGRPC != 0
	}
	if err != nil {
		a.Error = true
		a.StatusMessage = err.Error()
		a.SetStr(attrErrorType, attemptErrorType(err))
	}
	t.exp.Export(a)
}

// attemptErrorType classifies an attempt failed before its response.
func attemptErrorType(err error) string {
	var se *stream.Error
	switch {
	case isConnectFailure(err):
		return "connect_failure"
	case errors.Is(err, upstream.ErrOverflow):
		return "overflow"
	case errors.As(err, &se) && se.Code == stream.ErrCodeRefusedStream && se.Remote:
		return "refused_stream"
	case stream.Unprocessed(err):
		return "unprocessed"
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return "cancelled"
	}
	return "reset"
}
