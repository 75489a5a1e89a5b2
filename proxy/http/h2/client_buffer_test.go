package h2

import (
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// TestClientMaxBufferedBytesClampsWindows reads the client's connection
// preface on the wire: with MaxBufferedBytes set, the advertised stream
// window is clamped to it and the connection WINDOW_UPDATE never offers
// more than the limit.
func TestClientMaxBufferedBytesClampsWindows(t *testing.T) {
	checkLeaks(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const limit = 256 << 10
	cc := dialClient(t, ln.Addr().String(), &ClientConfig{MaxBufferedBytes: limit})
	defer cc.Close()

	nc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(nc, preface); err != nil || string(preface) != http2.ClientPreface {
		t.Fatalf("preface %q, err %v", preface, err)
	}
	fr := http2.NewFramer(nc, nc)
	var streamWin uint32
	var gotSettings bool
	connWin := uint32(initialWindowSize)
	// The SETTINGS frame, then possibly a connection WINDOW_UPDATE.
	for range 2 {
		f, err := fr.ReadFrame()
		if err != nil {
			break
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			gotSettings = true
			if v, ok := f.Value(http2.SettingInitialWindowSize); ok {
				streamWin = v
			}
		case *http2.WindowUpdateFrame:
			if f.StreamID == 0 {
				connWin += f.Increment
			}
		}
		_ = nc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	}
	if !gotSettings {
		t.Fatal("no SETTINGS frame from the client")
	}
	if streamWin != limit {
		t.Errorf("SETTINGS_INITIAL_WINDOW_SIZE = %d, want the buffer limit %d", streamWin, limit)
	}
	if connWin > limit {
		t.Errorf("connection window %d exceeds the buffer limit %d", connWin, limit)
	}
}
