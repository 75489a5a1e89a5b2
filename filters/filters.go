// Package filters is the HTTP filter API of meshd's connection manager
// (proxy/http/hcm) and the registry of filter implementations, keyed by
// their Envoy type URL and well-known name.
//
// The model is Envoy's, simplified. For each entry of an
// HttpConnectionManager's http_filters, a Builder registered for the entry's
// typed_config type validates the config once and returns a Factory: an
// immutable value shared by every stream and safe for concurrent use. The
// connection manager asks each Factory for a Filter when a stream starts, and
// drives the filters of the stream from the stream's own goroutine, never
// concurrently:
//
//   - OnRequestHeaders runs in http_filters order, after the connection
//     manager's own request checks and before route selection and
//     proxying. Routing happens after the last filter continued, so a filter
//     that changes the request changes what is routed.
//   - OnResponseHeaders runs in reverse order, just before the response
//     headers go downstream: for upstream responses, direct responses,
//     redirects and local replies alike. It runs for every filter created
//     for the stream: on a local reply sent by a request hook, that is the
//     filter that answered and those before it.
//   - The body and trailer hooks (RequestBodyFilter, RequestTrailersFilter,
//     ResponseBodyFilter, ResponseTrailersFilter) run on proxied bodies:
//     request data and trailers in http_filters order before they go
//     upstream, response data and trailers in reverse order before they go
//     downstream. The bodies of local and direct replies are not passed to
//     them. Request body hooks run on the goroutine that reads the request
//     body, concurrently with nothing else of the stream's filters: the
//     connection manager serialises every hook of a stream whose chain has
//     body or trailer hooks. A chain without them costs nothing.
//
// A hook returns Continue to pass the stream on, or Stop after it called
// Callbacks.SendLocalReply. Iteration also stops when a hook sent a local
// reply and returned Continue. A body hook may return StopAndBuffer (see
// there). Envoy's asynchronous pause/resume (StopIteration followed by
// continueDecoding) is not part of this API: a filter waiting for an
// external answer (a proxy-wasm http_call) blocks in its hook, bounded by
// the stream's context.
//
// The router (envoy.filters.http.router) is the connection manager's own
// proxying. It is registered here as the terminal filter, so that config
// validation knows it, and it must end every chain.
package filters

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3" // the router's config type
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"

	"meshd.dev/meshd/mtls"
	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/proxy/route"
	"meshd.dev/meshd/proxy/stats"
)

// Status is what a hook tells the connection manager.
type Status int

const (
	// Continue passes the stream to the next filter.
	Continue Status = iota
	// Stop ends filter iteration for this direction. A request hook
	// returns it after calling Callbacks.SendLocalReply; the connection
	// manager then neither routes nor proxies the request. A response hook
	// returning Stop without a local reply leaves the response unchanged
	// and skips the remaining response hooks. A body or trailer hook
	// returning Stop without a local reply skips the remaining hooks for
	// that chunk, which moves on unchanged.
	Stop
	// StopAndBuffer, from a body hook, holds the chunk in the connection
	// manager: the filter is called again at the next chunk with
	// everything it held followed by the new chunk, and the data moves on
	// when a call returns Continue. On the last chunk (endStream) it means
	// Continue. When trailers follow, held data moves on before the
	// trailer hooks run. Held bytes per direction are bounded by the
	// route's request body buffer limit (request_body_buffer_limit, else
	// per_request_buffer_limit_bytes capped by the listener's
	// per_connection_buffer_limit_bytes, else that, else
	// hcm.DefaultPerRequestBufferLimit): over it a request is answered 413
	// and a response (whose headers went downstream) is reset. From a
	// header hook it means Stop.
	StopAndBuffer
)

// String returns the status's name, as used in logs and test failures.
func (s Status) String() string {
	switch s {
	case Continue:
		return "Continue"
	case Stop:
		return "Stop"
	case StopAndBuffer:
		return "StopAndBuffer"
	}
	return fmt.Sprintf("Status(%d)", int(s))
}

