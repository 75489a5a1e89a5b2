package h1

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// upstream is an httptest server that counts the connections it accepted.
type upstream struct {
	*httptest.Server
	conns  atomic.Int32 // accepted
	closed atomic.Int32 // closed
}

func startUpstream(t *testing.T, tlsOn bool, h http.HandlerFunc) *upstream {
	t.Helper()
	u := &upstream{}
	u.Server = httptest.NewUnstartedServer(h)
	u.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		switch st {
		case http.StateNew:
			u.conns.Add(1)
		case http.StateClosed:
			u.closed.Add(1)
		}
	}
	if tlsOn {
		u.StartTLS()
	} else {
		u.Start()
	}
	t.Cleanup(u.Close)
	return u
}

func newTestClient(t *testing.T, cfg ClientConfig) *Client {
	c := NewClient(cfg)
	t.Cleanup(func() { c.Close() })
	return c
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

func getRequest(path string) *stream.Request {
	return &stream.Request{Method: "GET", Scheme: "http", Authority: "svc.example", Path: path, ContentLength: -1}
}

// readAll reads a ClientStream's body to EOF.
func readAll(t *testing.T, s stream.ClientStream) string {
	t.Helper()
	b, err := io.ReadAll(readerFunc(s.Read))
	if err != nil {
		t.Fatalf("reading response body: %v", err)
	}
	return string(b)
}

func TestClientRequestResponse(t *testing.T) {
	testutil.CheckGoroutines(t)
	up := startUpstream(t, false, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Host", r.Host)
		w.Header().Set("X-Uri", r.RequestURI)
		w.Header().Set("X-Ua-Present", boolString(r.Header["User-Agent"] != nil))
		w.Header().Set("X-Meta", r.Header.Get("X-Meta"))
		w.Header().Set("Trailer", "X-Declared")
		w.WriteHeader(201)
		io.WriteString(w, "body")
		w.Header().Set("X-Declared", "d")
		w.Header().Set(http.TrailerPrefix+"X-Undeclared", "u")
	})
	c := newTestClient(t, ClientConfig{Addr: up.Listener.Addr().String()})
	req := getRequest("/a%2Fb/c?x=1")
	req.Header.Add("x-meta", "m")
	s, err := c.NewStream(testCtx(t), req, true)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := s.Response(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"x-host": "svc.example", "x-uri": "/a%2Fb/c?x=1", "x-ua-present": "false", "x-meta": "m", "trailer": "x-declared"}
	for k, v := range want {
		if got := resp.Header.Get(k); got != v {
			t.Errorf("response %s = %q, want %q", k, got, v)
		}
	}
	if resp.Status != 201 {
		t.Errorf("status = %d", resp.Status)
	}
	if body := readAll(t, s); body != "body" {
		t.Errorf("body = %q", body)
	}
	tr := s.Trailers()
	if tr.Get("x-declared") != "d" || tr.Get("x-undeclared") != "u" {
		t.Errorf("trailers = %v", tr.Fields())
	}
}

func boolString(b bool) string {
	if b {
		return "true"
	}
	return "false"
}

