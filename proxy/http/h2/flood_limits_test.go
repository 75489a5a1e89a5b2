package h2

import (
	"bytes"
	"strconv"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/proxy/stats"
)

// TestConfiguredFloodLimits: each Envoy flood limit set in ServerConfig.Flood
// moves the point where the connection ends; traffic just under it passes.
func TestConfiguredFloodLimits(t *testing.T) {
	req := []string{":method", "POST", ":scheme", "http", ":authority", "a", ":path", "/"}
	tests := []struct {
		name   string
		limits FloodLimits
		// flood sends n frames of the kind the limit counts.
		flood func(p *rawPeer, n int)
		limit int
		stat  func(*Stats) *stats.Counter
	}{
		{
			name:   "max_consecutive_inbound_frames_with_empty_payload",
			limits: FloodLimits{MaxConsecutiveEmptyFrames: 5},
			flood: func(p *rawPeer, n int) {
				p.headers(1, false, req...)
				for range n {
					_ = p.fr.WriteData(1, false, nil)
				}
			},
			limit: 5,
			stat:  func(s *Stats) *stats.Counter { return s.InboundEmptyFramesFlood },
		},
		{
			name:   "max_inbound_priority_frames_per_stream",
			limits: FloodLimits{MaxPriorityFramesPerStream: 3},
			flood: func(p *rawPeer, n int) {
				for i := range n {
					_ = p.fr.WritePriority(uint32(2*i+101), http2.PriorityParam{Weight: 15})
				}
			},
			limit: 3, // 3 * (1 + 0 streams opened)
			stat:  func(s *Stats) *stats.Counter { return s.InboundPriorityFlood },
		},
		{
			name:   "max_inbound_window_update_frames_per_data_frame_sent",
			limits: FloodLimits{MaxWindowUpdatesPerDataFrame: 1},
			flood: func(p *rawPeer, n int) {
				for range n {
					_ = p.fr.WriteWindowUpdate(0, 1)
				}
			},
			limit: 5, // 5 + 2*(0 streams + 1*0 DATA frames)
			stat:  func(s *Stats) *stats.Counter { return s.InboundWindowUpdateFlood },
		},
	}
	for _, tt := range tests {
		for _, over := range []bool{false, true} {
			t.Run(tt.name+"/over="+strconv.FormatBool(over), func(t *testing.T) {
				checkLeaks(t)
				st := newTestStats()
				lim := DefaultFloodLimits()
				switch {
				case tt.limits.MaxConsecutiveEmptyFrames != 0:
					lim.MaxConsecutiveEmptyFrames = tt.limits.MaxConsecutiveEmptyFrames
				case tt.limits.MaxPriorityFramesPerStream != 0:
					lim.MaxPriorityFramesPerStream = tt.limits.MaxPriorityFramesPerStream
				case tt.limits.MaxWindowUpdatesPerDataFrame != 0:
					lim.MaxWindowUpdatesPerDataFrame = tt.limits.MaxWindowUpdatesPerDataFrame
				}
				hold := make(chan struct{})
				defer close(hold)
				h := stream.HandlerFunc(func(s stream.ServerStream) { <-hold; s.Reset(stream.ErrCodeCancel) })
				ts := startServer(t, &ServerConfig{Stats: st, Flood: &lim}, h)
				p := dialRawClient(t, ts.addr())
				goaway := p.readGoAway()
				n := tt.limit
				if over {
					n++
				}
				tt.flood(p, n)
				// A PING proves the server read everything before it.
				_ = p.fr.WritePing(false, [8]byte{9})
				g, ok := waitGoAway(t, goaway, 500*time.Millisecond)
				calm := ok && g.code == http2.ErrCodeEnhanceYourCalm
				if calm != over {
					t.Fatalf("GOAWAY ENHANCE_YOUR_CALM after %d frames = %v, want %v (%+v)", n, calm, over, g)
				}
				if want := map[bool]uint64{true: 1}[over]; tt.stat(st).Value() != want {
					t.Fatalf("flood counter = %d, want %d", tt.stat(st).Value(), want)
				}
			})
		}
	}
}

