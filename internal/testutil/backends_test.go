package testutil

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
)

const testTimeout = 10 * time.Second

// newClient returns an HTTP client speaking only HTTP/1.1 or only HTTP/2
// with prior knowledge.
func newClient(h2c bool) *http.Client {
	var p http.Protocols
	if h2c {
		p.SetUnencryptedHTTP2(true)
	} else {
		p.SetHTTP1(true)
	}
	return &http.Client{Transport: &http.Transport{Protocols: &p}, Timeout: testTimeout}
}

// TestEchoBackend runs every endpoint over HTTP/1.1 and h2c and checks both
// protocols see the same answers.
func TestEchoBackend(t *testing.T) {
	CheckGoroutines(t)
	b := StartEchoBackend(t)
	big := BigBody(3 << 20)

	tests := []struct {
		name     string
		method   string
		path     string
		body     []byte
		chunked  bool // send the body without a length
		wantCode int
		check    func(t *testing.T, resp *http.Response, body []byte)
	}{
		{
			name: "echo with length", method: http.MethodPost, path: "/echo", body: []byte("hello"), wantCode: 200,
			check: func(t *testing.T, resp *http.Response, body []byte) {
				if string(body) != "hello" || resp.Header.Get(HeaderEchoContentLength) != "5" {
					t.Errorf("body %q, %s %q", body, HeaderEchoContentLength, resp.Header.Get(HeaderEchoContentLength))
				}
			},
		},
		{
			name: "echo big streamed", method: http.MethodPost, path: "/echo", body: big, chunked: true, wantCode: 200,
			check: func(t *testing.T, resp *http.Response, body []byte) {
				if SHA256Hex(body) != SHA256Hex(big) {
					t.Errorf("echoed %d bytes, checksum differs from the %d sent", len(body), len(big))
				}
				if resp.Header.Get(HeaderEchoContentLength) != "-1" {
					t.Errorf("%s = %q, want -1 (no length)", HeaderEchoContentLength, resp.Header.Get(HeaderEchoContentLength))
				}
			},
		},
		{
			name: "big", method: http.MethodGet, path: "/big?size=1048576", wantCode: 200,
			check: func(t *testing.T, resp *http.Response, body []byte) {
				if len(body) != 1<<20 || SHA256Hex(body) != resp.Header.Get(HeaderBodySHA256) || !bytes.Equal(body, BigBody(1<<20)) {
					t.Errorf("got %d bytes, checksum header %q", len(body), resp.Header.Get(HeaderBodySHA256))
				}
			},
		},
		{
			name: "head big", method: http.MethodHead, path: "/big?size=1000", wantCode: 200,
			check: func(t *testing.T, resp *http.Response, body []byte) {
				if resp.ContentLength != 1000 || len(body) != 0 {
					t.Errorf("Content-Length %d, body %d bytes; want 1000, 0", resp.ContentLength, len(body))
				}
			},
		},
		{
			name: "slow chunks", method: http.MethodGet, path: "/slow?delay=20ms&chunks=3", wantCode: 200,
			check: func(t *testing.T, _ *http.Response, body []byte) {
				if string(body) != "slow\nslow\nslow\n" {
					t.Errorf("body %q", body)
				}
			},
		},
		{
			name: "trailers", method: http.MethodGet, path: "/trailers", wantCode: 200,
			check: func(t *testing.T, resp *http.Response, body []byte) {
				if string(body) != "trailers\n" || resp.Trailer.Get("X-Trailer-One") != "1" || resp.Trailer.Get("X-Trailer-Two") != "2" {
					t.Errorf("body %q trailers %v", body, resp.Trailer)
				}
			},
		},
		{name: "status", method: http.MethodGet, path: "/status/503", wantCode: 503},
		{name: "bad size", method: http.MethodGet, path: "/big?size=-1", wantCode: 400},
		{name: "bad delay", method: http.MethodGet, path: "/slow?delay=1h", wantCode: 400},
	}
	for _, proto := range []struct {
		name  string
		h2c   bool
		major int
	}{{"http1", false, 1}, {"h2c", true, 2}} {
		t.Run(proto.name, func(t *testing.T) {
			client := newClient(proto.h2c)
			defer client.CloseIdleConnections()
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					var body io.Reader
					if tt.body != nil {
						body = bytes.NewReader(tt.body)
						if tt.chunked {
							body = io.MultiReader(body) // hides the length
						}
					}
					req, err := http.NewRequest(tt.method, "http://"+b.Addr+tt.path, body)
					if err != nil {
						t.Fatal(err)
					}
					resp, err := client.Do(req)
					if err != nil {
						t.Fatal(err)
					}
					defer resp.Body.Close()
					got, err := io.ReadAll(resp.Body)
					if err != nil {
						t.Fatalf("reading the body: %v", err)
					}
					if resp.StatusCode != tt.wantCode || resp.ProtoMajor != proto.major {
						t.Fatalf("status %d over %s, want %d over HTTP/%d", resp.StatusCode, resp.Proto, tt.wantCode, proto.major)
					}
					if tt.check != nil {
						tt.check(t, resp, got)
					}
				})
			}
		})
	}
	if got, want := b.Requests(), int64(2*len(tests)); got != want {
		t.Errorf("Requests() = %d, want %d", got, want)
	}
	if got := b.Conns(); got != 2 {
		t.Errorf("Conns() = %d, want 2 (one kept-alive connection per protocol)", got)
	}
}

func TestGRPCInteropServer(t *testing.T) {
	CheckGoroutines(t)
	s := StartGRPCInteropServer(t)
	cc, err := grpc.NewClient(s.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	tc := testpb.NewTestServiceClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()

	if _, err := tc.EmptyCall(ctx, &testpb.Empty{}); err != nil {
		t.Fatalf("EmptyCall: %v", err)
	}
	// A streaming call that waits 300ms before its one response must be
	// counted as active while it waits, and not after.
	stream, err := tc.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{
		ResponseParameters: []*testpb.ResponseParameters{{Size: 10, IntervalUs: 300_000}},
	})
	if err != nil {
		t.Fatalf("StreamingOutputCall: %v", err)
	}
	deadline := time.Now().Add(testTimeout)
	for s.ActiveRPCs() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("ActiveRPCs() = %d, want 1 while the stream waits", s.ActiveRPCs())
		}
		time.Sleep(5 * time.Millisecond)
	}
	resp, err := stream.Recv()
	if err != nil || len(resp.GetPayload().GetBody()) != 10 {
		t.Fatalf("Recv = %v, %v; want a 10-byte payload", resp, err)
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("Recv after the last response = %v, want io.EOF", err)
	}
	if got := s.StartedRPCs(); got != 2 {
		t.Errorf("StartedRPCs() = %d, want 2", got)
	}
	// The handler returns just before the client sees the end of stream.
	for s.ActiveRPCs() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("ActiveRPCs() = %d after the call ended, want 0", s.ActiveRPCs())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !strings.HasPrefix(s.Addr, "127.0.0.1:") {
		t.Errorf("Addr = %q, want 127.0.0.1:port", s.Addr)
	}
}
