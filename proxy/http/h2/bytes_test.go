package h2

import (
	"bytes"
	"context"
	"testing"
	"time"

	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/stats"
)

// TestByteCounters checks ByteCounters over a plaintext connection: what
// one side counts as written the other counts as read (preface, SETTINGS
// and their ACKs, HEADERS, DATA: every byte on the connection), and a
// body sent one way is counted in that direction only. The server's
// request-header reader (RequestHeadersTimeout) reads through the
// counter too.
func TestByteCounters(t *testing.T) {
	cases := []struct {
		name   string
		server ServerConfig
	}{
		{name: "default"},
		{name: "request header timeout reader", server: ServerConfig{RequestHeadersTimeout: time.Minute}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			checkLeaks(t)
			store := stats.NewStore()
			sc := store.Root().Scope("test")
			srvRx, srvTx := sc.Counter("server_rx"), sc.Counter("server_tx")
			cliRx, cliTx := sc.Counter("client_rx"), sc.Counter("client_tx")
			scfg := tc.server
			scfg.Bytes = ByteCounters{Rx: srvRx, Tx: srvTx}
			ts := startServer(t, &scfg, echoHandler)
			cc := dialClient(t, ts.addr(), &ClientConfig{Bytes: ByteCounters{Rx: cliRx, Tx: cliTx}})
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			const size = 100 << 10
			body := bytes.Repeat([]byte("x"), size)
			if _, got, _, err := roundTrip(ctx, cc, newReq("/echo"), body, header.Header{}); err != nil || len(got) != size {
				t.Fatalf("round trip: %d bytes back, err %v", len(got), err)
			}
			// Frames still in flight (SETTINGS ACK, WINDOW_UPDATE)
			// arrive within moments on loopback.
			deadline := time.Now().Add(testTimeout)
			for cliTx.Value() != srvRx.Value() || srvTx.Value() != cliRx.Value() {
				if time.Now().After(deadline) {
					t.Fatalf("client wrote %d, server read %d; server wrote %d, client read %d", cliTx.Value(), srvRx.Value(), srvTx.Value(), cliRx.Value())
				}
				time.Sleep(time.Millisecond)
			}
			// The echoed body went both ways, with a few hundred bytes of
			// framing; nothing is counted twice.
			for name, c := range map[string]*stats.Counter{"client tx": cliTx, "server tx": srvTx} {
				if v := c.Value(); v < size || v > size+size/10 {
					t.Errorf("%s = %d bytes for a %d-byte body", name, v, size)
				}
			}
		})
	}
}
