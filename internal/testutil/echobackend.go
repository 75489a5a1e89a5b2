package testutil

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Response headers set by the echo backend's /echo endpoint, describing the
// request as the backend received it.
const (
	HeaderEchoMethod           = "X-Echo-Method"
	HeaderEchoProto            = "X-Echo-Proto"
	HeaderEchoTransferEncoding = "X-Echo-Transfer-Encoding"
	HeaderEchoContentLength    = "X-Echo-Content-Length"
	// HeaderBodySHA256 carries the hex SHA-256 of the /big response body.
	HeaderBodySHA256 = "X-Body-Sha256"
)

// maxSlowDelay caps the delay /slow accepts, so a typo cannot hang a test.
const maxSlowDelay = 30 * time.Second

// EchoBackend is an HTTP server on 127.0.0.1 that speaks HTTP/1.1 and
// HTTP/2 with prior knowledge (h2c) on the same port. Endpoints:
//
//	/echo              streams the request body back; request trailers come
//	                   back as response trailers; X-Echo-* headers describe
//	                   the request (method, proto, transfer-encoding,
//	                   content-length)
//	/big?size=N        N bytes of BigBody(N) with Content-Length and
//	                   X-Body-Sha256; HEAD sends the headers only
//	/slow?delay=D[&chunks=K]
//	                   K (default 1) chunks of "slow\n", each after waiting
//	                   D (a time.Duration, at most 30s), flushed one by one
//	/trailers          body "trailers\n" and trailers X-Trailer-One: 1 and
//	                   X-Trailer-Two: 2
//	/status/N          an empty response with status N
//
// It counts accepted connections and requests.
type EchoBackend struct {
	// Addr is the listening address ("127.0.0.1:port"). Immutable.
	Addr string

	srv      *http.Server
	served   chan struct{} // closed when Serve returned
	conns    atomic.Int64
	requests atomic.Int64
}

// StartEchoBackend starts an EchoBackend that is closed (every connection
// with it) when the test ends.
func StartEchoBackend(t testing.TB) *EchoBackend {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("echo backend: listen: %v", err)
	}
	b := &EchoBackend{Addr: lis.Addr().String()}
	mux := http.NewServeMux()
	mux.HandleFunc("/echo", b.echo)
	mux.HandleFunc("/big", b.big)
	mux.HandleFunc("/slow", b.slow)
	mux.HandleFunc("/trailers", b.trailers)
	mux.HandleFunc("/status/{code}", b.status)
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	b.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b.requests.Add(1)
			mux.ServeHTTP(w, r)
		}),
		Protocols:         &protocols,
		ReadHeaderTimeout: 10 * time.Second,
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				b.conns.Add(1)
			}
		},
	}
	b.served = make(chan struct{})
	go func() {
		defer close(b.served)
		_ = b.srv.Serve(lis) // returns http.ErrServerClosed after Close
	}()
	t.Cleanup(b.Close)
	return b
}

// Close stops the backend at once: its listener and every connection are
// closed without a GOAWAY or "Connection: close", as a crashed server's
// would be. Closing it again does nothing.
func (b *EchoBackend) Close() {
	_ = b.srv.Close()
	<-b.served
}

// Conns returns how many connections the backend has accepted.
func (b *EchoBackend) Conns() int64 { return b.conns.Load() }

// Requests returns how many requests the backend has received.
func (b *EchoBackend) Requests() int64 { return b.requests.Load() }

func (b *EchoBackend) echo(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set(HeaderEchoMethod, r.Method)
	h.Set(HeaderEchoProto, r.Proto)
	h.Set(HeaderEchoTransferEncoding, strings.Join(r.TransferEncoding, ","))
	h.Set(HeaderEchoContentLength, strconv.FormatInt(r.ContentLength, 10))
	if ct := r.Header.Get("Content-Type"); ct != "" {
		h.Set("Content-Type", ct)
	}
	// Stream: write each piece as it arrives, so a large body is never held
	// whole and a client that streams sees the echo as it goes. HTTP/1.1 in
	// net/http needs full duplex switched on for that (HTTP/2 always is).
	_ = http.NewResponseController(w).EnableFullDuplex()
	buf := make([]byte, 32<<10)
	flusher, _ := w.(http.Flusher)
	for {
		n, err := r.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			if flusher != nil {
				flusher.Flush()
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return
		}
	}
	for k, vs := range r.Trailer {
		for _, v := range vs {
			h.Add(http.TrailerPrefix+k, v)
		}
	}
}

func (b *EchoBackend) big(w http.ResponseWriter, r *http.Request) {
	size, err := strconv.Atoi(r.URL.Query().Get("size"))
	if err != nil || size < 0 || size > 1<<30 {
		http.Error(w, fmt.Sprintf("size: want an integer in [0, 1GiB], got %q", r.URL.Query().Get("size")), http.StatusBadRequest)
		return
	}
	body := BigBody(size)
	w.Header().Set("Content-Length", strconv.Itoa(size))
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set(HeaderBodySHA256, SHA256Hex(body))
	_, _ = w.Write(body) // net/http discards it for HEAD
}

func (b *EchoBackend) slow(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	delay, err := time.ParseDuration(q.Get("delay"))
	if err != nil || delay < 0 || delay > maxSlowDelay {
		http.Error(w, fmt.Sprintf("delay: want a duration in [0, %v], got %q", maxSlowDelay, q.Get("delay")), http.StatusBadRequest)
		return
	}
	chunks := 1
	if c := q.Get("chunks"); c != "" {
		if chunks, err = strconv.Atoi(c); err != nil || chunks < 1 || chunks > 1000 {
			http.Error(w, fmt.Sprintf("chunks: want an integer in [1, 1000], got %q", c), http.StatusBadRequest)
			return
		}
	}
	flusher, _ := w.(http.Flusher)
	timer := time.NewTimer(delay)
	defer timer.Stop()
	for range chunks {
		timer.Reset(delay)
		select {
		case <-timer.C:
		case <-r.Context().Done():
			return
		}
		if _, err := io.WriteString(w, "slow\n"); err != nil {
			return
		}
		if flusher != nil {
			flusher.Flush()
		}
	}
}

func (b *EchoBackend) trailers(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Trailer", "X-Trailer-One, X-Trailer-Two")
	_, _ = io.WriteString(w, "trailers\n")
	w.Header().Set("X-Trailer-One", "1")
	w.Header().Set("X-Trailer-Two", "2")
}

func (b *EchoBackend) status(w http.ResponseWriter, r *http.Request) {
	code, err := strconv.Atoi(r.PathValue("code"))
	if err != nil || code < 200 || code > 599 {
		http.Error(w, fmt.Sprintf("status: want an integer in [200, 599], got %q", r.PathValue("code")), http.StatusBadRequest)
		return
	}
	w.WriteHeader(code)
}

// BigBody returns n pseudo-random bytes, the same for the same n in every
// process, so a test can check a large body end to end without shipping it.
func BigBody(n int) []byte {
	var seed [32]byte
	copy(seed[:], "meshd test body, deterministic!!")
	r := rand.NewChaCha8(seed)
	body := make([]byte, n)
	_, _ = r.Read(body) // ChaCha8.Read never fails
	return body
}

// SHA256Hex returns the hex SHA-256 of data.
func SHA256Hex(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}
