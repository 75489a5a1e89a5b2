package h2

import (
	"bytes"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/proxy/stats"
)

// TestOutboundControlFlood: a client that provokes PING or SETTINGS
// acknowledgements without reading its socket is disconnected once
// maxOutboundControlFrames are queued, instead of growing the queue.
func TestOutboundControlFlood(t *testing.T) {
	tests := []struct {
		name  string
		write func(fr *http2.Framer, i int) error
	}{
		{name: "PING", write: func(fr *http2.Framer, i int) error { return fr.WritePing(false, [8]byte{byte(i), byte(i >> 8)}) }},
		{name: "SETTINGS", write: func(fr *http2.Framer, _ int) error { return fr.WriteSettings() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkLeaks(t)
			srv, cli := net.Pipe() // synchronous: the server's writes block, as on a full socket
			defer cli.Close()
			st := newTestStats()
			_, done := serveConn(t, srv, &ServerConfig{Stats: st}, echoHandler)
			_ = cli.SetDeadline(time.Now().Add(testTimeout))
			if _, err := cli.Write([]byte(http2.ClientPreface)); err != nil {
				t.Fatal(err)
			}
			fr := http2.NewFramer(cli, cli)
			if err := fr.WriteSettings(); err != nil {
				t.Fatal(err)
			}
			sent := 0
			for ; sent < 10*maxOutboundControlFrames; sent++ {
				if err := tt.write(fr, sent); err != nil {
					break
				}
			}
			if sent >= 10*maxOutboundControlFrames {
				t.Fatalf("server read %d unanswerable control frames without closing", sent)
			}
			select {
			case err := <-done:
				var ce connError
				if !errors.As(err, &ce) || ce.code != stream.ErrCode(http2.ErrCodeEnhanceYourCalm) {
					t.Fatalf("Serve = %v, want ENHANCE_YOUR_CALM connection error", err)
				}
			case <-time.After(testTimeout):
				t.Fatal("Serve did not return")
			}
			if st.OutboundControlFlood.Value() != 1 {
				t.Fatalf("outbound_control_flood = %d", st.OutboundControlFlood.Value())
			}
			t.Logf("closed after %d frames", sent)
		})
	}
}

// TestInboundFloods sends each flood over TCP to a server with the case's
// limit and expects the GOAWAY code and (where the flood has one) the
// matching counter.
func TestInboundFloods(t *testing.T) {
	getHeaders := []string{":method", "GET", ":scheme", "http", ":authority", "a", ":path", "/"}
	tests := []struct {
		name string
		// cfg carries the limit under test where it is configurable
		// (Stats is set by the test); the others are package constants.
		cfg   ServerConfig
		flood func(p *rawPeer)
		want  http2.ErrCode
		// stat is the flood counter that must be 1 (nil: none).
		stat func(*Stats) *stats.Counter
	}{
		{
			name: "empty DATA frames",
			flood: func(p *rawPeer) {
				p.headers(1, false, ":method", "POST", ":scheme", "http", ":authority", "a", ":path", "/")
				for range 3 {
					_ = p.fr.WriteData(1, false, nil)
				}
			},
			want: http2.ErrCodeEnhanceYourCalm,
			stat: func(s *Stats) *stats.Counter { return s.InboundEmptyFramesFlood },
		},
		{
			name: "PRIORITY frames",
			flood: func(p *rawPeer) {
				for i := range maxPriorityFramesPerStream + 1 {
					_ = p.fr.WritePriority(uint32(2*i+1), http2.PriorityParam{Weight: 15})
				}
			},
			want: http2.ErrCodeEnhanceYourCalm,
			stat: func(s *Stats) *stats.Counter { return s.InboundPriorityFlood },
		},
		{
			name: "WINDOW_UPDATE frames",
			flood: func(p *rawPeer) {
				for range 10 {
					_ = p.fr.WriteWindowUpdate(0, 1)
				}
			},
			want: http2.ErrCodeEnhanceYourCalm,
			stat: func(s *Stats) *stats.Counter { return s.InboundWindowUpdateFlood },
		},
		{
			// Header blocks are bounded across CONTINUATION frames
			// (CVE-2023-45288): an endless block ends the connection once
			// it exceeds the header list limit, rather than being buffered.
			name: "CONTINUATION frames",
			cfg:  ServerConfig{MaxHeaderListSize: 8 << 10},
			flood: func(p *rawPeer) {
				var hb bytes.Buffer
				enc := hpack.NewEncoder(&hb)
				for i := 0; i < len(getHeaders); i += 2 {
					_ = enc.WriteField(hpack.HeaderField{Name: getHeaders[i], Value: getHeaders[i+1]})
				}
				if p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndStream: true}) != nil {
					return
				}
				for range 1000 {
					hb.Reset()
					_ = enc.WriteField(hpack.HeaderField{Name: "x-junk", Value: strings.Repeat("j", 4000), Sensitive: true})
					if p.fr.WriteContinuation(1, false, hb.Bytes()) != nil {
						return
					}
				}
			},
			want: http2.ErrCodeProtocol,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkLeaks(t)
			st := newTestStats()
			cfg := tt.cfg
			cfg.Stats = st
			ts := startServer(t, &cfg, echoHandler)
			p := dialRawClient(t, ts.addr())
			goaway := p.readGoAway()
			tt.flood(p)
			g, ok := waitGoAway(t, goaway, testTimeout)
			if !ok || g.code != tt.want {
				t.Fatalf("GOAWAY = %+v (received %v), want %v", g, ok, tt.want)
			}
			if tt.stat != nil {
				if n := tt.stat(st).Value(); n != 1 {
					t.Fatalf("flood counter = %d, want 1", n)
				}
			}
		})
	}
}

