package h2

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"meshd.dev/meshd/proxy/http/stream"
)

// idlePingServer accepts one client connection, answers its preface with
// SETTINGS and returns a framer positioned after the client's first PING.
func idlePingServer(t *testing.T, ln net.Listener) (net.Conn, *http2.Framer, *http2.PingFrame) {
	t.Helper()
	nc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(nc, preface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(nc, nc)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("waiting for the keepalive PING: %v", err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				return nc, fr, f
			}
		case *http2.HeadersFrame:
			t.Fatalf("HEADERS before any stream was opened")
		}
	}
}

// TestStreamWaitsForIdleKeepaliveAck: while a keepalive PING sent on an
// idle connection is unanswered, a new stream waits. A server that answers
// that PING with GOAWAY ENHANCE_YOUR_CALM "too_many_pings" (grpc-go's third
// strike) never sees the stream, which fails as unprocessed so the pool
// places it elsewhere; a server that ACKs gets the stream.
func TestStreamWaitsForIdleKeepaliveAck(t *testing.T) {
	checkLeaks(t)
	for _, tc := range []struct {
		name   string
		goAway bool
	}{{"goaway instead of ack", true}, {"ack", false}} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			cc := dialClient(t, ln.Addr().String(), &ClientConfig{KeepaliveInterval: 30 * time.Millisecond, KeepaliveTimeout: 5 * time.Second})
			defer cc.Close()
			nc, fr, ping := idlePingServer(t, ln)
			defer nc.Close()

			type result struct {
				s   stream.ClientStream
				err error
			}
			done := make(chan result, 1)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			go func() {
				s, err := cc.NewStream(ctx, newReq("/after-ping"), true)
				done <- result{s, err}
			}()
			select {
			case r := <-done:
				t.Fatalf("NewStream returned (%v) while the idle keepalive PING was unanswered", r.err)
			case <-time.After(100 * time.Millisecond):
			}
			if tc.goAway {
				_ = fr.WriteGoAway(0, http2.ErrCodeEnhanceYourCalm, []byte("too_many_pings"))
				_ = nc.Close()
				r := <-done
				if r.err == nil || !stream.Unprocessed(r.err) {
					t.Fatalf("NewStream after GOAWAY: err %v, want an unprocessed error", r.err)
				}
				return
			}
			if err := fr.WritePing(true, ping.Data); err != nil {
				t.Fatal(err)
			}
			r := <-done
			if r.err != nil {
				t.Fatalf("NewStream after the ACK: %v", r.err)
			}
			for {
				f, err := fr.ReadFrame()
				if err != nil {
					t.Fatalf("waiting for the stream's HEADERS: %v", err)
				}
				if h, ok := f.(*http2.HeadersFrame); ok {
					if h.StreamID != 1 {
						t.Fatalf("HEADERS on stream %d, want 1", h.StreamID)
					}
					break
				}
			}
			r.s.Reset(stream.ErrCodeCancel)
		})
	}
}
