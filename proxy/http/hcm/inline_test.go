package hcm

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/proxy/http/h2"
	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// bufferedStream is a fakeStream whose whole request body has arrived, as
// a codec reports it through stream.BufferedBody. reads counts Read calls.
type bufferedStream struct {
	*fakeStream
	buf   *bytes.Reader
	reads atomic.Int64
	// readErr, when set, is what Read returns instead of the body.
	readErr error
}

func newBufferedStream(method, path string, hdr header.Header, body []byte) *bufferedStream {
	r := bytes.NewReader(body)
	return &bufferedStream{fakeStream: newFakeStream(method, path, hdr, r), buf: r}
}

func (b *bufferedStream) BufferedBody() (int, bool) { return b.buf.Len(), true }

func (b *bufferedStream) Read(p []byte) (int, error) {
	b.reads.Add(1)
	if b.readErr != nil {
		return 0, b.readErr
	}
	return b.fakeStream.Read(p)
}

// partialStream reports a body whose end has not arrived yet.
type partialStream struct{ *fakeStream }

func (partialStream) BufferedBody() (int, bool) { return 3, false }

func TestFillBuffered(t *testing.T) {
	tr := header.Make(1)
	tr.Add("grpc-status", "0")
	failed := &stream.Error{Code: stream.ErrCodeCancel, Remote: true, Reason: "reset"}
	tests := []struct {
		name     string
		ds       func() stream.ServerStream
		limit    int
		inline   bool
		wantBody string
		wantErr  error
		trailers bool
	}{
		{"complete small body", func() stream.ServerStream { return newBufferedStream("POST", "/", header.Make(0), []byte("hello")) },
			DefaultPerRequestBufferLimit, true, "hello", nil, false},
		{"complete with trailers", func() stream.ServerStream {
			s := newBufferedStream("POST", "/", header.Make(0), []byte("msg"))
			s.reqTrailers = tr
			return s
		}, DefaultPerRequestBufferLimit, true, "msg", nil, true},
		{"complete empty body", func() stream.ServerStream { return newBufferedStream("POST", "/", header.Make(0), nil) },
			DefaultPerRequestBufferLimit, true, "", nil, false},
		{"end of stream not yet received", func() stream.ServerStream {
			return partialStream{newFakeStream("POST", "/", header.Make(0), strings.NewReader("abc"))}
		}, DefaultPerRequestBufferLimit, false, "", nil, false},
		{"codec cannot tell", func() stream.ServerStream {
			return newFakeStream("POST", "/", header.Make(0), strings.NewReader("abc"))
		},
			DefaultPerRequestBufferLimit, false, "", nil, false},
		{"larger than inlineBodyMax", func() stream.ServerStream {
			return newBufferedStream("POST", "/", header.Make(0), make([]byte, inlineBodyMax+1))
		}, 1 << 20, false, "", nil, false},
		{"larger than the buffer limit", func() stream.ServerStream {
			return newBufferedStream("POST", "/", header.Make(0), []byte("0123456789"))
		},
			4, false, "", nil, false},
		{"read fails", func() stream.ServerStream {
			s := newBufferedStream("POST", "/", header.Make(0), []byte("x"))
			s.readErr = failed
			return s
		}, DefaultPerRequestBufferLimit, true, "", failed, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ds := tt.ds()
			b := newReplayBody(tt.limit)
			if got := b.fillBuffered(ds); got != tt.inline {
				t.Fatalf("fillBuffered = %v, want %v", got, tt.inline)
			}
			if !tt.inline {
				if bs, ok := ds.(*bufferedStream); ok && bs.reads.Load() != 0 {
					t.Errorf("declined, but read the stream %d times", bs.reads.Load())
				}
				if b.complete() || b.size != 0 {
					t.Errorf("declined, but the body holds %d bytes (complete %v)", b.size, b.complete())
				}
				return
			}
			if tt.wantErr != nil {
				if !errors.Is(b.err, tt.wantErr) {
					t.Errorf("body error = %v, want %v", b.err, tt.wantErr)
				}
				if b.complete() {
					t.Error("a failed body reports complete")
				}
				return
			}
			if !b.complete() || !b.buffered() {
				t.Fatalf("complete %v buffered %v, want both", b.complete(), b.buffered())
			}
			var got []byte
			for _, c := range b.chunks {
				got = append(got, c...)
			}
			if string(got) != tt.wantBody || b.size != len(tt.wantBody) {
				t.Errorf("body %q (size %d), want %q", got, b.size, tt.wantBody)
			}
			if has := b.trailers.Get("grpc-status") == "0"; has != tt.trailers {
				t.Errorf("trailers %v, want grpc-status present %v", b.trailers.Fields(), tt.trailers)
			}
		})
	}
}

