package listener

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/proxy/stats"
)

const testTimeout = 10 * time.Second

// seen is what the fake codec observed on a connection.
type seen struct {
	info stream.ConnInfo
	data string
	err  error
}

// fakeCodec is a trivial ServerConn: it reads n bytes, reports them, writes
// "ok", then acts like an idle connection (ends on Shutdown or Close) or,
// with hold set, like one with a request in flight (ends when hold is
// closed, Shutdown notwithstanding, or on Close).
type fakeCodec struct {
	c    net.Conn
	info stream.ConnInfo
	n    int
	got  chan<- seen
	hold chan struct{}

	shutOnce, closeOnce sync.Once
	shut, closed        chan struct{}
}

func (f *fakeCodec) Serve() error {
	data := make([]byte, f.n)
	_, err := io.ReadFull(f.c, data)
	f.got <- seen{info: f.info, data: string(data), err: err}
	f.c.Write([]byte("ok"))
	if f.hold != nil {
		select {
		case <-f.hold:
		case <-f.closed:
		}
	} else {
		select {
		case <-f.shut:
		case <-f.closed:
		}
	}
	return f.c.Close()
}

func (f *fakeCodec) Shutdown() { f.shutOnce.Do(func() { close(f.shut) }) }

func (f *fakeCodec) Close() error {
	f.closeOnce.Do(func() { close(f.closed) })
	return f.c.Close()
}

// factory returns a ConnFactory making fakeCodecs that read n bytes.
func factory(n int, got chan<- seen, hold chan struct{}) ConnFactory {
	return func(c net.Conn, info stream.ConnInfo) stream.ServerConn {
		return &fakeCodec{c: c, info: info, n: n, got: got, hold: hold, shut: make(chan struct{}), closed: make(chan struct{})}
	}
}

// start binds and serves cfg on loopback; cleanup closes the listener and
// checks Serve returned nil.
func start(t *testing.T, cfg Config) *Listener {
	t.Helper()
	if cfg.Address == "" {
		cfg.Address = "127.0.0.1:0"
	}
	l, err := Listen(cfg)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- l.Serve() }()
	t.Cleanup(func() {
		l.Close()
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(testTimeout):
			t.Error("Serve did not return after Close")
		}
	})
	return l
}

func dial(t *testing.T, l *Listener) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", l.Addr().String(), testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(testTimeout))
	t.Cleanup(func() { c.Close() })
	return c
}

func recv(t *testing.T, ch <-chan seen) seen {
	t.Helper()
	select {
	case s := <-ch:
		return s
	case <-time.After(testTimeout):
		t.Fatal("codec never saw the connection")
		return seen{}
	}
}

const h2preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

func TestProtocolSelection(t *testing.T) {
	testutil.CheckGoroutines(t)
	tests := []struct {
		name      string
		codec     Codec
		send      string
		wantProto string
	}{
		{"auto http1 GET", Auto, "GET / HTTP/1.1\r\nHost: h\r\n\r\n", "HTTP/1.1"},
		{"auto http1 POST shares the first byte", Auto, "POST / HTTP/1.1\r\nHost: h\r\n\r\n", "HTTP/1.1"},
		{"auto h2 preface", Auto, h2preface + "\x00\x00\x00\x04\x00\x00\x00\x00\x00", "HTTP/2"},
		{"auto preface prefix then divergence", Auto, "PRI * HTTP/1.1\r\n\r\n", "HTTP/1.1"},
		{"forced HTTP2 passes a non-preface on", HTTP2, "GET / HTTP/1.1\r\n\r\n", "HTTP/2"},
		{"forced HTTP1 passes a preface on", HTTP1, h2preface, "HTTP/1.1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := make(chan seen, 1)
			f := factory(len(tc.send), got, nil)
			l := start(t, Config{Name: "test", Codec: tc.codec, HTTP1: f, HTTP2: f})
			c := dial(t, l)
			// Byte at a time, so detection sees every split.
			for i := range len(tc.send) {
				if _, err := c.Write([]byte{tc.send[i]}); err != nil {
					t.Fatal(err)
				}
				time.Sleep(time.Millisecond)
			}
			s := recv(t, got)
			if s.err != nil || s.data != tc.send {
				t.Errorf("codec read %q, %v; want the client's bytes replayed %q", s.data, s.err, tc.send)
			}
			if s.info.Proto != tc.wantProto {
				t.Errorf("Proto = %q, want %q", s.info.Proto, tc.wantProto)
			}
			if s.info.ID == 0 || s.info.RemoteAddr.String() != c.LocalAddr().String() || s.info.TLS != nil {
				t.Errorf("ConnInfo = %+v", s.info)
			}
		})
	}
}

// An HTTP/1 client is dispatched on its first byte, without waiting for
// the 24 a preface would take.
func TestSniffDecidesOnFirstDifferingByte(t *testing.T) {
	testutil.CheckGoroutines(t)
	dispatched := make(chan struct{})
	got := make(chan seen, 1)
	f := factory(3, got, nil)
	l := start(t, Config{Name: "test", HTTP1: func(c net.Conn, info stream.ConnInfo) stream.ServerConn {
		close(dispatched)
		return f(c, info)
	}})
	c := dial(t, l)
	c.Write([]byte("G"))
	select {
	case <-dispatched:
	case <-time.After(testTimeout):
		t.Fatal("one non-preface byte did not dispatch the connection to HTTP/1")
	}
	c.Write([]byte("ET"))
	if s := recv(t, got); s.data != "GET" {
		t.Errorf("codec read %q", s.data)
	}
}

