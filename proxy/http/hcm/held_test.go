package hcm

import (
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/proxy/http/h2"
	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// holdingStream is a fakeStream that implements stream.Flusher the way
// the HTTP/3 codec does: after Hold, what WriteHeader and Write send stays
// invisible to the peer (sent) until Flush or the end of the response.
type holdingStream struct {
	*fakeStream
	hold    bool
	pending bool // a write is held
	// sent is the downstream peer's view: closed once the response
	// headers were flushed.
	sent    chan struct{}
	sentSet bool
	flushes int // writes that reached the peer (flushes and the end)
}

func newHoldingStream(fs *fakeStream) *holdingStream {
	return &holdingStream{fakeStream: fs, sent: make(chan struct{})}
}

func (h *holdingStream) Hold() { h.hold = true }

func (h *holdingStream) Flush() error {
	if h.pending {
		h.pending = false
		h.flushes++
		if !h.sentSet {
			h.sentSet = true
			close(h.sent)
		}
	}
	return nil
}

func (h *holdingStream) WriteHeader(resp *stream.Response, endStream bool) error {
	if err := h.fakeStream.WriteHeader(resp, endStream); err != nil {
		return err
	}
	h.pending = true
	if endStream || !h.hold {
		return h.Flush()
	}
	return nil
}

func (h *holdingStream) Write(p []byte) (int, error) {
	n, err := h.fakeStream.Write(p)
	if err != nil {
		return n, err
	}
	h.pending = true
	if !h.hold {
		return n, h.Flush()
	}
	return n, nil
}

func (h *holdingStream) WriteTrailers(t header.Header) error {
	h.pending = true
	_ = h.Flush()
	return h.fakeStream.WriteTrailers(t)
}

func (h *holdingStream) CloseWrite() error {
	h.pending = true
	_ = h.Flush()
	return h.fakeStream.CloseWrite()
}

var _ stream.Flusher = (*holdingStream)(nil)

// TestHeldResponseFlushedBeforeWaiting: on a downstream codec that holds
// writes (HTTP/3), the connection manager lets a unary response's headers,
// body and trailers leave together, yet flushes a streamed response's
// headers before it waits for the upstream's body: the downstream sees
// them while the upstream still holds its body back.
func TestHeldResponseFlushedBeforeWaiting(t *testing.T) {
	testutil.CheckGoroutines(t)
	release := make(chan struct{})
	up := startH2Upstream(t, h2.ServerConfig{}, func(s stream.ServerStream) {
		tr := header.Make(1)
		tr.Add("grpc-status", "0")
		if s.Request().Path == "/unary" {
			respond(s, 200, "hello", tr)
			return
		}
		if err := s.WriteHeader(&stream.Response{Status: 200, Header: header.Make(0), ContentLength: -1}, false); err != nil {
			return
		}
		select {
		case <-release:
		case <-s.Context().Done():
			return
		}
		if _, err := s.Write([]byte("streamed")); err != nil {
			return
		}
		_ = s.WriteTrailers(tr)
	})
	e := newEnv(t, hcmJSON(`{"match":{"prefix":"/"},"route":{"cluster":"backend"}}`, ""), clusterJSON([]string{up.addr}, ""))

	for _, tc := range []struct {
		name, path, body string
		streamed         bool
	}{
		{name: "unary", path: "/unary", body: "hello"},
		{name: "streamed", path: "/stream", body: "streamed", streamed: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hs := newHoldingStream(newFakeStream("POST", tc.path, grpcHeaders(), nil))
			done := make(chan struct{})
			go func() {
				defer close(done)
				e.h.ServeStream(hs)
			}()
			if tc.streamed {
				select {
				case <-hs.sent:
				case <-time.After(exchangeTimeout):
					t.Fatal("the streamed response's headers were not flushed while the upstream held its body")
				}
				close(release)
			}
			select {
			case <-done:
			case <-time.After(exchangeTimeout):
				hs.Reset(stream.ErrCodeCancel)
				<-done
				t.Fatal("exchange did not end")
			}
			hs.cancel()
			r := hs.result()
			if r.status != 200 || r.body != tc.body || r.trailers.Get("grpc-status") != "0" || r.reset != nil {
				t.Fatalf("got status %d body %q trailers %v reset %v", r.status, r.body, r.trailers.Fields(), r.reset)
			}
			if !hs.hold {
				t.Error("the connection manager did not hold the response")
			}
			if tc.streamed && hs.flushes < 2 {
				t.Errorf("%d writes reached the peer, want the headers and then the rest", hs.flushes)
			}
			if !tc.streamed && hs.flushes > 3 {
				t.Errorf("%d writes for a unary response, want at most one per part", hs.flushes)
			}
			t.Logf("%s: %d writes reached the peer", tc.name, hs.flushes)
		})
	}
}
