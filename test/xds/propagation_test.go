package xds_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"testing"
	"time"

	testgrpc "google.golang.org/grpc/interop/grpc_testing"

	"meshd.dev/meshd/internal/meshtest"
	"meshd.dev/meshd/internal/testutil"
)

// maxPropagation is acceptance 2's bound from a saved mesh file to the
// sidecars' ACK of the new config.
const maxPropagation = 2 * time.Second

// TestMeshEditPropagationTiming (issue 4, acceptance 2): each of several
// mesh-file edits (route timeout and retries, keepalive interval,
// maxConcurrentStreams, endpoint weight) is ACKed by both sidecars (the
// server one over state of the world, the client one over delta) within
// maxPropagation of the file being saved, as /status of the control plane
// shows; traffic keeps flowing through outbound→inbound meanwhile.
func TestMeshEditPropagationTiming(t *testing.T) {
	testutil.Timing(t)
	testutil.CheckGoroutines(t)
	app := testutil.StartGRPCInteropServer(t)
	cp, sidecars, meshPath, text, p := startTunedMesh(t, app.Addr)
	load := meshtest.StartCallLoad(t, meshtest.DialLoopback(t, p.Outbound), 2)
	load.WaitCalls(t, 10, "calls before the edits")

	const edits = 8
	k := baseKnobs
	var took []time.Duration
	for i := range edits {
		next, what := k.edit(i)
		nextText := tunedMesh(app.Addr, p, next)
		version, d := meshEdit(t, cp, meshPath, text, nextText, 3*maxPropagation)
		t.Logf("edit %d (%s): version %s ACKed by both sidecars after %v", i, what, version, d.Round(time.Millisecond))
		if d > maxPropagation {
			t.Errorf("edit %d (%s) took %v to reach the sidecars, want ≤ %v", i, what, d, maxPropagation)
		}
		took = append(took, d)
		checkDumps(t, sidecars, version, next)
		k, text = next, nextText
	}
	slices.Sort(took)
	t.Logf("mesh edit → ACK by both sidecars over %d edits: p50 %v, max %v", edits,
		took[len(took)/2].Round(time.Millisecond), took[len(took)-1].Round(time.Millisecond))

	load.WaitCalls(t, 10, "calls after the edits")
	load.Stop()
	if ok, fail := load.Counts(); fail != 0 {
		t.Errorf("%d of %d calls failed across the edits; first: %v", fail, ok+fail, load.FirstError())
	}
}

// pingPongInterval is the pause between two messages of the long stream.
const pingPongInterval = 50 * time.Millisecond

// TestStreamingAcrossUpdates (issue 4, acceptance 2): one FullDuplexCall
// through client sidecar → server sidecar → interop server exchanges a
// message every pingPongInterval while the mesh file is edited 20 times,
// each edit waited for until both sidecars ACKed it. Every message must come
// back, in order (the response size encodes the sequence number), and the
// stream must end with a clean OK.
func TestStreamingAcrossUpdates(t *testing.T) {
	testutil.CheckGoroutines(t)
	app := testutil.StartGRPCInteropServer(t)
	cp, sidecars, meshPath, text, p := startTunedMesh(t, app.Addr)
	client := meshtest.DialLoopback(t, p.Outbound)

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	stream, err := client.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pp := &pingPong{stream: stream, stop: make(chan struct{}), done: make(chan struct{})}
	go pp.run()
	t.Cleanup(func() {
		cancel()
		<-pp.done
	})
	pp.waitMessages(t, 5)

	const edits = 20
	k := baseKnobs
	var took []time.Duration
	for i := range edits {
		next, what := k.edit(i)
		nextText := tunedMesh(app.Addr, p, next)
		version, d := meshEdit(t, cp, meshPath, text, nextText, waitTimeout)
		took = append(took, d)
		checkDumps(t, sidecars, version, next)
		// A few messages after every ACK, so each new config carries
		// some of the stream.
		pp.waitMessages(t, 2)
		if err := pp.failure(); err != nil {
			t.Fatalf("the stream broke after edit %d (%s): %v", i, what, err)
		}
		k, text = next, nextText
	}
	close(pp.stop)
	select {
	case <-pp.done:
	case <-time.After(waitTimeout):
		t.Fatal("the stream did not finish within the wait timeout")
	}
	if err := pp.failure(); err != nil {
		t.Fatalf("the stream broke: %v", err)
	}
	slices.Sort(took)
	t.Logf("one stream carried %d messages in order across %d ACKed edits (edit → ACK p50 %v, max %v)",
		pp.count(), edits, took[len(took)/2].Round(time.Millisecond), took[len(took)-1].Round(time.Millisecond))
}

// pingPong drives one FullDuplexCall: message n asks for an n+1-byte
// response, and the next message is sent only once that response arrived.
type pingPong struct {
	stream testgrpc.TestService_FullDuplexCallClient
	stop   chan struct{} // closed by the test: half-close and finish
	done   chan struct{} // closed when run returns

	mu  sync.Mutex
	n   int // messages echoed so far
	err error
}

func (pp *pingPong) run() {
	defer close(pp.done)
	for seq := 0; ; seq++ {
		select {
		case <-pp.stop:
			pp.finish()
			return
		default:
		}
		size := int32(seq + 1)
		req := &testgrpc.StreamingOutputCallRequest{
			ResponseParameters: []*testgrpc.ResponseParameters{{Size: size}},
			Payload:            &testgrpc.Payload{Body: make([]byte, seq%64)},
		}
		if err := pp.stream.Send(req); err != nil {
			pp.fail(err, "send of message %d", seq)
			return
		}
		resp, err := pp.stream.Recv()
		if err != nil {
			pp.fail(err, "receive of message %d", seq)
			return
		}
		if got := int32(len(resp.GetPayload().GetBody())); got != size {
			pp.fail(errors.New("out of order"), "message %d: response of %d bytes, want %d", seq, got, size)
			return
		}
		pp.mu.Lock()
		pp.n++
		pp.mu.Unlock()
		time.Sleep(pingPongInterval)
	}
}

// finish half-closes and expects the server's clean end of stream.
func (pp *pingPong) finish() {
	if err := pp.stream.CloseSend(); err != nil {
		pp.fail(err, "half-close")
		return
	}
	if _, err := pp.stream.Recv(); err != io.EOF {
		pp.fail(err, "end of stream (want io.EOF)")
	}
}

func (pp *pingPong) fail(err error, format string, args ...any) {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if pp.err == nil {
		pp.err = errorf(err, format, args...)
	}
}

func (pp *pingPong) failure() error {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	return pp.err
}

func (pp *pingPong) count() int {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	return pp.n
}

// waitMessages waits until n more messages were echoed, failing the test
// if the stream breaks or waitTimeout passes first.
func (pp *pingPong) waitMessages(t *testing.T, n int) {
	t.Helper()
	want := pp.count() + n
	deadline := time.Now().Add(waitTimeout)
	for time.Now().Before(deadline) {
		if err := pp.failure(); err != nil {
			t.Fatalf("the stream broke after %d messages: %v", pp.count(), err)
		}
		if pp.count() >= want {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("only %d messages echoed, want %d within %v", pp.count(), want, waitTimeout)
}

// errorf wraps err with a formatted context.
func errorf(err error, format string, args ...any) error {
	return fmt.Errorf(format+": %w", append(args, err)...)
}