// Callbacks is the connection manager's side of one stream, passed to every
// hook. It is valid only during the hook call and is used from the stream's
// goroutine only.
type Callbacks interface {
	// SendLocalReply answers the stream from the proxy with status and a
	// text/plain body. gRPC requests get a trailers-only response with the
	// status mapped as Envoy maps it (403 → PERMISSION_DENIED, 429 and 503 →
	// UNAVAILABLE, ...) and body as grpc-message. details is Envoy's
	// response code details ("rbac_access_denied_matched_policy[none]"),
	// logged at debug and never sent. Called from a request hook, it
	// prevents routing; from a response hook, it replaces the response not
	// yet sent (the upstream stream is reset) and the remaining response
	// hooks do not run. Only the first call of a stream has an effect.
	SendLocalReply(status int, body string, details string)
	// Conn describes the downstream connection.
	Conn() *stream.ConnInfo
	// PeerPrincipal returns the peer's SPIFFE ID from the verified client
	// certificate of the connection's TLS state, and false when the
	// connection is plaintext, the peer sent no certificate, or its
	// certificate carries no valid SPIFFE ID.
	PeerPrincipal() (string, bool)
	// Route returns the route the current request headers select, nil when
	// none does. It is matched on first use and cached; a filter that
	// changes headers routing depends on calls ClearRouteCache.
	Route() *route.Route
	// ClearRouteCache makes the next Route call, and the router, match the
	// route again.
	ClearRouteCache()
	// Stats is the connection manager's stats scope
	// ("http.<stat_prefix>."), under which Envoy names filter stats
	// ("http.<stat_prefix>.rbac.denied"). Filters keep the counters they
	// derive from it; see StatsCache.
	Stats() *stats.Scope
	// Logger is the connection manager's logger.
	Logger() *slog.Logger
	// Context is the downstream stream's context.
	Context() context.Context
}

// Filter is the per-stream instance of a filter, created by
// Factory.NewFilter. Embed PassThrough to implement only one direction.
type Filter interface {
	// OnRequestHeaders sees the request headers; endStream reports that
	// the request has no body. The filter may modify req.
	OnRequestHeaders(cb Callbacks, req *stream.Request, endStream bool) Status
	// OnResponseHeaders sees the response headers just before they are
	// sent downstream; endStream reports that the response has no body.
	// The filter may modify resp.
	OnResponseHeaders(cb Callbacks, resp *stream.Response, endStream bool) Status
}

// RequestBodyFilter is implemented by filters that inspect request body
// data (see the package doc for when it runs).
type RequestBodyFilter interface {
	// OnRequestData sees one chunk of request body; endStream marks the
	// last one (no trailers follow), which may be empty. The filter may
	// change the bytes in place but must not keep data after returning
	// (the connection manager keeps what StopAndBuffer holds).
	OnRequestData(cb Callbacks, data []byte, endStream bool) Status
}

// RequestTrailersFilter is implemented by filters that inspect request
// trailers.
type RequestTrailersFilter interface {
	// OnRequestTrailers sees the request trailers, which it may modify.
	OnRequestTrailers(cb Callbacks, trailers *header.Header) Status
}

// ResponseBodyFilter is implemented by filters that inspect response body
// data.
type ResponseBodyFilter interface {
	// OnResponseData sees one chunk of response body; endStream marks the
	// last one (no trailers follow), which may be empty. The same rules as
	// OnRequestData apply to data.
	OnResponseData(cb Callbacks, data []byte, endStream bool) Status
}

// ResponseTrailersFilter is implemented by filters that inspect response
// trailers.
type ResponseTrailersFilter interface {
	// OnResponseTrailers sees the response trailers, which it may modify.
	OnResponseTrailers(cb Callbacks, trailers *header.Header) Status
}

// Hooks is a set of a filter's body and trailer hooks.
type Hooks uint8

// The body and trailer hooks, one bit each.
const (
	HookRequestData Hooks = 1 << iota
	HookRequestTrailers
	HookResponseData
	HookResponseTrailers
	// AllHooks is every body and trailer hook.
	AllHooks = HookRequestData | HookRequestTrailers | HookResponseData | HookResponseTrailers
)

