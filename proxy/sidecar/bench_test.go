package sidecar

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/proxy/http/h2"
	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// syscallCounts returns the read and write syscalls the process made so
// far (/proc/self/io syscr and syscw): a figure that, unlike CPU time, a
// loaded machine does not blur.
func syscallCounts(tb testing.TB) (reads, writes int64) {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		tb.Skipf("syscall counts: %v", err)
	}
	for line := range strings.Lines(string(b)) {
		name, val, ok := strings.Cut(strings.TrimSpace(line), ": ")
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(val, 10, 64)
		if err != nil {
			tb.Fatalf("/proc/self/io: %q: %v", line, err)
		}
		switch name {
		case "syscr":
			reads = n
		case "syscw":
			writes = n
		}
	}
	return reads, writes
}

// proxyBootstrap routes every request on listener "ingress" (127.0.0.1:0,
// codec AUTO) to a STATIC HTTP/2 cluster at upstream, no route timeout:
// the shape of test/bench's sidecar.
func proxyBootstrap(upstream *net.TCPAddr) string {
	return fmt.Sprintf(`
static_resources:
  listeners:
  - name: ingress
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: backend, timeout: 0s }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: backend
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: %d } } }
`, upstream.Port)
}

// grpcUnaryUpstream serves every stream the way a gRPC unary call is
// answered: it reads the request message, then sends 200 with
// content-type application/grpc, one 1029-byte message (a 1 KiB payload in
// its 5-byte frame) and grpc-status 0 trailers. It returns the address;
// the listener and its connections close at the end of the benchmark.
func grpcUnaryUpstream(tb testing.TB) *net.TCPAddr {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	msg := make([]byte, 5+1024)
	msg[3], msg[4] = 0x04, 0x00 // length 1024, big endian
	h := stream.HandlerFunc(func(s stream.ServerStream) {
		_, _ = io.Copy(io.Discard, s)
		hdr := header.Make(1)
		hdr.Set("content-type", "application/grpc")
		_ = s.WriteHeader(&stream.Response{Status: 200, Header: hdr, ContentLength: -1}, false)
		_, _ = s.Write(msg)
		tr := header.Make(2)
		tr.Set("grpc-status", "0")
		tr.Set("grpc-message", "")
		_ = s.WriteTrailers(tr)
	})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []*h2.ServerConn
	wg.Go(func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			sc := h2.NewServerConn(nc, nil, h, stream.ConnInfo{})
			mu.Lock()
			conns = append(conns, sc)
			mu.Unlock()
			wg.Go(func() { _ = sc.Serve() })
		}
	})
	tb.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, sc := range conns {
			_ = sc.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().(*net.TCPAddr)
}

// BenchmarkProxyGRPCUnary answers "what CPU does the sidecar spend per
// gRPC unary call": h2 client connections call through an in-process
// sidecar (listener, connection manager, router, HTTP/2 upstream pool) to
// an in-process HTTP/2 upstream answering like a unary RPC with a 1 KiB
// response, 32 calls in flight per connection like test/bench's
// grpc-unary-16x32. It reports cpu-ns/op, the process CPU time per call
// (getrusage: the client and the upstream are in the process too, so
// compare variants of the proxy, not absolute figures with test/bench),
// and the read and write syscalls per call on all four sockets a call
// crosses, which a loaded machine does not blur. Run it serially with a fixed count, for example
//
//	go test -run '^$' -bench ProxyGRPCUnary -benchtime 20000x -count 6 -cpu 1 ./proxy/sidecar/
func BenchmarkProxyGRPCUnary(b *testing.B) {
	for _, conns := range []int{1, 4} {
		b.Run(fmt.Sprintf("conns=%d", conns), func(b *testing.B) {
			benchProxyUnary(b, conns, 32)
		})
	}
}

func benchProxyUnary(b *testing.B, conns, streams int) {
	up := grpcUnaryUpstream(b)
	s := start(b, compile(b, proxyBootstrap(up)))
	benchUnaryCalls(b, listenerAddr(b, s, "ingress"), conns, streams)
}

