package h3

import (
	"io"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// parkedConn is a client connection whose server has concurrent handler
// goroutines parked after serving one request each.
type parkedConn struct {
	c     *rawConn
	sc    *serverConn
	first []string  // the parked handler goroutines' IDs
	at    time.Time // before they parked
}

// startParked starts a server with the given park time, has a client
// connection send concurrent requests that are all in their handlers at
// once (one handler goroutine each), lets them finish, and waits until
// their goroutines are parked.
func startParked(t *testing.T, park time.Duration, concurrent int) *parkedConn {
	t.Helper()
	arrived := make(chan struct{}, concurrent)
	release := make(chan struct{})
	h := stream.HandlerFunc(func(s stream.ServerStream) {
		if s.Request().Path == "/wait" {
			arrived <- struct{}{}
			<-release
		}
		_, _ = io.Copy(io.Discard, s)
		_ = s.WriteHeader(&stream.Response{Status: 200, Header: header.Make(0), ContentLength: 0}, true)
	})
	addr, tc, srv := testMeshdServer(t, 100, ServerConfig{parkTime: park}, h)
	c := dialRaw(t, addr, tc)

	waitFields := []string{":method", "GET", ":scheme", "https", ":authority", "svc", ":path", "/wait"}
	var open []io.Reader
	for range concurrent {
		qs, err := c.qc.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := qs.Write(rawHeaders(t, waitFields...)); err != nil {
			t.Fatal(err)
		}
		_ = qs.Close()
		_ = qs.SetReadDeadline(time.Now().Add(10 * time.Second))
		open = append(open, qs)
	}
	for range concurrent {
		select {
		case <-arrived:
		case <-time.After(10 * time.Second):
			t.Fatal("requests did not reach the handler")
		}
	}
	at := time.Now()
	close(release)
	for _, r := range open {
		if _, err := io.ReadAll(r); err != nil {
			t.Fatal(err)
		}
	}
	sc := onlyConn(t, srv)
	return &parkedConn{c: c, sc: sc, first: waitParked(t, sc, concurrent), at: at}
}

// TestServerHandlerParking checks that handler goroutines that served
// requests park for the next ones and that later requests reuse them
// instead of starting goroutines (as h2's test of the same name).
func TestServerHandlerParking(t *testing.T) {
	testutil.CheckGoroutines(t)
	const concurrent = 4
	// Parked goroutines would outlive the test's waits by far: none is
	// released for being idle, however slow the machine.
	p := startParked(t, time.Hour, concurrent)
	for i := range 3 * concurrent {
		if got := p.c.do(rawHeaders(t, getFields...)); got.status != 200 {
			t.Fatalf("request %d: %+v", i, got)
		}
		// Every later request is served by one of the parked goroutines.
		for _, h := range waitParked(t, p.sc, concurrent) {
			if !slices.Contains(p.first, h) {
				t.Fatalf("request %d started a handler goroutine while %d were parked", i, concurrent)
			}
		}
	}
}

// TestServerHandlerIdleExit checks that parked handler goroutines exit
// once idle for a park time, not before, while the connection stays open,
// and that a request after that is still served.
func TestServerHandlerIdleExit(t *testing.T) {
	testutil.CheckGoroutines(t)
	const park = 100 * time.Millisecond
	p := startParked(t, park, 4)
	deadline := time.Now().Add(10 * time.Second)
	for handlerGoroutines() > 0 || p.sc.parked.Parked() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d handler goroutines still running after the connection was idle for 10 s", handlerGoroutines())
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Measured from before they parked, so never longer than they were.
	if idle := time.Since(p.at); idle < park {
		t.Errorf("handler goroutines exited %v after they parked, before the park time of %v", idle, park)
	}
	if err := p.c.qc.Context().Err(); err != nil {
		t.Fatalf("connection closed while idle: %v", err)
	}
	if got := p.c.do(rawHeaders(t, getFields...)); got.status != 200 {
		t.Fatalf("request after the handlers exited: %+v", got)
	}
}

// onlyConn returns srv's one connection.
func onlyConn(t *testing.T, srv *Server) *serverConn {
	t.Helper()
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if len(srv.conns) != 1 {
		t.Fatalf("server has %d connections, want 1", len(srv.conns))
	}
	for c := range srv.conns {
		return c
	}
	return nil
}

// waitParked waits until n handlers are parked on c (each parks once it
// has sent its response) and returns the IDs of the handler goroutines
// then running: the parked ones.
func waitParked(t *testing.T, c *serverConn, n int) []string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		p, ids := c.parked.Parked(), handlerGoroutineIDs()
		if p == n && len(ids) == n {
			return ids
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d handlers parked and %d handler goroutines running, want %d", p, len(ids), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// handlerGoroutines counts the goroutines running serverConn.handlerLoop.
func handlerGoroutines() int { return len(handlerGoroutineIDs()) }

// handlerGoroutineIDs returns the IDs of the goroutines running
// serverConn.handlerLoop.
func handlerGoroutineIDs() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n == len(buf) {
			buf = make([]byte, 2*len(buf))
			continue
		}
		var ids []string
		for g := range strings.SplitSeq(string(buf[:n]), "\n\n") {
			if !strings.Contains(g, "h3.(*serverConn).handlerLoop") {
				continue
			}
			// "goroutine 42 [chan receive]:"
			if f := strings.Fields(g); len(f) > 1 && f[0] == "goroutine" {
				ids = append(ids, f[1])
			}
		}
		return ids
	}
}
