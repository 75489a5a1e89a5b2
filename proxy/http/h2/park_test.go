package h2

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// parkHandler answers 200 at once, except "/wait" requests, which first
// report on arrived and wait for release to close.
func parkHandler(arrived chan<- struct{}, release <-chan struct{}) stream.Handler {
	return stream.HandlerFunc(func(s stream.ServerStream) {
		if s.Request().Path == "/wait" {
			arrived <- struct{}{}
			<-release
		}
		_, _ = io.Copy(io.Discard, readerOnly{s})
		_ = s.WriteHeader(&stream.Response{Status: 200, Header: header.Make(0), ContentLength: 0}, true)
	})
}

// parkedConn is a connection whose handler goroutines parked after
// serving concurrent requests at once.
type parkedConn struct {
	sc    *ServerConn
	cc    *ClientConn
	get   func(path string) error
	first []string  // IDs of the parked handler goroutines
	at    time.Time // before any of them parked
}

// startParked serves concurrent requests at once on one connection to a
// server parking idle handler goroutines for park, and returns once
// their goroutines are parked.
func startParked(t *testing.T, park time.Duration, concurrent int) *parkedConn {
	t.Helper()
	arrived := make(chan struct{}, concurrent)
	release := make(chan struct{})
	ts := startServer(t, &ServerConfig{parkTime: park}, parkHandler(arrived, release))
	releaseAll := sync.OnceFunc(func() { close(release) })
	t.Cleanup(releaseAll)
	cc := dialClient(t, ts.addr(), nil)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	get := func(path string) error {
		resp, _, _, err := roundTrip(ctx, cc, &stream.Request{Method: "GET", Scheme: "http", Authority: "test", Path: path, ContentLength: 0}, nil, header.Header{})
		if err == nil && resp.Status != 200 {
			err = fmt.Errorf("GET %s: status %d", path, resp.Status)
		}
		return err
	}
	// The client opens no concurrent streams before the server's SETTINGS.
	if err := get("/"); err != nil {
		t.Fatal(err)
	}
	// concurrent requests in flight at once: one handler goroutine each.
	errs := make(chan error, concurrent)
	for range concurrent {
		go func() { errs <- get("/wait") }()
	}
	for range concurrent {
		select {
		case <-arrived:
		case err := <-errs:
			t.Fatalf("request failed before reaching the handler: %v", err)
		case <-time.After(testTimeout):
			t.Fatal("requests did not reach the handler")
		}
	}
	at := time.Now()
	releaseAll()
	for range concurrent {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	sc := onlyServerConn(t, ts)
	first := waitParked(t, sc, concurrent)
	return &parkedConn{sc: sc, cc: cc, get: get, first: first, at: at}
}

// TestServerHandlerParking checks that handler goroutines that served
// requests park for the next ones, that later requests reuse them instead
// of starting goroutines, and that the end of the connection releases them
// at once, not after their park time (as h3's test of the same name).
func TestServerHandlerParking(t *testing.T) {
	checkLeaks(t)
	const concurrent = 4
	// Parked goroutines would outlive the test's waits by far: none is
	// released for being idle, however slow the machine.
	p := startParked(t, time.Hour, concurrent)
	for i := range 3 * concurrent {
		if err := p.get("/"); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		// Every later request is served by one of the parked goroutines.
		for _, g := range waitParked(t, p.sc, concurrent) {
			if !slices.Contains(p.first, g) {
				t.Fatalf("request %d started a handler goroutine while %d were parked", i, concurrent)
			}
		}
	}
	_ = p.cc.Close()
	deadline := time.Now().Add(testTimeout)
	for len(handlerGoroutineIDs()) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d handler goroutines still parked %v after the client closed the connection", len(handlerGoroutineIDs()), testTimeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if p.sc.parked.Hand(nil) {
		t.Error("a stream was handed to a parked goroutine after the connection ended")
	}
}

// TestServerHandlerIdleExit checks that parked handler goroutines exit
// once idle for a park time, not before, while the connection stays open,
// and that a request after that is still served.
func TestServerHandlerIdleExit(t *testing.T) {
	checkLeaks(t)
	const park = 100 * time.Millisecond
	p := startParked(t, park, 4)
	deadline := time.Now().Add(testTimeout)
	for len(handlerGoroutineIDs()) > 0 || p.sc.parked.Parked() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d handler goroutines still running after the connection was idle for %v", len(handlerGoroutineIDs()), testTimeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Measured from before they parked, so never longer than they were.
	if idle := time.Since(p.at); idle < park {
		t.Errorf("handler goroutines exited %v after they parked, before the park time of %v", idle, park)
	}
	if got := p.sc.ActiveStreams(); got != 0 {
		t.Errorf("%d streams active on an idle connection", got)
	}
	if err := p.get("/"); err != nil {
		t.Fatalf("request after the handlers exited: %v", err)
	}
}

// onlyServerConn returns ts's one connection.
func onlyServerConn(t *testing.T, ts *testServer) *ServerConn {
	t.Helper()
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if len(ts.conns) != 1 {
		t.Fatalf("server has %d connections, want 1", len(ts.conns))
	}
	return ts.conns[0]
}

// waitParked waits until n handlers are parked on sc (each parks once its
// handler returned) and returns the IDs of the handler goroutines then
// running: the parked ones.
func waitParked(t *testing.T, sc *ServerConn, n int) []string {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for {
		p, ids := sc.parked.Parked(), handlerGoroutineIDs()
		if p == n && len(ids) == n {
			return ids
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d handlers parked and %d handler goroutines running, want %d", p, len(ids), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// handlerGoroutineIDs returns the IDs of the goroutines running
// ServerConn.handlerLoop.
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
			if !strings.Contains(g, "h2.(*ServerConn).handlerLoop") {
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
