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
	reqs  []rawReq
	conns []*rawConn
	// holds delays the response to the request of a path until its
	// channel is closed (over hold).
	holds map[string]chan struct{}
	// refuse, when set, decides whether a request is refused with
	// RST_STREAM REFUSED_STREAM, from its connection and the requests
	// in flight on it (received and not yet answered).
	refuse func(rc *rawConn, inFlight int) bool
	// ignore, when set, picks requests that are recorded and never
	// answered (a peer that dropped them).
	ignore func(rc *rawConn, path string) bool
	wg     sync.WaitGroup
}

// rawReq is a request a rawServer received.
type rawReq struct {
	path    string
	conn    int // the index of its connection, in accept order
	refused bool
}

// rawConn is one accepted connection of a rawServer.
type rawConn struct {
	nc       net.Conn
	idx      int // accept order
	wmu      sync.Mutex
	fr       *http2.Framer
	pings    int // owned by the read loop
	inFlight atomic.Int64
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
		rc.idx = len(s.conns)
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
			id, path := f.StreamID, f.PseudoValue("path")
			s.mu.Lock()
			s.paths = append(s.paths, path)
			refuse := s.refuse != nil && s.refuse(rc, int(rc.inFlight.Load()))
			s.reqs = append(s.reqs, rawReq{path: path, conn: rc.idx, refused: refuse})
			hold := s.hold
			if h, ok := s.holds[path]; ok {
				hold = h
			}
			ignore := !refuse && s.ignore != nil && s.ignore(rc, path)
			s.mu.Unlock()
			if ignore {
				continue
			}
			if refuse {
				_ = rc.write(func(fr *http2.Framer) error { return fr.WriteRSTStream(id, http2.ErrCodeRefusedStream) })
				continue
			}
			if hold == nil {
				rc.respond(id)
				continue
			}
			// In flight until answered: forgotten before the response
			// goes out, so a client that saw the response finds the slot
			// free.
			rc.inFlight.Add(1)
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				<-hold
				rc.inFlight.Add(-1)
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

// goAwayAt sends GOAWAY NO_ERROR with last-stream-id last and keeps the
// connection open: the streams above last were not processed.
func (rc *rawConn) goAwayAt(last uint32) error {
	return rc.write(func(fr *http2.Framer) error { return fr.WriteGoAway(last, http2.ErrCodeNo, nil) })
}

// holdPath delays the response to path's request until the returned
// release is called (release is idempotent).
func (s *rawServer) holdPath(path string) (release func()) {
	ch := make(chan struct{})
	s.mu.Lock()
	if s.holds == nil {
		s.holds = map[string]chan struct{}{}
	}
	s.holds[path] = ch
	s.mu.Unlock()
	var once sync.Once
	release = func() { once.Do(func() { close(ch) }) }
	s.t.Cleanup(release) // before close, which waits for held responses
	return release
}

// requests returns every request received, in order.
func (s *rawServer) requests() []rawReq {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]rawReq(nil), s.reqs...)
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
