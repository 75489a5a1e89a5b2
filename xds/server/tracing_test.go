package server

import (
	"context"
	"log/slog"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/genproto/googleapis/rpc/status"

	"meshd.dev/meshd/proxy/stats"
)

// TestTracePushes checks the span of each answered push: an ACK, then a
// NACK with its error as the span status; a stale nonce makes none.
func TestTracePushes(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer tp.Shutdown(context.Background())
	srv := New(Options{Logger: slog.New(slog.DiscardHandler), Stats: stats.NewStore(), Tracer: tp.Tracer("test")})
	tr := srv.tracker
	const typeURL = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	node := &core.Node{Id: "greeter-client.demo"}
	if err := tr.OnStreamOpen(context.Background(), 1, ""); err != nil {
		t.Fatal(err)
	}
	_ = tr.OnStreamRequest(1, &discovery.DiscoveryRequest{Node: node, TypeUrl: typeURL})
	tr.OnStreamResponse(context.Background(), 1, &discovery.DiscoveryRequest{TypeUrl: typeURL}, &discovery.DiscoveryResponse{TypeUrl: typeURL, Nonce: "1", VersionInfo: "v1"})
	_ = tr.OnStreamRequest(1, &discovery.DiscoveryRequest{Node: node, TypeUrl: typeURL, ResponseNonce: "1", VersionInfo: "v1"})
	tr.OnStreamResponse(context.Background(), 1, &discovery.DiscoveryRequest{TypeUrl: typeURL}, &discovery.DiscoveryResponse{TypeUrl: typeURL, Nonce: "2", VersionInfo: "v2"})
	_ = tr.OnStreamRequest(1, &discovery.DiscoveryRequest{Node: node, TypeUrl: typeURL, ResponseNonce: "0", VersionInfo: "v1"}) // stale
	_ = tr.OnStreamRequest(1, &discovery.DiscoveryRequest{Node: node, TypeUrl: typeURL, ResponseNonce: "2", VersionInfo: "v1",
		ErrorDetail: &status.Status{Message: "cluster x: bad"}})
	spans := rec.Ended()
	if len(spans) != 2 {
		t.Fatalf("%d spans, want 2 (ACK, NACK)", len(spans))
	}
	for i, want := range []struct {
		result, version string
		code            codes.Code
	}{{"ACK", "v1", codes.Unset}, {"NACK", "v2", codes.Error}} {
		s := spans[i]
		attrs := map[attribute.Key]string{}
		for _, kv := range s.Attributes() {
			attrs[kv.Key] = kv.Value.AsString()
		}
		if s.Name() != "xds.push" || attrs["xds.result"] != want.result || attrs["xds.version"] != want.version ||
			attrs["meshd.node"] != "greeter-client.demo" || attrs["xds.type"] == "" || s.Status().Code != want.code {
			t.Errorf("span %d: %s %v status %v, want %s of %s", i, s.Name(), attrs, s.Status(), want.result, want.version)
		}
		if !s.EndTime().After(s.StartTime()) && !s.EndTime().Equal(s.StartTime()) {
			t.Errorf("span %d ends before it starts", i)
		}
	}
	if spans[1].Status().Description != "cluster x: bad" {
		t.Errorf("NACK span status %q", spans[1].Status().Description)
	}
}
