package scenarios

// S3 (REFUSED_STREAM storm) and the cold-burst acceptance: a cold burst of
// s3Calls concurrent calls to an upstream limited to s3MaxStreams streams
// with an s3Delay handler, circuit breakers at max_connections 64,
// max_pending_requests 10000, max_requests 10000, and meshd's default retry
// settings (no retry_policy on the route). Streams the upstream refuses are
// not processed, so meshd retries them transparently; streams beyond the
// upstream's capacity wait in the pool.
//
// Numeric assertions: zero client errors; the upstream ran exactly s3Calls
// handlers (a retried stream is never run twice); the upstream never had
// more than 64 connections at once.

import (
	"context"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	testpb "google.golang.org/grpc/interop/grpc_testing"

	"meshd.dev/meshd/proxy/http/h2"
	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

const (
	s3Calls      = 200
	s3MaxStreams = 10
	s3Delay      = 20 * time.Millisecond
	s3MaxConns   = 64
)

func TestS3RefusedStreamColdBurst(t *testing.T) {
	be := startGRPCBackend(t, backendConfig{MaxConcurrentStreams: s3MaxStreams, UnaryDelay: s3Delay})
	sc := startScenarioSidecar(t, scenarioBootstrap{
		Endpoints:    []string{be.Addr},
		RouteTimeout: rpcTimeout,
		CircuitBreakers: &circuitBreakers{
			MaxConnections:     s3MaxConns,
			MaxPendingRequests: 10000,
			MaxRequests:        10000,
		},
	})
	client := dialGRPC(t, sc.Addr)
	var wg sync.WaitGroup
	errs := make([]error, s3Calls)
	start := make(chan struct{})
	for i := range s3Calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
			defer cancel()
			_, errs[i] = client.EmptyCall(ctx, &testpb.Empty{})
		}()
	}
	close(start)
	wg.Wait()
	failed := 0
	for i, err := range errs {
		if err != nil {
			failed++
			if failed <= 5 {
				t.Errorf("call %d: %v", i, err)
			}
		}
	}
	if failed > 0 {
		t.Errorf("%d of %d calls failed, want 0", failed, s3Calls)
	}
	if got := be.Started(); got != s3Calls {
		t.Errorf("backend ran %d handlers, want %d (each call exactly once)", got, s3Calls)
	}
	if got := be.Conns.Peak(); got > s3MaxConns {
		t.Errorf("backend had %d connections open at once, want at most %d", got, s3MaxConns)
	}
	t.Logf("upstream connections: %d accepted, peak %d; transparent retries %d; pending overflow %d",
		be.Conns.Accepted(), be.Conns.Peak(),
		sc.clusterStat(t, "upstream_rq_transparent_retry"), sc.clusterStat(t, "upstream_rq_pending_overflow"))
}

// s3RefuseEvery makes the refusing upstream refuse every s3RefuseEvery-th
// stream it receives (from the first).
const s3RefuseEvery = 2

// startRefusingUpstream starts a gRPC upstream on meshd's own HTTP/2 codec
// (grpc-go cannot be told to refuse streams below its limit) that answers
// EmptyCall-shaped calls with an empty message and status OK, but resets
// every s3RefuseEvery-th stream with REFUSED_STREAM before reading it. It
// returns its address and the number of calls it answered.
func startRefusingUpstream(t *testing.T) (string, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var seen, answered atomic.Int64
	handler := stream.HandlerFunc(func(s stream.ServerStream) {
		if seen.Add(1)%s3RefuseEvery == 1 {
			s.Reset(stream.ErrCodeRefusedStream)
			return
		}
		if _, err := io.Copy(io.Discard, s); err != nil {
			return
		}
		h := header.Make(1)
		h.Add("content-type", "application/grpc")
		if s.WriteHeader(&stream.Response{Status: 200, Header: h, ContentLength: -1}, false) != nil {
			return
		}
		if _, err := s.Write(make([]byte, 5)); err != nil { // an empty message
			return
		}
		tr := header.Make(1)
		tr.Add("grpc-status", "0")
		if s.WriteTrailers(tr) == nil {
			answered.Add(1)
		}
	})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []*h2.ServerConn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			sc := h2.NewServerConn(c, &h2.ServerConfig{}, handler, stream.ConnInfo{LocalAddr: c.LocalAddr(), RemoteAddr: c.RemoteAddr(), Proto: "HTTP/2"})
			mu.Lock()
			conns = append(conns, sc)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				_ = sc.Serve()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, sc := range conns {
			sc.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String(), &answered
}

// TestS3RefusingUpstream: an upstream that refuses half of its streams
// while it has capacity. Numeric assertions: zero client errors; every call
// answered exactly once upstream; the sidecar retried transparently at
// least s3Calls/s3RefuseEvery - 1 streams (upstream_rq_transparent_retry).
func TestS3RefusingUpstream(t *testing.T) {
	addr, answered := startRefusingUpstream(t)
	sc := startScenarioSidecar(t, scenarioBootstrap{
		Endpoints:       []string{addr},
		RouteTimeout:    rpcTimeout,
		CircuitBreakers: &circuitBreakers{MaxConnections: s3MaxConns, MaxPendingRequests: 10000, MaxRequests: 10000},
	})
	client := dialGRPC(t, sc.Addr)
	var wg sync.WaitGroup
	var failed atomic.Int64
	var firstErr atomic.Value
	for range s3Calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
			defer cancel()
			if _, err := client.EmptyCall(ctx, &testpb.Empty{}); err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err)
			}
		}()
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Errorf("%d of %d calls failed, want 0; first: %v", n, s3Calls, firstErr.Load())
	}
	if got := answered.Load(); got != s3Calls {
		t.Errorf("upstream answered %d calls, want %d", got, s3Calls)
	}
	if got := sc.clusterStat(t, "upstream_rq_transparent_retry"); got < s3Calls/s3RefuseEvery-1 {
		t.Errorf("upstream_rq_transparent_retry = %d, want at least %d", got, s3Calls/s3RefuseEvery-1)
	}
	if got := sc.clusterStat(t, "upstream_cx_total"); got > s3MaxConns {
		t.Errorf("upstream_cx_total = %d, want at most max_connections (%d)", got, s3MaxConns)
	}
	t.Logf("transparent retries %d, connections held after a refusal %d, connections opened %d",
		sc.clusterStat(t, "upstream_rq_transparent_retry"), sc.clusterStat(t, "upstream_cx_refused_stream_hold"), sc.clusterStat(t, "upstream_cx_total"))
}
