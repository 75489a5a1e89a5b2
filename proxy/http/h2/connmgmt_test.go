package h2

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/proxy/stats"
)

// rawPeer is a hand-driven HTTP/2 endpoint for protocol tests.
type rawPeer struct {
	t    *testing.T
	nc   net.Conn
	fr   *http2.Framer
	henc *hpack.Encoder
	hbuf bytes.Buffer
}

func newRawPeer(t *testing.T, nc net.Conn) *rawPeer {
	p := &rawPeer{t: t, nc: nc, fr: http2.NewFramer(nc, nc)}
	p.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	p.henc = hpack.NewEncoder(&p.hbuf)
	_ = nc.SetDeadline(time.Now().Add(testTimeout))
	t.Cleanup(func() { _ = nc.Close() })
	return p
}

// dialRawClient connects a raw client to addr and exchanges SETTINGS.
func dialRawClient(t *testing.T, addr string) *rawPeer {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	p := newRawPeer(t, nc)
	if _, err := nc.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	if err := p.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return p
}

func (p *rawPeer) headers(id uint32, end bool, kv ...string) {
	p.hbuf.Reset()
	for i := 0; i < len(kv); i += 2 {
		_ = p.henc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	if err := p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: p.hbuf.Bytes(), EndStream: end, EndHeaders: true}); err != nil {
		p.t.Fatal(err)
	}
}

// waitFor reads frames until match returns true; it fails on EOF or timeout.
func (p *rawPeer) waitFor(what string, match func(http2.Frame) bool) http2.Frame {
	p.t.Helper()
	for {
		f, err := p.fr.ReadFrame()
		if err != nil {
			p.t.Fatalf("waiting for %s: %v", what, err)
		}
		if match(f) {
			return f
		}
	}
}

func TestRefusedStreamBeyondMax(t *testing.T) {
	checkLeaks(t)
	release := make(chan struct{})
	h := stream.HandlerFunc(func(s stream.ServerStream) {
		<-release
		_ = s.WriteHeader(&stream.Response{Status: 204, ContentLength: -1}, true)
	})
	st := stats.NewStore()
	ss := NewStats(st.Root().Scope("http2"))
	ts := startServer(t, &ServerConfig{MaxConcurrentStreams: 1, Stats: ss}, h)
	defer close(release)
	p := dialRawClient(t, ts.addr())
	req := []string{":method", "GET", ":scheme", "http", ":authority", "a", ":path", "/"}
	p.headers(1, true, req...)
	p.headers(3, true, req...)
	f := p.waitFor("RST_STREAM", func(f http2.Frame) bool { _, ok := f.(*http2.RSTStreamFrame); return ok }).(*http2.RSTStreamFrame)
	if f.StreamID != 3 || f.ErrCode != http2.ErrCodeRefusedStream {
		t.Fatalf("got RST_STREAM %d %v, want 3 REFUSED_STREAM", f.StreamID, f.ErrCode)
	}
	if got := ss.TxRefusedStream.Value(); got != 1 {
		t.Errorf("tx_refused_stream = %d", got)
	}
}

// rawServer accepts one connection and runs fn as a raw HTTP/2 server.
func rawServer(t *testing.T, fn func(p *rawPeer)) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		nc, err := ln.Accept()
		_ = ln.Close()
		if err != nil {
			return
		}
		p := newRawPeer(t, nc)
		preface := make([]byte, len(http2.ClientPreface))
		if _, err := io.ReadFull(nc, preface); err != nil {
			return
		}
		fn(p)
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		<-done
	})
	return ln.Addr().String()
}

func isHeaders(id uint32) func(http2.Frame) bool {
	return func(f http2.Frame) bool { h, ok := f.(*http2.MetaHeadersFrame); return ok && h.StreamID == id }
}

func TestGoAwayFailsStreamsAboveLastID(t *testing.T) {
	checkLeaks(t)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	finish := make(chan struct{})
	addr := rawServer(t, func(p *rawPeer) {
		_ = p.fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 10})
		p.waitFor("HEADERS 3", isHeaders(3))
		_ = p.fr.WriteGoAway(1, http2.ErrCodeNo, []byte("bye"))
		<-finish
		p.headers(1, true, ":status", "200")
		// The client closes once stream 1 ends.
		for {
			if _, err := p.fr.ReadFrame(); err != nil {
				return
			}
		}
	})
	goaway := make(chan uint32, 1)
	settings := make(chan uint32, 1)
	cc := dialClient(t, addr, &ClientConfig{
		OnGoAway:   func(last uint32, _ stream.ErrCode, debug string) { goaway <- last },
		OnSettings: func(n uint32) { settings <- n },
	})
	<-settings
	s1, err := cc.NewStream(ctx, newReq("/1"), true)
	if err != nil {
		t.Fatal(err)
	}
	s3, err := cc.NewStream(ctx, newReq("/3"), true)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s3.Response(ctx)
	if !stream.Unprocessed(err) {
		t.Fatalf("stream 3 error = %v, want unprocessed", err)
	}
	if last := <-goaway; last != 1 {
		t.Fatalf("OnGoAway last = %d", last)
	}
	if cc.Healthy() || cc.Capacity() != 0 {
		t.Fatal("connection still healthy after GOAWAY")
	}
	if _, err := cc.NewStream(ctx, newReq("/5"), true); !stream.Unprocessed(err) {
		t.Fatalf("NewStream after GOAWAY = %v, want unprocessed", err)
	}
	close(finish)
	if resp, err := s1.Response(ctx); err != nil || resp.Status != 200 {
		t.Fatalf("stream 1 = %v, %v", resp, err)
	}
	select {
	case <-cc.Done():
	case <-ctx.Done():
		t.Fatal("connection did not close after its last stream")
	}
}

