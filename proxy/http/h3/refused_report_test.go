package h3

import (
	"context"
	"io"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// TestClientReportsRefusedStream: a stream the peer rejects with
// H3_REQUEST_REJECTED is in RefusedStreams by the time Response returns
// the refusal, and is reported once through OnStreamRefused, just before
// its OnStreamDone, and counted once in http3.stream_refused, also when
// the request body's write saw the refusal too. A stream cancelled with
// H3_REQUEST_CANCELLED, and one that completes, are no refusals.
func TestClientReportsRefusedStream(t *testing.T) {
	testutil.CheckGoroutines(t)
	addr, tc, _ := testServer(t, 10, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		code := map[string]http3.ErrCode{"/refuse": http3.ErrCodeRequestRejected, "/cancel": http3.ErrCodeRequestCanceled}[r.URL.Path]
		if code == 0 {
			_, _ = io.Copy(io.Discard, r.Body)
			w.WriteHeader(http.StatusOK)
			return
		}
		if str, err := w.(http3.HTTPStreamer).HTTPStream(); err == nil {
			str.CancelRead(quic.StreamErrorCode(code))
			str.CancelWrite(quic.StreamErrorCode(code))
		}
	}))
	var mu sync.Mutex
	var events []string
	record := func(e string) func() {
		return func() {
			mu.Lock()
			defer mu.Unlock()
			events = append(events, e)
		}
	}
	st := NewStats(nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cc, err := Dial(ctx, addr, tc, &ClientConfig{Stats: st, OnStreamRefused: record("refused"), OnStreamDone: record("done")})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	var refusals uint64
	for _, c := range []struct {
		path            string
		body            bool // a request body written after the headers
		wantErr         bool
		wantUnprocessed bool
	}{
		{path: "/ok"},
		{path: "/refuse", wantErr: true, wantUnprocessed: true},
		{path: "/cancel", wantErr: true},
		{path: "/refuse", body: true, wantErr: true, wantUnprocessed: true},
		{path: "/ok", body: true},
	} {
		mu.Lock()
		events = nil
		mu.Unlock()
		req := &stream.Request{Method: "POST", Scheme: "https", Authority: "svc", Path: c.path, Header: header.Make(0), ContentLength: -1}
		s, err := cc.NewStream(ctx, req, !c.body)
		if err != nil {
			t.Fatalf("%s: NewStream: %v", c.path, err)
		}
		if c.body {
			// Give the peer's answer time to arrive, so the write
			// usually sees the refusal too (the counts must not change
			// when it does); the write's own error is not tested.
			time.Sleep(20 * time.Millisecond)
			_, _ = s.Write([]byte("body"))
			_ = s.CloseWrite(header.Header{})
		}
		_, err = s.Response(ctx)
		if err == nil {
			_, err = io.Copy(io.Discard, s)
		}
		if (err != nil) != c.wantErr || stream.Unprocessed(err) != c.wantUnprocessed {
			t.Fatalf("%s: error %v, want error %v, unprocessed %v", c.path, err, c.wantErr, c.wantUnprocessed)
		}
		want := []string{"done"}
		if c.wantUnprocessed {
			refusals++
			want = []string{"refused", "done"}
		}
		if got := cc.RefusedStreams(); got != refusals {
			t.Errorf("%s: RefusedStreams = %d, want %d", c.path, got, refusals)
		}
		mu.Lock()
		got := slices.Clone(events)
		mu.Unlock()
		if !slices.Equal(got, want) {
			t.Errorf("%s: events %q by the end of the stream, want %q", c.path, got, want)
		}
		if got := st.StreamRefused.Value(); got != refusals {
			t.Errorf("%s: http3.stream_refused = %d, want %d", c.path, got, refusals)
		}
	}
}
