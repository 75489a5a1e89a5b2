package h3

import (
	"testing"

	"github.com/quic-go/qpack"
)

// BenchmarkDecodeRequest decodes the header section of a gRPC request as
// a client sends it, QPACK static table only.
func BenchmarkDecodeRequest(b *testing.B) {
	var w sliceWriter
	enc := qpack.NewEncoder(&w)
	fields := [][2]string{
		{":method", "POST"}, {":scheme", "https"}, {":authority", "echo.default.svc:8080"},
		{":path", "/grpc.testing.TestService/UnaryCall"}, {"content-type", "application/grpc"},
		{"te", "trailers"}, {"user-agent", "grpc-go/1.85.0"}, {"grpc-accept-encoding", "gzip"},
		{"grpc-timeout", "9999m"}, {"traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
		{"x-request-id", "5c0a3b0e-4c1f-4f55-9c5e-2f0e8d5c1e11"},
	}
	for _, f := range fields {
		if err := enc.WriteField(qpack.HeaderField{Name: f[0], Value: f[1]}); err != nil {
			b.Fatal(err)
		}
	}
	if err := enc.Close(); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		req, err := decodeRequest(w.b, DefaultMaxRequestHeaderBytes)
		if err != nil {
			b.Fatal(err)
		}
		if req.Header.Len() != len(fields)-4 {
			b.Fatalf("%d fields, want %d", req.Header.Len(), len(fields)-4)
		}
	}
}