func TestPeerLowersMaxConcurrentStreams(t *testing.T) {
	checkLeaks(t)
	lowered := make(chan struct{})
	addr := rawServer(t, func(p *rawPeer) {
		_ = p.fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 5})
		p.waitFor("HEADERS 1", isHeaders(1))
		_ = p.fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 1})
		<-lowered
	})
	settings := make(chan uint32, 2)
	cc := dialClient(t, addr, &ClientConfig{OnSettings: func(n uint32) { settings <- n }})
	if n := <-settings; n != 5 {
		t.Fatalf("first OnSettings(%d)", n)
	}
	if c := cc.Capacity(); c != 5 {
		t.Fatalf("Capacity = %d, want 5", c)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if _, err := cc.NewStream(ctx, newReq("/"), true); err != nil {
		t.Fatal(err)
	}
	if n := <-settings; n != 1 {
		t.Fatalf("second OnSettings(%d)", n)
	}
	close(lowered)
	if c := cc.Capacity(); c != 0 {
		t.Fatalf("Capacity = %d after MAX_CONCURRENT_STREAMS=1 with one open stream", c)
	}
	if _, err := cc.NewStream(ctx, newReq("/"), true); !stream.Unprocessed(err) {
		t.Fatalf("NewStream beyond the peer's limit = %v, want unprocessed", err)
	}
}

func TestSettingsTimeoutAssumes100(t *testing.T) {
	checkLeaks(t)
	stop := make(chan struct{})
	addr := rawServer(t, func(p *rawPeer) { <-stop })
	defer close(stop)
	settings := make(chan uint32, 1)
	cc := dialClient(t, addr, &ClientConfig{SettingsTimeout: 50 * time.Millisecond, OnSettings: func(n uint32) { settings <- n }})
	if c := cc.Capacity(); c != 1 {
		t.Fatalf("Capacity before SETTINGS = %d, want 1", c)
	}
	select {
	case n := <-settings:
		if n != 100 || cc.Capacity() != 100 {
			t.Fatalf("assumed %d, capacity %d", n, cc.Capacity())
		}
	case <-time.After(testTimeout):
		t.Fatal("no OnSettings after SettingsTimeout")
	}
}

func TestKeepaliveTimeout(t *testing.T) {
	checkLeaks(t)
	stop := make(chan struct{})
	addr := rawServer(t, func(p *rawPeer) {
		_ = p.fr.WriteSettings()
		<-stop // never answers PING
	})
	defer close(stop)
	st := stats.NewStore()
	ss := NewStats(st.Root().Scope("http2"))
	closed := make(chan error, 1)
	cc := dialClient(t, addr, &ClientConfig{
		KeepaliveInterval: 20 * time.Millisecond, KeepaliveTimeout: 50 * time.Millisecond, Stats: ss,
		OnClose: func(err error) { closed <- err },
	})
	select {
	case err := <-closed:
		if !errors.Is(err, errKeepaliveTimeout) {
			t.Fatalf("closed with %v", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("connection not closed by keepalive timeout")
	}
	if ss.KeepaliveTimeout.Value() != 1 || cc.Healthy() {
		t.Fatalf("keepalive_timeout = %d, healthy = %v", ss.KeepaliveTimeout.Value(), cc.Healthy())
	}
}

func TestKeepaliveAnswered(t *testing.T) {
	checkLeaks(t)
	ts := startServer(t, nil, echoHandler)
	cc := dialClient(t, ts.addr(), &ClientConfig{KeepaliveInterval: 10 * time.Millisecond, KeepaliveTimeout: time.Second})
	time.Sleep(200 * time.Millisecond)
	if !cc.Healthy() {
		t.Fatal("connection with answered keepalives is unhealthy")
	}
}

func TestShutdownDrainsInFlight(t *testing.T) {
	checkLeaks(t)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	started := make(chan struct{})
	release := make(chan struct{})
	h := stream.HandlerFunc(func(s stream.ServerStream) {
		close(started)
		<-release
		_ = s.WriteHeader(&stream.Response{Status: 200, ContentLength: -1}, true)
	})
	ts := startServer(t, nil, h)
	goaway := make(chan uint32, 2)
	cc := dialClient(t, ts.addr(), &ClientConfig{OnGoAway: func(last uint32, _ stream.ErrCode, _ string) { goaway <- last }})
	cs, err := cc.NewStream(ctx, newReq("/slow"), true)
	if err != nil {
		t.Fatal(err)
	}
	<-started
	ts.mu.Lock()
	sc := ts.conns[0]
	ts.mu.Unlock()
	sc.Shutdown()
	if last := <-goaway; last != maxStreamID {
		t.Fatalf("first GOAWAY last-stream-id = %d", last)
	}
	if last := <-goaway; last != 1 {
		t.Fatalf("final GOAWAY last-stream-id = %d", last)
	}
	close(release)
	if resp, err := cs.Response(ctx); err != nil || resp.Status != 200 {
		t.Fatalf("in-flight stream: %v, %v", resp, err)
	}
	select {
	case <-cc.Done():
	case <-ctx.Done():
		t.Fatal("connection not closed after drain")
	}
}

func TestIdleTimeout(t *testing.T) {
	checkLeaks(t)
	ts := startServer(t, &ServerConfig{IdleTimeout: 50 * time.Millisecond}, echoHandler)
	cc := dialClient(t, ts.addr(), nil)
	select {
	case <-cc.Done():
	case <-time.After(testTimeout):
		t.Fatal("idle connection not closed")
	}
}