// benchUnaryCalls makes b.N gRPC-shaped unary calls (see
// BenchmarkProxyGRPCUnary) over conns h2c connections to addr with
// streams calls in flight per connection, and reports the process CPU
// and the read and write syscalls per call.
func benchUnaryCalls(b *testing.B, addr string, conns, streams int) {
	ccs := make([]*h2.ClientConn, conns)
	for i := range ccs {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		ccs[i] = h2.NewClientConn(nc, nil)
		b.Cleanup(func() { _ = ccs[i].Close() })
	}
	reqMsg := []byte{0, 0, 0, 0, 3, 0x10, 0x80, 0x08} // SimpleRequest{response_size: 1024}
	call := func(cc *h2.ClientConn, buf []byte) error {
		hdr := header.Make(2)
		hdr.Set("content-type", "application/grpc")
		hdr.Set("te", "trailers")
		req := &stream.Request{Method: "POST", Scheme: "http", Authority: "bench",
			Path: "/grpc.testing.TestService/UnaryCall", Header: hdr, ContentLength: -1}
		ctx := context.Background()
		cs, err := cc.NewStream(ctx, req, false)
		if err != nil {
			return err
		}
		if _, err := cs.Write(reqMsg); err != nil {
			return err
		}
		if err := cs.CloseWrite(header.Header{}); err != nil {
			return err
		}
		resp, err := cs.Response(ctx)
		if err != nil {
			return err
		}
		if resp.Status != 200 {
			return fmt.Errorf("status %d", resp.Status)
		}
		n := 0
		for {
			k, err := cs.Read(buf)
			n += k
			if err == io.EOF {
				break
			}
			if err != nil {
				return err
			}
		}
		if n != 5+1024 {
			return fmt.Errorf("response body %d bytes, want %d", n, 5+1024)
		}
		if tr := cs.Trailers(); tr.Get("grpc-status") != "0" {
			return fmt.Errorf("grpc-status %q", tr.Get("grpc-status"))
		}
		return nil
	}
	// Warm up: connections established upstream, pools and stacks grown.
	buf := make([]byte, 2048)
	for i := 0; i < 100; i++ {
		if err := call(ccs[i%conns], buf); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := testutil.ProcessCPU(b)
	r0, w0 := syscallCounts(b)
	work := make(chan struct{}, conns*streams)
	var wg sync.WaitGroup
	var errOnce sync.Once
	var firstErr error
	for w := range conns * streams {
		cc := ccs[w%conns]
		wg.Go(func() {
			buf := make([]byte, 2048)
			for range work {
				if err := call(cc, buf); err != nil {
					errOnce.Do(func() { firstErr = err })
				}
			}
		})
	}
	for range b.N {
		work <- struct{}{}
	}
	close(work)
	wg.Wait()
	cpu := testutil.ProcessCPU(b) - cpu0
	r1, w1 := syscallCounts(b)
	b.StopTimer()
	if firstErr != nil {
		b.Fatal(firstErr)
	}
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
	b.ReportMetric(float64(r1-r0)/float64(b.N), "read-syscalls/op")
	b.ReportMetric(float64(w1-w0)/float64(b.N), "write-syscalls/op")
}

// idleConnBytesLimit is the goal for what an idle downstream
// HTTP/2 connection may hold in the sidecar (a bare x/net/http2 Framer
// connection with its reader and writer goroutines holds about 16.5 KiB).
const idleConnBytesLimit = 24 << 10

// heapAndStacks is live heap plus goroutine stacks after a GC, the
// process memory that grows with connections (RSS also holds the binary's
// pages and the runtime's free lists, which do not).
func heapAndStacks() int64 {
	runtime.GC()
	samples := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/memory/classes/heap/stacks:bytes"}}
	metrics.Read(samples)
	return int64(samples[0].Value.Uint64() + samples[1].Value.Uint64())
}

// TestIdleConnMemory opens idle HTTP/2 connections to a sidecar, each
// after one request answered (so its codec state, HPACK tables and buffers
// have been used), and checks what each holds on average: live heap plus
// stacks, the client's side (a raw socket per connection, no goroutine)
// included.
func TestIdleConnMemory(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's shadow memory distorts per-connection figures")
	}
	const conns = 300
	s := start(t, compile(t, bootstrap(0, "ok")))
	addr := listenerAddr(t, s, "ingress")

	// One request on a fresh connection: preface, SETTINGS, HEADERS
	// (GET / with END_STREAM), then SETTINGS ACK once ours arrived.
	var out bytes.Buffer
	fr := http2.NewFramer(&out, nil)
	out.WriteString(http2.ClientPreface)
	_ = fr.WriteSettings()
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "idle"}, {":path", "/"}} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true})
	_ = fr.WriteSettingsAck()
	hello := out.Bytes()

	open := func() net.Conn {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nc.Close() })
		_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := nc.Write(hello); err != nil {
			t.Fatal(err)
		}
		// Read frames until stream 1 ends.
		rf := http2.NewFramer(io.Discard, nc)
		for {
			f, err := rf.ReadFrame()
			if err != nil {
				t.Fatalf("reading the response: %v", err)
			}
			if f.Header().StreamID == 1 && f.Header().Flags.Has(http2.FlagDataEndStream) {
				break
			}
		}
		_ = nc.SetDeadline(time.Time{})
		return nc
	}
	open() // warm up: pools, the route, the first connection's lazies
	time.Sleep(100 * time.Millisecond)
	before := heapAndStacks()
	for range conns {
		open()
	}
	// Let the handler goroutines of the last requests finish and park
	// time pass, as for any idle connection.
	time.Sleep(1500 * time.Millisecond)
	after := heapAndStacks()
	per := (after - before) / conns
	t.Logf("%d idle HTTP/2 connections: %d bytes each (live heap + stacks)", conns, per)
	if per > idleConnBytesLimit {
		t.Errorf("an idle HTTP/2 connection holds %d bytes, want at most %d", per, idleConnBytesLimit)
	}
}
