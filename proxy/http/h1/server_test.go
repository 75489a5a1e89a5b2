package h1

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

const testTimeout = 10 * time.Second

// testServer serves a Server on a loopback socket with a minimal accept loop.
type testServer struct {
	srv    *Server
	ln     net.Listener
	addr   string
	wg     sync.WaitGroup
	nextID atomic.Uint64

	mu    sync.Mutex
	conns []stream.ServerConn
}

func startServer(t *testing.T, cfg ServerConfig, h stream.HandlerFunc) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{srv: NewServer(cfg, h), ln: ln, addr: ln.Addr().String()}
	ts.wg.Add(1)
	go func() {
		defer ts.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			sc := ts.srv.NewConn(c, stream.ConnInfo{ID: ts.nextID.Add(1), LocalAddr: c.LocalAddr(), RemoteAddr: c.RemoteAddr()})
			ts.mu.Lock()
			ts.conns = append(ts.conns, sc)
			ts.mu.Unlock()
			ts.wg.Add(1)
			go func() {
				defer ts.wg.Done()
				sc.Serve()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		ts.srv.Close()
		done := make(chan struct{})
		go func() { ts.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(testTimeout):
			t.Error("server connections did not finish")
		}
	})
	return ts
}

func (ts *testServer) conn(i int) stream.ServerConn {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.conns[i]
}

// newHTTPClient returns a net/http client with its own transport, closed
// at cleanup.
func newHTTPClient(t *testing.T) *http.Client {
	tr := &http.Transport{DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: testTimeout}
}

// echo answers with the request's metadata in headers, its body, and its
// trailers prefixed with "echo-" as response trailers.
func echo(s stream.ServerStream) {
	req := s.Request()
	h := header.Make(8)
	h.Add("x-method", req.Method)
	h.Add("x-path", req.Path)
	h.Add("x-authority", req.Authority)
	h.Add("x-scheme", req.Scheme)
	h.Add("x-conn-id", strconv.FormatUint(s.Conn().ID, 10))
	h.Add("x-request-cl", strconv.FormatInt(req.ContentLength, 10))
	if err := s.WriteHeader(&stream.Response{Status: 200, Header: h, ContentLength: -1}, false); err != nil {
		s.Reset(stream.ErrCodeInternal)
		return
	}
	buf := make([]byte, 32<<10)
	for {
		n, err := s.Read(buf)
		if n > 0 {
			if _, werr := s.Write(buf[:n]); werr != nil {
				s.Reset(stream.ErrCodeInternal)
				return
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			s.Reset(stream.ErrCodeInternal)
			return
		}
	}
	tr := s.Trailers()
	out := header.Make(tr.Len() + 1)
	for _, f := range tr.Fields() {
		out.Add("echo-"+f.Name, f.Value)
	}
	out.Add("x-done", "yes")
	s.WriteTrailers(out)
}

// rawRequest writes req on a new connection and returns the reader.
func rawConn(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(testTimeout))
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

func TestServerRequestMapping(t *testing.T) {
	testutil.CheckGoroutines(t)
	got := make(chan stream.Request, 1)
	ts := startServer(t, ServerConfig{}, func(s stream.ServerStream) {
		got <- *s.Request()
		s.WriteHeader(&stream.Response{Status: 204}, true)
	})
	tests := []struct {
		name          string
		raw           string
		method, path  string
		authority     string
		contentLength int64
		header        []header.Field
	}{
		{
			name:      "origin form",
			raw:       "GET /a/b%20c?x=1&y HTTP/1.1\r\nHost: example.com\r\nX-Foo: 1\r\nX-Foo: 2\r\n\r\n",
			method:    "GET",
			path:      "/a/b%20c?x=1&y",
			authority: "example.com",
			header:    []header.Field{{Name: "x-foo", Value: "1"}, {Name: "x-foo", Value: "2"}},
		},
		{
			name:      "absolute form",
			raw:       "GET http://other.example:8080/p?q HTTP/1.1\r\nHost: ignored.example\r\n\r\n",
			method:    "GET",
			path:      "/p?q",
			authority: "other.example:8080",
		},
		{
			name:          "hop-by-hop kept for the caller",
			raw:           "POST /up HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nContent-Length: 3\r\n\r\nabc",
			method:        "POST",
			path:          "/up",
			authority:     "h",
			contentLength: 3,
			header:        []header.Field{{Name: "connection", Value: "keep-alive, X-Hop"}, {Name: "content-length", Value: "3"}, {Name: "x-hop", Value: "1"}},
		},
		{
			name:      "asterisk form",
			raw:       "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
			method:    "OPTIONS",
			path:      "*",
			authority: "h",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, br := rawConn(t, ts.addr)
			if _, err := io.WriteString(c, tc.raw); err != nil {
				t.Fatal(err)
			}
			var req stream.Request
			select {
			case req = <-got:
			case <-time.After(testTimeout):
				t.Fatal("handler not called")
			}
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if req.Method != tc.method || req.Path != tc.path || req.Authority != tc.authority || req.Scheme != "http" {
				t.Errorf("got %s %s authority %q scheme %s; want %s %s %q http", req.Method, req.Path, req.Authority, req.Scheme, tc.method, tc.path, tc.authority)
			}
			if req.ContentLength != tc.contentLength {
				t.Errorf("ContentLength = %d, want %d", req.ContentLength, tc.contentLength)
			}
			if req.Header.Has("host") {
				t.Error("host must not be in Header")
			}
			if fs := req.Header.Fields(); fmt.Sprint(fs) != fmt.Sprint(tc.header) && !(len(fs) == 0 && len(tc.header) == 0) {
				t.Errorf("Header = %v, want %v", fs, tc.header)
			}
		})
	}
}

