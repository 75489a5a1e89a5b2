package scenarios

// S10 (idle connections never reclaimed): meshd must close an upstream
// connection that stayed idle for idle_timeout, and detect a dead peer (a
// TCP server that accepts and then neither reads nor answers) by keepalive
// within interval + timeout.
//
// Both are timing tests (skipped under -race). Baseline: the time from a
// direct grpc-go client closing its connection to the backend seeing the
// close, measured in the same test; it covers the scheduling and socket
// latency on this machine that is not meshd's doing.
//
// Numeric assertions:
//   - idle: the backend sees the sidecar close its connection no later than
//     s10Idle (500 ms) + baseline + s10Tolerance (300 ms) after the last
//     call ended, and not before s10Idle; upstream_cx_idle_timeout is 1.
//   - dead peer: a call to the silent peer fails no later than
//     interval*(1+15% jitter) (575 ms) + timeout (500 ms) + baseline +
//     s10Tolerance after it started; http2.keepalive_timeout is 1.

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
)

const (
	s10Idle      = 500 * time.Millisecond
	s10KAEvery   = 500 * time.Millisecond
	s10KATimeout = 500 * time.Millisecond
	s10Tolerance = 300 * time.Millisecond
)

// s10DialDirect returns a client over a new grpc-go ClientConn to addr and
// a func that closes it (also called when the test ends).
func s10DialDirect(t *testing.T, addr string) (testpb.TestServiceClient, func()) {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("grpc.NewClient(%s): %v", addr, err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return testpb.NewTestServiceClient(cc), func() { _ = cc.Close() }
}

// s10CloseBaseline measures how long the backend takes to see a direct
// client's connection close.
func s10CloseBaseline(t *testing.T, be *grpcBackend) time.Duration {
	t.Helper()
	client, closeConn := s10DialDirect(t, be.Addr)
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()
	if _, err := client.EmptyCall(ctx, &testpb.Empty{}); err != nil {
		t.Fatalf("direct call: %v", err)
	}
	before := be.Conns.Closed()
	start := time.Now()
	closeConn()
	waitFor(t, settleTimeout, "the backend to see the direct client's close", func() (bool, string) {
		return be.Conns.Closed() > before, "not yet"
	})
	return time.Since(start)
}

func TestS10IdleTimeoutTiming(t *testing.T) {
	timing(t)
	be := startGRPCBackend(t, backendConfig{})
	baseline := s10CloseBaseline(t, be)
	sc := startScenarioSidecar(t, scenarioBootstrap{
		Endpoints:      []string{be.Addr},
		UpstreamCommon: commonOptions{IdleTimeout: s10Idle},
	})
	client := dialGRPC(t, sc.Addr)
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()
	closedBefore := be.Conns.Closed()
	if _, err := client.EmptyCall(ctx, &testpb.Empty{}); err != nil {
		t.Fatalf("call: %v", err)
	}
	idleSince := time.Now()
	waitFor(t, settleTimeout, "the sidecar to close its idle upstream connection", func() (bool, string) {
		return be.Conns.Closed() > closedBefore, "still open"
	})
	took := time.Since(idleSince)
	limit := s10Idle + baseline + s10Tolerance
	t.Logf("idle connection closed %v after the call (idle_timeout %v, baseline %v)", took, s10Idle, baseline)
	if took > limit {
		t.Errorf("idle upstream connection closed after %v, want <= %v", took, limit)
	}
	if took < s10Idle-50*time.Millisecond {
		t.Errorf("idle upstream connection closed after %v, before idle_timeout %v", took, s10Idle)
	}
	if got := sc.clusterStat(t, "upstream_cx_idle_timeout"); got != 1 {
		t.Errorf("upstream_cx_idle_timeout = %d, want 1", got)
	}
}

// silentPeer accepts TCP connections and never reads from or writes to
// them, like a host that died without closing its sockets.
type silentPeer struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
	done  chan struct{}
}

func startSilentPeer(t *testing.T) *silentPeer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &silentPeer{ln: ln, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			p.conns = append(p.conns, c)
			p.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-p.done
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
	})
	return p
}

func TestS10KeepaliveDeadPeerTiming(t *testing.T) {
	timing(t)
	be := startGRPCBackend(t, backendConfig{})
	baseline := s10CloseBaseline(t, be)
	peer := startSilentPeer(t)
	sc := startScenarioSidecar(t, scenarioBootstrap{
		Endpoints:  []string{peer.ln.Addr().String()},
		UpstreamH2: h2Options{Keepalive: &h2Keepalive{Interval: s10KAEvery, Timeout: s10KATimeout}},
	})
	client := dialGRPC(t, sc.Addr)
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()
	start := time.Now()
	_, err := client.EmptyCall(ctx, &testpb.Empty{})
	took := time.Since(start)
	if err == nil {
		t.Fatal("a call to a silent peer succeeded")
	}
	limit := s10KAEvery*115/100 + s10KATimeout + baseline + s10Tolerance
	t.Logf("call to the dead peer failed after %v (%v); limit %v", took, err, limit)
	if took > limit {
		t.Errorf("dead peer detected after %v, want <= %v", took, limit)
	}
	if got := sc.clusterStat(t, "http2.keepalive_timeout"); got != 1 {
		t.Errorf("http2.keepalive_timeout = %d, want 1", got)
	}
}
