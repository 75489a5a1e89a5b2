package tracing

import (
	"context"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	sdkresource "go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// NewSDKProvider returns an OpenTelemetry SDK tracer provider exporting
// OTLP/gRPC (plaintext) to endpoint (HOST:PORT) through a batch span
// processor, for components whose spans are few (the control plane). The
// exporter connects in the background; Shutdown flushes it.
func NewSDKProvider(ctx context.Context, endpoint, serviceName string) (*sdktrace.TracerProvider, error) {
	exp, err := otlptracegrpc.New(ctx,
		otlptracegrpc.WithEndpoint(endpoint),
		otlptracegrpc.WithInsecure(),
		otlptracegrpc.WithTimeout(DefaultExportTimeout),
	)
	if err != nil {
		return nil, fmt.Errorf("otlp endpoint %q: %w", endpoint, err)
	}
	res := sdkresource.NewSchemaless(attribute.String("service.name", serviceName))
	return sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp, sdktrace.WithBatchTimeout(DefaultFlushInterval), sdktrace.WithMaxQueueSize(DefaultQueueSize)),
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sdktrace.AlwaysSample()),
	), nil
}

// sdkShutdownTime bounds flushing an SDK provider at exit.
const sdkShutdownTime = 2 * time.Second

// ShutdownSDKProvider flushes and stops tp within a short bound.
func ShutdownSDKProvider(tp *sdktrace.TracerProvider) error {
	ctx, cancel := context.WithTimeout(context.Background(), sdkShutdownTime)
	defer cancel()
	return tp.Shutdown(ctx)
}