func TestServerKeepAliveReuse(t *testing.T) {
	testutil.CheckGoroutines(t)
	ts := startServer(t, ServerConfig{}, echo)
	hc := newHTTPClient(t)
	var ids, ports []string
	for i := range 3 {
		var local string
		trace := &httptrace.ClientTrace{GotConn: func(ci httptrace.GotConnInfo) { local = ci.Conn.LocalAddr().String() }}
		req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", "http://"+ts.addr+"/x", nil)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		ids = append(ids, resp.Header.Get("x-conn-id"))
		ports = append(ports, local)
	}
	for i := 1; i < len(ids); i++ {
		if ids[i] != ids[0] || ports[i] != ports[0] {
			t.Fatalf("connection not reused: conn ids %v, client addrs %v", ids, ports)
		}
	}
}

// slowReader yields its chunks one Read at a time, so net/http must use
// chunked encoding for a body of unknown length.
type slowReader struct{ chunks []string }

func (r *slowReader) Read(p []byte) (int, error) {
	if len(r.chunks) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.chunks[0])
	r.chunks[0] = r.chunks[0][n:]
	if r.chunks[0] == "" {
		r.chunks = r.chunks[1:]
	}
	return n, nil
}

func TestServerChunkedAndTrailers(t *testing.T) {
	testutil.CheckGoroutines(t)
	ts := startServer(t, ServerConfig{}, echo)
	hc := newHTTPClient(t)
	req, _ := http.NewRequest("POST", "http://"+ts.addr+"/chunked", &slowReader{chunks: []string{"hello ", "chunked ", "world"}})
	req.ContentLength = -1
	req.Trailer = http.Header{"X-Req-Trailer": nil}
	req.Body = &trailerSetter{r: req.Body, set: func() { req.Trailer.Set("X-Req-Trailer", "tv") }}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if string(body) != "hello chunked world" {
		t.Errorf("body = %q", body)
	}
	if got := resp.Header.Get("X-Request-Cl"); got != "-1" {
		t.Errorf("request content length seen by handler = %s, want -1 (chunked)", got)
	}
	if len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" {
		t.Errorf("response TransferEncoding = %v, want chunked", resp.TransferEncoding)
	}
	if got := resp.Trailer.Get("Echo-X-Req-Trailer"); got != "tv" {
		t.Errorf("request trailer echoed = %q, want tv (trailers %v)", got, resp.Trailer)
	}
	if got := resp.Trailer.Get("X-Done"); got != "yes" {
		t.Errorf("response trailer x-done = %q", got)
	}
}

// trailerSetter calls set just before returning EOF, the moment net/http's
// client reads request trailers.
type trailerSetter struct {
	r   io.ReadCloser
	set func()
}

func (t *trailerSetter) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if err == io.EOF {
		t.set()
	}
	return n, err
}

func (t *trailerSetter) Close() error { return t.r.Close() }

