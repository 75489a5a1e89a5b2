package listener

import (
	"io"
	"testing"

	"meshd.dev/meshd/internal/testutil"
)

// TestTCPMode: a TCP listener hands the connection over without reading
// from it, so a server-speaks-first protocol works (the client sends
// nothing) and the client's bytes reach the filter untouched, even ones
// that look like the HTTP/2 preface.
func TestTCPMode(t *testing.T) {
	testutil.CheckGoroutines(t)
	tests := []struct {
		name string
		send string
	}{
		{"server speaks first", ""},
		{"client bytes untouched", "hello"},
		{"an HTTP/2 preface is just bytes", h2preface},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := make(chan seen, 1)
			l := start(t, Config{Name: "tcp", Codec: TCP, TCP: factory(len(tc.send), got, nil)})
			c := dial(t, l)
			if _, err := io.WriteString(c, tc.send); err != nil {
				t.Fatal(err)
			}
			s := recv(t, got)
			if s.err != nil || s.data != tc.send {
				t.Errorf("filter read %q, %v; want %q", s.data, s.err, tc.send)
			}
			if s.info.Proto != "TCP" {
				t.Errorf("Proto = %q, want TCP", s.info.Proto)
			}
			reply := make([]byte, 2)
			if _, err := io.ReadFull(c, reply); err != nil || string(reply) != "ok" {
				t.Errorf("client read %q, %v; want ok", reply, err)
			}
		})
	}
}

func TestTCPModeWithoutFactoryClosesConnections(t *testing.T) {
	testutil.CheckGoroutines(t)
	l := start(t, Config{Name: "tcp", Codec: TCP})
	c := dial(t, l)
	if n, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatalf("read %d bytes, want the connection closed", n)
	}
}
