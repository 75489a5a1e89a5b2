package h2

import (
	"context"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/proxy/stats"
)

var getReq = []string{":method", "GET", ":scheme", "http", ":authority", "a", ":path", "/"}

// goAwayInfo is a GOAWAY frame's content, copied off the framer.
type goAwayInfo struct {
	last  uint32
	code  http2.ErrCode
	debug string
}

// readGoAway reads frames in the background until a GOAWAY or the end of
// the connection; the channel yields the GOAWAY, or is closed without one.
func (p *rawPeer) readGoAway() <-chan goAwayInfo {
	ch := make(chan goAwayInfo, 1)
	go func() {
		defer close(ch)
		for {
			f, err := p.fr.ReadFrame()
			if err != nil {
				return
			}
			if g, ok := f.(*http2.GoAwayFrame); ok {
				ch <- goAwayInfo{last: g.LastStreamID, code: g.ErrCode, debug: string(g.DebugData())}
				return
			}
		}
	}()
	return ch
}

// waitGoAway waits (bounded) for the result of readGoAway.
func waitGoAway(t *testing.T, ch <-chan goAwayInfo, within time.Duration) (goAwayInfo, bool) {
	t.Helper()
	select {
	case g, ok := <-ch:
		return g, ok
	case <-time.After(within):
		return goAwayInfo{}, false
	}
}

func newTestStats() *Stats { return NewStats(stats.NewStore().Root().Scope("http2")) }

func TestTooManyPings(t *testing.T) {
	tests := []struct {
		name     string
		permit   bool
		open     bool // a stream stays open while pinging
		interval time.Duration
		wantCalm bool
	}{
		{name: "no stream, faster than the minimum", interval: time.Millisecond, wantCalm: true},
		{name: "no stream, slower than the minimum, not permitted", interval: 60 * time.Millisecond, wantCalm: true},
		{name: "no stream, slower than the minimum, permitted", permit: true, interval: 60 * time.Millisecond},
		{name: "no stream, faster than the minimum, permitted", permit: true, interval: time.Millisecond, wantCalm: true},
		{name: "open stream, faster than the minimum", open: true, interval: time.Millisecond, wantCalm: true},
		{name: "open stream, slower than the minimum", open: true, interval: 60 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkLeaks(t)
			hold := make(chan struct{})
			h := stream.HandlerFunc(func(s stream.ServerStream) { <-hold; s.Reset(stream.ErrCodeCancel) })
			st := newTestStats()
			ts := startServer(t, &ServerConfig{MinPingInterval: 50 * time.Millisecond, PermitWithoutStream: tt.permit, Stats: st}, h)
			defer close(hold)
			p := dialRawClient(t, ts.addr())
			if tt.open {
				p.headers(1, true, getReq...)
			}
			goaway := p.readGoAway()
			for i := range 5 {
				if err := p.fr.WritePing(false, [8]byte{byte(i)}); err != nil {
					break
				}
				time.Sleep(tt.interval)
			}
			g, ok := waitGoAway(t, goaway, 300*time.Millisecond)
			calm := ok && g.code == http2.ErrCodeEnhanceYourCalm
			if calm != tt.wantCalm {
				t.Fatalf("GOAWAY ENHANCE_YOUR_CALM = %v, want %v (GOAWAY %+v)", calm, tt.wantCalm, g)
			}
			if calm && g.debug != "too_many_pings" {
				t.Errorf("GOAWAY debug data = %q, want too_many_pings", g.debug)
			}
			if want := map[bool]uint64{true: 1, false: 0}[tt.wantCalm]; st.TooManyPings.Value() != want {
				t.Errorf("too_many_pings = %d, want %d", st.TooManyPings.Value(), want)
			}
		})
	}
}