func TestClientStreamingBodyAndTrailers(t *testing.T) {
	testutil.CheckGoroutines(t)
	gotChunk := make(chan string, 4)
	up := startUpstream(t, false, func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		rc.EnableFullDuplex()
		w.WriteHeader(200)
		rc.Flush()
		buf := make([]byte, 100)
		for {
			n, err := r.Body.Read(buf)
			if n > 0 {
				gotChunk <- string(buf[:n])
				w.Write(buf[:n])
				rc.Flush()
			}
			if err != nil {
				break
			}
		}
		for k, v := range r.Trailer {
			w.Header().Set(http.TrailerPrefix+"Echo-"+k, strings.Join(v, ","))
		}
	})
	c := newTestClient(t, ClientConfig{Addr: up.Listener.Addr().String()})
	tests := []struct {
		name     string
		declared string
	}{
		{"declared trailers", "x-a, x-b"},
		{"undeclared trailers", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := &stream.Request{Method: "POST", Authority: "svc", Path: "/stream", ContentLength: -1}
			if tc.declared != "" {
				req.Header.Add("trailer", tc.declared)
			}
			s, err := c.NewStream(testCtx(t), req, false)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.Response(testCtx(t)); err != nil {
				t.Fatal(err)
			}
			// Each chunk reaches the upstream before the next is written:
			// the body streams rather than being buffered to the end.
			for _, chunk := range []string{"one", "two"} {
				if _, err := s.Write([]byte(chunk)); err != nil {
					t.Fatal(err)
				}
				select {
				case got := <-gotChunk:
					if got != chunk {
						t.Fatalf("upstream got %q, want %q", got, chunk)
					}
				case <-time.After(testTimeout):
					t.Fatalf("chunk %q not delivered", chunk)
				}
			}
			tr := header.Make(2)
			tr.Add("x-a", "1")
			tr.Add("x-b", "2")
			if err := s.CloseWrite(tr); err != nil {
				t.Fatal(err)
			}
			if body := readAll(t, s); body != "onetwo" {
				t.Errorf("body = %q", body)
			}
			rt := s.Trailers()
			if rt.Get("echo-x-a") != "1" || rt.Get("echo-x-b") != "2" {
				t.Errorf("upstream saw trailers %v", rt.Fields())
			}
		})
	}
}

func TestClientConnectionReuse(t *testing.T) {
	testutil.CheckGoroutines(t)
	up := startUpstream(t, false, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "ok")
	})
	c := newTestClient(t, ClientConfig{Addr: up.Listener.Addr().String()})
	for i := range 20 {
		req := &stream.Request{Method: "POST", Authority: "svc", Path: "/", ContentLength: 3}
		s, err := c.NewStream(testCtx(t), req, false)
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		s.Write([]byte("abc"))
		s.CloseWrite(header.Header{})
		if _, err := s.Response(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		readAll(t, s)
	}
	if n := up.conns.Load(); n != 1 {
		t.Errorf("upstream saw %d connections for 20 sequential streams, want 1", n)
	}
}

func TestClientMaxConns(t *testing.T) {
	testutil.CheckGoroutines(t)
	release := make(chan struct{})
	var active, peak atomic.Int32
	up := startUpstream(t, false, func(w http.ResponseWriter, r *http.Request) {
		n := active.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		<-release
		active.Add(-1)
	})
	c := newTestClient(t, ClientConfig{Addr: up.Listener.Addr().String(), MaxConns: 2})
	var wg sync.WaitGroup
	errs := make(chan error, 5)
	for range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := c.NewStream(testCtx(t), getRequest("/"), true)
			if err != nil {
				errs <- err
				return
			}
			if _, err := s.Response(testCtx(t)); err != nil {
				errs <- err
				return
			}
			if _, err := io.ReadAll(readerFunc(s.Read)); err != nil {
				errs <- err
			}
		}()
	}
	waitFor(t, func() bool { return active.Load() == 2 })
	time.Sleep(50 * time.Millisecond) // give a third connection the chance to appear
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if p, n := peak.Load(), up.conns.Load(); p != 2 || n != 2 {
		t.Errorf("peak concurrent requests %d, connections %d; want 2, 2", p, n)
	}
}

func TestClientErrors(t *testing.T) {
	testutil.CheckGoroutines(t)
	// A port with nothing listening: bind, note the address, close.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := ln.Addr().String()
	ln.Close()

	t.Run("dial failure is unprocessed connect failure", func(t *testing.T) {
		c := newTestClient(t, ClientConfig{Addr: deadAddr, ConnectTimeout: time.Second})
		_, err := c.NewStream(testCtx(t), getRequest("/"), true)
		var se *stream.Error
		if !errors.As(err, &se) || !se.Unprocessed || se.Reason != "connect failure" {
			t.Fatalf("err = %v, want Unprocessed *stream.Error with reason connect failure", err)
		}
	})
	t.Run("closed client refuses streams", func(t *testing.T) {
		c := NewClient(ClientConfig{Addr: deadAddr})
		c.Close()
		_, err := c.NewStream(testCtx(t), getRequest("/"), true)
		if !stream.Unprocessed(err) {
			t.Fatalf("err = %v, want Unprocessed", err)
		}
	})
	t.Run("invalid path", func(t *testing.T) {
		c := newTestClient(t, ClientConfig{Addr: deadAddr})
		_, err := c.NewStream(testCtx(t), getRequest("no-slash"), true)
		var se *stream.Error
		if !errors.As(err, &se) || se.Unprocessed || se.Code != stream.ErrCodeProtocol {
			t.Fatalf("err = %v, want PROTOCOL_ERROR", err)
		}
	})
}

