package h2

import (
	"bytes"
	"context"
	"io"
	"slices"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// drainHandler reads the whole request body, then answers 204.
var drainHandler = stream.HandlerFunc(func(s stream.ServerStream) {
	_, _ = io.Copy(io.Discard, readerOnly{s})
	_ = s.WriteHeader(&stream.Response{Status: 204, ContentLength: -1}, true)
})

// TestWindowUpdatesForSmallMessages: 1000 messages of 100 bytes against
// RFC-default windows get WINDOW_UPDATEs only every quarter window (not
// one per message), and the transfer never stalls.
func TestWindowUpdatesForSmallMessages(t *testing.T) {
	checkLeaks(t)
	const msgs, size = 1000, 100
	ts := startServer(t, &ServerConfig{InitialStreamWindowSize: initialWindowSize, InitialConnectionWindowSize: initialWindowSize}, drainHandler)
	p := dialRawClient(t, ts.addr())
	p.headers(1, false, ":method", "POST", ":scheme", "http", ":authority", "a", ":path", "/")
	updates := make(chan int, 1)
	credit := make(chan [2]int64, 256) // {stream ID, increment} from WINDOW_UPDATEs
	go func() {
		n := 0
		for {
			f, err := p.fr.ReadFrame()
			if err != nil {
				updates <- -1
				return
			}
			switch f := f.(type) {
			case *http2.WindowUpdateFrame:
				n++
				credit <- [2]int64{int64(f.StreamID), int64(f.Increment)}
			case *http2.MetaHeadersFrame:
				if f.StreamID == 1 {
					updates <- n
					return
				}
			}
		}
	}()
	// Send like a well-behaved client: never beyond either window.
	connWin, streamWin := int64(initialWindowSize), int64(initialWindowSize)
	msg := bytes.Repeat([]byte("m"), size)
	for i := range msgs {
		for connWin < size || streamWin < size {
			select {
			case c := <-credit:
				if c[0] == 0 {
					connWin += c[1]
				} else {
					streamWin += c[1]
				}
			case <-time.After(testTimeout):
				t.Fatalf("message %d: no WINDOW_UPDATE: the transfer stalled", i)
			}
		}
		connWin -= size
		streamWin -= size
		if err := p.fr.WriteData(1, i == msgs-1, msg); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	var n int
	select {
	case n = <-updates:
	case <-time.After(testTimeout):
		t.Fatal("no response: the transfer stalled")
	}
	if n < 0 {
		t.Fatal("connection failed")
	}
	// Each window (stream and connection) is topped up once a quarter of
	// it was consumed.
	max := 2 * (msgs*size/(initialWindowSize/4) + 1)
	t.Logf("%d WINDOW_UPDATE frames for %d messages of %d bytes", n, msgs, size)
	if n == 0 || n > max {
		t.Fatalf("%d WINDOW_UPDATE frames, want 1..%d", n, max)
	}
}

// transferRate sends n bytes through one stream to drainHandler and
// returns bytes per second.
func transferRate(t *testing.T, cfg *ServerConfig, ccfg *ClientConfig, n int) float64 {
	ts := startServer(t, cfg, drainHandler)
	cc := dialClient(t, ts.addr(), ccfg)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	chunk := bytes.Repeat([]byte("d"), 64<<10)
	start := time.Now()
	cs, err := cc.NewStream(ctx, newReq("/bulk"), false)
	if err != nil {
		t.Fatal(err)
	}
	for sent := 0; sent < n; sent += len(chunk) {
		if _, err := cs.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	if err := cs.CloseWrite(header.Header{}); err != nil {
		t.Fatal(err)
	}
	if resp, err := cs.Response(ctx); err != nil || resp.Status != 204 {
		t.Fatalf("response %v, %v", resp, err)
	}
	return float64(n) / time.Since(start).Seconds()
}

// TestTimingLargeTransferSmallWindows: 64 MiB through a connection with
// RFC-default 64 KiB windows runs at least half as fast as with windows
// that never close (measured in the same test).
func TestTimingLargeTransferSmallWindows(t *testing.T) {
	if raceEnabled {
		t.Skip("timing test: skipped under -race")
	}
	checkLeaks(t)
	const n = 64 << 20
	open := transferRate(t, nil, nil, n)
	small := transferRate(t, &ServerConfig{InitialStreamWindowSize: initialWindowSize, InitialConnectionWindowSize: initialWindowSize},
		&ClientConfig{InitialStreamWindowSize: initialWindowSize, InitialConnectionWindowSize: initialWindowSize}, n)
	t.Logf("64 MiB: %.0f MB/s with 256 MiB windows, %.0f MB/s with 64 KiB windows", open/1e6, small/1e6)
	if small < open/2 {
		t.Fatalf("small windows run at %.0f%% of the unconstrained rate, want >= 50%%", 100*small/open)
	}
}

// TestTimingSmallMessagesNotDelayed: 100-byte messages written every 5 ms
// reach the client 5 ms apart (flushed per message, no batching).
func TestTimingSmallMessagesNotDelayed(t *testing.T) {
	if raceEnabled {
		t.Skip("timing test: skipped under -race")
	}
	checkLeaks(t)
	const msgs, every = 100, 5 * time.Millisecond
	h := stream.HandlerFunc(func(s stream.ServerStream) {
		if err := s.WriteHeader(&stream.Response{Status: 200, ContentLength: -1}, false); err != nil {
			return
		}
		msg := bytes.Repeat([]byte("s"), 100)
		for range msgs {
			if _, err := s.Write(msg); err != nil {
				return
			}
			time.Sleep(every)
		}
		_ = s.CloseWrite()
	})
	ts := startServer(t, nil, h)
	cc := dialClient(t, ts.addr(), nil)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	cs, err := cc.NewStream(ctx, newReq("/stream"), true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Response(ctx); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	var arrivals []time.Time
	for {
		_, err := io.ReadFull(readerOnly{cs}, buf)
		if err != nil {
			break
		}
		arrivals = append(arrivals, time.Now())
	}
	if len(arrivals) != msgs {
		t.Fatalf("received %d messages, want %d", len(arrivals), msgs)
	}
	var gaps []time.Duration
	for i := 1; i < len(arrivals); i++ {
		gaps = append(gaps, arrivals[i].Sub(arrivals[i-1]))
	}
	slices.Sort(gaps)
	p95 := gaps[len(gaps)*95/100]
	t.Logf("inter-message gap: median %v, p95 %v, max %v (written every %v)", gaps[len(gaps)/2], p95, gaps[len(gaps)-1], every)
	// time.Sleep overshoots by up to ~1 ms, and a loaded machine adds a
	// rare scheduling hiccup (hence p95 of 99 gaps); batching or a missed
	// flush would show as gaps of twice the period on most messages.
	if p95 > every+3*time.Millisecond {
		t.Fatalf("p95 gap %v, want <= %v", p95, every+3*time.Millisecond)
	}
}

// TestSendBufferBoundedPerConnection: with MaxBufferedBytes, response
// bytes queued across all streams never exceed the limit while the client
// grants no window; handlers block instead.
func TestSendBufferBoundedPerConnection(t *testing.T) {
	checkLeaks(t)
	const limit, streams = 100 << 10, 10
	wrote := make(chan int, streams)
	h := stream.HandlerFunc(func(s stream.ServerStream) {
		if err := s.WriteHeader(&stream.Response{Status: 200, ContentLength: -1}, false); err != nil {
			return
		}
		n, _ := s.Write(bytes.Repeat([]byte("q"), 64<<10))
		wrote <- n
		<-s.Context().Done() // keep the queued bytes until the connection closes
	})
	st := newTestStats()
	ts := startServer(t, &ServerConfig{MaxBufferedBytes: limit, Stats: st}, h)
	p := dialRawClient(t, ts.addr())
	// The client grants no stream window at all: nothing can be sent.
	if err := p.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0}); err != nil {
		t.Fatal(err)
	}
	for i := range streams {
		p.headers(uint32(2*i+1), true, ":method", "GET", ":scheme", "http", ":authority", "a", ":path", "/")
	}
	deadline := time.Now().Add(2 * time.Second)
	for st.PendingSendBytes.Value() < limit && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // let any overshoot show
	if got := st.PendingSendBytes.Value(); got != limit {
		t.Fatalf("pending_send_bytes = %d, want exactly the %d limit (%d handlers done, active %d)", got, limit, len(wrote), ts.conns[0].ActiveStreams())
	}
	if done := len(wrote); done > limit/(64<<10) {
		t.Fatalf("%d handlers finished writing 64 KiB with a %d-byte limit and no window", done, limit)
	}
}
