package scenarios

// Acceptance 7 (downstream HTTP/2): through a real meshd sidecar whose HTTP
// connection manager advertises max_concurrent_streams 5 and whose listener
// carries the meshd.http2 ping policy (min_client_ping_interval 1 s),
//   - a raw x/net/http2 Framer client that opens 8 gRPC streams without
//     ending them gets RST_STREAM REFUSED_STREAM for exactly the 3 excess
//     streams (11, 13, 15), and the first 5 stay open;
//   - a client pinging every 100 ms with no stream open gets GOAWAY
//     ENHANCE_YOUR_CALM with debug data "too_many_pings".
// Both are counted (http2.tx_refused_stream = 3, http2.too_many_pings = 1).

import (
	"bytes"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"sigs.k8s.io/yaml"

	"meshd.dev/meshd/internal/testutil"
)

const (
	downstreamMaxStreams   = 5
	downstreamOpenStreams  = 8
	downstreamPingInterval = 100 * time.Millisecond
	// downstreamFrameTimeout bounds each raw client's whole exchange.
	downstreamFrameTimeout = 10 * time.Second
)

// withListenerMetadata adds filter_metadata to the first listener of a
// rendered bootstrap.
func withListenerMetadata(t *testing.T, bootstrap string, filterMetadata map[string]any) string {
	t.Helper()
	var doc map[string]any
	if err := yaml.Unmarshal([]byte(bootstrap), &doc); err != nil {
		t.Fatal(err)
	}
	ls := doc["static_resources"].(map[string]any)["listeners"].([]any)
	ls[0].(map[string]any)["metadata"] = map[string]any{"filter_metadata": filterMetadata}
	out, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// downstreamClient is a raw HTTP/2 client speaking through x/net's Framer.
type downstreamClient struct {
	t    *testing.T
	nc   net.Conn
	fr   *http2.Framer
	henc *hpack.Encoder
	hbuf bytes.Buffer
}

func dialDownstream(t *testing.T, addr string) *downstreamClient {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, rpcTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nc.Close() })
	_ = nc.SetDeadline(time.Now().Add(downstreamFrameTimeout))
	c := &downstreamClient{t: t, nc: nc, fr: http2.NewFramer(nc, nc)}
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.henc = hpack.NewEncoder(&c.hbuf)
	if _, err := nc.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	if err := c.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return c
}

// openGRPCStream sends the HEADERS of a FullDuplexCall without END_STREAM,
// so the stream stays open on both hops.
func (c *downstreamClient) openGRPCStream(id uint32) {
	c.hbuf.Reset()
	for _, f := range [][2]string{
		{":method", "POST"}, {":scheme", "http"}, {":authority", "backend"},
		{":path", "/grpc.testing.TestService/FullDuplexCall"},
		{"content-type", "application/grpc"}, {"te", "trailers"},
	} {
		_ = c.henc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.hbuf.Bytes(), EndHeaders: true}); err != nil {
		c.t.Fatalf("HEADERS %d: %v", id, err)
	}
}

func TestDownstreamRefusedStreamsAndTooManyPings(t *testing.T) {
	be := startGRPCBackend(t, backendConfig{})
	text, err := scenarioBootstrap{
		Endpoints:    []string{be.Addr},
		DownstreamH2: h2Options{MaxConcurrentStreams: downstreamMaxStreams},
	}.render()
	if err != nil {
		t.Fatal(err)
	}
	text = withListenerMetadata(t, text, map[string]any{
		"meshd.http2": map[string]any{"min_client_ping_interval": "1s", "permit_pings_without_stream": false},
	})
	proc := testutil.StartSidecar(t, text)
	sc := &scenarioSidecar{Sidecar: proc, Addr: proc.ListenerAddr(t, testutil.DefaultListenerName)}

	t.Run("refused streams", func(t *testing.T) {
		c := dialDownstream(t, sc.Addr)
		for i := range downstreamOpenStreams {
			c.openGRPCStream(uint32(2*i + 1))
		}
		refused := map[uint32]bool{}
		var mcs uint32
		for len(refused) < downstreamOpenStreams-downstreamMaxStreams {
			f, err := c.fr.ReadFrame()
			if err != nil {
				t.Fatalf("after %d refusals: %v", len(refused), err)
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if v, ok := f.Value(http2.SettingMaxConcurrentStreams); ok {
					mcs = v
				}
			case *http2.RSTStreamFrame:
				if f.ErrCode != http2.ErrCodeRefusedStream {
					t.Fatalf("stream %d reset with %v, want REFUSED_STREAM", f.StreamID, f.ErrCode)
				}
				refused[f.StreamID] = true
			case *http2.GoAwayFrame:
				t.Fatalf("GOAWAY %v", f.ErrCode)
			}
		}
		if mcs != downstreamMaxStreams {
			t.Errorf("advertised SETTINGS_MAX_CONCURRENT_STREAMS = %d, want %d", mcs, downstreamMaxStreams)
		}
		for _, id := range []uint32{11, 13, 15} {
			if !refused[id] {
				t.Errorf("stream %d was not refused; refused: %v", id, refused)
			}
		}
		// The five accepted streams are still open: nothing resets them
		// within a short grace period.
		_ = c.nc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		for {
			f, err := c.fr.ReadFrame()
			if err != nil {
				break // deadline: quiet, as expected
			}
			if r, ok := f.(*http2.RSTStreamFrame); ok {
				t.Fatalf("accepted stream %d reset with %v", r.StreamID, r.ErrCode)
			}
		}
		if v, ok := sc.stat(t, "http2.tx_refused_stream"); !ok || v != downstreamOpenStreams-downstreamMaxStreams {
			t.Errorf("http2.tx_refused_stream = %d (reported %v), want %d", v, ok, downstreamOpenStreams-downstreamMaxStreams)
		}
	})

	t.Run("too many pings", func(t *testing.T) {
		c := dialDownstream(t, sc.Addr)
		type goAway struct {
			code  http2.ErrCode
			debug string
		}
		got := make(chan goAway, 1)
		go func() {
			defer close(got)
			for {
				f, err := c.fr.ReadFrame()
				if err != nil {
					return
				}
				if g, ok := f.(*http2.GoAwayFrame); ok {
					got <- goAway{code: g.ErrCode, debug: string(g.DebugData())}
					return
				}
			}
		}()
		start := time.Now()
		var g goAway
		var ok bool
		tick := time.NewTicker(downstreamPingInterval)
		defer tick.Stop()
	loop:
		for i := 0; i < 50; i++ { // 5 s of pings at most
			select {
			case g, ok = <-got:
				break loop
			case <-tick.C:
				if err := c.fr.WritePing(false, [8]byte{byte(i)}); err != nil {
					g, ok = <-got
					break loop
				}
			}
		}
		if !ok {
			t.Fatalf("no GOAWAY after %v of pings every %v", time.Since(start).Round(time.Millisecond), downstreamPingInterval)
		}
		if g.code != http2.ErrCodeEnhanceYourCalm || g.debug != "too_many_pings" {
			t.Fatalf("GOAWAY %v %q, want ENHANCE_YOUR_CALM too_many_pings", g.code, g.debug)
		}
		t.Logf("GOAWAY ENHANCE_YOUR_CALM after %v", time.Since(start).Round(time.Millisecond))
		if v, ok := sc.stat(t, "http2.too_many_pings"); !ok || v != 1 {
			t.Errorf("http2.too_many_pings = %d (reported %v), want 1", v, ok)
		}
	})
}