func TestServerLargeBodies(t *testing.T) {
	testutil.CheckGoroutines(t)
	ts := startServer(t, ServerConfig{}, echo)
	hc := newHTTPClient(t)
	const size = 10 << 20
	data := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	for _, cl := range []int64{size, -1} {
		t.Run(fmt.Sprintf("content-length=%d", cl), func(t *testing.T) {
			req, _ := http.NewRequest("PUT", "http://"+ts.addr+"/big", io.NopCloser(bytes.NewReader(data)))
			req.ContentLength = cl
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			h := sha256.New()
			n, err := io.Copy(h, resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if n != size || !bytes.Equal(h.Sum(nil), sha(data)) {
				t.Errorf("echoed %d bytes, digest mismatch=%v", n, !bytes.Equal(h.Sum(nil), sha(data)))
			}
		})
	}
}

func sha(b []byte) []byte { s := sha256.Sum256(b); return s[:] }

func TestServerExpectContinue(t *testing.T) {
	testutil.CheckGoroutines(t)
	ts := startServer(t, ServerConfig{}, func(s stream.ServerStream) {
		if s.Request().Path == "/reject" {
			s.WriteHeader(&stream.Response{Status: 403, ContentLength: 0}, true)
			return
		}
		// Read first, as a proxy forwarding the body upstream does.
		body, err := io.ReadAll(readerFunc(s.Read))
		if err != nil {
			s.Reset(stream.ErrCodeInternal)
			return
		}
		s.WriteHeader(&stream.Response{Status: 200, ContentLength: int64(len(body))}, false)
		s.Write(body)
		s.CloseWrite()
	})
	t.Run("continue sent when handler reads", func(t *testing.T) {
		c, br := rawConn(t, ts.addr)
		io.WriteString(c, "POST /ok HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
		tp := textproto.NewReader(br)
		line, err := tp.ReadLine()
		if err != nil || line != "HTTP/1.1 100 Continue" {
			t.Fatalf("first line = %q, %v; want 100 Continue before the body is sent", line, err)
		}
		if _, err := tp.ReadMIMEHeader(); err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, "hello")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(body) != "hello" {
			t.Errorf("got %d %q", resp.StatusCode, body)
		}
	})
	t.Run("no continue when handler answers without reading", func(t *testing.T) {
		c, br := rawConn(t, ts.addr)
		io.WriteString(c, "POST /reject HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 403 {
			t.Errorf("status = %d, want 403 (and no 100 first)", resp.StatusCode)
		}
	})
}

func TestServerHEAD(t *testing.T) {
	testutil.CheckGoroutines(t)
	ts := startServer(t, ServerConfig{}, func(s stream.ServerStream) {
		h := header.Make(1)
		h.Add("content-type", "text/plain")
		if err := s.WriteHeader(&stream.Response{Status: 200, Header: h, ContentLength: 5}, false); err != nil {
			t.Errorf("WriteHeader: %v", err)
		}
		if n, err := s.Write([]byte("hello")); err != nil || n != 5 {
			t.Errorf("Write = %d, %v", n, err)
		}
		s.CloseWrite()
	})
	c, br := rawConn(t, ts.addr)
	io.WriteString(c, "HEAD /h HTTP/1.1\r\nHost: h\r\n\r\nGET /g HTTP/1.1\r\nHost: h\r\n\r\n")
	headReq, _ := http.NewRequest("HEAD", "/h", nil)
	resp, err := http.ReadResponse(br, headReq)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Length") != "5" {
		t.Errorf("HEAD: status %d content-length %q", resp.StatusCode, resp.Header.Get("Content-Length"))
	}
	// If a body had been written after the HEAD response, this would parse it.
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("GET after HEAD: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if string(body) != "hello" {
		t.Errorf("GET body = %q", body)
	}
}

func TestServerInvalidRequests(t *testing.T) {
	testutil.CheckGoroutines(t)
	var called atomic.Int32
	ts := startServer(t, ServerConfig{}, func(s stream.ServerStream) {
		called.Add(1)
		s.WriteHeader(&stream.Response{Status: 200}, true)
	})
	for _, tc := range []struct{ name, raw string }{
		{"header name with space", "GET / HTTP/1.1\r\nHost: h\r\nBad Header: v\r\n\r\n"},
		{"header without colon", "GET / HTTP/1.1\r\nHost: h\r\nNoColon\r\n\r\n"},
		{"control byte in value", "GET / HTTP/1.1\r\nHost: h\r\nX: a\x01b\r\n\r\n"},
		{"malformed request line", "GET /\r\nHost: h\r\n\r\n"},
		{"missing host", "GET / HTTP/1.1\r\n\r\n"},
		{"conflicting content-length", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, br := rawConn(t, ts.addr)
			io.WriteString(c, tc.raw)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 400 {
				t.Errorf("status = %d, want 400", resp.StatusCode)
			}
		})
	}
	if n := called.Load(); n != 0 {
		t.Errorf("handler called %d times for invalid requests", n)
	}
}

