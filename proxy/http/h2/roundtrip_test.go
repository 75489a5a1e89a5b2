package h2

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"sync"
	"testing"
	"time"

	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/proxy/stats"
)

func TestRoundTrip(t *testing.T) {
	big := make([]byte, 5<<20)
	_, _ = rand.Read(big)
	trailers := header.Make(1)
	trailers.Add("x-checksum", "abc")
	tests := []struct {
		name      string
		server    ServerConfig
		client    ClientConfig
		body      []byte
		trailers  header.Header
		trOnly    bool
		wantTr    string
		wantGrpcS string
	}{
		{name: "no body"},
		{name: "small body", body: []byte("hello")},
		{name: "trailers", body: []byte("hello"), trailers: trailers, wantTr: "abc"},
		{name: "trailers only", trOnly: true, wantGrpcS: "5"},
		{name: "5 MiB default windows", body: big},
		{
			name:   "5 MiB small windows",
			server: ServerConfig{InitialStreamWindowSize: 1024, InitialConnectionWindowSize: 65535, MaxFrameSize: 16384},
			client: ClientConfig{InitialStreamWindowSize: 1024, InitialConnectionWindowSize: 65535},
			body:   big, trailers: trailers, wantTr: "abc",
		},
		{
			name:   "5 MiB large frames",
			server: ServerConfig{MaxFrameSize: 1 << 20},
			client: ClientConfig{MaxFrameSize: 1 << 20},
			body:   big,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkLeaks(t)
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			ts := startServer(t, &tt.server, echoHandler)
			cc := dialClient(t, ts.addr(), &tt.client)
			req := newReq("/echo")
			if tt.trOnly {
				req.Header.Add("x-trailers-only", "1")
			}
			resp, got, tr, err := roundTrip(ctx, cc, req, tt.body, tt.trailers)
			if err != nil {
				t.Fatalf("round trip: %v", err)
			}
			if resp.Status != 200 {
				t.Errorf("status = %d", resp.Status)
			}
			if tt.trOnly {
				if g := resp.Header.Get("grpc-status"); g != tt.wantGrpcS {
					t.Errorf("grpc-status = %q, want %q", g, tt.wantGrpcS)
				}
				return
			}
			if g := resp.Header.Get("x-echo-path"); g != "/echo" {
				t.Errorf("x-echo-path = %q", g)
			}
			if !bytes.Equal(got, tt.body) {
				t.Errorf("body: got %d bytes, want %d (equal prefix: %v)", len(got), len(tt.body), bytes.HasPrefix(tt.body, got))
			}
			if g := tr.Get("x-checksum"); g != tt.wantTr {
				t.Errorf("trailer x-checksum = %q, want %q", g, tt.wantTr)
			}
		})
	}
}