// TestInlineBodyProxied sends complete request bodies the way a unary call
// arrives (body and END_STREAM buffered with the headers) through the
// connection manager: the upstream gets the body and trailers whole, a
// retried attempt replays them, and a per-try timeout still fires.
func TestInlineBodyProxied(t *testing.T) {
	testutil.CheckGoroutines(t)
	var seen, retried atomic.Int64
	up := startH2Upstream(t, h2.ServerConfig{}, func(s stream.ServerStream) {
		seen.Add(1)
		b, err := io.ReadAll(s)
		if err != nil {
			s.Reset(stream.ErrCodeInternal)
			return
		}
		switch s.Request().Path {
		case "/retry":
			if retried.Add(1) == 1 {
				respond(s, 503, "try again", header.Header{})
				return
			}
		case "/slow":
			select {
			case <-s.Context().Done():
			case <-time.After(hang):
			}
			return
		}
		sum := sha256.Sum256(b)
		tr := header.Make(1)
		got := s.Trailers()
		tr.Add("x-request-trailer", got.Get("x-t"))
		respond(s, 200, strconv.Itoa(len(b))+" "+hex.EncodeToString(sum[:]), tr)
	})
	routes := `{"match":{"path":"/slow"},"route":{"cluster":"backend","retry_policy":{"retry_on":"5xx","num_retries":1,"per_try_timeout":"0.2s"}}},
	{"match":{"prefix":"/"},"route":{"cluster":"backend","retry_policy":{"retry_on":"5xx","num_retries":1}}}`
	e := newEnv(t, hcmJSON(routes, ""), clusterJSON([]string{up.addr}, ""))

	body := bytes.Repeat([]byte("0123456789abcdef"), 100)
	sum := sha256.Sum256(body)
	want := strconv.Itoa(len(body)) + " " + hex.EncodeToString(sum[:])
	tests := []struct {
		path     string
		status   int
		body     string
		attempts int64
	}{
		{"/unary", 200, want, 1},
		{"/retry", 200, want, 2},
		{"/slow", 504, "upstream request timeout", 2},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			before := seen.Load()
			fs := newBufferedStream("POST", tt.path, header.Make(0), body)
			fs.reqTrailers = header.Make(1)
			fs.reqTrailers.Add("x-t", "v")
			done := make(chan struct{})
			go func() {
				defer close(done)
				e.h.ServeStream(fs)
			}()
			select {
			case <-done:
			case <-time.After(exchangeTimeout):
				fs.Reset(stream.ErrCodeCancel)
				<-done
				t.Fatalf("exchange %s did not end within %v", tt.path, exchangeTimeout)
			}
			fs.cancel()
			r := fs.result()
			if r.status != tt.status || r.body != tt.body {
				t.Errorf("got %d %q, want %d %q", r.status, r.body, tt.status, tt.body)
			}
			if tt.status == 200 && r.trailers.Get("x-request-trailer") != "v" {
				t.Errorf("the upstream saw request trailers %v, want x-t: v", r.trailers.Fields())
			}
			if got := seen.Load() - before; got != tt.attempts {
				t.Errorf("upstream saw %d attempts, want %d", got, tt.attempts)
			}
		})
	}
}
