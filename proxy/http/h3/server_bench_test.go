package h3

import (
	"net/http"
	"testing"
)

// BenchmarkFromHTTPHeader converts the header section of a gRPC request as
// quic-go's server hands it over (canonical names).
func BenchmarkFromHTTPHeader(b *testing.B) {
	h := http.Header{
		"Content-Type":         {"application/grpc"},
		"Te":                   {"trailers"},
		"User-Agent":           {"grpc-go/1.85.0"},
		"Grpc-Accept-Encoding": {"gzip"},
		"Grpc-Timeout":         {"9999m"},
		"Traceparent":          {"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
		"X-Request-Id":         {"5c0a3b0e-4c1f-4f55-9c5e-2f0e8d5c1e11"},
	}
	b.ReportAllocs()
	for b.Loop() {
		if out := fromHTTPHeader(h); out.Len() != len(h) {
			b.Fatalf("%d fields, want %d", out.Len(), len(h))
		}
	}
}