func TestServerUnderscoreHeaders(t *testing.T) {
	for _, tc := range []struct {
		name       string
		action     UnderscoreAction
		wantStatus int
		wantHeader bool
	}{
		{"allow", UnderscoreAllow, 200, true},
		{"drop", UnderscoreDropHeader, 200, false},
		{"reject", UnderscoreRejectRequest, 400, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			var saw atomic.Bool
			ts := startServer(t, ServerConfig{HeadersWithUnderscoresAction: tc.action}, func(s stream.ServerStream) {
				saw.Store(s.Request().Header.Has("x_under"))
				s.WriteHeader(&stream.Response{Status: 200, ContentLength: 0}, true)
			})
			req, _ := http.NewRequest("GET", "http://"+ts.addr+"/", nil)
			req.Header["X_under"] = []string{"1"}
			resp, err := newHTTPClient(t).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.wantStatus || saw.Load() != tc.wantHeader {
				t.Errorf("status %d, handler saw header %v; want %d, %v", resp.StatusCode, saw.Load(), tc.wantStatus, tc.wantHeader)
			}
		})
	}
}

func TestServerResetClosesConnection(t *testing.T) {
	testutil.CheckGoroutines(t)
	readErr := make(chan error, 1)
	ts := startServer(t, ServerConfig{}, func(s stream.ServerStream) {
		switch s.Request().Path {
		case "/reset-after-body":
			s.WriteHeader(&stream.Response{Status: 200, ContentLength: -1}, false)
			s.Write([]byte("partial"))
			s.Reset(stream.ErrCodeInternal)
		case "/reset-unblocks-read":
			go func() {
				time.Sleep(50 * time.Millisecond)
				s.Reset(stream.ErrCodeCancel)
			}()
			_, err := io.ReadAll(readerFunc(s.Read))
			readErr <- err
		case "/no-end":
			s.WriteHeader(&stream.Response{Status: 200, ContentLength: -1}, false)
			s.Write([]byte("x"))
		}
	})
	t.Run("reset after body", func(t *testing.T) {
		resp, err := newHTTPClient(t).Get("http://" + ts.addr + "/reset-after-body")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err == nil {
			t.Errorf("body read %q without error; want the connection closed mid-body", b)
		}
	})
	t.Run("handler returns without ending the response", func(t *testing.T) {
		resp, err := newHTTPClient(t).Get("http://" + ts.addr + "/no-end")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if _, err := io.ReadAll(resp.Body); err == nil {
			t.Error("unterminated response read without error")
		}
	})
	t.Run("reset unblocks read", func(t *testing.T) {
		c, br := rawConn(t, ts.addr)
		io.WriteString(c, "POST /reset-unblocks-read HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nonly ten b")
		select {
		case err := <-readErr:
			var se *stream.Error
			if !errors.As(err, &se) || se.Code != stream.ErrCodeCancel || se.Remote {
				t.Errorf("Read error = %v, want local CANCEL *stream.Error", err)
			}
		case <-time.After(testTimeout):
			t.Fatal("Read not unblocked by Reset")
		}
		if _, err := br.ReadByte(); err != io.EOF {
			t.Errorf("connection read = %v, want EOF after reset", err)
		}
	})
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

func TestServerStreamingFlush(t *testing.T) {
	testutil.CheckGoroutines(t)
	release := make(chan struct{})
	ts := startServer(t, ServerConfig{}, func(s stream.ServerStream) {
		h := header.Make(1)
		h.Add("link", "</style.css>; rel=preload")
		s.WriteHeader(&stream.Response{Status: 103, Header: h}, false)
		s.WriteHeader(&stream.Response{Status: 200, ContentLength: -1}, false)
		s.Write([]byte("first"))
		select {
		case <-release:
		case <-s.Context().Done():
		}
		s.Write([]byte("second"))
		s.CloseWrite()
	})
	var got1xx atomic.Int32
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		if code == 103 && h.Get("Link") != "" {
			got1xx.Add(1)
		}
		return nil
	}}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", "http://"+ts.addr+"/", nil)
	resp, err := newHTTPClient(t).Do(req)
	if err != nil {
		close(release)
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 5)
	_, err = io.ReadFull(resp.Body, buf)
	close(release)
	if err != nil || string(buf) != "first" {
		t.Fatalf("first write not flushed before the handler continued: %q, %v", buf, err)
	}
	rest, _ := io.ReadAll(resp.Body)
	if string(rest) != "second" {
		t.Errorf("rest = %q", rest)
	}
	if got1xx.Load() != 1 {
		t.Error("103 Early Hints not received")
	}
	if _, ok := resp.Header["Date"]; ok {
		t.Error("server added a Date header the handler did not set")
	}
	if _, ok := resp.Header["Content-Type"]; ok {
		t.Error("server sniffed a Content-Type the handler did not set")
	}
}

