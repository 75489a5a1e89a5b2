package h3

import (
	"bufio"
	"bytes"
	"errors"
	"strings"
	"testing"

	"golang.org/x/net/http/httpguts"
)

// fuzzHeaders encodes fields as a HEADERS frame for the seed corpus.
func fuzzHeaders(f *testing.F, fields ...string) []byte {
	return meshdHeaders(fields...)
}

// FuzzServerRequest feeds arbitrary bytes to the server's request stream
// decoding (frames up to HEADERS, QPACK, request validation) and to its
// control stream reader: neither may panic, every error is an HTTP/3 one
// or errHeaderTooLarge or a short read, and a decoded request satisfies
// RFC 9114 section 4.3.1.
func FuzzServerRequest(f *testing.F) {
	get := []string{":method", "GET", ":scheme", "https", ":authority", "svc", ":path", "/"}
	f.Add(fuzzHeaders(f, get...))
	f.Add(fuzzHeaders(f, append(get, "content-length", "3", "te", "trailers")...))
	f.Add(fuzzHeaders(f, ":method", "CONNECT", ":authority", "svc:443"))
	f.Add(fuzzHeaders(f, append(get, "X-Upper", "v")...))
	f.Add(append(appendFrameHeader(nil, 0x21, 2), append([]byte("ab"), fuzzHeaders(f, get...)...)...))
	f.Add(append(appendFrameHeader(nil, frameData, 1), 'x'))
	f.Add([]byte{frameHeaders, 3, 0, 0, 0xff})
	f.Add([]byte{frameSettings, 4, 0x6, 0x40, 0x64, 0x21})
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := readRequestHead(bufio.NewReader(bytes.NewReader(data)), 4096)
		if err != nil {
			var he *h3Error
			if !errors.As(err, &he) && !errors.Is(err, errHeaderTooLarge) && err.Error() != "unexpected EOF" {
				t.Fatalf("unexpected error type %T: %v", err, err)
			}
		} else {
			if req.Method == "" || (req.Method != "CONNECT" && req.Path == "") || req.Scheme != "https" {
				t.Fatalf("accepted an invalid request %+v", req)
			}
			for _, fl := range req.Header.Fields() {
				if !httpguts.ValidHeaderFieldName(fl.Name) || strings.ToLower(fl.Name) != fl.Name || fl.Name == "host" || !httpguts.ValidHeaderFieldValue(fl.Value) {
					t.Fatalf("accepted field %q", fl.Name)
				}
			}
			if req.EndStream != (req.ContentLength == 0) {
				t.Fatalf("EndStream %v with content-length %d", req.EndStream, req.ContentLength)
			}
		}
		if err := readServerControlStream(bufio.NewReader(bytes.NewReader(data))); err == nil {
			t.Fatal("control stream reader returned nil")
		}
	})
}
