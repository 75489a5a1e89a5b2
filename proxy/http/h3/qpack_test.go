package h3

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/quic-go/qpack"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"

	"meshd.dev/meshd/proxy/http/header"
)

// sliceWriter is an io.Writer appending to b, for quic-go's QPACK encoder.
type sliceWriter struct{ b []byte }

func (w *sliceWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}

// meshdHeaders encodes fields ("name", "value", ...) with meshd's encoder
// as a HEADERS frame.
func meshdHeaders(fields ...string) []byte {
	b, start := beginHeaders(nil)
	for i := 0; i+1 < len(fields); i += 2 {
		b = appendField(b, fields[i], fields[i+1])
	}
	return endHeaders(b, start)
}

// libDecode decodes a field section with quic-go's QPACK decoder.
func libDecode(t *testing.T, section []byte) []header.Field {
	t.Helper()
	var out []header.Field
	next := qpack.NewDecoder().Decode(section)
	for {
		f, err := next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("quic-go's decoder: %v", err)
		}
		out = append(out, header.Field{Name: f.Name, Value: f.Value})
	}
}

// decodeAll decodes a field section with meshd's decoder.
func decodeAll(section []byte) ([]header.Field, error) {
	var sr sectionReader
	if err := sr.init(section); err != nil {
		return nil, err
	}
	var out []header.Field
	for {
		f, ok, err := sr.next()
		if err != nil {
			return out, err
		}
		if !ok {
			return out, nil
		}
		out = append(out, f)
	}
}

// sectionOf returns the field section of a HEADERS frame.
func sectionOf(t *testing.T, frame []byte) []byte {
	t.Helper()
	r := bufio.NewReader(bytes.NewReader(frame))
	typ, length, err := readFrameHeader(r)
	if err != nil || typ != frameHeaders {
		t.Fatalf("frame type %#x, err %v", typ, err)
	}
	p := make([]byte, length)
	if _, err := io.ReadFull(r, p); err != nil {
		t.Fatalf("frame shorter than its length %d: %v", length, err)
	}
	if r.Buffered() != 0 {
		t.Fatalf("%d bytes after the frame", r.Buffered())
	}
	return p
}

// TestStaticTable checks every entry of the static table against quic-go's
// decoder: an indexed field line for index i decodes to staticTable[i].
func TestStaticTable(t *testing.T) {
	if len(staticTable) != 99 {
		t.Fatalf("static table has %d entries, RFC 9204 Appendix A has 99", len(staticTable))
	}
	for i, want := range staticTable {
		section := appendPrefixInt([]byte{0, 0}, lineIndexedStatic, 6, uint64(i))
		got := libDecode(t, section)
		if len(got) != 1 || got[0] != want {
			t.Errorf("index %d: quic-go decodes %v, the table has %v", i, got, want)
		}
	}
}

// TestQPACKRoundTrip encodes field sections with meshd's encoder and
// decodes them with both decoders, and decodes quic-go's (Huffman-coded)
// encoding with meshd's: all agree with the input, in order.
func TestQPACKRoundTrip(t *testing.T) {
	long := strings.Repeat("v", 20000) // a two-byte... three-byte frame length
	for _, tc := range []struct {
		name   string
		fields []string
	}{
		{"empty", nil},
		{"static exact", []string{":method", "GET", ":scheme", "https", ":path", "/", "content-type", "application/json"}},
		{"static name", []string{":method", "PATCH", ":path", "/a/b", "content-type", "application/grpc", "user-agent", "grpc-go/1.85.0"}},
		{"literal names", []string{"grpc-status", "0", "grpc-message", "", "x-request-id", "5c0a3b0e-4c1f-4f55-9c5e-2f0e8d5c1e11"}},
		{"status codes", []string{":status", "200", ":status", "418", ":status", "503", ":status", "999"}},
		{"prefix integers", []string{strings.Repeat("n", 7), strings.Repeat("v", 127), strings.Repeat("n", 300), strings.Repeat("v", 128)}},
		{"empty values", []string{"te", "", "authorization", "", "x-empty", ""}},
		{"long value", []string{"x-long", long}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var want []header.Field
			for i := 0; i+1 < len(tc.fields); i += 2 {
				want = append(want, header.Field{Name: tc.fields[i], Value: tc.fields[i+1]})
			}
			section := sectionOf(t, meshdHeaders(tc.fields...))
			if got := libDecode(t, section); !equalFields(got, want) {
				t.Errorf("quic-go decodes meshd's section to %v, want %v", got, want)
			}
			got, err := decodeAll(section)
			if err != nil || !equalFields(got, want) {
				t.Errorf("meshd decodes its own section to %v, %v; want %v", got, err, want)
			}
			var w sliceWriter
			enc := qpack.NewEncoder(&w)
			for _, f := range want {
				if err := enc.WriteField(qpack.HeaderField{Name: f.Name, Value: f.Value}); err != nil {
					t.Fatal(err)
				}
			}
			if len(want) == 0 {
				w.b = []byte{0, 0}
			}
			got, err = decodeAll(w.b)
			if err != nil || !equalFields(got, want) {
				t.Errorf("meshd decodes quic-go's section to %v, %v; want %v", got, err, want)
			}
		})
	}
}

