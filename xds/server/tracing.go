package server

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// tracePush records one push answered by the node: a span from the
// response (sentAt) to now, the ACK or NACK.
func (t *tracker) tracePush(node, typeURL, version string, sentAt time.Time, nack *string) {
	if t.tracer == nil || sentAt.IsZero() {
		return
	}
	result := "ACK"
	if nack != nil {
		result = "NACK"
	}
	_, sp := t.tracer.Start(context.Background(), "xds.push",
		trace.WithTimestamp(sentAt),
		trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(
			attribute.String("meshd.node", node),
			attribute.String("xds.type", shortType(typeURL)),
			attribute.String("xds.version", version),
			attribute.String("xds.result", result),
		))
	if nack != nil {
		sp.SetStatus(codes.Error, *nack)
	}
	sp.End()
}
