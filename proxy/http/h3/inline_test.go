package h3

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// quicLikeReader returns its bytes in one Read, together with io.EOF when
// fin is set, as quic-go's stream does with the data of a STREAM frame
// carrying the FIN; without fin it then blocks, as a stream whose FIN has
// not arrived (the test reads no further than what bufferedBody promised).
type quicLikeReader struct {
	p   []byte
	fin bool
}

func (r *quicLikeReader) Read(p []byte) (int, error) {
	if len(r.p) == 0 {
		if r.fin {
			return 0, io.EOF
		}
		select {} // never reached by the tests: a stream without its FIN
	}
	n := copy(p, r.p)
	r.p = r.p[n:]
	if len(r.p) == 0 && r.fin {
		return n, io.EOF
	}
	return n, nil
}

// TestBufferedBody: what follows a request's HEADERS is reported complete
// only when the FIN was read and the buffered frames end the message
// without an error read would find; when it is, read returns exactly the
// reported bytes and io.EOF, and the trailers, without reading further.
func TestBufferedBody(t *testing.T) {
	trailers := meshdHeaders("grpc-status", "0")
	cat := func(parts ...[]byte) []byte {
		var b []byte
		for _, p := range parts {
			b = append(b, p...)
		}
		return b
	}
	unknown := append(appendFrameHeader(nil, 0x21, 2), "ab"...)
	for _, tc := range []struct {
		name          string
		after         []byte // the frames after the request's HEADERS
		fin           bool
		contentLength int64
		wantN         int
		wantComplete  bool
		wantFinished  bool // the FIN right after the HEADERS
		wantTrailer   string
	}{
		{name: "FIN after HEADERS", fin: true, contentLength: -1, wantComplete: true, wantFinished: true},
		{name: "one DATA", after: dataFrame("hello"), fin: true, contentLength: -1, wantN: 5, wantComplete: true},
		{name: "two DATA and content-length", after: cat(dataFrame("hel"), dataFrame("lo")), fin: true, contentLength: 5, wantN: 5, wantComplete: true},
		{name: "DATA, unknown frame, trailers", after: cat(dataFrame("hello"), unknown, trailers), fin: true, contentLength: -1, wantN: 5, wantComplete: true, wantTrailer: "0"},
		{name: "no FIN yet", after: dataFrame("hello"), contentLength: -1, wantN: 5},
		{name: "no FIN, nothing buffered", contentLength: -1},
		{name: "DATA frame cut short", after: dataFrame("hello")[:4], fin: true, contentLength: -1},
		{name: "shorter than content-length", after: dataFrame("hello"), fin: true, contentLength: 6, wantN: 5},
		{name: "longer than content-length", after: dataFrame("hello"), fin: true, contentLength: 4, wantN: 5},
		{name: "frame after trailers", after: cat(dataFrame("hi"), trailers, dataFrame("x")), fin: true, contentLength: -1, wantN: 2},
		{name: "control frame", after: cat(dataFrame("hi"), []byte{frameSettings, 0}), fin: true, contentLength: -1, wantN: 2},
		{name: "truncated frame header", after: cat(dataFrame("hi"), []byte{0x40}), fin: true, contentLength: -1, wantN: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := &quicLikeReader{p: cat(meshdHeaders(getFields...), tc.after), fin: tc.fin}
			var b bodyReader
			b.init(src, 1<<10, -1)
			if _, err := readRequestHead(b.r, 1<<10); err != nil {
				t.Fatal(err)
			}
			b.bodyLeft = tc.contentLength
			if got := b.finished(); got != tc.wantFinished {
				t.Errorf("finished() = %v, want %v", got, tc.wantFinished)
			}
			n, complete := b.bufferedBody()
			if n != tc.wantN || complete != tc.wantComplete {
				t.Fatalf("bufferedBody() = %d, %v; want %d, %v", n, complete, tc.wantN, tc.wantComplete)
			}
			if !complete {
				return
			}
			body, err := io.ReadAll(readerFunc(b.read))
			if err != nil || len(body) != n {
				t.Fatalf("read %q, %v after bufferedBody reported %d bytes complete", body, err, n)
			}
			if got := b.trailers.Get("grpc-status"); got != tc.wantTrailer {
				t.Errorf("trailer grpc-status %q, want %q", got, tc.wantTrailer)
			}
		})
	}
}

