package h2

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"golang.org/x/net/http2/hpack"

	"meshd.dev/meshd/internal/testutil"
)

// TestLiteralUnindexed decodes appendLiteralUnindexed's output with x/net's
// decoder: the field comes back as sent, not marked sensitive, and the
// decoder's dynamic table stays empty (a reference to its first entry
// fails).
func TestLiteralUnindexed(t *testing.T) {
	for _, tc := range []struct{ name, value string }{
		{"traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
		{"x-request-id", "6c0b4a4e-0d0e-4d5c-9d43-3f2e5f7a9b10"},
		{"b3", ""},
		{"x-b3-traceid", strings.Repeat("a", 126)},
		{"x-b3-traceid", strings.Repeat("a", 127)},
		{"x-b3-spanid", strings.Repeat("0123456789abcdef", 40)},
		{"x-client-trace-id", string([]byte{0, 0xff, 0xfe, 1, 2, 3, 0x80, 0x7f})},
		{"x-client-trace-id", strings.Repeat("\xff", 200)},
	} {
		var buf bytes.Buffer
		enc := hpack.NewEncoder(&buf)
		if err := enc.WriteField(hpack.HeaderField{Name: ":method", Value: "GET"}); err != nil {
			t.Fatal(err)
		}
		buf.Write(appendLiteralUnindexed(nil, tc.name, tc.value))
		dec := hpack.NewDecoder(4096, nil)
		got, err := dec.DecodeFull(buf.Bytes())
		if err != nil {
			t.Fatalf("%s (%d bytes): decode: %v", tc.name, len(tc.value), err)
		}
		want := []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: tc.name, Value: tc.value}}
		if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
			t.Errorf("%s (%d bytes): decoded %q, want %q", tc.name, len(tc.value), got, want)
		}
		if _, err := dec.DecodeFull([]byte{0x80 | 62}); err == nil {
			t.Errorf("%s (%d bytes): the decoder's dynamic table has an entry", tc.name, len(tc.value))
		}
	}
}

// TestWriteHeadersPerRequestFields checks which fields encodeBlock leaves
// out of the dynamic table: per-request values after the first field,
// while stable fields are indexed, so the second block refers to them.
func TestWriteHeadersPerRequestFields(t *testing.T) {
	for _, tc := range []struct {
		name    string
		fields  []hpack.HeaderField
		indexed int // dynamic table entries after the block
	}{
		{"trace context unindexed", []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: "traceparent", Value: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}, {Name: "x-request-id", Value: "r1"}}, 0},
		{"stable field indexed", []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: "x-team", Value: "mesh"}, {Name: "b3", Value: "x"}}, 1},
		{"first field through the encoder", []hpack.HeaderField{{Name: "traceparent", Value: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &conn{}
			c.henc = hpack.NewEncoder(&c.hbuf)
			if err := c.encodeBlock(tc.fields); err != nil {
				t.Fatal(err)
			}
			dec := hpack.NewDecoder(4096, nil)
			got, err := dec.DecodeFull(c.hbuf.Bytes())
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if len(got) != len(tc.fields) {
				t.Fatalf("decoded %d fields, want %d", len(got), len(tc.fields))
			}
			for i := range got {
				if got[i].Name != tc.fields[i].Name || got[i].Value != tc.fields[i].Value {
					t.Errorf("field %d: %q, want %q", i, got[i], tc.fields[i])
				}
			}
			_, err = dec.DecodeFull([]byte{0x80 | 62})
			if has := err == nil; has != (tc.indexed > 0) {
				t.Errorf("dynamic table has an entry: %v, want %v", has, tc.indexed > 0)
			}
		})
	}
}

// BenchmarkHeaderBlockPerRequestIDs encodes and decodes a gRPC request's
// header block whose x-request-id and traceparent change on every request,
// as a sidecar sends them: "index-all" is x/net's encoder alone (every
// field added to the dynamic table), "unindexed-ids" is encodeBlock.
func BenchmarkHeaderBlockPerRequestIDs(b *testing.B) {
	blocks := make([][]hpack.HeaderField, 1024)
	for i := range blocks {
		blocks[i] = []hpack.HeaderField{
			{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"},
			{Name: ":authority", Value: "backend.default.svc:8080"}, {Name: ":path", Value: "/grpc.testing.TestService/UnaryCall"},
			{Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"},
			{Name: "user-agent", Value: "grpc-go/1.85.0"}, {Name: "x-forwarded-proto", Value: "http"},
			{Name: "x-request-id", Value: fmt.Sprintf("6c0b4a4e-0d0e-4d5c-9d43-%012x", i*7919)},
			{Name: "traceparent", Value: fmt.Sprintf("00-4bf92f3577b34da6a3ce929d0e0e4736-%016x-01", i*7919)},
		}
	}
	for _, mode := range []string{"index-all", "unindexed-ids"} {
		b.Run(mode, func(b *testing.B) {
			c := &conn{}
			c.henc = hpack.NewEncoder(&c.hbuf)
			dec := hpack.NewDecoder(4096, func(hpack.HeaderField) {})
			b.ReportAllocs()
			i := 0
			c0 := testutil.ProcessCPU(b)
			for b.Loop() {
				fields := blocks[i%len(blocks)]
				i++
				if mode == "index-all" {
					c.hbuf.Reset()
					for _, f := range fields {
						if err := c.henc.WriteField(f); err != nil {
							b.Fatal(err)
						}
					}
				} else if err := c.encodeBlock(fields); err != nil {
					b.Fatal(err)
				}
				if _, err := dec.Write(c.hbuf.Bytes()); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(testutil.ProcessCPU(b)-c0)/float64(b.N), "cpu-ns/op")
			b.ReportMetric(float64(c.hbuf.Len()), "block-bytes")
		})
	}
}
