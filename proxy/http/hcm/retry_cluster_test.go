package hcm

import (
	"sync/atomic"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/proxy/http/h2"
	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/proxy/upstream"
)

// TestRetryFollowsClusterUpdate: a request queued in a cluster's pool when
// a config update replaces the cluster (the pool drains, failing its
// queued streams as unprocessed) is retried on the cluster as it is now,
// once, as Envoy's router does; when the update removed the cluster it
// gets 503 no healthy upstream at once. Before, the retry went back to the
// drained pool until the transparent-retry budget (100) ran out and the
// client got 503 "remote refused stream reset": the TestAutoTuneConnectionPool
// flake, where each autotune maxConnections push replaced the cluster
// under 100 callers.
func TestRetryFollowsClusterUpdate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		next    string // the cluster after the update; "": removed
		status  int
		noHosts uint64 // upstream_cx_none_healthy
		served  int64  // streams the upstream saw
	}{
		{name: "replaced", next: `"circuit_breakers":{"thresholds":[{"max_connections":2}]}`, status: 200, served: 2},
		{name: "removed", status: 503, noHosts: 1, served: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			// One stream per connection: the first request holds it until
			// release, so with max_connections 1 the second one queues.
			release := make(chan struct{})
			var streams atomic.Int64
			up := startH2Upstream(t, h2.ServerConfig{MaxConcurrentStreams: 1}, func(s stream.ServerStream) {
				if streams.Add(1) == 1 {
					select {
					case <-release:
					case <-s.Context().Done():
					}
				}
				respond(s, 200, "ok", header.Header{})
			})
			routes := `{"match":{"prefix":"/"},"route":{"cluster":"backend","timeout":"5s"}}`
			e := newEnv(t, hcmJSON(routes, ""), clusterJSON([]string{up.addr}, `"circuit_breakers":{"thresholds":[{"max_connections":1}]}`))

			held := newFakeStream("GET", "/held", header.Make(0), nil)
			heldDone := make(chan struct{})
			go func() {
				defer close(heldDone)
				e.h.ServeStream(held)
			}()
			waitFor := func(what string, cond func() bool) {
				t.Helper()
				deadline := time.Now().Add(exchangeTimeout)
				for !cond() {
					if time.Now().After(deadline) {
						close(release)
						t.Fatalf("%s: %d upstream streams, %d pending in all", what,
							streams.Load(), e.counter("cluster.backend.upstream_rq_pending_total"))
					}
					time.Sleep(2 * time.Millisecond)
				}
			}
			waitFor("the first request did not reach the upstream", func() bool { return streams.Load() == 1 })
			queued := newFakeStream("GET", "/queued", header.Make(0), nil)
			queuedDone := make(chan struct{})
			go func() {
				defer close(queuedDone)
				e.h.ServeStream(queued)
			}()
			// Both requests went through the pool's queue (the first until
			// its connection was up); the second is still in it.
			waitFor("the second request did not queue", func() bool {
				return e.counter("cluster.backend.upstream_rq_pending_total") == 2
			})

			var next []*upstream.Spec
			if tc.next != "" {
				next = append(next, compileClusterJSON(t, clusterJSON([]string{up.addr}, tc.next)))
			}
			e.cm.Apply(next)
			select {
			case <-queuedDone:
			case <-time.After(exchangeTimeout):
				queued.Reset(stream.ErrCodeCancel)
				close(release)
				<-queuedDone
				t.Fatalf("the queued request did not end within %v of the update", exchangeTimeout)
			}
			close(release)
			<-heldDone

			if r := queued.result(); r.status != tc.status {
				t.Errorf("queued request: %d %q, want %d", r.status, r.body, tc.status)
			}
			if r := held.result(); r.status != 200 || r.body != "ok" {
				t.Errorf("request on the drained connection: %d %q, want 200 \"ok\"", r.status, r.body)
			}
			if got := e.counter("cluster.backend.upstream_rq_transparent_retry"); got != 1 {
				t.Errorf("upstream_rq_transparent_retry = %d, want 1 (one retry, on the current cluster)", got)
			}
			if got := e.counter("cluster.backend.upstream_cx_none_healthy"); got != tc.noHosts {
				t.Errorf("upstream_cx_none_healthy = %d, want %d", got, tc.noHosts)
			}
			if got := streams.Load(); got != tc.served {
				t.Errorf("upstream saw %d streams, want %d", got, tc.served)
			}
		})
	}
}