// selfSigned returns a server certificate for 127.0.0.1 and a pool that
// trusts it.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "meshd test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}, pool
}

func TestTLSALPN(t *testing.T) {
	testutil.CheckGoroutines(t)
	cert, pool := selfSigned(t)
	tests := []struct {
		name      string
		alpn      []string
		send      string
		wantProto string
		wantALPN  string
	}{
		{"alpn h2", []string{"h2", "http/1.1"}, h2preface, "HTTP/2", "h2"},
		{"alpn http/1.1", []string{"http/1.1"}, "GET / HTTP/1.1\r\n\r\n", "HTTP/1.1", "http/1.1"},
		{"no alpn, http1 sniffed", nil, "GET / HTTP/1.1\r\n\r\n", "HTTP/1.1", ""},
		{"no alpn, preface sniffed", nil, h2preface, "HTTP/2", ""},
	}
	store := stats.NewStore()
	got := make(chan seen, 1)
	l := start(t, Config{
		Name:  "tls",
		TLS:   &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}},
		HTTP1: factory(0, got, nil), HTTP2: factory(0, got, nil),
		Stats: StatsScope(store.Root(), "test"),
	})
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			raw := dial(t, l)
			c := tls.Client(raw, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", NextProtos: tc.alpn})
			if err := c.Handshake(); err != nil {
				t.Fatal(err)
			}
			if _, err := io.WriteString(c, tc.send); err != nil {
				t.Fatal(err)
			}
			s := recv(t, got)
			if s.info.Proto != tc.wantProto {
				t.Errorf("Proto = %q, want %q", s.info.Proto, tc.wantProto)
			}
			if s.info.TLS == nil || s.info.TLS.NegotiatedProtocol != tc.wantALPN {
				t.Errorf("ConnInfo.TLS = %+v, want negotiated %q", s.info.TLS, tc.wantALPN)
			}
		})
	}
	name := "listener.test.ssl.handshake"
	if v := counter(store, name); v != uint64(len(tests)) {
		t.Errorf("%s = %d, want %d", name, v, len(tests))
	}
}

func counter(s *stats.Store, name string) (v uint64) {
	s.Visit(func(c *stats.Counter) {
		if c.FlatName() == name {
			v = c.Value()
		}
	}, nil, nil)
	return v
}

func gauge(s *stats.Store, name string) (v int64) {
	s.Visit(nil, func(g *stats.Gauge) {
		if g.FlatName() == name {
			v = g.Value()
		}
	}, nil)
	return v
}

func TestHandshakeTimeout(t *testing.T) {
	testutil.CheckGoroutines(t)
	cert, _ := selfSigned(t)
	tests := []struct {
		name string
		tls  *tls.Config
		stat string
	}{
		{"tls handshake", &tls.Config{Certificates: []tls.Certificate{cert}}, "downstream_cx_transport_socket_connect_timeout"},
		{"protocol detection", nil, "downstream_pre_cx_timeout"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			store := stats.NewStore()
			got := make(chan seen, 1)
			l := start(t, Config{Name: "slow", TLS: tc.tls, HandshakeTimeout: 100 * time.Millisecond,
				HTTP1: factory(0, got, nil), HTTP2: factory(0, got, nil), Stats: StatsScope(store.Root(), "test")})
			c := dial(t, l)
			begin := time.Now()
			if _, err := c.Read(make([]byte, 1)); err != io.EOF {
				t.Errorf("silent client read %v, want EOF when the server gives up", err)
			}
			if d := time.Since(begin); d > 5*time.Second {
				t.Errorf("closed after %v", d)
			}
			prefix := "listener.test."
			waitFor(t, func() bool { return counter(store, prefix+"downstream_cx_destroy") == 1 })
			if v := counter(store, prefix+tc.stat); v != 1 {
				t.Errorf("%s = %d, want 1", tc.stat, v)
			}
			if tc.tls != nil && counter(store, prefix+"ssl.connection_error") != 1 {
				t.Error("ssl.connection_error not counted")
			}
			if len(got) != 0 || l.ActiveConns() != 0 || gauge(store, prefix+"downstream_cx_active") != 0 {
				t.Errorf("codec called %d times, %d active", len(got), l.ActiveConns())
			}
		})
	}
}

