package listener

import (
	"crypto/tls"
	"io"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/proxy/stats"
)

// TestTLSOptional is PERMISSIVE mTLS on one socket: a TLS client goes
// through the handshake (and ALPN), a plaintext client of either HTTP
// version is served without TLS, and each decision is counted; a client
// that sends nothing times out in detection.
func TestTLSOptional(t *testing.T) {
	testutil.CheckGoroutines(t)
	cert, pool := selfSigned(t)
	store := stats.NewStore()
	got := make(chan seen, 1)
	l := start(t, Config{
		Name:             "permissive",
		TLS:              &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}},
		TLSOptional:      true,
		HandshakeTimeout: 500 * time.Millisecond,
		HTTP1:            factory(len("GET / HTTP/1.1\r\n\r\n"), got, nil),
		HTTP2:            factory(len(h2preface), got, nil),
		Stats:            StatsScope(store.Root(), "test"),
	})
	tests := []struct {
		name      string
		tls       bool
		alpn      []string
		send      string
		wantProto string
	}{
		{"tls h2", true, []string{"h2"}, h2preface, "HTTP/2"},
		{"tls http/1.1", true, []string{"http/1.1"}, "GET / HTTP/1.1\r\n\r\n", "HTTP/1.1"},
		{"plaintext h2 prior knowledge", false, nil, h2preface, "HTTP/2"},
		{"plaintext http/1.1", false, nil, "GET / HTTP/1.1\r\n\r\n", "HTTP/1.1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, l)
			if tc.tls {
				tc := tls.Client(c, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", NextProtos: tc.alpn})
				if err := tc.Handshake(); err != nil {
					t.Fatalf("TLS handshake: %v", err)
				}
				c = tc
			}
			if _, err := io.WriteString(c, tc.send); err != nil {
				t.Fatal(err)
			}
			s := recv(t, got)
			if s.err != nil || s.data != tc.send {
				t.Errorf("codec read %q, %v; want %q", s.data, s.err, tc.send)
			}
			if s.info.Proto != tc.wantProto {
				t.Errorf("Proto = %q, want %q", s.info.Proto, tc.wantProto)
			}
			if (s.info.TLS != nil) != tc.tls {
				t.Errorf("ConnInfo.TLS set = %v, want %v", s.info.TLS != nil, tc.tls)
			}
			reply := make([]byte, 2)
			if _, err := io.ReadFull(c, reply); err != nil || string(reply) != "ok" {
				t.Errorf("client read %q, %v; want ok", reply, err)
			}
		})
	}
	// A client that never speaks is dropped at the handshake timeout.
	silent := dial(t, l)
	if n, err := silent.Read(make([]byte, 1)); err == nil {
		t.Errorf("silent client read %d bytes, want the connection closed", n)
	}
	for name, want := range map[string]uint64{
		"listener.test.tls_inspector.tls_found":     2,
		"listener.test.tls_inspector.tls_not_found": 2,
		"listener.test.ssl.handshake":               2,
		"listener.test.downstream_pre_cx_timeout":   1,
	} {
		if v := counter(store, name); v != want {
			t.Errorf("%s = %d, want %d", name, v, want)
		}
	}
}

// TestTLSRequiredWithoutOptional: without TLSOptional a plaintext client
// fails the handshake instead of reaching a codec.
func TestTLSRequiredWithoutOptional(t *testing.T) {
	testutil.CheckGoroutines(t)
	cert, _ := selfSigned(t)
	store := stats.NewStore()
	got := make(chan seen, 1)
	l := start(t, Config{
		Name:  "strict",
		TLS:   &tls.Config{Certificates: []tls.Certificate{cert}},
		HTTP1: factory(0, got, nil), HTTP2: factory(0, got, nil),
		Stats: StatsScope(store.Root(), "test"),
	})
	c := dial(t, l)
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(c); err != nil {
		t.Logf("read after plaintext request: %v", err)
	}
	select {
	case s := <-got:
		t.Fatalf("a codec served a plaintext connection on a TLS listener: %+v", s.info)
	default:
	}
	if v := counter(store, "listener.test.ssl.connection_error"); v != 1 {
		t.Errorf("ssl.connection_error = %d, want 1", v)
	}
	if v := counter(store, "listener.test.tls_inspector.tls_not_found"); v != 0 {
		t.Errorf("tls_inspector counted without TLSOptional: %d", v)
	}
}
