package h1

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// FuzzServerRequest writes arbitrary bytes to an HTTP/1.1 server
// connection. The server must not panic or hang; what it answers must be
// HTTP/1.x; and every request it hands to the handler must be one a proxy
// can forward: a method token, valid lower-case header names and valid
// values (header.ValidName, header.ValidValue), a path in origin form, "*"
// or empty (CONNECT).
func FuzzServerRequest(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
		"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
		"GET http://b/y?q HTTP/1.1\r\nHost: a\r\n\r\n",
		"CONNECT b:443 HTTP/1.1\r\nHost: b:443\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
		"GET / HTTP/1.0\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	srv := NewServer(ServerConfig{ReadHeaderTimeout: time.Second, IdleTimeout: time.Second, MaxHeaderBytes: 8 << 10, MaxHeadersCount: 100},
		stream.HandlerFunc(func(s stream.ServerStream) {
			req := s.Request()
			problem := checkForwardable(req)
			_, _ = io.Copy(io.Discard, io.LimitReader(bodyReader{s}, 1<<20))
			status := 200
			if problem != "" {
				status = 599 // the fuzz body below turns it into a failure
			}
			h := header.Make(1)
			h.Add("x-problem", problem)
			if err := s.WriteHeader(&stream.Response{Status: status, Header: h, ContentLength: 0}, true); err != nil {
				return
			}
		}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				_ = srv.NewConn(c, stream.ConnInfo{ID: 1, LocalAddr: c.LocalAddr(), RemoteAddr: c.RemoteAddr()}).Serve()
			}()
		}
	}()
	f.Cleanup(func() {
		_ = ln.Close()
		<-served
		_ = srv.Close()
	})
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = c.Write(data)
		// End of input: net/http answers what it parsed, then closes.
		_ = c.(*net.TCPConn).CloseWrite()
		b, err := io.ReadAll(c)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("no end of connection within 5 s after %d bytes", len(data))
		}
		out := string(b)
		if out != "" && !strings.HasPrefix(out, "HTTP/1.") {
			t.Fatalf("answered %q, not HTTP/1.x", out[:min(len(out), 40)])
		}
		br := bufio.NewReader(strings.NewReader(out))
		for {
			r, err := http.ReadResponse(br, nil)
			if err != nil {
				break
			}
			_ = r.Body.Close()
			if r.StatusCode == 599 {
				t.Fatalf("handler got an unforwardable request: %s", r.Header.Get("x-problem"))
			}
		}
	})
}

// checkForwardable returns what makes req unfit to forward, or "".
func checkForwardable(req *stream.Request) string {
	if !header.ValidName(strings.ToLower(req.Method)) {
		return fmt.Sprintf("method %q", req.Method)
	}
	switch {
	case req.Method == http.MethodConnect && req.Path == "":
	case req.Path == "*" && req.Method == http.MethodOptions:
	case strings.HasPrefix(req.Path, "/"):
	default:
		return fmt.Sprintf("path %q for %s", req.Path, req.Method)
	}
	for _, f := range req.Header.Fields() {
		if !header.ValidName(f.Name) {
			return fmt.Sprintf("header name %q", f.Name)
		}
		if !header.ValidValue(f.Value) {
			return fmt.Sprintf("header %s value %q", f.Name, f.Value)
		}
	}
	return ""
}

// bodyReader adapts a stream's Read to io.Reader.
type bodyReader struct{ s stream.ServerStream }

func (b bodyReader) Read(p []byte) (int, error) { return b.s.Read(p) }