// HookSelector is implemented by filters whose body and trailer hooks
// depend on the stream; a WASM filter, for example, runs only the callbacks
// its guest implements. The connection manager calls BodyHooks once per
// stream, after every request header hook has run, and then never calls a
// hook outside the returned set, even though the filter implements its
// interface. Leaving hooks out spares the stream the body hook machinery.
type HookSelector interface {
	BodyHooks() Hooks
}

// Destroyer is implemented by filters holding resources beyond their hooks
// (Envoy's StreamFilterBase::onDestroy). The connection manager calls
// OnDestroy exactly once per stream whose filters were created, on the
// stream's goroutine, when the exchange has ended: after the last response
// hook, or after a reset, timeout or local reply ended it early. A request
// body or trailers hook of a reset stream may still be running on the
// request-body goroutine at that moment, so OnDestroy must tolerate a hook
// racing with it and the filter must ignore hooks that come after it.
type Destroyer interface {
	OnDestroy()
}

// PassThrough implements Filter by continuing in both directions; embed it
// in filters that act in one direction only.
type PassThrough struct{}

// OnRequestHeaders returns Continue.
func (PassThrough) OnRequestHeaders(Callbacks, *stream.Request, bool) Status { return Continue }

// OnResponseHeaders returns Continue.
func (PassThrough) OnResponseHeaders(Callbacks, *stream.Response, bool) Status { return Continue }

// Factory is a compiled filter config: immutable and shared by all streams.
type Factory interface {
	// NewFilter returns the filter for one stream. It is called on the
	// stream's goroutine and must be cheap; a stateless filter returns a
	// shared value.
	NewFilter() Filter
}

// FactoryContext is what a Builder knows about where the filter is
// configured.
type FactoryContext struct {
	// Name is the http_filters entry's name.
	Name string
	// StatPrefix is the connection manager's stat_prefix.
	StatPrefix string
}

// Builder validates a filter's typed_config (already decoded into its
// registered message type) and compiles it into a Factory. Errors name the
// offending field relative to the message ("rules.policies[\"p\"]...").
type Builder func(cfg proto.Message, ctx FactoryContext) (Factory, error)

// RouterTypeURL is the router's type URL.
const RouterTypeURL = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"

// RouterName is the router's well-known name.
const RouterName = "envoy.filters.http.router"

// Router is the Factory the router's config compiles to. It marks the end
// of a chain; the connection manager implements it, and its NewFilter
// returns nil.
var Router Factory = terminal{}

type terminal struct{}

func (terminal) NewFilter() Filter { return nil }

type registration struct {
	typeName string
	build    Builder
}

// registry holds the registered builders, filled by init functions and only
// read afterwards.
var registry = struct {
	sync.RWMutex
	byType map[string]*registration // full message name → registration
	byName map[string]*registration // well-known name → registration
}{byType: map[string]*registration{}, byName: map[string]*registration{}}

func init() {
	Register(RouterTypeURL, func(proto.Message, FactoryContext) (Factory, error) { return Router, nil }, RouterName)
}

// typeName returns the message name a type URL denotes (everything after
// the last '/').
func typeName(typeURL string) string {
	if i := strings.LastIndexByte(typeURL, '/'); i >= 0 {
		return typeURL[i+1:]
	}
	return typeURL
}

// Register declares that b builds the filter whose config message is named
// by typeURL (with or without the "type.googleapis.com/" prefix), also known
// by the well-known names. It is meant for init functions. It panics on a
// duplicate registration and on a message type not linked into the binary.
func Register(typeURL string, b Builder, names ...string) {
	tn := typeName(typeURL)
	if _, err := protoregistry.GlobalTypes.FindMessageByName(protoreflect.FullName(tn)); err != nil {
		panic(fmt.Sprintf("filters.Register(%q): %v", typeURL, err))
	}
	registry.Lock()
	defer registry.Unlock()
	if registry.byType[tn] != nil {
		panic(fmt.Sprintf("filters.Register(%q): already registered", typeURL))
	}
	r := &registration{typeName: tn, build: b}
	registry.byType[tn] = r
	for _, n := range names {
		if registry.byName[n] != nil {
			panic(fmt.Sprintf("filters.Register(%q): name %q already registered", typeURL, n))
		}
		registry.byName[n] = r
	}
}

