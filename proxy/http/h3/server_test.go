package h3

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"
	"strings"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/mtls/mtlstest"
	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// testMeshdServer runs a Server with h on 127.0.0.1 allowing maxStreams
// concurrent request streams; it returns the address, a client TLS config
// and the server. The server is closed at the end of the test.
func testMeshdServer(t *testing.T, maxStreams int64, cfg ServerConfig, h stream.Handler) (string, *tls.Config, *Server) {
	t.Helper()
	ca := mtlstest.NewCA(t, "test.example")
	svid := ca.Issue(t, "spiffe://test.example/ns/a/sa/server")
	cert := mtlstest.TLSCertificate(svid)
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: udp}
	ln, err := tr.Listen(&tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{NextProto}}, &quic.Config{MaxIncomingStreams: maxStreams})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler) // the panic case logs a stack
	}
	srv := NewServer(cfg, h)
	done := make(chan error, 1)
	go func() { done <- srv.ServeListener(ln) }()
	t.Cleanup(func() {
		_ = srv.Close()
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("ServeListener returned %v, want ErrServerClosed", err)
		}
		_ = tr.Close()
		_ = udp.Close()
	})
	pool := x509.NewCertPool()
	pool.AddCert(ca.Bundle().X509Authorities()[0])
	return udp.LocalAddr().String(), &tls.Config{RootCAs: pool, InsecureSkipVerify: true}, srv
}

// echoHandler answers with the request body, x-method/x-path/x-authority
// headers, and trailers echoing the request's x-req trailer.
var echoHandler = stream.HandlerFunc(func(s stream.ServerStream) {
	req := s.Request()
	body, err := io.ReadAll(s)
	if err != nil {
		s.Reset(stream.ErrCodeCancel)
		return
	}
	h := header.Make(4)
	h.Add("x-method", req.Method)
	h.Add("x-path", req.Path)
	h.Add("x-authority", req.Authority)
	h.Add("x-header", req.Header.Get("x-header"))
	if err := s.WriteHeader(&stream.Response{Status: 200, Header: h, ContentLength: -1}, false); err != nil {
		return
	}
	for len(body) > 0 {
		n := min(len(body), 64<<10)
		if _, err := s.Write(body[:n]); err != nil {
			return
		}
		body = body[n:]
	}
	tr := header.Make(1)
	rt := s.Trailers()
	tr.Add("x-got-trailer", rt.Get("x-req"))
	_ = s.WriteTrailers(tr)
})

func TestServerRoundTrip(t *testing.T) {
	testutil.CheckGoroutines(t)
	addr, tc, _ := testMeshdServer(t, 100, ServerConfig{}, echoHandler)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cc, err := Dial(ctx, addr, tc, &ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	for _, tt := range []struct {
		name    string
		size    int
		trailer string
	}{
		{"empty", 0, ""},
		{"small with trailers", 100, "t1"},
		{"10 MiB", 10 << 20, "big"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := header.Make(1)
			h.Add("x-header", "v")
			cs, err := cc.NewStream(ctx, &stream.Request{Method: "POST", Scheme: "https", Authority: "svc", Path: "/p?q=1", Header: h, ContentLength: -1}, false)
			if err != nil {
				t.Fatal(err)
			}
			body := testutil.BigBody(tt.size)
			go func() {
				for b := body; len(b) > 0; {
					n := min(len(b), 100<<10)
					if _, err := cs.Write(b[:n]); err != nil {
						return
					}
					b = b[n:]
				}
				tr := header.Make(1)
				if tt.trailer != "" {
					tr.Add("x-req", tt.trailer)
				}
				_ = cs.CloseWrite(tr)
			}()
			resp, err := cs.Response(ctx)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(cs)
			if err != nil {
				t.Fatal(err)
			}
			if resp.Status != 200 || resp.Header.Get("x-method") != "POST" || resp.Header.Get("x-path") != "/p?q=1" ||
				resp.Header.Get("x-authority") != "svc" || resp.Header.Get("x-header") != "v" {
				t.Errorf("response %d %v", resp.Status, resp.Header.Fields())
			}
			if !bytes.Equal(got, body) {
				t.Errorf("body of %d bytes, want %d echoed", len(got), len(body))
			}
			rt := cs.Trailers()
			if g := rt.Get("x-got-trailer"); g != tt.trailer {
				t.Errorf("trailer %q, want %q", g, tt.trailer)
			}
		})
	}
}