// TestOutboundFrameFlood: a client that opens streams whose responses it
// never reads (windows open, socket unread) loses the connection once
// max_outbound_frames frames are queued; the queue does not grow with the
// number of streams.
func TestOutboundFrameFlood(t *testing.T) {
	checkLeaks(t)
	st := newTestStats()
	lim := DefaultFloodLimits()
	lim.MaxOutboundFrames = 64
	big := make([]byte, 256<<10)
	h := stream.HandlerFunc(func(s stream.ServerStream) {
		if err := s.WriteHeader(&stream.Response{Status: 200, ContentLength: -1}, false); err != nil {
			return
		}
		_, _ = s.Write(big)
		_ = s.CloseWrite()
	})
	ts := startServer(t, &ServerConfig{Stats: st, Flood: &lim}, h)
	p := dialRawClient(t, ts.addr())
	// Open the windows so the server may queue everything, then read nothing.
	_ = p.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: maxWindow})
	_ = p.fr.WriteWindowUpdate(0, maxWindow-initialWindowSize)
	// The server may trip the limit and close before all 200 are written
	// (it reads requests in bursts and answers at once): a failed write
	// ends the loop.
	p.hbuf.Reset()
	for _, kv := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "a"}, {":path", "/"}} {
		_ = p.henc.WriteField(hpack.HeaderField{Name: kv[0], Value: kv[1]})
	}
	block := p.hbuf.Bytes()
	for i := range 200 {
		if err := p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), BlockFragment: block, EndStream: true, EndHeaders: true}); err != nil {
			t.Logf("HEADERS %d of 200: %v (the server already ended the connection)", i+1, err)
			break
		}
	}
	deadline := time.Now().Add(testTimeout)
	for st.OutboundFlood.Value() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if st.OutboundFlood.Value() != 1 {
		t.Fatalf("outbound_flood = %d, want 1", st.OutboundFlood.Value())
	}
	// The server gives up on the unread socket: reading now ends in EOF
	// or reset within the flush timeout, not after all 50 MiB.
	_ = p.nc.SetReadDeadline(time.Now().Add(testTimeout))
	buf := make([]byte, 64<<10)
	total := 0
	for {
		n, err := p.nc.Read(buf)
		total += n
		if err != nil {
			break
		}
	}
	if total > 40<<20 {
		t.Fatalf("read %d bytes before the connection ended; the flood limit did not bound the queue", total)
	}
}

// TestMadeYouReset: streams the server must reset because of the client's
// own malformed frames (CVE-2025-8671) count against the same budget as
// client resets: a client provoking them on every stream gets GOAWAY
// ENHANCE_YOUR_CALM.
func TestMadeYouReset(t *testing.T) {
	tests := []struct {
		name      string
		endStream bool // the HEADERS end the request
		provoke   func(p *rawPeer, id uint32) error
	}{
		{"WINDOW_UPDATE increment 0", false, func(p *rawPeer, id uint32) error { return p.fr.WriteWindowUpdate(id, 0) }},
		{"DATA after END_STREAM", true, func(p *rawPeer, id uint32) error { return p.fr.WriteData(id, false, []byte("x")) }},
		{"PRIORITY on itself", false, func(p *rawPeer, id uint32) error {
			return p.fr.WritePriority(id, http2.PriorityParam{StreamDep: id, Weight: 1})
		}},
		{"malformed request", true, func(p *rawPeer, id uint32) error { return nil }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkLeaks(t)
			hold := make(chan struct{})
			defer close(hold)
			h := stream.HandlerFunc(func(s stream.ServerStream) {
				select {
				case <-hold:
				case <-s.Context().Done():
				}
				s.Reset(stream.ErrCodeCancel)
			})
			st := newTestStats()
			ts := startServer(t, &ServerConfig{Stats: st}, h)
			p := dialRawClient(t, ts.addr())
			p.fr.AllowIllegalWrites = true
			goaway := p.readGoAway()
			for i := range prematureResetMinStreams + 50 {
				id := uint32(2*i + 1)
				if tt.name == "malformed request" {
					p.headers(id, true, ":method", "GET", ":scheme", "http", ":path", "/", "connection", "close")
				} else {
					p.headers(id, tt.endStream, ":method", "POST", ":scheme", "http", ":authority", "a", ":path", "/")
				}
				if err := tt.provoke(p, id); err != nil {
					break
				}
			}
			g, ok := waitGoAway(t, goaway, testTimeout)
			if !ok || g.code != http2.ErrCodeEnhanceYourCalm {
				t.Fatalf("GOAWAY = %+v (received %v), want ENHANCE_YOUR_CALM", g, ok)
			}
			if st.DownstreamPrematureResets.Value() != 1 {
				t.Fatalf("downstream_rq_too_many_premature_resets = %d", st.DownstreamPrematureResets.Value())
			}
		})
	}
}

