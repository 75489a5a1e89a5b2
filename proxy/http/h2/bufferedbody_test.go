package h2

import (
	"context"
	"io"
	"testing"
	"time"

	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// TestBufferedBody checks what serverStream.BufferedBody reports before the
// request's end arrives, once body and trailers are buffered (Read then
// returns exactly those bytes and io.EOF without blocking), and after the
// client reset the stream.
func TestBufferedBody(t *testing.T) {
	checkLeaks(t)
	type report struct {
		n        int
		complete bool
	}
	before := make(chan report, 1)
	after := make(chan report, 1)
	read := make(chan string, 1)
	proceed := make(chan struct{})
	h := stream.HandlerFunc(func(s stream.ServerStream) {
		bb := s.(stream.BufferedBody)
		n, c := bb.BufferedBody()
		before <- report{n, c}
		select {
		case <-proceed:
		case <-time.After(testTimeout):
			return
		}
		// The client has sent the body and its end; wait (bounded) for
		// the read loop to buffer them.
		deadline := time.Now().Add(testTimeout)
		for {
			n, c = bb.BufferedBody()
			if c || time.Now().After(deadline) {
				break
			}
			time.Sleep(time.Millisecond)
		}
		after <- report{n, c}
		b, err := io.ReadAll(s)
		tr := s.Trailers()
		if err != nil {
			read <- "error: " + err.Error()
		} else {
			read <- string(b) + "|" + tr.Get("x-t")
		}
		_ = s.WriteHeader(&stream.Response{Status: 200, Header: header.Make(0), ContentLength: -1}, true)
	})
	ts := startServer(t, nil, h)
	cc := dialClient(t, ts.addr(), nil)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	cs, err := cc.NewStream(ctx, newReq("/"), false)
	if err != nil {
		t.Fatal(err)
	}
	if r := <-before; r.complete {
		t.Errorf("before the body: BufferedBody = %+v, want not complete", r)
	}
	if _, err := cs.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	tr := header.Make(1)
	tr.Add("x-t", "v")
	if err := cs.CloseWrite(tr); err != nil {
		t.Fatal(err)
	}
	close(proceed)
	if r := <-after; r != (report{5, true}) {
		t.Errorf("after the body: BufferedBody = %+v, want {5 true}", r)
	}
	if got := <-read; got != "hello|v" {
		t.Errorf("read %q, want %q", got, "hello|v")
	}
	if _, err := cs.Response(ctx); err != nil {
		t.Fatal(err)
	}

	// A stream the client reset is never complete.
	reset := make(chan report, 1)
	started := make(chan struct{})
	h2 := stream.HandlerFunc(func(s stream.ServerStream) {
		close(started)
		select {
		case <-s.Context().Done():
		case <-time.After(testTimeout):
		}
		n, c := s.(stream.BufferedBody).BufferedBody()
		reset <- report{n, c}
	})
	ts2 := startServer(t, nil, h2)
	cc2 := dialClient(t, ts2.addr(), nil)
	cs2, err := cc2.NewStream(ctx, newReq("/"), false)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-started: // the server has the stream: RST_STREAM will reach it
	case <-time.After(testTimeout):
		t.Fatal("the handler did not start")
	}
	cs2.Reset(stream.ErrCodeCancel)
	select {
	case r := <-reset:
		if r.complete {
			t.Errorf("after RST_STREAM: BufferedBody = %+v, want not complete", r)
		}
	case <-time.After(2 * testTimeout):
		t.Fatal("the handler did not report")
	}
}
