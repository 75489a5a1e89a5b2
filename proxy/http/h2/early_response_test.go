package h2

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"meshd.dev/meshd/proxy/http/stream"
)

// TestEarlyResponseThenResetNoError: a server that answers completely
// before reading the request body ends the request with RST_STREAM
// NO_ERROR. RFC 9113 section 8.1 says the client must keep the response;
// the request body writer just stops.
func TestEarlyResponseThenResetNoError(t *testing.T) {
	checkLeaks(t)
	answered := make(chan struct{})
	ts := startServer(t, &ServerConfig{}, stream.HandlerFunc(func(s stream.ServerStream) {
		if err := s.WriteHeader(&stream.Response{Status: 200, ContentLength: 5}, false); err != nil {
			t.Errorf("WriteHeader: %v", err)
			return
		}
		if _, err := s.Write([]byte("hello")); err != nil {
			t.Errorf("Write: %v", err)
		}
		if err := s.CloseWrite(); err != nil {
			t.Errorf("CloseWrite: %v", err)
		}
		close(answered)
	}))
	cc := dialClient(t, ts.addr(), &ClientConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	for i := range 20 {
		if i > 0 {
			answered = make(chan struct{})
		}
		cs, err := cc.NewStream(ctx, newReq("/early"), false)
		if err != nil {
			t.Fatalf("NewStream: %v", err)
		}
		<-answered
		// Give the server's RST_STREAM NO_ERROR time to arrive before the
		// client reads anything.
		time.Sleep(20 * time.Millisecond)
		resp, err := cs.Response(ctx)
		if err != nil {
			t.Fatalf("round %d: Response: %v", i, err)
		}
		body, err := io.ReadAll(readerOnly{cs})
		if err != nil || string(body) != "hello" || resp.Status != 200 {
			t.Fatalf("round %d: status %d body %q err %v; want 200 \"hello\" nil", i, resp.Status, body, err)
		}
		if _, err := cs.Write([]byte("late body")); !errors.Is(err, ErrRequestStopped) {
			t.Fatalf("round %d: Write after the peer stopped the request: err %v, want ErrRequestStopped", i, err)
		}
	}
}