// TestMaxHeadersCount: a request with more fields than max_headers_count
// gets 431; one at the limit is served.
func TestMaxHeadersCount(t *testing.T) {
	for _, n := range []int{10, 11} {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			checkLeaks(t)
			st := newTestStats()
			ts := startServer(t, &ServerConfig{Stats: st, MaxHeadersCount: 10}, echoHandler)
			p := dialRawClient(t, ts.addr())
			kv := []string{":method", "GET", ":scheme", "http", ":authority", "a", ":path", "/"}
			for i := 4; i < n; i++ {
				kv = append(kv, "x-h"+strconv.Itoa(i), "v")
			}
			p.headers(1, true, kv...)
			f := p.waitFor("response", isHeaders(1)).(*http2.MetaHeadersFrame)
			want := "200"
			if n > 10 {
				want = "431"
			}
			if got := f.PseudoValue("status"); got != want {
				t.Fatalf(":status = %s with %d fields, want %s", got, n, want)
			}
		})
	}
}

// TestRequestHeadersTimeout: a header block dribbled a byte at a time
// (slowloris) ends the connection once request_headers_timeout passes
// from its first byte, while a client idle between frames is left alone.
func TestRequestHeadersTimeout(t *testing.T) {
	checkLeaks(t)
	st := newTestStats()
	ts := startServer(t, &ServerConfig{Stats: st, RequestHeadersTimeout: 300 * time.Millisecond}, echoHandler)
	p := dialRawClient(t, ts.addr())
	// Idle longer than the timeout between frames: still served.
	time.Sleep(500 * time.Millisecond)
	p.headers(1, true, ":method", "GET", ":scheme", "http", ":authority", "a", ":path", "/")
	p.waitFor("response", isHeaders(1))
	// Now dribble a HEADERS frame.
	p.hbuf.Reset()
	_ = p.henc.WriteField(hpack.HeaderField{Name: ":method", Value: "GET"})
	var b bytes.Buffer
	_ = http2.NewFramer(&b, nil).WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: p.hbuf.Bytes(), EndHeaders: true})
	frame := b.Bytes()
	goaway := p.readGoAway()
	start := time.Now()
	for _, c := range frame {
		if _, err := p.nc.Write([]byte{c}); err != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
		if time.Since(start) > 3*time.Second {
			break
		}
	}
	g, ok := waitGoAway(t, goaway, testTimeout)
	if !ok || g.code != http2.ErrCodeEnhanceYourCalm {
		t.Fatalf("GOAWAY = %+v (received %v), want ENHANCE_YOUR_CALM", g, ok)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("connection ended %v after the first byte, want about 300ms", el)
	}
	if st.RequestHeadersTimeout.Value() != 1 {
		t.Fatalf("downstream_rq_header_timeout = %d", st.RequestHeadersTimeout.Value())
	}
}
