package upstream

import (
	"bytes"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// rawServer is an HTTP/2 server written on x/net/http2's Framer so a test
// controls every frame: the SETTINGS it advertises (and changes), whether
// it answers PINGs, GOAWAYs it sends. Each request is answered with 200
// and END_STREAM when hold is nil or, else, once hold is closed. Requests
// are recorded in arrival order by :path.
type rawServer struct {
	t  *testing.T
	ln net.Listener

	mcs uint32 // SETTINGS_MAX_CONCURRENT_STREAMS in the initial SETTINGS
	// hold, when set before the first request, delays every response
	// until it is closed.
	hold chan struct{}
	// onPing decides what to do with a (non-ACK) PING: it returns true to
	// ACK it. Nil ACKs every PING.
	onPing func(sc *rawConn, n int) bool

	accepted atomic.Int64
	open     atomic.Int64 // connections not yet closed

	mu    sync.Mutex
	paths []string
	conns []*rawConn
	wg    sync.WaitGroup
}

// rawConn is one accepted connection of a rawServer.
type rawConn struct {
	nc    net.Conn
	wmu   sync.Mutex
	fr    *http2.Framer
	pings int // owned by the read loop
}

func startRawServer(t *testing.T, mcs uint32) *rawServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &rawServer{t: t, ln: ln, mcs: mcs}
	s.wg.Add(1)
	go s.acceptLoop()
	t.Cleanup(s.close)
	return s
}

func (s *rawServer) addr() string { return s.ln.Addr().String() }

func (s *rawServer) acceptLoop() {
	defer s.wg.Done()
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.accepted.Add(1)
		s.open.Add(1)
		rc := &rawConn{nc: nc}
		rc.fr = http2.NewFramer(nc, nc)
		rc.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		s.mu.Lock()
		s.conns = append(s.conns, rc)
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.open.Add(-1)
			defer nc.Close()
			s.serve(rc)
		}()
	}
}

func (s *rawServer) close() {
	s.ln.Close()
	s.mu.Lock()
	for _, rc := range s.conns {
		rc.nc.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// write runs f with the connection's write lock held.
func (rc *rawConn) write(f func(fr *http2.Framer) error) error {
	rc.wmu.Lock()
	defer rc.wmu.Unlock()
	return f(rc.fr)
}

// setMCS sends a SETTINGS frame lowering (or raising) the stream limit.
func (rc *rawConn) setMCS(v uint32) error {
	return rc.write(func(fr *http2.Framer) error {
		return fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: v})
	})
}

func (s *rawServer) serve(rc *rawConn) {
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(rc.nc, preface); err != nil || !bytes.Equal(preface, []byte(http2.ClientPreface)) {
		return
	}
	var settings []http2.Setting
	if s.mcs > 0 {
		settings = append(settings, http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: s.mcs})
	}
	if rc.write(func(fr *http2.Framer) error { return fr.WriteSettings(settings...) }) != nil {
		return
	}
	for {
		f, err := rc.fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = rc.write(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
			}
		case *http2.PingFrame:
			if f.IsAck() {
				continue
			}
			rc.pings++
			if s.onPing == nil || s.onPing(rc, rc.pings) {
				data := f.Data
				_ = rc.write(func(fr *http2.Framer) error { return fr.WritePing(true, data) })
			}
		case *http2.MetaHeadersFrame:
			s.mu.Lock()
			s.paths = append(s.paths, f.PseudoValue("path"))
			s.mu.Unlock()
			id := f.StreamID
			if s.hold == nil {
				rc.respond(id)
				continue
			}
			hold := s.hold
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				<-hold
				rc.respond(id)
			}()
		case *http2.GoAwayFrame:
			// The client drains; it closes the socket when done.
		}
	}
}

// respond sends a 200 response that ends stream id.
func (rc *rawConn) respond(id uint32) {
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	_ = enc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
	_ = rc.write(func(fr *http2.Framer) error {
		return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: buf.Bytes(), EndStream: true, EndHeaders: true})
	})
}

// goAway sends GOAWAY and closes the connection.
func (rc *rawConn) goAway(code http2.ErrCode, debug string) {
	_ = rc.write(func(fr *http2.Framer) error { return fr.WriteGoAway(0, code, []byte(debug)) })
	time.AfterFunc(10*time.Millisecond, func() { rc.nc.Close() })
}

// requestPaths returns the :path of every request received, in order.
func (s *rawServer) requestPaths() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.paths...)
}

func (s *rawServer) conn(i int) *rawConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i >= len(s.conns) {
		return nil
	}
	return s.conns[i]
}

// waitFor polls cond every 5 ms until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
