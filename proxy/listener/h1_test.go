package listener

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/proxy/http/h1"
	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// hello answers with the protocol and scheme it saw, after an optional
// delay given in the path ("/slow").
func hello(s stream.ServerStream) {
	if s.Request().Path == "/slow" {
		time.Sleep(200 * time.Millisecond)
	}
	body := s.Conn().Proto + " " + s.Request().Scheme
	h := header.Make(1)
	h.Add("content-type", "text/plain")
	s.WriteHeader(&stream.Response{Status: 200, Header: h, ContentLength: int64(len(body))}, false)
	s.Write([]byte(body))
	s.CloseWrite()
}

// End to end: the listener hands real net/http clients to the h1 codec, in
// plaintext (AUTO detection) and over TLS (ALPN http/1.1), and drains them.
func TestListenerWithH1Server(t *testing.T) {
	testutil.CheckGoroutines(t)
	cert, pool := selfSigned(t)
	tests := []struct {
		name   string
		tls    *tls.Config
		client *tls.Config
		want   string
	}{
		{"plaintext auto", nil, nil, "HTTP/1.1 http"},
		{"tls alpn", &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}},
			&tls.Config{RootCAs: pool, NextProtos: []string{"http/1.1"}}, "HTTP/1.1 https"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := h1.NewServer(h1.ServerConfig{}, stream.HandlerFunc(hello))
			l := start(t, Config{Name: "e2e", TLS: tc.tls, HTTP1: srv.NewConn})
			t.Cleanup(func() { srv.Close() })
			tr := &http.Transport{TLSClientConfig: tc.client}
			t.Cleanup(tr.CloseIdleConnections)
			hc := &http.Client{Transport: tr, Timeout: testTimeout}
			scheme := "http"
			if tc.tls != nil {
				scheme = "https"
			}
			url := scheme + "://" + l.Addr().String()
			for range 2 {
				resp, err := hc.Get(url + "/")
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if string(b) != tc.want {
					t.Errorf("body %q, want %q", b, tc.want)
				}
			}
			if n := l.ActiveConns(); n != 1 {
				t.Errorf("ActiveConns = %d, want 1 keep-alive connection", n)
			}

			// Drain with one request in flight: it completes, with
			// "Connection: close", and Shutdown then returns.
			type result struct {
				resp *http.Response
				body string
				err  error
			}
			res := make(chan result, 1)
			go func() {
				resp, err := hc.Get(url + "/slow")
				if err != nil {
					res <- result{err: err}
					return
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				res <- result{resp, string(b), err}
			}()
			waitFor(t, func() bool { return l.ActiveConns() >= 1 })
			time.Sleep(50 * time.Millisecond) // let the request reach the handler
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			if err := l.Shutdown(ctx); err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
			r := <-res
			if r.err != nil || !strings.HasPrefix(r.body, "HTTP/1.1") || !r.resp.Close {
				t.Errorf("in-flight request during drain: body %q err %v", r.body, r.err)
			}
		})
	}
}
