package scenarios

// HTTP/3 counterparts of S1, S3 and S9. grpc-go cannot serve HTTP/3, so the
// upstream is quic-go's HTTP/3 server in the test; the client speaks
// HTTP/2 (h2c) to the sidecar, whose cluster speaks HTTP/3 over QUIC with
// a QuicUpstreamTransport verifying the server's SPIFFE ID.
//
// Numeric assertions:
//   - S1: 50 concurrent requests against a peer allowing 10 bidirectional
//     streams (MAX_STREAMS) open between 5 and 8 connections, with zero
//     errors; a second wave of 50 opens at most 2 more.
//   - S3: a peer answering every fourth request with H3_REQUEST_REJECTED:
//     zero client errors over 200 requests, each rejection counted
//     (http3.stream_refused_errors) and retried
//     (upstream_rq_transparent_retry).
//   - S9: a peer shutting down gracefully (HTTP/3 GOAWAY, then close) and
//     restarting every 2 s under 20 callers for 7 s: zero client errors,
//     at least 3 GOAWAYs received and more than one connection opened.

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/mtls/mtlstest"
)

const h3ServerID = "spiffe://test.example/ns/demo/sa/h3-backend"

// h3Backend is quic-go's HTTP/3 server on a fixed UDP port of 127.0.0.1,
// restartable on that port.
type h3Backend struct {
	Addr       string
	BundleFile string
	cert       tls.Certificate
	maxStreams int64
	handler    http.Handler
	conns      atomic.Int64

	mu   sync.Mutex
	srv  *http3.Server
	udp  *net.UDPConn
	done chan struct{}
}

func startH3Backend(t *testing.T, maxStreams int64, h http.Handler) *h3Backend {
	t.Helper()
	ca := mtlstest.NewCA(t, "test.example")
	svid := ca.Issue(t, h3ServerID)
	_, _, bundle := mtlstest.WriteFiles(t, t.TempDir(), svid, ca.Bundle())
	b := &h3Backend{BundleFile: bundle, maxStreams: maxStreams, handler: h}
	b.cert = tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
	for _, c := range svid.Certificates {
		b.cert.Certificate = append(b.cert.Certificate, c.Raw)
	}
	if err := b.listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.close)
	return b
}

func (b *h3Backend) listen(addr string) error {
	ua, _ := net.ResolveUDPAddr("udp", addr)
	udp, err := net.ListenUDP("udp", ua)
	if err != nil {
		return err
	}
	srv := &http3.Server{
		Handler:    b.handler,
		TLSConfig:  http3.ConfigureTLSConfig(&tls.Config{Certificates: []tls.Certificate{b.cert}}),
		QUICConfig: &quic.Config{MaxIncomingStreams: b.maxStreams},
		ConnContext: func(ctx context.Context, _ *quic.Conn) context.Context {
			b.conns.Add(1)
			return ctx
		},
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(udp) }()
	b.mu.Lock()
	b.srv, b.udp, b.done, b.Addr = srv, udp, done, udp.LocalAddr().String()
	b.mu.Unlock()
	return nil
}

// restart shuts the server down gracefully (GOAWAY, in-flight requests
// finish) and serves again on the same port.
func (b *h3Backend) restart(ctx context.Context) error {
	b.mu.Lock()
	srv, udp, done, addr := b.srv, b.udp, b.done, b.Addr
	b.mu.Unlock()
	if err := srv.Shutdown(ctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	_ = udp.Close()
	<-done
	return b.listen(addr)
}

func (b *h3Backend) close() {
	b.mu.Lock()
	srv, udp, done := b.srv, b.udp, b.done
	b.mu.Unlock()
	_ = srv.Close()
	_ = udp.Close()
	<-done
}

// startH3Sidecar starts a sidecar with an HTTP listener "ingress" (codec
// AUTO) in front of be, HTTP/3 only, verified against be's bundle and
// SPIFFE ID.
func startH3Sidecar(t *testing.T, be *h3Backend) *testutil.Sidecar {
	t.Helper()
	return testutil.StartSidecar(t, testutil.MustH3UpstreamBootstrap(t, testutil.H3UpstreamParams{
		ListenerName: "ingress", Cluster: "h3up", UpstreamAddr: be.Addr, TrustedCA: be.BundleFile, PeerSAN: h3ServerID,
		MaxConcurrentStreams: 100, RouteTimeout: 10 * time.Second, ConnectTimeout: 2 * time.Second,
	}))
}

// h2cClient speaks HTTP/2 with prior knowledge to the sidecar.
func h2cClient(t *testing.T) *http.Client {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &p}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 20 * time.Second}
}

// get fetches url and checks a 200 with body want.
func get(c *http.Client, url, want string) error {
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != 200 || string(b) != want {
		return fmt.Errorf("status %d body %q (want 200 %q)", resp.StatusCode, b, want)
	}
	return nil
}