type readerFunc func(p []byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// TestClientStreamContextBound: a client stream resets itself when the
// context given to NewStream ends before it completed (the handler sees
// the reset, Response fails with CANCEL, tx_reset counts it), and its
// watcher is gone once it completed.
func TestClientStreamContextBound(t *testing.T) {
	testutil.CheckGoroutines(t)
	served := make(chan struct{}, 1)
	gone := make(chan struct{}, 1)
	h := stream.HandlerFunc(func(s stream.ServerStream) {
		if s.Request().Path == "/wait" {
			served <- struct{}{}
			<-s.Context().Done()
			gone <- struct{}{}
			return
		}
		echoHandler.ServeStream(s)
	})
	addr, tc, _ := testMeshdServer(t, 100, ServerConfig{}, h)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st := NewStats(nil)
	cc, err := Dial(ctx, addr, tc, &ClientConfig{Stats: st})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	req := func(path string) *stream.Request {
		return &stream.Request{Method: "GET", Scheme: "https", Authority: "svc", Path: path, Header: header.Make(0), ContentLength: -1}
	}

	sctx, scancel := context.WithCancel(ctx)
	cs, err := cc.NewStream(sctx, req("/wait"), true)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := cs.(stream.ContextBound); !ok {
		t.Fatal("the HTTP/3 client stream is not stream.ContextBound")
	}
	waitFor(t, served, "the handler")
	scancel()
	_, err = cs.Response(ctx)
	if se, ok := errors.AsType[*stream.Error](err); !ok || se.Code != stream.ErrCodeCancel {
		t.Fatalf("Response after the stream's context ended: %v, want a CANCEL stream error", err)
	}
	waitFor(t, gone, "the handler to see the reset")
	if got := st.TxReset.Value(); got != 1 {
		t.Errorf("tx_reset %d, want 1", got)
	}

	// Completed: ending the context afterwards resets nothing.
	sctx, scancel = context.WithCancel(ctx)
	cs, err = cc.NewStream(sctx, req("/"), true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Response(sctx); err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, cs); err != nil {
		t.Fatal(err)
	}
	scancel()
	if got := st.TxReset.Value(); got != 1 {
		t.Errorf("tx_reset %d after a completed stream's context ended, want 1", got)
	}
}

// TestServerRequestResetEndsContext: a peer that resets only the request
// side (RESET_STREAM, no STOP_SENDING) while the handler reads the body
// ends the stream's context and gets its response side reset with
// H3_REQUEST_CANCELLED, as a reset ends both directions in HTTP/2.
func TestServerRequestResetEndsContext(t *testing.T) {
	testutil.CheckGoroutines(t)
	started := make(chan struct{}, 1)
	readErr := make(chan error, 1)
	ctxDone := make(chan struct{}, 1)
	h := stream.HandlerFunc(func(s stream.ServerStream) {
		buf := make([]byte, 4)
		if _, err := io.ReadFull(s, buf); err != nil {
			readErr <- err
			return
		}
		started <- struct{}{}
		_, err := io.Copy(io.Discard, s)
		readErr <- err
		select {
		case <-s.Context().Done():
			ctxDone <- struct{}{}
		case <-time.After(10 * time.Second):
		}
	})
	addr, tc, srv := testMeshdServer(t, 100, ServerConfig{}, h)
	c := dialRaw(t, addr, tc)
	qs, err := c.qc.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := qs.Write(append(rawHeaders(t, ":method", "POST", ":scheme", "https", ":authority", "svc", ":path", "/"), dataFrame("part")...)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, started, "the handler to read the first body bytes")
	qs.CancelWrite(quic.StreamErrorCode(http3.ErrCodeRequestCanceled))
	select {
	case err := <-readErr:
		if se, ok := errors.AsType[*stream.Error](err); !ok || !se.Remote {
			t.Fatalf("handler's Read: %v, want the peer's reset", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the handler's Read did not return after the peer's reset")
	}
	waitFor(t, ctxDone, "the stream's context to end")
	_ = qs.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = io.ReadAll(qs)
	if se, ok := errors.AsType[*quic.StreamError](err); !ok || http3.ErrCode(se.ErrorCode) != http3.ErrCodeRequestCanceled {
		t.Fatalf("client's read of the response: %v, want RESET_STREAM H3_REQUEST_CANCELLED", err)
	}
	if rx, tx := srv.cfg.Stats.RxReset.Value(), srv.cfg.Stats.TxReset.Value(); rx != 1 || tx != 1 {
		t.Errorf("rx_reset %d, tx_reset %d; want 1 and 1", rx, tx)
	}
}
