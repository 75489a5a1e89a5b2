package sidecar

import (
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"meshd.dev/meshd/internal/testutil"
)

// TestDownstreamKeepalive: a connection manager's
// http2_protocol_options.connection_keepalive reaches the listener's
// HTTP/2 connections: a prior-knowledge client that sent nothing but its
// preface gets PINGs from the sidecar.
func TestDownstreamKeepalive(t *testing.T) {
	testutil.CheckGoroutines(t)
	boot := strings.Replace(bootstrap(0, "x"), "          stat_prefix: ingress\n",
		"          stat_prefix: ingress\n          http2_protocol_options: { connection_keepalive: { interval: 0.02s, timeout: 5s } }\n", 1)
	s := start(t, compile(t, boot))
	nc, err := net.Dial("tcp", listenerAddr(t, s, "ingress"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := nc.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(nc, nc)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	for pings := 0; pings < 2; {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("after %d PINGs: %v, want the sidecar's keepalive PINGs", pings, err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				pings++
				if err := fr.WritePing(true, f.Data); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
}