// wave runs n concurrent GETs and returns the first error and the count.
func wave(c *http.Client, url, want string, n int) (failed int64, first error) {
	var wg sync.WaitGroup
	var nf atomic.Int64
	var fe atomic.Value
	for range n {
		wg.Go(func() {
			if err := get(c, url, want); err != nil {
				nf.Add(1)
				fe.CompareAndSwap(nil, err)
			}
		})
	}
	wg.Wait()
	if e, ok := fe.Load().(error); ok {
		first = e
	}
	return nf.Load(), first
}

func TestH3S1PoolScaleOut(t *testing.T) {
	testutil.CheckGoroutines(t)
	be := startH3Backend(t, 10, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(300 * time.Millisecond)
		_, _ = io.WriteString(w, "ok")
	}))
	sc := startH3Sidecar(t, be)
	c := h2cClient(t)
	url := "http://" + sc.ListenerAddr(t, "ingress") + "/"
	start := time.Now()
	if n, err := wave(c, url, "ok", 50); n > 0 {
		t.Fatalf("first wave: %d of 50 failed; first: %v", n, err)
	}
	t.Logf("first wave took %v", time.Since(start))
	first := sc.Stats(t)["cluster.h3up.upstream_cx_http3_total"]
	if first < 5 || first > 8 {
		t.Errorf("first wave of 50 opened %d HTTP/3 connections to a peer allowing 10 streams, want 5..8", first)
	}
	start = time.Now()
	if n, err := wave(c, url, "ok", 50); n > 0 {
		t.Fatalf("second wave: %d of 50 failed; first: %v", n, err)
	}
	t.Logf("second wave took %v", time.Since(start))
	st := sc.Stats(t)
	if second := st["cluster.h3up.upstream_cx_http3_total"]; second > first+2 {
		t.Errorf("second wave opened %d more connections (%d in all), want at most 2 more", second-first, second)
	}
	t.Logf("connections: %d after the first wave, %d after the second; backend accepted %d", first, st["cluster.h3up.upstream_cx_http3_total"], be.conns.Load())
}

func TestH3S3RequestRejected(t *testing.T) {
	testutil.CheckGoroutines(t)
	var n, rejected atomic.Int64
	be := startH3Backend(t, 100, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1)%4 == 0 {
			str, err := w.(http3.HTTPStreamer).HTTPStream()
			if err == nil {
				rejected.Add(1)
				str.CancelRead(quic.StreamErrorCode(http3.ErrCodeRequestRejected))
				str.CancelWrite(quic.StreamErrorCode(http3.ErrCodeRequestRejected))
				return
			}
		}
		_, _ = io.WriteString(w, "ok")
	}))
	sc := startH3Sidecar(t, be)
	c := h2cClient(t)
	url := "http://" + sc.ListenerAddr(t, "ingress") + "/"
	var failed int64
	var first error
	for range 20 {
		f, err := wave(c, url, "ok", 10)
		failed += f
		if first == nil {
			first = err
		}
	}
	if failed > 0 {
		t.Fatalf("%d of 200 requests failed; first: %v", failed, first)
	}
	st := sc.Stats(t)
	if r := rejected.Load(); r < 50 || st["cluster.h3up.http3.stream_refused_errors"] < r || st["cluster.h3up.upstream_rq_transparent_retry"] < r {
		t.Errorf("backend rejected %d; sidecar counted %d refused and %d transparent retries, want each at least the rejections (>= 50)",
			r, st["cluster.h3up.http3.stream_refused_errors"], st["cluster.h3up.upstream_rq_transparent_retry"])
	}
}

func TestH3S9GoAwayRollout(t *testing.T) {
	testutil.CheckGoroutines(t)
	be := startH3Backend(t, 100, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(2 * time.Millisecond)
		_, _ = io.WriteString(w, "ok")
	}))
	sc := startH3Sidecar(t, be)
	c := h2cClient(t)
	url := "http://" + sc.ListenerAddr(t, "ingress") + "/"
	const callers, duration, maxCalls = 20, 7 * time.Second, 100000
	end := time.Now().Add(duration)
	var calls, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			for i := 0; i < maxCalls && time.Now().Before(end); i++ {
				calls.Add(1)
				if err := get(c, url, "ok"); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		})
	}
	restarts := 0
	for time.Until(end) > 2*time.Second {
		time.Sleep(2 * time.Second)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := be.restart(ctx)
		cancel()
		if err != nil {
			t.Errorf("restart: %v", err)
			break
		}
		restarts++
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d of %d calls failed across %d GOAWAY rollouts; first: %v", n, calls.Load(), restarts, firstErr.Load())
	}
	st := sc.Stats(t)
	if st["cluster.h3up.http3.goaway_rx"] < int64(restarts) || st["cluster.h3up.upstream_cx_http3_total"] < 2 {
		t.Errorf("goaway_rx %d (restarts %d), upstream_cx_http3_total %d; want every GOAWAY seen and more than one connection",
			st["cluster.h3up.http3.goaway_rx"], restarts, st["cluster.h3up.upstream_cx_http3_total"])
	}
	t.Logf("%d calls, %d rollouts, %d GOAWAYs, %d connections, %d transparent retries", calls.Load(), restarts,
		st["cluster.h3up.http3.goaway_rx"], st["cluster.h3up.upstream_cx_http3_total"], st["cluster.h3up.upstream_rq_transparent_retry"])
}
