package h3

import (
	"context"
	"io"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// heldQuiet is how long the held tests watch for bytes that must not
// arrive. Only a codec that sends held frames can fail the check, so a
// slow machine makes it weaker, never flaky.
const heldQuiet = 50 * time.Millisecond

// waitFor fails the test unless ch is ready within 10 s.
func waitFor(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// TestServerHeldWrites: a response stream that holds its writes
// (stream.Flusher) sends nothing before Flush or the end of the response,
// and everything once flushed: a unary response's headers, body and
// trailers leave together; a streamed response's headers and each flushed
// chunk reach the client while the handler waits.
func TestServerHeldWrites(t *testing.T) {
	testutil.CheckGoroutines(t)
	parked := make(chan struct{}, 4)
	release := make(chan struct{}, 4)
	tr := header.Make(1)
	tr.Add("grpc-status", "0")
	h := stream.HandlerFunc(func(s stream.ServerStream) {
		if _, err := io.Copy(io.Discard, s); err != nil {
			return
		}
		f := s.(stream.Flusher)
		f.Hold()
		if err := s.WriteHeader(&stream.Response{Status: 200, Header: header.Make(0), ContentLength: -1}, false); err != nil {
			return
		}
		streamed := s.Request().Path == "/stream"
		for _, chunk := range []string{"one", "two"} {
			if streamed && f.Flush() != nil {
				return
			}
			parked <- struct{}{}
			<-release
			if _, err := s.Write([]byte(chunk)); err != nil {
				return
			}
		}
		_ = s.WriteTrailers(tr)
	})
	addr, tc, _ := testMeshdServer(t, 100, ServerConfig{}, h)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cc, err := Dial(ctx, addr, tc, &ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()

	for _, tc := range []struct {
		name, path string
		streamed   bool
	}{
		{"unary held to the end", "/unary", false},
		{"streamed flushed chunk by chunk", "/stream", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs, err := cc.NewStream(ctx, &stream.Request{Method: "POST", Scheme: "https", Authority: "svc", Path: tc.path, Header: header.Make(0), ContentLength: -1}, true)
			if err != nil {
				t.Fatal(err)
			}
			gotResp := make(chan struct{})
			var resp *stream.Response
			var respErr error
			go func() {
				defer close(gotResp)
				resp, respErr = cs.Response(ctx)
			}()
			waitFor(t, parked, "the handler to write its headers")
			if tc.streamed {
				waitFor(t, gotResp, "flushed response headers")
				if respErr != nil || resp.Status != 200 {
					t.Fatalf("response %+v, %v", resp, respErr)
				}
			} else {
				select {
				case <-gotResp:
					t.Fatalf("held response headers reached the client before the response ended (%v)", respErr)
				case <-time.After(heldQuiet):
				}
			}
			release <- struct{}{}
			waitFor(t, parked, "the handler to write its first chunk")
			if tc.streamed {
				buf := make([]byte, 16)
				n, err := cs.Read(buf)
				if err != nil || string(buf[:n]) != "one" {
					t.Fatalf("first chunk %q, %v; want it flushed while the handler waits", buf[:n], err)
				}
			}
			release <- struct{}{}
			waitFor(t, gotResp, "the response")
			if respErr != nil || resp.Status != 200 {
				t.Fatalf("response %+v, %v", resp, respErr)
			}
			rest, err := io.ReadAll(cs)
			want := "onetwo"
			if tc.streamed {
				want = "two"
			}
			if err != nil || string(rest) != want {
				t.Fatalf("body %q, %v; want %q", rest, err, want)
			}
			if got := cs.Trailers(); got.Get("grpc-status") != "0" {
				t.Errorf("trailers %v", got.Fields())
			}
		})
	}
}
