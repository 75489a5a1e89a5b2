package tracing

import (
	"google.golang.org/protobuf/encoding/protowire"
)

// OTLP field numbers (opentelemetry/proto/{collector/trace,trace,common,
// resource}/v1). The request is encoded directly from Spans: no
// intermediate protobuf structs, one buffer reused per batch.
const (
	fReqResourceSpans = 1 // ExportTraceServiceRequest.resource_spans

	fRSResource   = 1 // ResourceSpans.resource
	fRSScopeSpans = 2 // ResourceSpans.scope_spans
	fResAttrs     = 1 // Resource.attributes
	fSSScope      = 1 // ScopeSpans.scope
	fSSSpans      = 2 // ScopeSpans.spans
	fScopeName    = 1 // InstrumentationScope.name
	fScopeVersion = 2 // InstrumentationScope.version

	fSpanTraceID    = 1
	fSpanSpanID     = 2
	fSpanTraceState = 3
	fSpanParentID   = 4
	fSpanName       = 5
	fSpanKind       = 6
	fSpanStart      = 7
	fSpanEnd        = 8
	fSpanAttrs      = 9
	fSpanEvents     = 11
	fSpanStatus     = 15
	fSpanFlags      = 16

	fEventTime  = 1
	fEventName  = 2
	fEventAttrs = 3

	fStatusMessage = 2
	fStatusCode    = 3
	statusError    = 2

	fKVKey      = 1
	fKVValue    = 2
	fAnyString  = 1
	fAnyInt     = 3
	spanSampled = 0x01 // Span.flags: the W3C sampled trace flag
)

// appendTag appends a field key: one byte for field numbers below 16.
func appendTag(b []byte, num protowire.Number, typ protowire.Type) []byte {
	if num < 16 {
		return append(b, byte(num)<<3|byte(typ))
	}
	return protowire.AppendTag(b, num, typ)
}

// appendVarint is protowire.AppendVarint with the one- and two-byte cases
// inline.
func appendVarint(b []byte, v uint64) []byte {
	switch {
	case v < 1<<7:
		return append(b, byte(v))
	case v < 1<<14:
		return append(b, byte(v)|0x80, byte(v>>7))
	}
	return protowire.AppendVarint(b, v)
}

func sizeField(num protowire.Number, n int) int {
	return protowire.SizeTag(num) + protowire.SizeBytes(n)
}

func sizeStr(num protowire.Number, s string) int {
	if s == "" {
		return 0
	}
	return sizeField(num, len(s))
}

