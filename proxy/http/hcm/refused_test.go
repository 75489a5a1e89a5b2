package hcm

import (
	"bytes"
	"io"
	"slices"
	"sync"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/proxy/http/h2"
	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// TestTransparentRetryAvoidsRefusingConnection: the upstream advertises
// room for many streams but refuses a second one on a connection while
// "/hold" is in flight there (REFUSED_STREAM). The router's transparent
// retry of "/r" goes to a new connection when max_connections allows one;
// with max_connections 1 it waits in the queue until "/hold" completes
// and is then served on the first connection. Either way the client gets
// 200 after exactly one transparent retry, and the refusing connection is
// held at capacity once (upstream_cx_refused_stream_hold).
func TestTransparentRetryAvoidsRefusingConnection(t *testing.T) {
	tests := []struct {
		name      string
		cluster   string // extra cluster JSON
		queued    bool   // the retry waits for /hold to complete
		wantConn  int    // the upstream connection (in accept order) serving /r
		wantConns int
	}{
		{name: "room for another connection", wantConn: 1, wantConns: 2},
		{
			name:    "max_connections reached: queued",
			cluster: `"circuit_breakers":{"thresholds":[{"max_connections":1}]}`,
			queued:  true, wantConn: 0, wantConns: 1,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			u := startHoldingUpstream(t)
			routes := `{"match":{"prefix":"/"},"route":{"cluster":"backend","timeout":"10s"}}`
			e := newEnv(t, hcmJSON(routes, ""), clusterJSON([]string{u.up.addr}, tc.cluster))

			held := newFakeStream("GET", "/hold", header.Make(0), nil)
			heldDone := make(chan struct{})
			go func() {
				defer close(heldDone)
				e.serve(t, held)
			}()
			if !waitUntil(t, "/hold to reach the upstream", func() bool {
				return u.holding()
			}) {
				t.FailNow()
			}
			if tc.queued {
				// /hold waited for the first connection; the retry of
				// /r is the second stream to queue.
				go func() {
					waitUntil(t, "the retry to queue", func() bool {
						return e.counter("cluster.backend.upstream_rq_pending_total") >= 2
					})
					u.releaseHold()
				}()
			}
			fs := newFakeStream("GET", "/r", header.Make(0), nil)
			e.serve(t, fs)
			if r := fs.result(); r.status != 200 || r.body != "ok" {
				t.Fatalf("/r: status %d body %q, want 200 \"ok\"", r.status, r.body)
			}
			u.releaseHold()
			<-heldDone
			if r := held.result(); r.status != 200 {
				t.Errorf("/hold: status %d, want 200", r.status)
			}
			gotConn, gotConns := u.served()
			if gotConn != tc.wantConn || gotConns != tc.wantConns {
				t.Errorf("/r served on connection %d of %d, want %d of %d", gotConn, gotConns, tc.wantConn, tc.wantConns)
			}
			for name, want := range map[string]uint64{
				"cluster.backend.upstream_rq_transparent_retry":   1,
				"cluster.backend.upstream_cx_refused_stream_hold": 1,
				"cluster.backend.http2.stream_refused_errors":     1,
			} {
				if got := e.counter(name); got != want {
					t.Errorf("%s = %d, want %d", name, got, want)
				}
			}
		})
	}
}