// rawConn is a test client speaking raw HTTP/3 frames to a Server.
type rawConn struct {
	t  *testing.T
	qc *quic.Conn
}

func dialRaw(t *testing.T, addr string, tc *tls.Config) *rawConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tc = tc.Clone()
	tc.NextProtos = []string{NextProto}
	qc, err := quic.DialAddr(ctx, addr, tc, &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = qc.CloseWithError(0, "") })
	return &rawConn{t: t, qc: qc}
}

// rawHeaders encodes fields ("name", "value", ...) as a HEADERS frame.
func rawHeaders(t *testing.T, fields ...string) []byte {
	t.Helper()
	return meshdHeaders(fields...)
}

func dataFrame(p string) []byte {
	return append(appendFrameHeader(nil, frameData, uint64(len(p))), p...)
}

var getFields = []string{":method", "GET", ":scheme", "https", ":authority", "svc", ":path", "/"}

// outcome is what a raw request stream ended with.
type outcome struct {
	streamCode http3.ErrCode // the server's RESET_STREAM code; 0 with connCode or status
	connCode   http3.ErrCode // the server's CONNECTION_CLOSE code
	status     int           // the response's :status
	body       string
}

// do writes b on a new request stream, ends it, and reads the outcome.
func (c *rawConn) do(b []byte) outcome {
	c.t.Helper()
	qs, err := c.qc.OpenStream()
	if err != nil {
		c.t.Fatal(err)
	}
	if _, err := qs.Write(b); err != nil {
		// The server may stop the request (STOP_SENDING) before all of it
		// was written; its answer is still read below.
		if _, ok := errors.AsType[*quic.StreamError](err); !ok {
			c.t.Fatal(err)
		}
	}
	_ = qs.Close()
	_ = qs.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := io.ReadAll(qs)
	if err != nil {
		if se, ok := errors.AsType[*quic.StreamError](err); ok {
			return outcome{streamCode: http3.ErrCode(se.ErrorCode)}
		}
		if ae, ok := errors.AsType[*quic.ApplicationError](err); ok {
			return outcome{connCode: http3.ErrCode(ae.ErrorCode)}
		}
		c.t.Fatalf("reading the response: %v", err)
	}
	r := bufio.NewReader(bytes.NewReader(resp))
	var o outcome
	for {
		typ, length, err := readFrameHeader(r)
		if err != nil {
			return o
		}
		p, err := readBlock(r, length, 1<<20)
		if err != nil {
			c.t.Fatalf("response frame: %v", err)
		}
		switch {
		case typ == frameHeaders && o.status == 0:
			f, err := decodeFields(p, false)
			if err != nil {
				c.t.Fatalf("response headers: %v", err)
			}
			o.status = f.status
		case typ == frameData:
			o.body += string(p)
		}
	}
}