// IsRegistered reports whether a filter is registered for the message type
// named by typeURL.
func IsRegistered(typeURL string) bool {
	registry.RLock()
	defer registry.RUnlock()
	return registry.byType[typeName(typeURL)] != nil
}

// TypeForName returns the full message name registered under the
// well-known filter name, and false when there is none.
func TypeForName(name string) (string, bool) {
	registry.RLock()
	defer registry.RUnlock()
	r := registry.byName[name]
	if r == nil {
		return "", false
	}
	return r.typeName, true
}

// RegisteredTypes returns the sorted full message names of the registered
// filters, the router included.
func RegisteredTypes() []string {
	registry.RLock()
	defer registry.RUnlock()
	out := make([]string, 0, len(registry.byType))
	for n := range registry.byType {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// Build decodes typedConfig and compiles it with the builder registered for
// its type. An unregistered type is an error naming it.
func Build(typedConfig *anypb.Any, ctx FactoryContext) (Factory, error) {
	if typedConfig == nil {
		return nil, fmt.Errorf("typed_config: required")
	}
	registry.RLock()
	r := registry.byType[typeName(typedConfig.GetTypeUrl())]
	registry.RUnlock()
	if r == nil {
		return nil, fmt.Errorf("typed_config: http filter type %q is not supported (supported: %s)",
			typedConfig.GetTypeUrl(), strings.Join(RegisteredTypes(), ", "))
	}
	msg, err := typedConfig.UnmarshalNew()
	if err != nil {
		return nil, fmt.Errorf("typed_config: %w", err)
	}
	f, err := r.build(msg, ctx)
	if err != nil {
		return nil, fmt.Errorf("typed_config.%w", err)
	}
	return f, nil
}

// PeerPrincipal returns the SPIFFE ID of the peer's leaf certificate in cs
// (mtls.PeerID), and false when there is none: plaintext, no client
// certificate, or no valid SPIFFE URI SAN. The listener's handshake
// verified the chain when the certificate was presented.
func PeerPrincipal(cs *tls.ConnectionState) (string, bool) {
	id, ok := mtls.PeerID(cs)
	if !ok {
		return "", false
	}
	return id.String(), true
}

// StatsCache keeps the stats a filter derives from a Callbacks.Stats scope,
// so that a stream costs no lookups: the value is built on the first stream
// and rebuilt only when a stream arrives with another scope (the same
// Factory serving a connection manager with another stat prefix). The zero
// value is ready to use and safe for concurrent use.
type StatsCache[T any] struct {
	p atomic.Pointer[statsEntry[T]]
}

type statsEntry[T any] struct {
	name string
	v    T
}

// Get returns the value for scope, calling build when the cached one was
// built for a scope of another name.
func (c *StatsCache[T]) Get(scope *stats.Scope, build func(*stats.Scope) T) T {
	name := scope.Name()
	if e := c.p.Load(); e != nil && e.name == name {
		return e.v
	}
	e := &statsEntry[T]{name: name, v: build(scope)}
	c.p.Store(e)
	return e.v
}

// SpanTagger is implemented by the Callbacks of a stream that is traced:
// a filter records a decision (a rate-limit verdict, an authorization
// result) as an attribute of the stream's server span.
type SpanTagger interface {
	// SetSpanTag adds key=value to the stream's server span.
	SetSpanTag(key, value string)
}

// TagSpan records key=value on cb's stream span when the stream is traced,
// and does nothing otherwise.
func TagSpan(cb Callbacks, key, value string) {
	if t, ok := cb.(SpanTagger); ok {
		t.SetSpanTag(key, value)
	}
}
