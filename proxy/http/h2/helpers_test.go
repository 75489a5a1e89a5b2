package h2

import (
	"context"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// testTimeout bounds every wait in these tests.
const testTimeout = 10 * time.Second

// checkLeaks fails the test if goroutines started by this package are still
// running a few seconds after the test's cleanups.
func checkLeaks(t *testing.T) {
	t.Helper()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			leaked := leakedGoroutines()
			if len(leaked) == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("leaked goroutines:\n%s", strings.Join(leaked, "\n\n"))
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

func leakedGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		if strings.Contains(g, "proxy/http/h2.(*conn).") || strings.Contains(g, "proxy/http/h2.(*ServerConn).") ||
			strings.Contains(g, "proxy/http/h2.(*ClientConn).") {
			out = append(out, g)
		}
	}
	return out
}

// testServer serves h with meshd's codec on a loopback listener.
type testServer struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []*ServerConn
	wg    sync.WaitGroup
}

func startServer(t *testing.T, cfg *ServerConfig, h stream.Handler) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{ln: ln}
	ts.wg.Add(1)
	go func() {
		defer ts.wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			sc := NewServerConn(nc, cfg, h, stream.ConnInfo{LocalAddr: nc.LocalAddr(), RemoteAddr: nc.RemoteAddr()})
			ts.mu.Lock()
			ts.conns = append(ts.conns, sc)
			ts.mu.Unlock()
			ts.wg.Add(1)
			go func() {
				defer ts.wg.Done()
				_ = sc.Serve()
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		ts.mu.Lock()
		for _, sc := range ts.conns {
			_ = sc.Close()
		}
		ts.mu.Unlock()
		ts.wg.Wait()
	})
	return ts
}

func (ts *testServer) addr() string { return ts.ln.Addr().String() }

func dialClient(t *testing.T, addr string, cfg *ClientConfig) *ClientConn {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	cc := NewClientConn(nc, cfg)
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// echoHandler answers every request with its body, copying request
// trailers into response trailers; "x-trailers-only: 1" gets a
// trailers-only response.
var echoHandler = stream.HandlerFunc(func(s stream.ServerStream) {
	req := s.Request()
	if req.Header.Get("x-trailers-only") == "1" {
		h := header.Make(2)
		h.Add("grpc-status", "5")
		h.Add("grpc-message", "not found")
		_ = s.WriteHeader(&stream.Response{Status: 200, Header: h, ContentLength: -1}, true)
		return
	}
	h := header.Make(1)
	h.Add("x-echo-path", req.Path)
	if err := s.WriteHeader(&stream.Response{Status: 200, Header: h, ContentLength: -1}, false); err != nil {
		return
	}
	if _, err := io.Copy(writerOnly{s}, readerOnly{s}); err != nil {
		s.Reset(stream.ErrCodeInternal)
		return
	}
	tr := s.Trailers()
	if tr.Len() == 0 {
		_ = s.CloseWrite()
		return
	}
	_ = s.WriteTrailers(tr.Clone())
})

type readerOnly struct{ io.Reader }
type writerOnly struct{ io.Writer }

func newReq(path string) *stream.Request {
	return &stream.Request{Method: "POST", Scheme: "http", Authority: "test", Path: path, ContentLength: -1}
}

// roundTrip sends body with trailers and returns the response, its body
// and its trailers.
func roundTrip(ctx context.Context, cc *ClientConn, req *stream.Request, body []byte, tr header.Header) (*stream.Response, []byte, header.Header, error) {
	cs, err := cc.NewStream(ctx, req, body == nil && tr.Len() == 0)
	if err != nil {
		return nil, nil, header.Header{}, err
	}
	errc := make(chan error, 1)
	go func() {
		if body == nil && tr.Len() == 0 {
			errc <- nil
			return
		}
		if _, err := cs.Write(body); err != nil {
			errc <- err
			return
		}
		errc <- cs.CloseWrite(tr)
	}()
	resp, err := cs.Response(ctx)
	if err != nil {
		return nil, nil, header.Header{}, err
	}
	got, err := io.ReadAll(readerOnly{cs})
	if werr := <-errc; werr != nil && err == nil && !errors.Is(werr, ErrRequestStopped) {
		err = werr
	}
	return resp, got, cs.Trailers(), err
}

func asStreamError(t *testing.T, err error) *stream.Error {
	t.Helper()
	var se *stream.Error
	if !errors.As(err, &se) {
		t.Fatalf("error %v (%T) is not a *stream.Error", err, err)
	}
	return se
}