// TestPingStrikesResetByResponses: a PING right after the server sent
// HEADERS is never a strike, however fast.
func TestPingStrikesResetByResponses(t *testing.T) {
	checkLeaks(t)
	h := stream.HandlerFunc(func(s stream.ServerStream) {
		_ = s.WriteHeader(&stream.Response{Status: 204, ContentLength: -1}, true)
	})
	st := newTestStats()
	ts := startServer(t, &ServerConfig{MinPingInterval: time.Hour, Stats: st}, h)
	p := dialRawClient(t, ts.addr())
	for i := range 10 {
		id := uint32(2*i + 1)
		p.headers(id, true, getReq...)
		p.waitFor("response HEADERS", isHeaders(id))
		if err := p.fr.WritePing(false, [8]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		p.waitFor("PING ACK", func(f http2.Frame) bool { pf, ok := f.(*http2.PingFrame); return ok && pf.IsAck() })
	}
	if n := st.TooManyPings.Value(); n != 0 {
		t.Fatalf("too_many_pings = %d after pings that each followed a response", n)
	}
}

// TestAdvertisedSettings checks SETTINGS and the connection WINDOW_UPDATE
// on the wire, including the clamp by MaxBufferedBytes.
func TestAdvertisedSettings(t *testing.T) {
	tests := []struct {
		name                    string
		cfg                     ServerConfig
		wantMCS, wantStreamWin  uint32
		wantConnWin, wantMaxHdr uint32
	}{
		{name: "defaults", wantMCS: DefaultMaxConcurrentStreams, wantStreamWin: DefaultWindowSize, wantConnWin: DefaultWindowSize, wantMaxHdr: DefaultMaxHeaderListSize},
		{name: "configured", cfg: ServerConfig{MaxConcurrentStreams: 7, InitialStreamWindowSize: 1 << 20, InitialConnectionWindowSize: 4 << 20, MaxHeaderListSize: 8192},
			wantMCS: 7, wantStreamWin: 1 << 20, wantConnWin: 4 << 20, wantMaxHdr: 8192},
		{name: "clamped by the buffer limit", cfg: ServerConfig{InitialStreamWindowSize: 1 << 20, InitialConnectionWindowSize: 4 << 20, MaxBufferedBytes: 256 << 10},
			wantMCS: DefaultMaxConcurrentStreams, wantStreamWin: 256 << 10, wantConnWin: 256 << 10, wantMaxHdr: DefaultMaxHeaderListSize},
		{name: "small buffer limit keeps the RFC connection window", cfg: ServerConfig{MaxBufferedBytes: 16 << 10},
			wantMCS: DefaultMaxConcurrentStreams, wantStreamWin: 16 << 10, wantConnWin: initialWindowSize, wantMaxHdr: DefaultMaxHeaderListSize},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkLeaks(t)
			cfg := tt.cfg
			ts := startServer(t, &cfg, echoHandler)
			p := dialRawClient(t, ts.addr())
			sf := p.waitFor("SETTINGS", func(f http2.Frame) bool { s, ok := f.(*http2.SettingsFrame); return ok && !s.IsAck() }).(*http2.SettingsFrame)
			got := map[http2.SettingID]uint32{}
			_ = sf.ForeachSetting(func(s http2.Setting) error { got[s.ID] = s.Val; return nil })
			want := map[http2.SettingID]uint32{
				http2.SettingMaxConcurrentStreams: tt.wantMCS,
				http2.SettingInitialWindowSize:    tt.wantStreamWin,
				http2.SettingMaxHeaderListSize:    tt.wantMaxHdr,
				http2.SettingMaxFrameSize:         DefaultMaxFrameSize,
				http2.SettingEnablePush:           0,
			}
			for id, v := range want {
				if got[id] != v {
					t.Errorf("SETTINGS %v = %d, want %d", id, got[id], v)
				}
			}
			if tt.wantConnWin == initialWindowSize {
				return // no connection WINDOW_UPDATE is sent
			}
			wu := p.waitFor("connection WINDOW_UPDATE", func(f http2.Frame) bool {
				w, ok := f.(*http2.WindowUpdateFrame)
				return ok && w.StreamID == 0
			}).(*http2.WindowUpdateFrame)
			if got := wu.Increment + initialWindowSize; got != tt.wantConnWin {
				t.Errorf("connection window = %d, want %d", got, tt.wantConnWin)
			}
		})
	}
}

