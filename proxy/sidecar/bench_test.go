package sidecar

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"meshd.dev/meshd/proxy/http/h2"
	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// cpuTime is the CPU time (user + system) the process has used so far, all
// goroutines and the GC included.
func cpuTime(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatalf("getrusage: %v", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
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
// compare variants of the proxy, not absolute figures with test/bench).
// Run it serially with a fixed count, for example
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
	addr := listenerAddr(b, s, "ingress")
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
	cpu0 := cpuTime(b)
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
	cpu := cpuTime(b) - cpu0
	b.StopTimer()
	if firstErr != nil {
		b.Fatal(firstErr)
	}
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
}