func equalFields(a, b []header.Field) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestEndHeadersLengths checks the frame length varint at the sizes where
// it takes one, two and four bytes.
func TestEndHeadersLengths(t *testing.T) {
	for _, n := range []int{0, 1, 61, 62, 63, 64, 100, 16380, 16383, 16384, 70000} {
		b, start := beginHeaders([]byte("prefix"))
		b = append(b, bytes.Repeat([]byte{0x20}, n)...) // stands in for field lines
		b = endHeaders(b, start)
		if string(b[:start]) != "prefix" {
			t.Fatalf("n=%d: bytes before the frame changed: %q", n, b[:start])
		}
		typ, l, err := quicvarint.Parse(b[start:])
		if err != nil || typ != frameHeaders {
			t.Fatalf("n=%d: type %#x, %v", n, typ, err)
		}
		length, k, err := quicvarint.Parse(b[start+l:])
		if err != nil || k != quicvarint.Len(length) {
			t.Fatalf("n=%d: length %d in %d bytes, %v", n, length, k, err)
		}
		body := b[start+l+k:]
		if int(length) != len(body) || int(length) != n+2 || body[0] != 0 || body[1] != 0 || bytes.Count(body[2:], []byte{0x20}) != n {
			t.Fatalf("n=%d: length %d, section of %d bytes", n, length, len(body))
		}
	}
}

// TestQPACKDecodeErrors: malformed or dynamic-table sections are
// H3_QPACK_DECOMPRESSION_FAILED.
func TestQPACKDecodeErrors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		section []byte
	}{
		{"empty", nil},
		{"no base", []byte{0}},
		{"required insert count", []byte{1, 0}},
		{"base", []byte{0, 1}},
		{"dynamic indexed", []byte{0, 0, 0x80}},
		{"dynamic name reference", []byte{0, 0, 0x40, 0}},
		{"post-base indexed", []byte{0, 0, 0x10}},
		{"post-base name reference", []byte{0, 0, 0x00, 0}},
		{"static index out of range", []byte{0, 0, 0xff, 0x24}}, // 63 + 36 = 99
		{"truncated integer", []byte{0, 0, 0xff, 0x80}},
		{"integer overflow", append([]byte{0, 0, 0xff}, bytes.Repeat([]byte{0xff}, 11)...)},
		{"truncated value", []byte{0, 0, 0x51, 5, 'a'}},
		{"value missing", []byte{0, 0, 0x51}},
		{"truncated name", []byte{0, 0, 0x23, 'a'}},
		{"bad huffman", []byte{0, 0, 0x51, 0x81, 0x00}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decodeAll(tc.section)
			var he *h3Error
			if !errors.As(err, &he) || he.code != http3.ErrCodeQPACKDecompressionFailed {
				t.Fatalf("error %v, want H3_QPACK_DECOMPRESSION_FAILED", err)
			}
		})
	}
}

// BenchmarkEncodeResponse encodes a gRPC response's headers and trailers.
func BenchmarkEncodeResponse(b *testing.B) {
	h := header.Make(2)
	h.Add("content-type", "application/grpc")
	h.Add("grpc-accept-encoding", "gzip")
	tr := header.Make(2)
	tr.Add("grpc-status", "0")
	tr.Add("grpc-message", "")
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	for b.Loop() {
		p, start := beginHeaders(buf[:0])
		p = appendStatus(p, 200)
		for _, f := range h.Fields() {
			p = appendField(p, f.Name, f.Value)
		}
		p = endHeaders(p, start)
		buf = appendTrailers(p, tr)
	}
}

// FuzzQPACKDecode checks meshd's QPACK field-section decoder against
// quic-go's (github.com/quic-go/qpack, static table only like meshd's):
// on any section both succeed with the same field lines or both fail, and
// meshd's error is an *h3Error with H3_QPACK_DECOMPRESSION_FAILED. A
// section that decodes also survives a round trip through meshd's encoder.
func FuzzQPACKDecode(f *testing.F) {
	f.Add(qpackBlock(f, ":status", "200", "content-type", "application/grpc", "x-custom", "v"))
	f.Add(qpackBlock(f, ":authority", "svc.example", "user-agent", strings.Repeat("a", 130)))
	f.Add(meshdHeaders(":method", "GET", ":path", "/x", "grpc-timeout", "1S")[3:])
	f.Add([]byte{0, 0, 0xff, 0x7f})
	f.Add([]byte{0, 0, 0x5f, 0x1d, 0x83, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, section []byte) {
		got, err := decodeSection(section)
		want, refErr := referenceSection(section)
		if err != nil {
			he, ok := errors.AsType[*h3Error](err)
			if !ok || he.code != http3.ErrCodeQPACKDecompressionFailed {
				t.Fatalf("error %T %v, want an *h3Error with H3_QPACK_DECOMPRESSION_FAILED", err, err)
			}
		}
		if (err == nil) != (refErr == nil) {
			t.Fatalf("meshd: %v (fields %q); quic-go: %v (fields %q)", err, got, refErr, want)
		}
		if err != nil {
			return
		}
		if !slices.Equal(got, want) {
			t.Fatalf("meshd decoded %q, quic-go %q", got, want)
		}
		b := []byte{0, 0}
		for _, f := range got {
			b = appendField(b, f.Name, f.Value)
		}
		again, err := decodeSection(b)
		if err != nil || !slices.Equal(again, got) {
			t.Fatalf("round trip: %q, %v; want %q", again, err, got)
		}
	})
}

// decodeSection decodes a whole field section with sectionReader.
func decodeSection(section []byte) ([]header.Field, error) {
	var sr sectionReader
	if err := sr.init(section); err != nil {
		return nil, err
	}
	var out []header.Field
	for {
		f, ok, err := sr.next()
		if err != nil || !ok {
			return out, err
		}
		out = append(out, f)
	}
}

// referenceSection decodes a whole field section with quic-go's decoder.
func referenceSection(section []byte) ([]header.Field, error) {
	next := qpack.NewDecoder().Decode(section)
	var out []header.Field
	for {
		hf, err := next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, header.Field{Name: hf.Name, Value: hf.Value})
	}
}