func TestClientReset(t *testing.T) {
	testutil.CheckGoroutines(t)
	upstreamCancelled := make(chan struct{})
	up := startUpstream(t, false, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
		close(upstreamCancelled)
	})
	c := newTestClient(t, ClientConfig{Addr: up.Listener.Addr().String()})
	s, err := c.NewStream(testCtx(t), getRequest("/"), true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Response(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	readErr := make(chan error, 1)
	go func() {
		_, err := s.Read(make([]byte, 10))
		readErr <- err
	}()
	time.Sleep(20 * time.Millisecond)
	s.Reset(stream.ErrCodeCancel)
	select {
	case err := <-readErr:
		var se *stream.Error
		if !errors.As(err, &se) || se.Code != stream.ErrCodeCancel || se.Remote {
			t.Errorf("Read after Reset = %v, want local CANCEL", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Reset did not unblock Read")
	}
	select {
	case <-upstreamCancelled:
	case <-time.After(testTimeout):
		t.Fatal("upstream did not see the request cancelled")
	}
	s.Reset(stream.ErrCodeCancel) // a second Reset is a no-op
}

func TestClientLargeBodyTLS(t *testing.T) {
	testutil.CheckGoroutines(t)
	up := startUpstream(t, true, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Tls-Proto", r.TLS.NegotiatedProtocol)
		io.Copy(w, r.Body)
	})
	tlsCfg := up.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	tlsCfg.NextProtos = []string{"h2", "http/1.1"} // forced to http/1.1
	c := newTestClient(t, ClientConfig{Addr: up.Listener.Addr().String(), TLS: tlsCfg})
	const size = 10 << 20
	data := bytes.Repeat([]byte("abcdefghijklmnop"), size/16)
	s, err := c.NewStream(testCtx(t), &stream.Request{Method: "PUT", Authority: "svc", Path: "/big", ContentLength: size}, false)
	if err != nil {
		t.Fatal(err)
	}
	writeErr := make(chan error, 1)
	go func() {
		for off := 0; off < len(data); off += 64 << 10 {
			if _, err := s.Write(data[off : off+64<<10]); err != nil {
				writeErr <- err
				return
			}
		}
		writeErr <- s.CloseWrite(header.Header{})
	}()
	resp, err := s.Response(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.Header.Get("x-tls-proto"); got != "http/1.1" {
		t.Errorf("negotiated %q, want http/1.1", got)
	}
	h := sha256.New()
	if _, err := io.Copy(h, readerFunc(s.Read)); err != nil {
		t.Fatal(err)
	}
	if err := <-writeErr; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(h.Sum(nil), sha(data)) {
		t.Error("echoed body differs")
	}
}

func TestClientDialSetsNoDelay(t *testing.T) {
	testutil.CheckGoroutines(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c := newTestClient(t, ClientConfig{Addr: ln.Addr().String()})
	conn, err := c.dial(testCtx(t), "tcp", "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	raw, err := conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var serr error
	if err := raw.Control(func(fd uintptr) {
		v, serr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_NODELAY)
	}); err != nil || serr != nil {
		t.Fatal(err, serr)
	}
	if v == 0 {
		t.Error("TCP_NODELAY not set on upstream connection")
	}
}

func TestClientDrain(t *testing.T) {
	testutil.CheckGoroutines(t)
	release := make(chan struct{})
	up := startUpstream(t, false, func(w http.ResponseWriter, r *http.Request) {
		<-release
		io.WriteString(w, "done")
	})
	c := newTestClient(t, ClientConfig{Addr: up.Listener.Addr().String()})
	s, err := c.NewStream(testCtx(t), getRequest("/"), true)
	if err != nil {
		t.Fatal(err)
	}
	c.Drain()
	if _, err := c.NewStream(testCtx(t), getRequest("/"), true); !stream.Unprocessed(err) {
		t.Errorf("NewStream while draining = %v, want Unprocessed", err)
	}
	close(release)
	if _, err := s.Response(testCtx(t)); err != nil {
		t.Fatalf("in-flight stream failed during Drain: %v", err)
	}
	if body := readAll(t, s); body != "done" {
		t.Errorf("body = %q", body)
	}
	// The connection is closed once its stream ended, not kept idle.
	waitFor(t, func() bool { return up.closed.Load() == 1 })
}

// TestClientMaxRequestsPerConnection checks max_requests_per_connection:
// sequential requests use a connection for exactly the limit, the last one
// carries "Connection: close", and each reached limit is reported.
func TestClientMaxRequestsPerConnection(t *testing.T) {
	testutil.CheckGoroutines(t)
	for _, tc := range []struct {
		limit, requests uint32
		wantConns       int32
		wantReached     int32
	}{
		{limit: 0, requests: 6, wantConns: 1, wantReached: 0},
		{limit: 1, requests: 4, wantConns: 4, wantReached: 4},
		{limit: 3, requests: 9, wantConns: 3, wantReached: 3},
		{limit: 4, requests: 6, wantConns: 2, wantReached: 1},
	} {
		t.Run(fmt.Sprintf("limit %d", tc.limit), func(t *testing.T) {
			var closes atomic.Int32
			up := startUpstream(t, false, func(w http.ResponseWriter, r *http.Request) {
				if r.Close {
					closes.Add(1)
				}
				io.WriteString(w, "ok")
			})
			var reached atomic.Int32
			c := newTestClient(t, ClientConfig{Addr: up.Listener.Addr().String(), MaxRequestsPerConnection: tc.limit, OnMaxRequests: func() { reached.Add(1) }})
			for i := range tc.requests {
				s, err := c.NewStream(testCtx(t), getRequest("/"), true)
				if err != nil {
					t.Fatalf("stream %d: %v", i, err)
				}
				if _, err := s.Response(testCtx(t)); err != nil {
					t.Fatalf("stream %d: %v", i, err)
				}
				if got := readAll(t, s); got != "ok" {
					t.Fatalf("stream %d: body %q", i, got)
				}
			}
			if n := up.conns.Load(); n != tc.wantConns {
				t.Errorf("%d requests with limit %d: upstream saw %d connections, want %d", tc.requests, tc.limit, n, tc.wantConns)
			}
			if n := reached.Load(); n != tc.wantReached || closes.Load() != tc.wantReached {
				t.Errorf("limit reached %d times, %d requests asked to close; want %d", n, closes.Load(), tc.wantReached)
			}
		})
	}
}

// TestClientConnCloseByPeer checks OnConnClose's byPeer: true when the
// upstream closed the connection (the client reads every idle connection,
// so it sees that first), false when the client closed it (Close, its
// idle timeout).
func TestClientConnCloseByPeer(t *testing.T) {
	cases := []struct {
		name   string
		idle   time.Duration
		close  func(up *upstream, c *Client)
		byPeer bool
	}{
		{name: "upstream closes", byPeer: true, close: func(up *upstream, _ *Client) { up.CloseClientConnections() }},
		{name: "client closes", close: func(_ *upstream, c *Client) { c.Close() }},
		{name: "idle timeout", idle: 50 * time.Millisecond},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			up := startUpstream(t, false, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
			closed := make(chan bool, 4)
			c := newTestClient(t, ClientConfig{
				Addr:        up.Listener.Addr().String(),
				IdleTimeout: tc.idle,
				OnConnClose: func(_ time.Duration, byPeer bool) { closed <- byPeer },
			})
			s, err := c.NewStream(testCtx(t), getRequest("/"), true)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.Response(testCtx(t)); err != nil {
				t.Fatal(err)
			}
			readAll(t, s)
			if tc.close != nil {
				tc.close(up, c)
			}
			select {
			case byPeer := <-closed:
				if byPeer != tc.byPeer {
					t.Errorf("OnConnClose byPeer = %v, want %v", byPeer, tc.byPeer)
				}
			case <-time.After(testTimeout):
				t.Fatal("OnConnClose not called")
			}
		})
	}
}