func TestServerConnShutdown(t *testing.T) {
	testutil.CheckGoroutines(t)
	inFlight := make(chan struct{})
	finish := make(chan struct{})
	ts := startServer(t, ServerConfig{}, func(s stream.ServerStream) {
		if s.Request().Path == "/slow" {
			close(inFlight)
			<-finish
		}
		s.WriteHeader(&stream.Response{Status: 200, ContentLength: 2}, false)
		s.Write([]byte("ok"))
		s.CloseWrite()
	})
	t.Run("idle connection closes at once", func(t *testing.T) {
		c, br := rawConn(t, ts.addr)
		io.WriteString(c, "GET /fast HTTP/1.1\r\nHost: h\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.ReadAll(resp.Body)
		waitFor(t, func() bool {
			ts.conn(0).(*serverConn).mu.Lock()
			defer ts.conn(0).(*serverConn).mu.Unlock()
			return ts.conn(0).(*serverConn).state == http.StateIdle
		})
		ts.conn(0).Shutdown()
		if _, err := br.ReadByte(); err != io.EOF {
			t.Errorf("read after Shutdown of idle conn = %v, want EOF", err)
		}
	})
	t.Run("connection that sent nothing closes at once", func(t *testing.T) {
		_, br := rawConn(t, ts.addr)
		waitFor(t, func() bool { ts.mu.Lock(); defer ts.mu.Unlock(); return len(ts.conns) == 2 })
		ts.conn(1).Shutdown()
		if _, err := br.ReadByte(); err != io.EOF {
			t.Errorf("read after Shutdown of a new conn = %v, want EOF", err)
		}
	})
	t.Run("busy connection closes after its response", func(t *testing.T) {
		c, br := rawConn(t, ts.addr)
		io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
		<-inFlight
		ts.conn(2).Shutdown()
		close(finish)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		if string(body) != "ok" || !resp.Close {
			t.Errorf("body %q, Connection: close = %v; want ok, true", body, resp.Close)
		}
		if _, err := br.ReadByte(); err != io.EOF {
			t.Errorf("read after response = %v, want EOF", err)
		}
	})
}

func TestServerShutdownWaitsForInFlight(t *testing.T) {
	testutil.CheckGoroutines(t)
	inFlight := make(chan struct{})
	ts := startServer(t, ServerConfig{}, func(s stream.ServerStream) {
		close(inFlight)
		time.Sleep(200 * time.Millisecond)
		s.WriteHeader(&stream.Response{Status: 200, ContentLength: 4}, false)
		s.Write([]byte("done"))
		s.CloseWrite()
	})
	type result struct {
		body string
		err  error
	}
	res := make(chan result, 1)
	go func() {
		resp, err := newHTTPClient(t).Get("http://" + ts.addr + "/")
		if err != nil {
			res <- result{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		res <- result{string(b), err}
	}()
	<-inFlight
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	start := time.Now()
	if err := ts.srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if time.Since(start) < 100*time.Millisecond {
		t.Error("Shutdown returned before the in-flight request finished")
	}
	if r := <-res; r.err != nil || r.body != "done" {
		t.Errorf("in-flight request got %q, %v", r.body, r.err)
	}
	// New connections are not served after Shutdown.
	c, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(testTimeout))
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: h\r\n\r\n")
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("connection accepted after Shutdown was served")
	}
}

// waitFor polls cond until it holds or the test timeout passes.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met before timeout")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
