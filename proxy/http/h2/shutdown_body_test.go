package h2

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// TestShutdownKeepsBufferedResponse: a client connection shut down (pool
// drain) while a response is still arriving delivers the whole body, also
// the part buffered unread when the last stream ends.
func TestShutdownKeepsBufferedResponse(t *testing.T) {
	checkLeaks(t)
	const size = 2 << 20
	body := bytes.Repeat([]byte("x"), size)
	ts := startServer(t, &ServerConfig{}, stream.HandlerFunc(func(s stream.ServerStream) {
		if err := s.WriteHeader(&stream.Response{Status: 200, Header: header.Make(0), ContentLength: size}, false); err != nil {
			return
		}
		_, _ = s.Write(body)
		_ = s.CloseWrite()
	}))
	cc := dialClient(t, ts.addr(), &ClientConfig{InitialStreamWindowSize: 256 << 10, InitialConnectionWindowSize: 1 << 20})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cs, err := cc.NewStream(ctx, newReq("/big"), true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Response(ctx); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	got := 0
	shut := false
	for {
		n, err := cs.Read(buf)
		got += n
		if got > size/2 && !shut {
			cc.Shutdown()
			shut = true
			time.Sleep(200 * time.Millisecond)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("after %d of %d bytes: %v", got, size, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got != size {
		t.Fatalf("got %d bytes, want %d", got, size)
	}
}