// waitUntil polls cond every 5 ms until it holds and reports true, or
// marks the test failed after exchangeTimeout and reports false. It may
// run on any goroutine.
func waitUntil(t *testing.T, what string, cond func() bool) bool {
	t.Helper()
	deadline := time.Now().Add(exchangeTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Errorf("timed out after %v waiting for %s", exchangeTimeout, what)
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// TestUnretriedRefusalHoldsConnection: a refused request whose body
// exceeds the route's request_body_buffer_limit cannot be replayed, so it
// gets 503 without a retry; the pool still learns from the refusal and
// holds the refusing connection, so the next request goes straight to a
// new connection instead of being refused there too and retried.
func TestUnretriedRefusalHoldsConnection(t *testing.T) {
	testutil.CheckGoroutines(t)
	u := startHoldingUpstream(t)
	routes := `{"match":{"prefix":"/"},"route":{"cluster":"backend","timeout":"10s"},"request_body_buffer_limit":"1024"}`
	e := newEnv(t, hcmJSON(routes, ""), clusterJSON([]string{u.up.addr}, ""))

	held := newFakeStream("GET", "/hold", header.Make(0), nil)
	heldDone := make(chan struct{})
	go func() {
		defer close(heldDone)
		e.serve(t, held)
	}()
	if !waitUntil(t, "/hold to reach the upstream", func() bool {
		return u.holding()
	}) {
		t.FailNow()
	}

	big := newFakeStream("POST", "/big", header.Make(0), bytes.NewReader(bytes.Repeat([]byte("b"), 8<<10)))
	e.serve(t, big)
	if r := big.result(); r.status != 503 {
		t.Fatalf("/big: status %d body %q, want 503 (refused, body not replayable)", r.status, r.body)
	}
	next := newFakeStream("GET", "/next", header.Make(0), nil)
	e.serve(t, next)
	if r := next.result(); r.status != 200 || r.body != "ok" {
		t.Fatalf("/next: status %d body %q, want 200 \"ok\"", r.status, r.body)
	}
	u.releaseHold()
	<-heldDone
	if r := held.result(); r.status != 200 {
		t.Errorf("/hold: status %d, want 200", r.status)
	}
	gotConn, gotConns := u.served()
	if gotConn != 1 || gotConns != 2 {
		t.Errorf("/next served on connection %d of %d, want 1 of 2", gotConn, gotConns)
	}
	for name, want := range map[string]uint64{
		"cluster.backend.http2.stream_refused_errors":     1, // /big only
		"cluster.backend.upstream_rq_transparent_retry":   0,
		"cluster.backend.upstream_cx_refused_stream_hold": 1,
		"cluster.backend.retry_or_shadow_abandoned":       1,
	} {
		if got := e.counter(name); got != want {
			t.Errorf("%s = %d, want %d", name, got, want)
		}
	}
}

// holdingUpstream is an HTTP/2 upstream that holds "/hold" until released
// (or hang passes) and refuses with REFUSED_STREAM, its body read, every
// other request arriving on the connection /hold is in flight on; other
// connections answer 200. It forgets the held connection before /hold's
// response goes out.
type holdingUpstream struct {
	up      *h2Upstream
	release chan struct{}
	once    sync.Once

	mu         sync.Mutex
	conns      []string // remote addresses in order of first request
	holdConn   int      // the connection /hold is in flight on, -1 if none
	servedConn int      // the connection that answered the last request served, -1 if none
}

// startHoldingUpstream starts a holdingUpstream, released at the end of
// the test.
func startHoldingUpstream(t *testing.T) *holdingUpstream {
	u := &holdingUpstream{release: make(chan struct{}), holdConn: -1, servedConn: -1}
	t.Cleanup(u.releaseHold)
	u.up = startH2Upstream(t, h2.ServerConfig{}, u.serve)
	return u
}

func (u *holdingUpstream) serve(s stream.ServerStream) {
	u.mu.Lock()
	idx := slices.Index(u.conns, s.Conn().RemoteAddr.String())
	if idx < 0 {
		u.conns = append(u.conns, s.Conn().RemoteAddr.String())
		idx = len(u.conns) - 1
	}
	switch {
	case s.Request().Path == "/hold":
		u.holdConn = idx
		u.mu.Unlock()
		select {
		case <-u.release:
		case <-time.After(hang):
		}
		u.mu.Lock()
		u.holdConn = -1
		u.mu.Unlock()
		respond(s, 200, "held", header.Header{})
		return
	case idx == u.holdConn:
		u.mu.Unlock()
		_, _ = io.Copy(io.Discard, s)
		s.Reset(stream.ErrCodeRefusedStream)
		return
	}
	u.servedConn = idx
	u.mu.Unlock()
	respond(s, 200, "ok", header.Header{})
}

// releaseHold answers /hold; it may be called more than once.
func (u *holdingUpstream) releaseHold() { u.once.Do(func() { close(u.release) }) }

// holding reports whether /hold is in flight.
func (u *holdingUpstream) holding() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.holdConn >= 0
}

// served returns the connection that answered the last request served
// (-1 if none) and how many connections the upstream has seen.
func (u *holdingUpstream) served() (conn, conns int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.servedConn, len(u.conns)
}