func appendStr(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = appendTag(b, num, protowire.BytesType)
	b = appendVarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendMsgHeader(b []byte, num protowire.Number, n int) []byte {
	b = appendTag(b, num, protowire.BytesType)
	return appendVarint(b, uint64(n))
}

// strAnySize and intAnySize are the sizes of an AnyValue holding v.
func strAnySize(v string) int { return sizeField(fAnyString, len(v)) }

func intAnySize(v int64) int { return protowire.SizeTag(fAnyInt) + protowire.SizeVarint(uint64(v)) }

// kvSize returns the size of a's KeyValue message.
func kvSize(a *Attr) int {
	n := intAnySize(a.Int)
	if !a.IsInt {
		n = strAnySize(a.Str)
	}
	return sizeStr(fKVKey, a.Key) + sizeField(fKVValue, n)
}

// appendKV appends a as KeyValue field num.
func appendKV(b []byte, num protowire.Number, a *Attr) []byte {
	if a.IsInt {
		return appendIntKV(b, num, a.Key, a.Int)
	}
	return appendStrKV(b, num, a.Key, a.Str)
}

// appendStrKV appends a KeyValue with a string value as field num, in one
// pass: its sizes follow from the lengths of key and v. Short attributes
// (nearly all: every length fits one varint byte) take a path without
// size arithmetic.
func appendStrKV[S string | []byte](b []byte, num protowire.Number, key string, v S) []byte {
	if n := len(key) + len(v); n < 128-6 && num < 16 && key != "" {
		b = append(b, byte(num)<<3|byte(protowire.BytesType), byte(n+6),
			byte(fKVKey)<<3|byte(protowire.BytesType), byte(len(key)))
		b = append(b, key...)
		b = append(b, byte(fKVValue)<<3|byte(protowire.BytesType), byte(len(v)+2),
			byte(fAnyString)<<3|byte(protowire.BytesType), byte(len(v)))
		return append(b, v...)
	}
	av := sizeField(fAnyString, len(v))
	b = appendMsgHeader(b, num, sizeStr(fKVKey, key)+sizeField(fKVValue, av))
	b = appendStr(b, fKVKey, key)
	b = appendMsgHeader(b, fKVValue, av)
	b = appendTag(b, fAnyString, protowire.BytesType)
	b = appendVarint(b, uint64(len(v)))
	return append(b, v...)
}

// appendIntKV appends a KeyValue with an integer value as field num.
func appendIntKV(b []byte, num protowire.Number, key string, v int64) []byte {
	av := intAnySize(v)
	if len(key) < 128-15 && num < 16 && key != "" {
		b = append(b, byte(num)<<3|byte(protowire.BytesType), byte(len(key)+4+av),
			byte(fKVKey)<<3|byte(protowire.BytesType), byte(len(key)))
		b = append(b, key...)
		b = append(b, byte(fKVValue)<<3|byte(protowire.BytesType), byte(av),
			byte(fAnyInt)<<3|byte(protowire.VarintType))
		return appendVarint(b, uint64(v))
	}
	b = appendMsgHeader(b, num, sizeStr(fKVKey, key)+sizeField(fKVValue, av))
	b = appendStr(b, fKVKey, key)
	b = appendMsgHeader(b, fKVValue, av)
	b = appendTag(b, fAnyInt, protowire.VarintType)
	return appendVarint(b, uint64(v))
}

func statusSize(s *Span) int {
	if !s.Error {
		return 0
	}
	return sizeStr(fStatusMessage, s.StatusMessage) + protowire.SizeTag(fStatusCode) + 1
}

// spanSize returns the encoded size of s (without its own tag and length).
func spanSize(s *Span) int {
	n := sizeField(fSpanTraceID, 16) + sizeField(fSpanSpanID, 8) +
		sizeStr(fSpanTraceState, s.TraceState) + sizeStr(fSpanName, s.Name) +
		protowire.SizeTag(fSpanKind) + 1 +
		2*(protowire.SizeTag(fSpanStart)+8) +
		len(s.attrs) + len(s.events) +
		protowire.SizeTag(fSpanFlags) + 4
	if s.ParentSpanID.IsValid() {
		n += sizeField(fSpanParentID, 8)
	}
	if st := statusSize(s); st > 0 {
		n += sizeField(fSpanStatus, st)
	}
	return n
}

func appendSpan(b []byte, s *Span) []byte {
	b = appendMsgHeader(b, fSpanTraceID, 16)
	b = append(b, s.TraceID[:]...)
	b = appendMsgHeader(b, fSpanSpanID, 8)
	b = append(b, s.SpanID[:]...)
	b = appendStr(b, fSpanTraceState, s.TraceState)
	if s.ParentSpanID.IsValid() {
		b = appendMsgHeader(b, fSpanParentID, 8)
		b = append(b, s.ParentSpanID[:]...)
	}
	b = appendStr(b, fSpanName, s.Name)
	b = appendTag(b, fSpanKind, protowire.VarintType)
	b = appendVarint(b, uint64(s.Kind))
	b = appendTag(b, fSpanStart, protowire.Fixed64Type)
	b = protowire.AppendFixed64(b, uint64(s.Start.UnixNano()))
	b = appendTag(b, fSpanEnd, protowire.Fixed64Type)
	b = protowire.AppendFixed64(b, uint64(s.End.UnixNano()))
	b = append(b, s.attrs...)
	b = append(b, s.events...)
	if st := statusSize(s); st > 0 {
		b = appendMsgHeader(b, fSpanStatus, st)
		b = appendStr(b, fStatusMessage, s.StatusMessage)
		b = appendTag(b, fStatusCode, protowire.VarintType)
		b = appendVarint(b, statusError)
	}
	// flags: the W3C trace flags in the low byte; recorded spans are
	// sampled.
	b = appendTag(b, fSpanFlags, protowire.Fixed32Type)
	return protowire.AppendFixed32(b, spanSampled)
}

// resource is the encoded Resource and InstrumentationScope of an
// exporter, computed once.
type resource struct {
	res   []byte // Resource message body
	scope []byte // InstrumentationScope message body
}

func newResource(attrs []Attr, scopeName, scopeVersion string) resource {
	var r resource
	for i := range attrs {
		r.res = appendKV(r.res, fResAttrs, &attrs[i])
	}
	r.scope = appendStr(r.scope, fScopeName, scopeName)
	r.scope = appendStr(r.scope, fScopeVersion, scopeVersion)
	return r
}

// appendSpanField appends s as one ScopeSpans.spans field.
func appendSpanField(b []byte, s *Span) []byte {
	b = appendMsgHeader(b, fSSSpans, spanSize(s))
	return appendSpan(b, s)
}

// maxRequestHeader bounds the size of what requestHeader appends for r:
// the resource and scope, four tags and four lengths of at most five
// bytes each (a request is far below 4 GiB).
func (r *resource) maxRequestHeader() int { return len(r.res) + len(r.scope) + 4*(1+5) }

// appendRequestHeader appends the start of an ExportTraceServiceRequest
// with one ResourceSpans of r and one ScopeSpans whose spans fields, n
// bytes of them, follow the header.
func appendRequestHeader(b []byte, r *resource, n int) []byte {
	ss := sizeField(fSSScope, len(r.scope)) + n
	rs := sizeField(fRSResource, len(r.res)) + sizeField(fRSScopeSpans, ss)
	b = appendMsgHeader(b, fReqResourceSpans, rs)
	b = appendMsgHeader(b, fRSResource, len(r.res))
	b = append(b, r.res...)
	b = appendMsgHeader(b, fRSScopeSpans, ss)
	b = appendMsgHeader(b, fSSScope, len(r.scope))
	return append(b, r.scope...)
}

// appendRequest appends an ExportTraceServiceRequest holding spans to b,
// as the exporter assembles one: the header, then the spans fields.
func appendRequest(b []byte, r *resource, spans []*Span) []byte {
	var body []byte
	for _, s := range spans {
		body = appendSpanField(body, s)
	}
	b = appendRequestHeader(b, r, len(body))
	return append(b, body...)
}