func TestServerRequestErrors(t *testing.T) {
	testutil.CheckGoroutines(t)
	addr, tc, _ := testMeshdServer(t, 100, ServerConfig{MaxHeaderBytes: 4096}, stream.HandlerFunc(func(s stream.ServerStream) {
		// Wait until the whole request arrived, so the last DATA frame and
		// FIN are read in one call.
		time.Sleep(20 * time.Millisecond)
		body, err := io.ReadAll(s)
		if err != nil {
			return
		}
		if s.Request().Path == "/panic" {
			panic("handler failure")
		}
		if s.Request().Path == "/unfinished" {
			_ = s.WriteHeader(&stream.Response{Status: 200, ContentLength: -1}, false)
			return
		}
		if err := s.WriteHeader(&stream.Response{Status: 200, ContentLength: int64(len(body))}, false); err != nil {
			return
		}
		_, _ = s.Write(body)
		_ = s.CloseWrite()
	}))
	post := []string{":method", "POST", ":scheme", "https", ":authority", "svc", ":path", "/"}
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	for _, tt := range []struct {
		name string
		req  []byte
		want outcome
	}{
		{"GET", rawHeaders(t, getFields...), outcome{status: 200}},
		{"body and FIN together", cat(rawHeaders(t, post...), dataFrame("hello "), dataFrame(strings.Repeat("x", 5000))), outcome{status: 200, body: "hello " + strings.Repeat("x", 5000)}},
		{"unknown frame types skipped", cat(appendFrameHeader(nil, 0x21, 3), []byte("abc"), rawHeaders(t, post...), appendFrameHeader(nil, 0x21, 0), dataFrame("ok")), outcome{status: 200, body: "ok"}},
		{"content-length matches", cat(rawHeaders(t, append(post, "content-length", "2")...), dataFrame("ok")), outcome{status: 200, body: "ok"}},
		{"content-length too short", cat(rawHeaders(t, append(post, "content-length", "5")...), dataFrame("ok")), outcome{streamCode: http3.ErrCodeMessageError}},
		{"content-length too long", cat(rawHeaders(t, append(post, "content-length", "1")...), dataFrame("ok")), outcome{streamCode: http3.ErrCodeMessageError}},
		{"no :method", rawHeaders(t, ":scheme", "https", ":path", "/", ":authority", "svc"), outcome{streamCode: http3.ErrCodeMessageError}},
		{"no :path", rawHeaders(t, ":method", "GET", ":scheme", "https", ":authority", "svc"), outcome{streamCode: http3.ErrCodeMessageError}},
		{"duplicate :path", rawHeaders(t, append(getFields, ":path", "/x")...), outcome{streamCode: http3.ErrCodeMessageError}},
		{"unknown pseudo-header", rawHeaders(t, append(getFields, ":protocol", "x")...), outcome{streamCode: http3.ErrCodeMessageError}},
		{"pseudo-header after a field", rawHeaders(t, ":method", "GET", "a", "b", ":scheme", "https", ":path", "/"), outcome{streamCode: http3.ErrCodeMessageError}},
		{"upper-case name", rawHeaders(t, append(getFields, "X-A", "b")...), outcome{streamCode: http3.ErrCodeMessageError}},
		{"connection-specific field", rawHeaders(t, append(getFields, "connection", "close")...), outcome{streamCode: http3.ErrCodeMessageError}},
		{"te other than trailers", rawHeaders(t, append(getFields, "te", "gzip")...), outcome{streamCode: http3.ErrCodeMessageError}},
		{"bad content-length", rawHeaders(t, append(getFields, "content-length", "-1")...), outcome{streamCode: http3.ErrCodeMessageError}},
		{"signed content-length", rawHeaders(t, append(getFields, "content-length", "+5")...), outcome{streamCode: http3.ErrCodeMessageError}},
		{"undecodable QPACK block", cat(appendFrameHeader(nil, frameHeaders, 3), []byte{0, 0, 0xff}), outcome{streamCode: http3.ErrCodeQPACKDecompressionFailed}},
		{"stream ends before HEADERS", nil, outcome{streamCode: http3.ErrCodeRequestIncomplete}},
		{"header section over the limit", rawHeaders(t, append(getFields, "x-big", strings.Repeat("v", 5000))...), outcome{status: 431}},
		{"decoded fields over the limit", rawHeaders(t, append(getFields, strings.Split(strings.Repeat("a,b,", 200), ",")[:400]...)...), outcome{status: 431}},
		{"handler panic", rawHeaders(t, ":method", "GET", ":scheme", "https", ":authority", "svc", ":path", "/panic"), outcome{streamCode: http3.ErrCodeInternalError}},
		{"response not ended", rawHeaders(t, ":method", "GET", ":scheme", "https", ":authority", "svc", ":path", "/unfinished"), outcome{streamCode: http3.ErrCodeInternalError}},
		{"DATA before HEADERS", dataFrame("x"), outcome{connCode: http3.ErrCodeFrameUnexpected}},
		{"SETTINGS on a request stream", cat(rawHeaders(t, post...), appendFrameHeader(nil, frameSettings, 0)), outcome{connCode: http3.ErrCodeFrameUnexpected}},
		{"stream ends inside a DATA frame", cat(rawHeaders(t, post...), appendFrameHeader(nil, frameData, 10), []byte("abc")), outcome{connCode: http3.ErrCodeFrameError}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := dialRaw(t, addr, tc)
			got := c.do(tt.req)
			if tt.want.status == 200 && tt.want.body == "" {
				got.body = ""
			}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestServerControlStreamErrors(t *testing.T) {
	testutil.CheckGoroutines(t)
	addr, tc, _ := testMeshdServer(t, 100, ServerConfig{}, echoHandler)
	settings := appendFrameHeader(nil, frameSettings, 0)
	for _, tt := range []struct {
		name    string
		streams [][]byte
		want    http3.ErrCode
	}{
		{"no SETTINGS first", [][]byte{append([]byte{streamControl}, dataFrame("x")...)}, http3.ErrCodeMissingSettings},
		{"DATA on the control stream", [][]byte{append(append([]byte{streamControl}, settings...), dataFrame("x")...)}, http3.ErrCodeFrameUnexpected},
		{"second SETTINGS", [][]byte{append(append([]byte{streamControl}, settings...), settings...)}, http3.ErrCodeFrameUnexpected},
		{"HTTP/2 setting", [][]byte{{streamControl, frameSettings, 2, 0x4, 0}}, http3.ErrCodeSettingsError},
		{"two control streams", [][]byte{append([]byte{streamControl}, settings...), append([]byte{streamControl}, settings...)}, http3.ErrCodeStreamCreationError},
		{"push stream from a client", [][]byte{{streamPush, 0}}, http3.ErrCodeStreamCreationError},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := dialRaw(t, addr, tc)
			for _, b := range tt.streams {
				s, err := c.qc.OpenUniStream()
				if err != nil {
					t.Fatal(err)
				}
				if _, err := s.Write(b); err != nil {
					t.Fatal(err)
				}
			}
			select {
			case <-c.qc.Context().Done():
			case <-time.After(10 * time.Second):
				t.Fatal("connection not closed")
			}
			ae, ok := errors.AsType[*quic.ApplicationError](context.Cause(c.qc.Context()))
			if !ok || !ae.Remote || http3.ErrCode(ae.ErrorCode) != tt.want {
				t.Errorf("connection closed with %v, want %v from the server", context.Cause(c.qc.Context()), tt.want)
			}
		})
	}
}

// TestServerShutdownGoAway drains a connection with a request in flight:
// the client gets GOAWAY naming the first stream not accepted, a stream
// opened afterwards is refused with H3_REQUEST_REJECTED, the request in
// flight completes, and Shutdown returns once the client closed.
func TestServerShutdownGoAway(t *testing.T) {
	testutil.CheckGoroutines(t)
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	addr, tc, srv := testMeshdServer(t, 100, ServerConfig{}, stream.HandlerFunc(func(s stream.ServerStream) {
		started <- struct{}{}
		<-release
		_ = s.WriteHeader(&stream.Response{Status: 200, ContentLength: 0}, true)
	}))
	c := dialRaw(t, addr, tc)
	ctrl := make(chan quic.StreamID, 1)
	go func() {
		s, err := c.qc.AcceptUniStream(context.Background())
		if err != nil {
			return
		}
		r := bufio.NewReader(s)
		if typ, err := quicvarint.Read(r); err != nil || typ != streamControl {
			return
		}
		for {
			typ, length, err := readFrameHeader(r)
			if err != nil {
				return
			}
			p, err := readBlock(r, length, 1024)
			if err != nil {
				return
			}
			if typ == frameGoAway {
				id, _, _ := quicvarint.Parse(p)
				ctrl <- quic.StreamID(id)
				return
			}
		}
	}()
	first := make(chan outcome, 1)
	go func() { first <- c.do(rawHeaders(t, getFields...)) }()
	<-started
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		shut <- srv.Shutdown(ctx)
	}()
	select {
	case id := <-ctrl:
		if id != 4 {
			t.Errorf("GOAWAY stream ID %d, want 4 (one request accepted)", id)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no GOAWAY")
	}
	if got := c.do(rawHeaders(t, getFields...)); got.streamCode != http3.ErrCodeRequestRejected {
		t.Errorf("stream after GOAWAY: %+v, want H3_REQUEST_REJECTED", got)
	}
	close(release)
	if got := <-first; got.status != 200 {
		t.Errorf("request in flight: %+v, want 200", got)
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v before the client closed", err)
	case <-time.After(50 * time.Millisecond):
	}
	_ = c.qc.CloseWithError(0, "")
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

// TestServerGoAwayToClientConn: meshd's client, told GOAWAY, fails new
// requests as unprocessed and closes the connection once idle, which
// ends the server's Shutdown.
func TestServerGoAwayToClientConn(t *testing.T) {
	testutil.CheckGoroutines(t)
	addr, tc, srv := testMeshdServer(t, 100, ServerConfig{}, echoHandler)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	goaway := make(chan struct{})
	closed := make(chan error, 1)
	cc, err := Dial(ctx, addr, tc, &ClientConfig{OnGoAway: func() { close(goaway) }, OnClose: func(err error) { closed <- err }})
	if err != nil {
		t.Fatal(err)
	}
	// A request first, so the server has taken the connection.
	cs, err := cc.NewStream(ctx, &stream.Request{Method: "GET", Scheme: "https", Authority: "svc", Path: "/", Header: header.Make(0), ContentLength: -1}, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Response(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, cs); err != nil {
		t.Fatal(err)
	}
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	<-goaway
	if err := <-closed; err != nil {
		t.Errorf("client connection closed with %v, want a graceful close", err)
	}
	_, err = cc.NewStream(ctx, &stream.Request{Method: "GET", Scheme: "https", Authority: "svc", Path: "/", Header: header.Make(0), ContentLength: -1}, true)
	if !stream.Unprocessed(err) {
		t.Errorf("NewStream after GOAWAY: %v, want an unprocessed error", err)
	}
}

func TestServerIdleTimeout(t *testing.T) {
	testutil.CheckGoroutines(t)
	addr, tc, _ := testMeshdServer(t, 100, ServerConfig{IdleTimeout: 100 * time.Millisecond}, echoHandler)
	c := dialRaw(t, addr, tc)
	if got := c.do(rawHeaders(t, getFields...)); got.status != 200 {
		t.Fatalf("request: %+v", got)
	}
	select {
	case <-c.qc.Context().Done():
	case <-time.After(20 * time.Second):
		t.Fatal("idle connection not closed")
	}
	ae, ok := errors.AsType[*quic.ApplicationError](context.Cause(c.qc.Context()))
	if !ok || !ae.Remote || http3.ErrCode(ae.ErrorCode) != http3.ErrCodeNoError {
		t.Errorf("connection closed with %v, want H3_NO_ERROR from the server", context.Cause(c.qc.Context()))
	}
}
