package h2

import (
	"bytes"
	"context"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// startResettingPeer is an HTTP/2 server on x/net's Framer answering each
// request by its :path: "/refuse" with RST_STREAM REFUSED_STREAM,
// "/cancel" with RST_STREAM CANCEL, others with 200 and END_STREAM.
func startResettingPeer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var conns []net.Conn
	var mu sync.Mutex
	wg.Go(func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, nc)
			mu.Unlock()
			wg.Go(func() { serveResetting(nc) })
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, nc := range conns {
			_ = nc.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

func serveResetting(nc net.Conn) {
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(nc, preface); err != nil {
		return
	}
	fr := http2.NewFramer(nc, nc)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 10}) != nil {
		return
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = fr.WriteSettingsAck()
			}
		case *http2.MetaHeadersFrame:
			switch f.PseudoValue("path") {
			case "/refuse":
				_ = fr.WriteRSTStream(f.StreamID, http2.ErrCodeRefusedStream)
			case "/cancel":
				_ = fr.WriteRSTStream(f.StreamID, http2.ErrCodeCancel)
			default:
				var buf bytes.Buffer
				_ = hpack.NewEncoder(&buf).WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
				_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: f.StreamID, BlockFragment: buf.Bytes(), EndStream: true, EndHeaders: true})
			}
		}
	}
}

// TestClientReportsRefusedStream: a stream the peer refuses with
// REFUSED_STREAM is in RefusedStreams by the time its user sees the
// error, and is reported once through OnStreamRefused, before the refused
// stream's OnStreamDone (a pool holds the connection before it hands the
// freed slot on). A stream reset with another code, and one that
// completes, are no refusals.
func TestClientReportsRefusedStream(t *testing.T) {
	checkLeaks(t)
	addr := startResettingPeer(t)
	var mu sync.Mutex
	var events []string
	record := func(e string) func() {
		return func() {
			mu.Lock()
			defer mu.Unlock()
			events = append(events, e)
		}
	}
	cc := dialClient(t, addr, &ClientConfig{OnStreamRefused: record("refused"), OnStreamDone: record("done")})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	var refusals uint64
	for _, tc := range []struct {
		path            string
		wantUnprocessed bool
		wantEvents      []string
		wantErr         bool
	}{
		{path: "/ok", wantEvents: []string{"done"}},
		{path: "/refuse", wantErr: true, wantUnprocessed: true, wantEvents: []string{"refused", "done"}},
		{path: "/cancel", wantErr: true, wantEvents: []string{"done"}},
		{path: "/refuse", wantErr: true, wantUnprocessed: true, wantEvents: []string{"refused", "done"}},
	} {
		mu.Lock()
		events = nil
		mu.Unlock()
		req := &stream.Request{Method: "GET", Scheme: "http", Authority: "test", Path: tc.path, Header: header.Make(0)}
		_, _, _, err := roundTrip(ctx, cc, req, nil, header.Header{})
		if (err != nil) != tc.wantErr || stream.Unprocessed(err) != tc.wantUnprocessed {
			t.Fatalf("%s: error %v, want error %v, unprocessed %v", tc.path, err, tc.wantErr, tc.wantUnprocessed)
		}
		if tc.wantUnprocessed {
			refusals++
		}
		// Counted before the error was returned.
		if got := cc.RefusedStreams(); got != refusals {
			t.Errorf("%s: RefusedStreams = %d, want %d", tc.path, got, refusals)
		}
		deadline := time.Now().Add(testTimeout)
		for {
			mu.Lock()
			got := slices.Clone(events)
			mu.Unlock()
			if slices.Contains(got, "done") {
				if !slices.Equal(got, tc.wantEvents) {
					t.Errorf("%s: events %q, want %q", tc.path, got, tc.wantEvents)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: no OnStreamDone (events %q)", tc.path, got)
			}
			time.Sleep(time.Millisecond)
		}
	}
}
