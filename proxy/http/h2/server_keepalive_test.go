package h2

import (
	"errors"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"meshd.dev/meshd/proxy/http/stream"
)

// TestServerKeepalive: with KeepaliveInterval set (the HCM's
// http2_protocol_options.connection_keepalive) the server PINGs the client
// at that interval, keeps a connection whose client answers, and closes
// one whose client does not, counting http2.keepalive_timeout; without it
// the server sends no PING.
func TestServerKeepalive(t *testing.T) {
	tests := []struct {
		name        string
		cfg         ServerConfig
		ack         bool
		wantPings   int  // PINGs to see before judging
		wantClosed  bool // the server closes the connection
		wantTimeout uint64
	}{
		{name: "client answers", cfg: ServerConfig{KeepaliveInterval: 20 * time.Millisecond, KeepaliveTimeout: testTimeout, KeepaliveJitterPercent: 15},
			ack: true, wantPings: 3},
		{name: "client silent", cfg: ServerConfig{KeepaliveInterval: 20 * time.Millisecond, KeepaliveTimeout: 50 * time.Millisecond},
			wantPings: 1, wantClosed: true, wantTimeout: 1},
		{name: "keepalive off", cfg: ServerConfig{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkLeaks(t)
			cfg := tt.cfg
			cfg.Stats = newTestStats()
			ts := startServer(t, &cfg, stream.HandlerFunc(func(s stream.ServerStream) { s.Reset(stream.ErrCodeCancel) }))
			p := dialRawClient(t, ts.addr())
			if tt.wantPings == 0 {
				// Nothing to wait for: watch a window many intervals long.
				_ = p.nc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			}
			pings, seen := 0, map[[8]byte]bool{}
			var readErr error
			for readErr == nil && (tt.wantClosed || pings < tt.wantPings || tt.wantPings == 0) {
				f, err := p.fr.ReadFrame()
				if err != nil {
					readErr = err
					break
				}
				pf, ok := f.(*http2.PingFrame)
				if !ok || pf.IsAck() {
					continue
				}
				pings++
				if seen[pf.Data] || pf.Data == shutdownPingData {
					t.Errorf("PING %d carries %x again (or the shutdown PING's data)", pings, pf.Data)
				}
				seen[pf.Data] = true
				if tt.ack {
					if err := p.fr.WritePing(true, pf.Data); err != nil {
						t.Fatalf("writing PING ACK: %v", err)
					}
				}
			}
			var ne net.Error
			timedOut := errors.As(readErr, &ne) && ne.Timeout()
			switch {
			case tt.wantClosed && (readErr == nil || timedOut):
				t.Fatalf("connection not closed after %d unanswered PINGs (read: %v)", pings, readErr)
			case !tt.wantClosed && tt.wantPings > 0 && readErr != nil:
				t.Fatalf("after %d answered PINGs: %v, want the connection open", pings, readErr)
			case tt.wantPings == 0 && !timedOut:
				t.Fatalf("read: %v, want the window to pass quietly", readErr)
			}
			if pings < tt.wantPings || (tt.wantPings == 0 && pings > 0) {
				t.Errorf("server sent %d PINGs, want %d", pings, tt.wantPings)
			}
			if n := cfg.Stats.KeepaliveTimeout.Value(); n != tt.wantTimeout {
				t.Errorf("http2.keepalive_timeout = %d, want %d", n, tt.wantTimeout)
			}
		})
	}
}

// TestKeepaliveJitter: the delay before a keepalive PING is the interval
// plus a jitter spread over [0, interval×percent/100), so connections
// opened together do not ping together; 0% is the interval exactly.
func TestKeepaliveJitter(t *testing.T) {
	tests := []struct {
		name     string
		interval time.Duration
		percent  float64
	}{
		{"Envoy's default 15%", 10 * time.Second, 15},
		{"50%", time.Second, 50},
		{"none", time.Second, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			span := time.Duration(float64(tt.interval) * tt.percent / 100)
			var low, high bool // a delay in the lower and in the upper half of the span
			for range 200 {
				d := jittered(tt.interval, tt.percent)
				if d < tt.interval || (span > 0 && d >= tt.interval+span) || (span == 0 && d != tt.interval) {
					t.Fatalf("delay %v outside [%v, %v)", d, tt.interval, tt.interval+span)
				}
				low = low || d < tt.interval+span/2
				high = high || d >= tt.interval+span/2
			}
			if span > 0 && !(low && high) {
				t.Errorf("200 delays all in one half of the jitter span (lower %v, upper %v)", low, high)
			}
		})
	}
}
