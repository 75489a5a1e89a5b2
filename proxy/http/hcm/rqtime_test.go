package hcm

import (
	"io"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/proxy/http/h2"
	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/proxy/stats"
)

// histogram returns a snapshot of the histogram with the flat name (zero
// when it was never created).
func (e *env) histogram(name string) stats.HistogramSnapshot {
	var s stats.HistogramSnapshot
	e.store.Visit(func(*stats.Counter) {}, func(*stats.Gauge) {}, func(h *stats.Histogram) {
		if h.FlatName() == name {
			s = h.Snapshot()
		}
	})
	return s
}

// delayedBody is a request body that yields its one chunk and the end of
// the request only after waiting from its first Read (which comes after
// the exchange started), or once release is closed when it is not nil;
// it gives up when the stream ends.
type delayedBody struct {
	after   time.Duration
	release <-chan struct{}
	fs      *fakeStream
	sent    bool
}

func (b *delayedBody) Read(p []byte) (int, error) {
	if b.sent {
		return 0, io.EOF
	}
	ready := b.release
	if ready == nil {
		t := time.NewTimer(b.after)
		defer t.Stop()
		select {
		case <-t.C:
		case <-b.fs.ctx.Done():
			return 0, io.ErrUnexpectedEOF
		}
	} else {
		select {
		case <-ready:
		case <-b.fs.ctx.Done():
			return 0, io.ErrUnexpectedEOF
		}
	}
	b.sent = true
	return copy(p, "body"), io.EOF
}

// TestUpstreamRqTimeSpan checks where upstream_rq_time starts and stops,
// as Envoy's router does (router.cc: onRequestComplete starts it once the
// whole downstream request is in; onUpstreamComplete stops it at the end
// of the upstream response, and records nothing when the request had not
// ended by then). Each bound follows from causality, not from timing, so
// a loaded machine cannot break it: time the client spends sending its
// body is outside the span, time the upstream takes to answer is inside.
func TestUpstreamRqTimeSpan(t *testing.T) {
	const wait = 300 * time.Millisecond
	cases := []struct {
		name string
		// bodyAfter delays the end of the request body (0: no body).
		bodyAfter time.Duration
		// upstreamWait delays the upstream's response after it read the
		// request; early answers before reading the request at all.
		upstreamWait time.Duration
		early        bool
		// recorded is whether upstream_rq_time gets a sample.
		recorded bool
	}{
		{name: "headers only, prompt upstream", recorded: true},
		{name: "slow request body is not upstream time", bodyAfter: wait, recorded: true},
		{name: "slow upstream is upstream time", upstreamWait: wait, recorded: true},
		{name: "slow body and slow upstream", bodyAfter: wait, upstreamWait: wait, recorded: true},
		{name: "response ends before the request", bodyAfter: wait, early: true, recorded: false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			answered := make(chan struct{})
			up := startH2Upstream(t, h2.ServerConfig{}, func(s stream.ServerStream) {
				if tc.early {
					_ = s.WriteHeader(&stream.Response{Status: 200, Header: header.Make(0), ContentLength: -1}, true)
					close(answered)
					return
				}
				if _, err := io.Copy(io.Discard, s); err != nil {
					s.Reset(stream.ErrCodeInternal)
					return
				}
				time.Sleep(tc.upstreamWait)
				respond(s, 200, "ok", header.Header{})
			})
			e := newEnv(t, hcmJSON(`{"match":{"prefix":"/"},"route":{"cluster":"backend"}}`, ""), clusterJSON([]string{up.addr}, ""))
			fs := newFakeStream("POST", "/", header.Make(0), nil)
			if tc.bodyAfter > 0 {
				body := &delayedBody{after: tc.bodyAfter, fs: fs}
				fs.body = body
				fs.req.EndStream = false
				if tc.early {
					// The request ends only after the whole response
					// went downstream.
					release := make(chan struct{})
					body.release = release
					go func() {
						<-answered
						for !fs.result().end && fs.ctx.Err() == nil {
							time.Sleep(time.Millisecond)
						}
						close(release)
					}()
				}
			}
			total := e.serve(t, fs)
			if got := fs.result().status; got != 200 {
				t.Fatalf("status %d, want 200", got)
			}
			if got := e.counter("cluster.backend.upstream_rq_completed"); got != 1 {
				t.Errorf("upstream_rq_completed = %d, want 1", got)
			}
			h := e.histogram("cluster.backend.upstream_rq_time")
			if !tc.recorded {
				if h.Count != 0 {
					t.Errorf("upstream_rq_time recorded %d samples (sum %.3f ms) for a response that ended before the request, want none (Envoy records none)", h.Count, h.Sum)
				}
				return
			}
			if h.Count != 1 {
				t.Fatalf("upstream_rq_time has %d samples, want 1", h.Count)
			}
			ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
			// The span starts after the body's end, which the client
			// sent no sooner than bodyAfter into the exchange, and ends
			// before the exchange does.
			if hi := ms(total - tc.bodyAfter); h.Sum > hi {
				t.Errorf("upstream_rq_time = %.3f ms, above the exchange's %v less the %v the client took to send its body: the span includes the request's receipt", h.Sum, total, tc.bodyAfter)
			}
			// The upstream waited upstreamWait after reading the
			// whole request, before the response's end.
			if lo := ms(tc.upstreamWait); h.Sum < lo {
				t.Errorf("upstream_rq_time = %.3f ms, below the %v the upstream waited before answering", h.Sum, tc.upstreamWait)
			}
		})
	}
}