// TestNoFloodOnOrdinaryTraffic: a normal client's WINDOW_UPDATEs, PINGs
// and empty END_STREAM frames trip nothing.
func TestNoFloodOnOrdinaryTraffic(t *testing.T) {
	checkLeaks(t)
	st := newTestStats()
	ts := startServer(t, &ServerConfig{Stats: st, InitialStreamWindowSize: 65535}, echoHandler)
	p := dialRawClient(t, ts.addr())
	body := bytes.Repeat([]byte("x"), 40000)
	for i := range 20 {
		id := uint32(2*i + 1)
		p.headers(id, false, ":method", "POST", ":scheme", "http", ":authority", "a", ":path", "/")
		_ = p.fr.WriteData(id, false, body[:16384])
		_ = p.fr.WriteData(id, true, nil) // empty, but ends the stream
		p.waitFor("response HEADERS", isHeaders(id))
		got := 0
		p.waitFor("response end", func(f http2.Frame) bool {
			if d, ok := f.(*http2.DataFrame); ok && d.StreamID == id {
				got += len(d.Data())
				_ = p.fr.WriteWindowUpdate(0, uint32(max(len(d.Data()), 1)))
				_ = p.fr.WriteWindowUpdate(id, uint32(max(len(d.Data()), 1)))
				return d.StreamEnded()
			}
			return false
		})
		if got != 16384 {
			t.Fatalf("stream %d echoed %d bytes", id, got)
		}
	}
	for _, c := range []*stats.Counter{st.InboundEmptyFramesFlood, st.InboundWindowUpdateFlood, st.InboundPriorityFlood, st.OutboundControlFlood} {
		if c.Value() != 0 {
			t.Fatalf("flood counter tripped by ordinary traffic: %d", c.Value())
		}
	}
}

// TestRapidReset: a client resetting every stream it opens (CVE-2023-44487)
// gets GOAWAY ENHANCE_YOUR_CALM once prematureResetMinStreams streams have
// closed; a client whose streams complete does not.
func TestRapidReset(t *testing.T) {
	tests := []struct {
		name     string
		reset    bool
		wantCalm bool
	}{
		{name: "every stream reset", reset: true, wantCalm: true},
		{name: "streams complete", reset: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkLeaks(t)
			h := stream.HandlerFunc(func(s stream.ServerStream) {
				if s.Request().Path == "/hang" {
					<-s.Context().Done()
					return
				}
				_ = s.WriteHeader(&stream.Response{Status: 204, ContentLength: -1}, true)
			})
			st := newTestStats()
			ts := startServer(t, &ServerConfig{Stats: st}, h)
			p := dialRawClient(t, ts.addr())
			path := "/ok"
			if tt.reset {
				path = "/hang"
			}
			goaway := p.readGoAway()
			n := prematureResetMinStreams + 100
			for i := range n {
				id := uint32(2*i + 1)
				p.headers(id, true, ":method", "GET", ":scheme", "http", ":authority", "a", ":path", path)
				if tt.reset {
					if err := p.fr.WriteRSTStream(id, http2.ErrCodeCancel); err != nil {
						break
					}
				}
			}
			g, ok := waitGoAway(t, goaway, time.Second)
			calm := ok && g.code == http2.ErrCodeEnhanceYourCalm
			if calm != tt.wantCalm {
				t.Fatalf("GOAWAY ENHANCE_YOUR_CALM = %v, want %v (%+v)", calm, tt.wantCalm, g)
			}
			if want := map[bool]uint64{true: 1}[tt.wantCalm]; st.DownstreamPrematureResets.Value() != want {
				t.Fatalf("downstream_rq_too_many_premature_resets = %d, want %d", st.DownstreamPrematureResets.Value(), want)
			}
		})
	}
}

// TestHPACKBomb: a small header block that expands past the header list
// limit through dynamic table references gets 431, not the expansion.
func TestHPACKBomb(t *testing.T) {
	checkLeaks(t)
	st := newTestStats()
	ts := startServer(t, &ServerConfig{Stats: st}, echoHandler)
	p := dialRawClient(t, ts.addr())
	kv := []string{":method", "GET", ":scheme", "http", ":authority", "a", ":path", "/"}
	big := strings.Repeat("b", 4000)
	for range 20 { // 20 * 4000 bytes decoded > 60 KiB, ~4 KiB encoded
		kv = append(kv, "x-bomb", big)
	}
	p.headers(1, true, kv...)
	if n := p.hbuf.Len(); n > 5000 {
		t.Fatalf("encoded block is %d bytes; the test wants a small one", n)
	}
	f := p.waitFor("response", isHeaders(1)).(*http2.MetaHeadersFrame)
	if status := f.PseudoValue("status"); status != "431" {
		t.Fatalf(":status = %q, want 431", status)
	}
	if st.HeaderOverflow.Value() != 1 {
		t.Fatalf("header_overflow = %d", st.HeaderOverflow.Value())
	}
}
