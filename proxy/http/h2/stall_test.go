package h2

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/proxy/stats"
)

// waitState polls the table until want reports true for the snapshot.
func waitState(t *testing.T, tab *StreamTable, what string, want func(StreamsReport) bool) StreamsReport {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for {
		rep := tab.Snapshot()
		if want(rep) {
			return rep
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not seen within %v; last /debug/streams: %+v", what, testTimeout, rep)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// hasWaiting reports whether rep lists a stream on side in state.
func hasWaiting(rep StreamsReport, side string, state StallReason) bool {
	for _, w := range rep.Waiting {
		if w.Side == side && w.State == state.String() {
			return true
		}
	}
	return false
}

// TestStallReasons drives real client and server connections into each
// stall reason and reads it back from the store's StreamTable, then checks
// that a stall held beyond StallCountThreshold is counted when it ends and
// that closed connections leave the table.
func TestStallReasons(t *testing.T) {
	checkLeaks(t)
	store := stats.NewStore()
	up := NewStats(store.Root().Scope("cluster").Tagged("envoy_cluster_name", "backend").Scope("http2"))
	down := NewStats(store.Root().Scope("http2"))
	release := make(chan struct{})
	h := stream.HandlerFunc(func(s stream.ServerStream) {
		switch s.Request().Path {
		case "/hang": // never answers until the client resets
			<-s.Context().Done()
		case "/noread": // answers, then reads nothing until released
			_ = s.WriteHeader(&stream.Response{Status: 200, ContentLength: -1}, false)
			select {
			case <-release:
			case <-s.Context().Done():
			}
			s.Reset(stream.ErrCodeCancel)
		}
	})
	ts := startServer(t, &ServerConfig{Stats: down, InitialStreamWindowSize: initialWindowSize, InitialConnectionWindowSize: 1 << 20}, h)
	cc := dialClient(t, ts.addr(), &ClientConfig{Stats: up})
	tab := TableOf(store)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()

	// peer_headers: a request the server never answers.
	hang, err := cc.NewStream(ctx, newReq("/hang"), true)
	if err != nil {
		t.Fatal(err)
	}
	// The client's stream can wait before the server has registered its
	// side of the connection: wait for both.
	rep := waitState(t, tab, "hung request shows peer_headers on two connections", func(r StreamsReport) bool {
		return hasWaiting(r, "upstream", StallPeerHeaders) && r.Connections == 2
	})
	if rep.Connections != 2 || rep.States["peer_headers"] != 1 || rep.Waiting[0].Scope != "cluster.backend.http2" {
		t.Errorf("snapshot %+v: want 2 connections, one peer_headers stream in scope cluster.backend.http2", rep)
	}

	// peer_window upstream and local_read downstream: a body the server
	// does not read, larger than its 64 KiB stream window plus our
	// 64 KiB send buffer.
	// Before the server's SETTINGS arrive the connection takes one stream.
	var body stream.ClientStream
	waitState(t, tab, "a second stream opens", func(StreamsReport) bool {
		body, err = cc.NewStream(ctx, newReq("/noread"), false)
		return err == nil
	})
	if _, err := body.Response(ctx); err != nil {
		t.Fatal(err)
	}
	wrote := make(chan error, 1)
	go func() {
		_, err := body.Write(bytes.Repeat([]byte("x"), 256<<10))
		wrote <- err
	}()
	waitState(t, tab, "unread body shows peer_window upstream and local_read downstream", func(r StreamsReport) bool {
		return hasWaiting(r, "upstream", StallPeerWindow) && hasWaiting(r, "downstream", StallLocalRead)
	})

	// stream_slot: a pool wait.
	done := up.WaitForSlot("127.0.0.1:9")
	waitState(t, tab, "pool wait shows stream_slot", func(r StreamsReport) bool { return hasWaiting(r, "upstream", StallStreamSlot) })
	done()

	// Hold the stalls past the count threshold, then end them.
	time.Sleep(StallCountThreshold + 100*time.Millisecond)
	hang.Reset(stream.ErrCodeCancel)
	close(release)
	if err := <-wrote; err == nil {
		t.Error("Write of 256 KiB to a reset stream succeeded")
	}
	body.Reset(stream.ErrCodeCancel)
	for _, c := range []struct {
		st     *Stats
		reason StallReason
	}{{up, StallPeerHeaders}, {up, StallPeerWindow}, {down, StallLocalRead}} {
		name := fmt.Sprintf("%s.stream_stall_%s", c.st.label, c.reason)
		waitState(t, tab, name+" counted", func(StreamsReport) bool { return c.st.Stalls[c.reason].Value() >= 1 })
	}
	if n := up.Stalls[StallStreamSlot].Value(); n != 0 {
		t.Errorf("stream_stall_stream_slot = %d after a wait shorter than the threshold, want 0", n)
	}
	waitState(t, tab, "no waiting streams left", func(r StreamsReport) bool { return len(r.Waiting) == 0 })

	_ = cc.Close()
	for _, sc := range ts.conns {
		_ = sc.Close()
	}
	waitState(t, tab, "closed connections leave the table", func(r StreamsReport) bool { return r.Connections == 0 })
}

func TestStallReasonNames(t *testing.T) {
	want := []string{"peer_headers", "peer_window", "local_read", "write_flush", "stream_slot"}
	var got []string
	for _, r := range StallReasons() {
		got = append(got, r.String())
	}
	if fmt.Sprint(got) != fmt.Sprint(want) || StallNone.String() != "none" || StallReason(200).String() != "unknown" {
		t.Errorf("reason names %v, none %q; want %v", got, StallNone, want)
	}
}
