package h3

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/mtls/mtlstest"
	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// testServer runs quic-go's HTTP/3 server with h on 127.0.0.1 allowing
// maxStreams concurrent request streams; it returns the address and a
// client TLS config trusting it.
func testServer(t *testing.T, maxStreams int64, h http.Handler) (string, *tls.Config, *http3.Server) {
	t.Helper()
	ca := mtlstest.NewCA(t, "test.example")
	svid := ca.Issue(t, "spiffe://test.example/ns/a/sa/server")
	cert := mtlstest.TLSCertificate(svid)
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	srv := &http3.Server{
		Handler:    h,
		TLSConfig:  http3.ConfigureTLSConfig(&tls.Config{Certificates: []tls.Certificate{cert}}),
		QUICConfig: &quic.Config{MaxIncomingStreams: maxStreams},
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(udp) }()
	t.Cleanup(func() { _ = srv.Close(); _ = udp.Close(); <-done })
	pool := x509.NewCertPool()
	pool.AddCert(ca.Bundle().X509Authorities()[0])
	return udp.LocalAddr().String(), &tls.Config{RootCAs: pool, InsecureSkipVerify: true}, srv
}

func TestClientRoundTripTrailersAndLimit(t *testing.T) {
	testutil.CheckGoroutines(t)
	addr, tc, _ := testServer(t, 10, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Trailer", "X-Got-Trailer")
		w.Header().Set("X-Path", r.URL.RequestURI())
		_, _ = w.Write(body)
		w.Header().Set("X-Got-Trailer", r.Trailer.Get("X-Req"))
	}))
	var limit atomic.Uint32
	var done atomic.Int32
	closed := make(chan error, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cc, err := Dial(ctx, addr, tc, &ClientConfig{
		OnStreamLimit: func(l uint32) { limit.Store(l) },
		OnStreamDone:  func() { done.Add(1) },
		OnClose:       func(err error) { closed <- err },
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := limit.Load(); got != 10 {
		t.Errorf("stream limit %d, want the peer's 10", got)
	}
	if got := cc.Capacity(); got != 10 {
		t.Errorf("Capacity %d, want 10", got)
	}
	cs, err := cc.NewStream(ctx, &stream.Request{Method: "POST", Scheme: "https", Authority: "svc", Path: "/a%2Fb?q=1", Header: header.Make(0), ContentLength: -1}, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	tr := header.Make(1)
	tr.Add("x-req", "t1")
	if err := cs.CloseWrite(tr); err != nil {
		t.Fatal(err)
	}
	resp, err := cs.Response(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if pc := cs.(*clientStream).PeerCertificate(); pc == nil || len(pc.URIs) == 0 || pc.URIs[0].String() != "spiffe://test.example/ns/a/sa/server" {
		t.Errorf("PeerCertificate %v, want the server's SVID", pc)
	}
	body, err := io.ReadAll(cs)
	if err != nil {
		t.Fatal(err)
	}
	trailers := cs.Trailers()
	if resp.Status != 200 || string(body) != "hello" || resp.Header.Get("x-path") != "/a%2Fb?q=1" || trailers.Get("x-got-trailer") != "t1" {
		t.Fatalf("status %d body %q path %q trailers %v", resp.Status, body, resp.Header.Get("x-path"), trailers.Fields())
	}
	if done.Load() != 1 {
		t.Errorf("OnStreamDone ran %d times, want 1", done.Load())
	}
	if err := cc.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-closed:
		if err != nil {
			t.Errorf("OnClose(%v) after a local graceful close, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("OnClose not called")
	}
}

// TestClientGoAway: a server shutting down sends GOAWAY; the connection
// reports it, takes no new stream (an unprocessed refusal), and the stream
// in flight completes.
func TestClientGoAway(t *testing.T) {
	testutil.CheckGoroutines(t)
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	addr, tc, srv := testServer(t, 10, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		<-release
		_, _ = io.WriteString(w, "done")
	}))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	goaway := make(chan struct{})
	cc, err := Dial(ctx, addr, tc, &ClientConfig{OnGoAway: func() { close(goaway) }})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	cs, err := cc.NewStream(ctx, &stream.Request{Method: "GET", Scheme: "https", Authority: "svc", Path: "/", Header: header.Make(0)}, true)
	if err != nil {
		t.Fatal(err)
	}
	<-started
	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(ctx) }()
	select {
	case <-goaway:
	case <-ctx.Done():
		t.Fatal("no GOAWAY reported")
	}
	if got := cc.Capacity(); got != 0 {
		t.Errorf("Capacity after GOAWAY = %d, want 0", got)
	}
	if _, err := cc.NewStream(ctx, &stream.Request{Method: "GET", Scheme: "https", Authority: "svc", Path: "/", Header: header.Make(0)}, true); !stream.Unprocessed(err) {
		t.Errorf("NewStream after GOAWAY: %v, want an unprocessed error", err)
	}
	close(release)
	if _, err := cs.Response(ctx); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(cs)
	if err != nil || !strings.EqualFold(string(b), "done") {
		t.Fatalf("body %q err %v", b, err)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

// TestClientResetAfterCompletion: Reset is a no-op on a stream whose
// request was sent and whose response was read to its end (nothing is
// reset or counted), and resets a stream still in flight.
func TestClientResetAfterCompletion(t *testing.T) {
	testutil.CheckGoroutines(t)
	addr, tc, _ := testMeshdServer(t, 100, ServerConfig{}, echoHandler)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st := NewStats(nil)
	cc, err := Dial(ctx, addr, tc, &ClientConfig{Stats: st})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	req := &stream.Request{Method: "GET", Scheme: "https", Authority: "svc", Path: "/", Header: header.Make(0), ContentLength: -1}

	for _, tc := range []struct {
		name      string
		complete  bool
		wantReset uint64
	}{
		{"completed", true, 0},
		{"in flight", false, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := st.TxReset.Value()
			cs, err := cc.NewStream(ctx, req, true)
			if err != nil {
				t.Fatal(err)
			}
			if tc.complete {
				if _, err := cs.Response(ctx); err != nil {
					t.Fatal(err)
				}
				if _, err := io.Copy(io.Discard, cs); err != nil {
					t.Fatal(err)
				}
			}
			cs.Reset(stream.ErrCodeCancel)
			if got := st.TxReset.Value() - before; got != tc.wantReset {
				t.Errorf("tx_reset grew by %d, want %d", got, tc.wantReset)
			}
		})
	}
}

// TestClientControlStreamRules: the client holds the server's control
// stream to the rules the server applies to the client's (readControlFrames):
// SETTINGS first and valid, no frame types a server may not send.
func TestClientControlStreamRules(t *testing.T) {
	for _, tc := range []struct {
		name string
		data []byte
		want http3.ErrCode
	}{
		{"GOAWAY before SETTINGS", []byte{frameGoAway, 1, 0}, http3.ErrCodeMissingSettings},
		{"setting sent twice", []byte{frameSettings, 4, 0x6, 1, 0x6, 1}, http3.ErrCodeSettingsError},
		{"HTTP/2 setting", []byte{frameSettings, 2, 0x4, 0}, http3.ErrCodeSettingsError},
		{"second SETTINGS", []byte{frameSettings, 0, frameSettings, 0}, http3.ErrCodeFrameUnexpected},
		{"MAX_PUSH_ID from a server", []byte{frameSettings, 0, frameMaxPushID, 1, 0}, http3.ErrCodeFrameUnexpected},
		{"DATA", []byte{frameSettings, 0, frameData, 0}, http3.ErrCodeFrameUnexpected},
		{"malformed CANCEL_PUSH", []byte{frameSettings, 0, frameCancelPush, 2, 0, 0}, http3.ErrCodeFrameError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := (&ClientConn{}).readControlStream(bufio.NewReader(bytes.NewReader(tc.data)))
			var he *h3Error
			if !errors.As(err, &he) || he.code != tc.want {
				t.Fatalf("readControlStream = %v, want error code %#x", err, uint64(tc.want))
			}
		})
	}
}
