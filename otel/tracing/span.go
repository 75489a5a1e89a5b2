// Package tracing is meshd's request tracing: Envoy's HttpConnectionManager
// tracing config (provider envoy.tracers.opentelemetry) compiled into an
// immutable Config, the sampling decision, W3C trace context (and B3)
// propagation, spans recorded with fixed, allocation-light fields, and an
// OTLP/gRPC exporter with a bounded queue that never blocks a request.
//
// The sidecar records spans with this package rather than with the
// OpenTelemetry SDK: a proxied request must stay within a few microseconds
// of CPU for its two spans and their export (docs/RATIONALE.md). The span
// model and the wire format are OpenTelemetry's (OTLP), so any collector
// receives them. The control plane, whose spans are few, uses the SDK
// (NewSDKProvider).
package tracing

import (
	"encoding/hex"
	mrand "math/rand/v2"
	"net/netip"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
)

// TraceID and SpanID are W3C trace-context identifiers.
type (
	TraceID [16]byte
	SpanID  [8]byte
)

// IsValid reports whether the ID is not all zeros.
func (t TraceID) IsValid() bool { return t != TraceID{} }

// IsValid reports whether the ID is not all zeros.
func (s SpanID) IsValid() bool { return s != SpanID{} }

// String returns the ID in lower-case hex.
func (t TraceID) String() string { return hex.EncodeToString(t[:]) }

// String returns the ID in lower-case hex.
func (s SpanID) String() string { return hex.EncodeToString(s[:]) }

// NewTraceID returns a random, valid trace ID.
func NewTraceID() TraceID {
	var t TraceID
	for !t.IsValid() {
		a, b := mrand.Uint64(), mrand.Uint64()
		for i := range 8 {
			t[i], t[8+i] = byte(a>>(8*i)), byte(b>>(8*i))
		}
	}
	return t
}

// NewSpanID returns a random, valid span ID.
func NewSpanID() SpanID {
	var s SpanID
	for !s.IsValid() {
		a := mrand.Uint64()
		for i := range 8 {
			s[i] = byte(a >> (8 * i))
		}
	}
	return s
}

// Kind is an OTLP span kind.
type Kind int8

// The span kinds meshd records (OTLP's numbering).
const (
	KindInternal Kind = 1
	KindServer   Kind = 2
	KindClient   Kind = 3
)

// Attr is one event or resource attribute: a string, or an integer when
// IsInt.
type Attr struct {
	Key   string
	Str   string
	Int   int64
	IsInt bool
}

// maxPooledBuf is the largest attribute buffer a released span keeps: a
// span with unusually large attributes (long custom tags) does not pin
// its memory in the pool.
const maxPooledBuf = 16 << 10

// Span is one recorded span. A Span comes from NewSpan, is filled by one
// goroutine, and is handed to Exporter.Export once ended; the exporter owns
// it from then on and recycles it, so the caller must not touch it again.
//
// Attributes and events are encoded to OTLP protobuf as they are set
// (SetStr, SetInt, AddEvent) into buffers the span keeps across reuse: a
// pooled span holds no pointers into request memory, the exporter copies
// bytes instead of encoding, and the garbage collector has little to scan.
// An attribute set twice is sent twice, as an OTel SDK span without
// de-duplication would; callers set each key once.
type Span struct {
	TraceID      TraceID
	SpanID       SpanID
	ParentSpanID SpanID // zero for a root span
	TraceState   string
	Kind         Kind
	Name         string
	Start, End   time.Time
	// Error marks the span's status as ERROR with StatusMessage; otherwise
	// the status is UNSET, as OTel's HTTP conventions want for success.
	Error         bool
	StatusMessage string

	attrs  []byte // encoded Span.attributes fields (KeyValue)
	events []byte // encoded Span.events fields (Event)
}

var spanPool = sync.Pool{New: func() any { return &Span{attrs: make([]byte, 0, 1024)} }}

// NewSpan returns an empty span from a pool.
func NewSpan() *Span { return spanPool.Get().(*Span) }

// release returns s to the pool with its buffers kept for reuse.
func release(s *Span) {
	attrs, events := s.attrs[:0], s.events[:0]
	if cap(attrs) > maxPooledBuf {
		attrs = make([]byte, 0, 1024)
	}
	if cap(events) > maxPooledBuf {
		events = nil
	}
	*s = Span{attrs: attrs, events: events}
	spanPool.Put(s)
}

// SetStr adds a string attribute; an empty value is skipped.
func (s *Span) SetStr(key, v string) {
	if v != "" {
		s.attrs = appendStrKV(s.attrs, fSpanAttrs, key, v)
	}
}

// SetAddr adds an IP address attribute in its text form (an IPv4-mapped
// address as IPv4), without allocating; an invalid address is skipped.
func (s *Span) SetAddr(key string, ip netip.Addr) {
	if ip.IsValid() {
		var buf [64]byte
		s.attrs = appendStrKV(s.attrs, fSpanAttrs, key, ip.Unmap().AppendTo(buf[:0]))
	}
}

// Attrs is a list of span attributes encoded once, for attributes many
// spans share (a cluster's name, an upstream host's address and port, a
// connection's scheme): Span.AddAttrs copies its bytes where setting each
// attribute would encode it again. The zero value is empty; an Attrs is
// immutable, so one value may be added to spans on any goroutine.
type Attrs struct{ b []byte }

// EncodeAttrs returns attrs encoded in order. A string attribute with an
// empty value is skipped, as SetStr skips it.
func EncodeAttrs(attrs ...Attr) Attrs {
	var b []byte
	for i := range attrs {
		if a := &attrs[i]; a.IsInt || a.Str != "" {
			b = appendKV(b, fSpanAttrs, a)
		}
	}
	return Attrs{b: b}
}

// Len is the encoded size of the attributes.
func (a Attrs) Len() int { return len(a.b) }

// AddAttrs adds every attribute of a, after those already set.
func (s *Span) AddAttrs(a Attrs) { s.attrs = append(s.attrs, a.b...) }

// SetInt adds an integer attribute.
func (s *Span) SetInt(key string, v int64) {
	s.attrs = appendIntKV(s.attrs, fSpanAttrs, key, v)
}

// AddEvent adds an event at t with attrs.
func (s *Span) AddEvent(name string, t time.Time, attrs ...Attr) {
	n := protowire.SizeTag(fEventTime) + 8 + sizeStr(fEventName, name)
	for i := range attrs {
		n += sizeField(fEventAttrs, kvSize(&attrs[i]))
	}
	b := appendMsgHeader(s.events, fSpanEvents, n)
	b = appendTag(b, fEventTime, protowire.Fixed64Type)
	b = protowire.AppendFixed64(b, uint64(t.UnixNano()))
	b = appendStr(b, fEventName, name)
	for i := range attrs {
		b = appendKV(b, fEventAttrs, &attrs[i])
	}
	s.events = b
}
