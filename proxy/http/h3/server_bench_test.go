package h3

import (
	"testing"

	"github.com/quic-go/qpack"
	"github.com/quic-go/quic-go/quicvarint"
)

// BenchmarkDecodeRequest decodes the header section of a gRPC request,
// QPACK static table only: as a meshd sidecar encodes it (literals without
// Huffman coding), and as quic-go's encoder does (every literal
// Huffman-coded).
func BenchmarkDecodeRequest(b *testing.B) {
	fields := [][2]string{
		{":method", "POST"}, {":scheme", "https"}, {":authority", "echo.default.svc:8080"},
		{":path", "/grpc.testing.TestService/UnaryCall"}, {"content-type", "application/grpc"},
		{"te", "trailers"}, {"user-agent", "grpc-go/1.85.0"}, {"grpc-accept-encoding", "gzip"},
		{"grpc-timeout", "9999m"}, {"traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
		{"x-request-id", "5c0a3b0e-4c1f-4f55-9c5e-2f0e8d5c1e11"},
	}
	meshd, start := beginHeaders(nil)
	for _, f := range fields {
		meshd = appendField(meshd, f[0], f[1])
	}
	meshd = endHeaders(meshd, start)
	_, k1, _ := quicvarint.Parse(meshd) // frame type
	_, k2, _ := quicvarint.Parse(meshd[k1:])
	meshd = meshd[k1+k2:] // the field section
	var w sliceWriter
	enc := qpack.NewEncoder(&w)
	for _, f := range fields {
		if err := enc.WriteField(qpack.HeaderField{Name: f[0], Value: f[1]}); err != nil {
			b.Fatal(err)
		}
	}
	for _, bc := range []struct {
		name    string
		section []byte
	}{
		{"meshd", meshd},
		{"huffman", w.b},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				req, err := decodeRequest(bc.section, DefaultMaxRequestHeaderBytes)
				if err != nil {
					b.Fatal(err)
				}
				if req.Header.Len() != len(fields)-4 {
					b.Fatalf("%d fields, want %d", req.Header.Len(), len(fields)-4)
				}
			}
		})
	}
}
