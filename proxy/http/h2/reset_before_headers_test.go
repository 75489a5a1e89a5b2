package h2

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"meshd.dev/meshd/proxy/http/stream"
)

// gatedConn blocks Writes until open is closed.
type gatedConn struct {
	net.Conn
	open chan struct{}
	once sync.Once
}

func (g *gatedConn) Write(p []byte) (int, error) {
	<-g.open
	return g.Conn.Write(p)
}

func (g *gatedConn) release() { g.once.Do(func() { close(g.open) }) }

// TestResetBeforeHeadersSendsNothing: a client stream reset while its
// HEADERS still wait in the writer's queue must reach the wire as neither
// HEADERS nor RST_STREAM. An RST_STREAM for a stream the peer never saw is
// a connection error (RFC 9113 section 6.4), so sending it would take down
// every other stream on the connection.
func TestResetBeforeHeadersSendsNothing(t *testing.T) {
	checkLeaks(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	gc := &gatedConn{Conn: raw, open: make(chan struct{})}
	defer gc.release()
	cc := NewClientConn(gc, &ClientConfig{SettingsTimeout: 10 * time.Millisecond})
	defer cc.Close()

	srv, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()

	// The writer is stuck on the preface; the stream's HEADERS and then its
	// RST_STREAM queue up behind it.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	time.Sleep(50 * time.Millisecond) // past SettingsTimeout: capacity assumed
	cs, err := cc.NewStream(ctx, newReq("/never"), true)
	if err != nil {
		t.Fatalf("NewStream: %v", err)
	}
	cs.Reset(stream.ErrCodeCancel)
	gc.release()

	_ = srv.SetDeadline(time.Now().Add(2 * time.Second))
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(srv, preface); err != nil {
		t.Fatalf("reading preface: %v", err)
	}
	fr := http2.NewFramer(srv, srv)
	_ = srv.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			break // deadline: the client has nothing more to say
		}
		switch f := f.(type) {
		case *http2.HeadersFrame:
			t.Errorf("HEADERS for stream %d of a stream reset before it was sent", f.StreamID)
		case *http2.RSTStreamFrame:
			t.Errorf("RST_STREAM for stream %d the peer never saw", f.StreamID)
		}
	}
}
