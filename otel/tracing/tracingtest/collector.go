// Package tracingtest is an in-process OTLP/gRPC trace collector for tests:
// the fallback when a real OpenTelemetry collector is not available.
package tracingtest

import (
	"context"
	"net"
	"sync"
	"testing"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	_ "google.golang.org/grpc/encoding/gzip" // a real collector forwards gzip-compressed
)

// Span is a received span with its resource's service.name.
type Span struct {
	Service string
	*tracepb.Span
}

// Attr returns the string or integer attribute key of s as a string, and
// whether it is present.
func (s Span) Attr(key string) (string, bool) {
	return attr(s.GetAttributes(), key)
}

func attr(kvs []*commonpb.KeyValue, key string) (string, bool) {
	for _, kv := range kvs {
		if kv.GetKey() != key {
			continue
		}
		switch v := kv.GetValue().GetValue().(type) {
		case *commonpb.AnyValue_StringValue:
			return v.StringValue, true
		case *commonpb.AnyValue_IntValue:
			return itoa(v.IntValue), true
		}
		return kv.GetValue().String(), true
	}
	return "", false
}

func itoa(v int64) string {
	if v == 0 {
		return "0"
	}
	neg := v < 0
	if neg {
		v = -v
	}
	var b [20]byte
	i := len(b)
	for v > 0 {
		i--
		b[i] = byte('0' + v%10)
		v /= 10
	}
	if neg {
		i--
		b[i] = '-'
	}
	return string(b[i:])
}

// Collector is an OTLP/gRPC TraceService on 127.0.0.1 that keeps every
// span it receives. Stop and Start simulate an outage on the same port.
type Collector struct {
	coltracepb.UnimplementedTraceServiceServer
	t    testing.TB
	addr string

	mu       sync.Mutex
	spans    []Span
	requests int
	srv      *grpc.Server
	done     chan struct{}
}

// Start starts a collector on a free loopback port; it stops with the test.
func Start(t testing.TB) *Collector {
	t.Helper()
	c := &Collector{t: t}
	c.listen("127.0.0.1:0")
	t.Cleanup(c.Stop)
	return c
}

func (c *Collector) listen(addr string) {
	c.t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		c.t.Fatalf("collector listen %s: %v", addr, err)
	}
	c.addr = ln.Addr().String()
	srv := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(srv, c)
	done := make(chan struct{})
	c.mu.Lock()
	c.srv, c.done = srv, done
	c.mu.Unlock()
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
}

// Addr is the collector's host:port.
func (c *Collector) Addr() string { return c.addr }

// Stop stops the collector at once (in-flight exports fail).
func (c *Collector) Stop() {
	c.mu.Lock()
	srv, done := c.srv, c.done
	c.srv = nil
	c.mu.Unlock()
	if srv != nil {
		srv.Stop()
		<-done
	}
}

// Restart starts the collector again on the same port.
func (c *Collector) Restart() {
	c.t.Helper()
	c.listen(c.addr)
}

// Export implements the TraceService.
func (c *Collector) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.requests++
	for _, rs := range req.GetResourceSpans() {
		svc, _ := attr(rs.GetResource().GetAttributes(), "service.name")
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				c.spans = append(c.spans, Span{Service: svc, Span: s})
			}
		}
	}
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

// Spans returns a copy of the spans received so far.
func (c *Collector) Spans() []Span {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Span(nil), c.spans...)
}

// Requests returns how many export requests the collector received.
func (c *Collector) Requests() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.requests
}

// Reset forgets the spans received so far.
func (c *Collector) Reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.spans = nil
}
