package tracing_test

import (
	"context"
	"testing"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/otel/tracing"
	"meshd.dev/meshd/otel/tracing/tracingtest"
)

// TestSDKProviderExports sends a span through the SDK provider to an
// OTLP receiver.
func TestSDKProviderExports(t *testing.T) {
	testutil.CheckGoroutines(t)
	col := tracingtest.Start(t)
	tp, err := tracing.NewSDKProvider(context.Background(), col.Addr(), "meshd-control-plane")
	if err != nil {
		t.Fatal(err)
	}
	_, sp := tp.Tracer("test").Start(context.Background(), "xds.push")
	sp.End()
	if err := tracing.ShutdownSDKProvider(tp); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	spans := col.Spans()
	if len(spans) != 1 || spans[0].GetName() != "xds.push" || spans[0].Service != "meshd-control-plane" {
		t.Fatalf("collector got %v", spans)
	}
}