func TestConnectionLifetimes(t *testing.T) {
	tests := []struct {
		name    string
		cfg     ServerConfig
		streams int // requests made, one at a time
		stat    func(*Stats) *stats.Counter
	}{
		{name: "max_connection_duration", cfg: ServerConfig{MaxConnectionDuration: 100 * time.Millisecond}, streams: 1,
			stat: func(s *Stats) *stats.Counter { return s.CxMaxDurationReached }},
		{name: "max_requests_per_connection", cfg: ServerConfig{MaxRequestsPerConnection: 3}, streams: 3,
			stat: func(s *Stats) *stats.Counter { return s.CxMaxRequestsReached }},
		{name: "idle_timeout", cfg: ServerConfig{IdleTimeout: 100 * time.Millisecond}, streams: 1,
			stat: func(s *Stats) *stats.Counter { return s.CxIdleTimeout }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkLeaks(t)
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			cfg := tt.cfg
			cfg.Stats = newTestStats()
			ts := startServer(t, &cfg, echoHandler)
			goaways := make(chan stream.ErrCode, 4)
			cc := dialClient(t, ts.addr(), &ClientConfig{OnGoAway: func(_ uint32, code stream.ErrCode, _ string) { goaways <- code }})
			for i := range tt.streams {
				resp, body, _, err := roundTrip(ctx, cc, newReq("/"), []byte("hello"), header.Header{})
				if err != nil || resp.Status != 200 || string(body) != "hello" {
					t.Fatalf("request %d: %v %v %q", i, resp, err, body)
				}
			}
			select {
			case code := <-goaways:
				if code != stream.ErrCodeNo {
					t.Fatalf("GOAWAY code %v, want NO_ERROR", code)
				}
			case <-ctx.Done():
				t.Fatal("no GOAWAY")
			}
			select {
			case <-cc.Done():
			case <-ctx.Done():
				t.Fatal("connection not closed after the drain")
			}
			if n := tt.stat(cfg.Stats).Value(); n != 1 {
				t.Fatalf("stat = %d, want 1", n)
			}
		})
	}
}

// TestMaxConnectionDurationDrainsInFlight: a stream in flight when the
// duration expires completes.
func TestMaxConnectionDurationDrainsInFlight(t *testing.T) {
	checkLeaks(t)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	release := make(chan struct{})
	h := stream.HandlerFunc(func(s stream.ServerStream) {
		<-release
		_ = s.WriteHeader(&stream.Response{Status: 200, ContentLength: -1}, true)
	})
	ts := startServer(t, &ServerConfig{MaxConnectionDuration: 50 * time.Millisecond}, h)
	goaway := make(chan uint32, 2)
	cc := dialClient(t, ts.addr(), &ClientConfig{OnGoAway: func(last uint32, _ stream.ErrCode, _ string) { goaway <- last }})
	cs, err := cc.NewStream(ctx, newReq("/slow"), true)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		select {
		case <-goaway:
		case <-ctx.Done():
			t.Fatal("no GOAWAY after max_connection_duration")
		}
	}
	close(release)
	if resp, err := cs.Response(ctx); err != nil || resp.Status != 200 {
		t.Fatalf("in-flight stream: %v, %v", resp, err)
	}
	select {
	case <-cc.Done():
	case <-ctx.Done():
		t.Fatal("connection not closed after the drain")
	}
}

// serveConn serves one end of an in-memory pipe; the returned channel
// yields Serve's result.
func serveConn(t *testing.T, nc net.Conn, cfg *ServerConfig, h stream.Handler) (*ServerConn, <-chan error) {
	sc := NewServerConn(nc, cfg, h, stream.ConnInfo{})
	done := make(chan error, 1)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		done <- sc.Serve()
	}()
	t.Cleanup(func() {
		_ = sc.Close()
		<-finished
	})
	return sc, done
}

// TestHeadersAfterCloseOpenNoStream: a HEADERS block the reader still held
// when the connection closed (reads are batched, and the writer closes the
// connection after a flood or GOAWAY) opens no stream and starts no
// handler: nothing would ever fail that stream, so a handler writing to it
// would block forever.
func TestHeadersAfterCloseOpenNoStream(t *testing.T) {
	checkLeaks(t)
	a, b := net.Pipe()
	defer b.Close()
	started := make(chan struct{}, 1)
	sc := NewServerConn(a, nil, stream.HandlerFunc(func(stream.ServerStream) { started <- struct{}{} }), stream.ConnInfo{})
	sc.c.closeWith(errConnClosed)
	blk := &headerBlock{StreamID: 1, EndStream: true, npseudo: 4, Fields: []hpack.HeaderField{
		{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "http"}, {Name: ":authority", Value: "a"}, {Name: ":path", Value: "/"},
	}}
	if err := sc.handleHeaders(blk); err != nil {
		t.Fatalf("handleHeaders after close = %v, want nil (the block dropped)", err)
	}
	sc.c.mu.Lock()
	n := len(sc.c.streams)
	sc.c.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d streams open after close, want 0", n)
	}
	select {
	case <-started:
		t.Fatal("a handler started for a stream opened after the connection closed")
	case <-time.After(50 * time.Millisecond):
	}
}