func TestStopAcceptingRefusesNewConnections(t *testing.T) {
	testutil.CheckGoroutines(t)
	got := make(chan seen, 2)
	l, err := Listen(Config{Name: "stop", Address: "127.0.0.1:0", Codec: HTTP1, HTTP1: factory(1, got, nil)})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- l.Serve() }()
	defer l.Close()
	existing := dial(t, l)
	existing.Write([]byte("a"))
	recv(t, got)

	l.StopAccepting()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve = %v, want nil after StopAccepting", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Serve did not return")
	}
	if c, err := net.DialTimeout("tcp", l.Addr().String(), testTimeout); err == nil {
		c.Close()
		t.Error("dial succeeded after StopAccepting")
	}
	// The existing connection is still being served.
	buf := make([]byte, 2)
	if _, err := io.ReadFull(existing, buf); err != nil || string(buf) != "ok" {
		t.Errorf("existing connection: %q, %v", buf, err)
	}
	if n := l.ActiveConns(); n != 1 {
		t.Errorf("ActiveConns = %d, want 1", n)
	}
}

func TestShutdown(t *testing.T) {
	testutil.CheckGoroutines(t)
	t.Run("waits for a busy connection, closes idle ones", func(t *testing.T) {
		hold := make(chan struct{})
		got := make(chan seen, 2)
		idle := factory(1, got, nil)
		busy := factory(1, got, hold)
		l := start(t, Config{Name: "drain", HTTP1: idle, HTTP2: busy})
		ci := dial(t, l)
		ci.Write([]byte("G")) // HTTP/1: the idle codec
		recv(t, got)
		cb := dial(t, l)
		cb.Write([]byte(h2preface)) // HTTP/2: the busy codec (reads 1 byte)
		recv(t, got)

		done := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			done <- l.Shutdown(ctx)
		}()
		// The idle connection is closed promptly...
		if _, err := io.ReadAll(ci); err != nil {
			t.Errorf("idle conn: %v", err)
		}
		waitFor(t, func() bool { return l.ActiveConns() == 1 })
		// ...the busy one holds Shutdown until it finishes.
		select {
		case err := <-done:
			t.Fatalf("Shutdown returned %v with a busy connection", err)
		case <-time.After(100 * time.Millisecond):
		}
		if c, err := net.DialTimeout("tcp", l.Addr().String(), testTimeout); err == nil {
			c.Close()
			t.Error("dial succeeded during Shutdown")
		}
		close(hold)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Shutdown = %v", err)
			}
		case <-time.After(testTimeout):
			t.Fatal("Shutdown did not return after the busy connection finished")
		}
		if n := l.ActiveConns(); n != 0 {
			t.Errorf("ActiveConns = %d after Shutdown", n)
		}
	})
	t.Run("deadline closes the rest", func(t *testing.T) {
		got := make(chan seen, 1)
		l := start(t, Config{Name: "drain", HTTP1: factory(1, got, make(chan struct{}))})
		c := dial(t, l)
		c.Write([]byte("G"))
		recv(t, got)
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		if err := l.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Shutdown = %v, want DeadlineExceeded", err)
		}
		if n := l.ActiveConns(); n != 0 {
			t.Errorf("ActiveConns = %d after forced close", n)
		}
		if _, err := io.ReadAll(c); err != nil {
			t.Errorf("forced-closed conn: %v", err)
		}
	})
}

func TestStatsAndBindErrors(t *testing.T) {
	testutil.CheckGoroutines(t)
	store := stats.NewStore()
	got := make(chan seen, 3)
	l := start(t, Config{Name: "stats", Codec: HTTP1, HTTP1: factory(1, got, nil), Stats: StatsScope(store.Root(), "127.0.0.1:0")})
	for range 3 {
		c := dial(t, l)
		c.Write([]byte("x"))
		recv(t, got)
	}
	prefix := "listener.127.0.0.1_0."
	if v := counter(store, prefix+"downstream_cx_total"); v != 3 {
		t.Errorf("downstream_cx_total = %d", v)
	}
	if v := gauge(store, prefix+"downstream_cx_active"); v != 3 {
		t.Errorf("downstream_cx_active = %d", v)
	}
	store.Visit(func(c *stats.Counter) {
		if c.FlatName() == prefix+"downstream_cx_total" {
			if tags := c.Tags(); c.PromName() != "envoy_listener_downstream_cx_total" || len(tags) != 1 || tags[0].Value != "127.0.0.1_0" {
				t.Errorf("prometheus name %s %v", c.PromName(), tags)
			}
		}
	}, nil, nil)

	_, err := Listen(Config{Name: "dup", Address: l.Addr().String()})
	if err == nil || !strings.Contains(err.Error(), l.Addr().String()) {
		t.Errorf("binding a used address: %v; want an error naming it", err)
	}
}

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

func TestAcceptedConnHasNoDelay(t *testing.T) {
	testutil.CheckGoroutines(t)
	nodelay := make(chan int, 1)
	got := make(chan seen, 1)
	f := factory(0, got, nil)
	l := start(t, Config{Name: "nodelay", Codec: HTTP1, HTTP1: func(c net.Conn, info stream.ConnInfo) stream.ServerConn {
		v := -1
		if raw, err := c.(*net.TCPConn).SyscallConn(); err == nil {
			raw.Control(func(fd uintptr) { v, _ = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_NODELAY) })
		}
		nodelay <- v
		return f(c, info)
	}})
	dial(t, l)
	recv(t, got)
	if v := <-nodelay; v <= 0 {
		t.Errorf("TCP_NODELAY = %d on an accepted connection, want set", v)
	}
}