func TestConcurrentStreams(t *testing.T) {
	checkLeaks(t)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	ts := startServer(t, nil, echoHandler)
	cc := dialClient(t, ts.addr(), nil)
	// Wait for the server's SETTINGS so more than one stream may open.
	deadline := time.Now().Add(testTimeout)
	for cc.Capacity() < 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := bytes.Repeat([]byte{byte(i)}, 1000*i)
			_, got, _, err := roundTrip(ctx, cc, newReq("/c"), body, header.Header{})
			if err == nil && !bytes.Equal(got, body) {
				err = io.ErrUnexpectedEOF
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if n := cc.ActiveStreams(); n != 0 {
		t.Errorf("client ActiveStreams = %d after all streams ended", n)
	}
}

// TestBidiStreaming checks that each message is delivered before the next
// is written (no batching delay) in both directions.
func TestBidiStreaming(t *testing.T) {
	checkLeaks(t)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	ts := startServer(t, nil, echoHandler)
	cc := dialClient(t, ts.addr(), nil)
	cs, err := cc.NewStream(ctx, newReq("/bidi"), false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Response(ctx); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	for i := range 20 {
		msg := []byte{byte(i), 1, 2, 3}
		if _, err := cs.Write(msg); err != nil {
			t.Fatal(err)
		}
		n, err := io.ReadFull(cs, buf[:len(msg)])
		if err != nil || !bytes.Equal(buf[:n], msg) {
			t.Fatalf("message %d: got %v, %v", i, buf[:n], err)
		}
	}
	if err := cs.CloseWrite(header.Header{}); err != nil {
		t.Fatal(err)
	}
	if n, err := cs.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("final Read = %d, %v; want 0, EOF", n, err)
	}
}

func TestResets(t *testing.T) {
	t.Run("client reset reaches handler", func(t *testing.T) {
		checkLeaks(t)
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		handlerErr := make(chan error, 2)
		h := stream.HandlerFunc(func(s stream.ServerStream) {
			_ = s.WriteHeader(&stream.Response{Status: 200, ContentLength: -1}, false)
			_, err := io.Copy(io.Discard, readerOnly{s})
			handlerErr <- err
			select {
			case <-s.Context().Done():
				handlerErr <- nil
			case <-time.After(testTimeout):
				handlerErr <- context.DeadlineExceeded
			}
		})
		st := stats.NewStore()
		ss := NewStats(st.Root().Scope("http2"))
		ts := startServer(t, &ServerConfig{Stats: ss}, h)
		cc := dialClient(t, ts.addr(), nil)
		cs, err := cc.NewStream(ctx, newReq("/r"), false)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cs.Response(ctx); err != nil {
			t.Fatal(err)
		}
		cs.Reset(stream.ErrCodeCancel)
		se := asStreamError(t, <-handlerErr)
		if se.Code != stream.ErrCodeCancel || !se.Remote {
			t.Errorf("handler Read error = %+v, want remote CANCEL", se)
		}
		if err := <-handlerErr; err != nil {
			t.Errorf("handler context not cancelled: %v", err)
		}
		if _, err := cs.Read(make([]byte, 1)); stream.CodeOf(err) != stream.ErrCodeCancel {
			t.Errorf("client Read after Reset = %v", err)
		}
		if got := ss.RxReset.Value(); got != 1 {
			t.Errorf("server rx_reset = %d, want 1", got)
		}
	})
	t.Run("server reset reaches client", func(t *testing.T) {
		checkLeaks(t)
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		h := stream.HandlerFunc(func(s stream.ServerStream) {
			_ = s.WriteHeader(&stream.Response{Status: 200, ContentLength: -1}, false)
			_, _ = s.Write([]byte("partial"))
			s.Reset(stream.ErrCodeEnhanceYourCalm)
		})
		ts := startServer(t, nil, h)
		cc := dialClient(t, ts.addr(), nil)
		cs, err := cc.NewStream(ctx, newReq("/r"), true)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = cs.Response(ctx)
		_, err = io.ReadAll(readerOnly{cs})
		se := asStreamError(t, err)
		if se.Code != stream.ErrCodeEnhanceYourCalm || !se.Remote {
			t.Errorf("client error = %+v, want remote ENHANCE_YOUR_CALM", se)
		}
	})
	t.Run("handler returns without ending", func(t *testing.T) {
		checkLeaks(t)
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		h := stream.HandlerFunc(func(s stream.ServerStream) {
			_ = s.WriteHeader(&stream.Response{Status: 200, ContentLength: -1}, false)
		})
		ts := startServer(t, nil, h)
		cc := dialClient(t, ts.addr(), nil)
		_, _, _, err := roundTrip(ctx, cc, newReq("/r"), nil, header.Header{})
		if se := asStreamError(t, err); se.Code != stream.ErrCodeInternal {
			t.Errorf("error = %+v, want INTERNAL_ERROR", se)
		}
	})
	t.Run("context cancel resets upstream", func(t *testing.T) {
		checkLeaks(t)
		reset := make(chan error, 1)
		h := stream.HandlerFunc(func(s stream.ServerStream) {
			_ = s.WriteHeader(&stream.Response{Status: 200, ContentLength: -1}, false)
			_, err := io.Copy(io.Discard, readerOnly{s})
			reset <- err
		})
		ts := startServer(t, nil, h)
		cc := dialClient(t, ts.addr(), nil)
		ctx, cancel := context.WithCancel(context.Background())
		cs, err := cc.NewStream(ctx, newReq("/r"), false)
		if err != nil {
			t.Fatal(err)
		}
		rctx, rcancel := context.WithTimeout(context.Background(), testTimeout)
		defer rcancel()
		if _, err := cs.Response(rctx); err != nil {
			t.Fatal(err)
		}
		cancel()
		select {
		case err := <-reset:
			if stream.CodeOf(err) != stream.ErrCodeCancel {
				t.Errorf("handler saw %v, want CANCEL", err)
			}
		case <-time.After(testTimeout):
			t.Fatal("handler never saw the reset")
		}
	})
}
