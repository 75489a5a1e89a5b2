package upstream

//lint:file-ignore SA1019 BenchmarkPoolS1's baseline is x/net/http2's own Transport and Server (test/scenarios/README.md gives its figures); net/http's replacement is not like for like: under the S1 load its Transport dials about 220 connections where x/net's dials 10.

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"golang.org/x/net/http2"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/proxy/stats"
)

// The S1 load of acceptance 8: 100 concurrent callers against one h2c
// server on loopback that advertises SETTINGS_MAX_CONCURRENT_STREAMS 10, with
// the cluster's max_connections at 64.
const (
	s1Callers        = 100
	s1PeerMaxStreams = 10
	s1MaxConnections = 64
	s1ResponseBody   = "ok\n"
)

// BenchmarkPoolS1 compares meshd's upstream pool (a STATIC cluster through
// Manager, Cluster.Pick and Host.NewStream) with x/net/http2's Transport on
// the same server and load. Each op is one GET answered by a 3-byte body.
// Besides ns/op and allocs/op (both include the in-process server's share,
// the same for both sides) it reports:
//   - conns: connections the server accepted;
//   - p99-ns: the 99th percentile request latency seen by a caller;
//   - cpu-ns/op: user+system CPU of the whole process per request;
//   - errors: requests that failed (x/net's Transport can send more streams
//     than the peer allows on a connection whose SETTINGS it has not read
//     yet, which an x/net server resets with PROTOCOL_ERROR). More than 1%
//     fails the benchmark.
//
// Compare with: go test -run '^$' -bench PoolS1 -benchtime 20000x -count 5
// ./proxy/upstream/ | benchstat -col /client -
func BenchmarkPoolS1(b *testing.B) {
	clients := []struct {
		name string
		open func(b *testing.B, addr string) roundTripper
	}{
		{"meshd", openMeshdPool},
		{"xnet", openXNetTransport},
	}
	for _, c := range clients {
		b.Run("client="+c.name, func(b *testing.B) {
			testutil.CheckGoroutines(b)
			srv := startS1Server(b)
			rt := c.open(b, srv.addr())
			// One request per caller first, so dialling is not timed
			// and both pools start with the connections the load
			// needs.
			if failed, err := runS1(rt, s1Callers, nil); err != nil {
				b.Logf("warm-up: %d of %d requests failed, the first with: %v", failed, s1Callers, err)
			}
			lat := make([][]time.Duration, s1Callers)
			cpu0 := testutil.ProcessCPU(b)
			b.ReportAllocs()
			b.ResetTimer()
			failed, err := runS1(rt, b.N, lat)
			b.StopTimer()
			if err != nil {
				b.Logf("%d of %d requests failed, the first with: %v", failed, b.N, err)
			}
			if failed*100 > int64(b.N) {
				b.Fatalf("%d of %d requests failed (more than 1%%), the first with: %v", failed, b.N, err)
			}
			all := slices.Concat(lat...)
			slices.Sort(all)
			b.ReportMetric(float64(all[(len(all)*99+99)/100-1].Nanoseconds()), "p99-ns")
			b.ReportMetric(float64(srv.accepted.Load()), "conns")
			b.ReportMetric(float64(failed), "errors")
			b.ReportMetric(float64((testutil.ProcessCPU(b)-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op")
		})
	}
}

// roundTripper sends one GET / and reads the response to its end.
type roundTripper func(ctx context.Context) error

// runS1 runs n requests on s1Callers goroutines and, when lat is non-nil,
// records the latency of each successful request in lat[caller]. It
// returns how many requests failed and the first failure.
func runS1(rt roundTripper, n int, lat [][]time.Duration) (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var (
		next     atomic.Int64
		failed   atomic.Int64
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	for caller := range s1Callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				start := time.Now()
				if err := rt(ctx); err != nil {
					failed.Add(1)
					errOnce.Do(func() { firstErr = err })
					if ctx.Err() != nil {
						return
					}
					continue
				}
				if lat != nil {
					lat[caller] = append(lat[caller], time.Since(start))
				}
			}
		}()
	}
	wg.Wait()
	return failed.Load(), firstErr
}

// s1Server is an x/net/http2 h2c (prior knowledge) server that counts the
// connections it accepts.
type s1Server struct {
	ln       net.Listener
	accepted atomic.Int64
	mu       sync.Mutex
	conns    map[net.Conn]bool
	wg       sync.WaitGroup
}

func startS1Server(b *testing.B) *s1Server {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	s := &s1Server{ln: ln, conns: make(map[net.Conn]bool)}
	h2 := &http2.Server{MaxConcurrentStreams: s1PeerMaxStreams}
	handler := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("content-type", "text/plain")
		_, _ = io.WriteString(w, s1ResponseBody)
	})
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.accepted.Add(1)
			s.mu.Lock()
			s.conns[c] = true
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				h2.ServeConn(c, &http2.ServeConnOpts{Handler: handler})
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
			}()
		}
	}()
	b.Cleanup(func() {
		_ = ln.Close()
		s.mu.Lock()
		for c := range s.conns {
			_ = c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *s1Server) addr() string { return s.ln.Addr().String() }

// s1Cluster is the Envoy cluster of the S1 load: STATIC, one endpoint,
// explicit HTTP/2, max_connections 64.
func s1Cluster(b *testing.B, addr string) *clusterv3.Cluster {
	host, portText, err := net.SplitHostPort(addr)
	if err != nil {
		b.Fatal(err)
	}
	var port uint32
	if _, err := fmt.Sscan(portText, &port); err != nil {
		b.Fatal(err)
	}
	opts, err := anypb.New(&httpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{
			ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
					Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
				},
			},
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	return &clusterv3.Cluster{
		Name:                 "backend",
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(time.Second),
		LbPolicy:             clusterv3.Cluster_ROUND_ROBIN,
		TypedExtensionProtocolOptions: map[string]*anypb.Any{
			"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": opts,
		},
		CircuitBreakers: &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
			MaxConnections: wrapperspb.UInt32(s1MaxConnections),
		}}},
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: "backend",
			Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
					Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
						Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
					}}},
				}},
			}}}},
		},
	}
}

// openMeshdPool compiles the S1 cluster and sends each request through
// Manager, Cluster.Pick and Host.NewStream.
func openMeshdPool(b *testing.B, addr string) roundTripper {
	spec, err := CompileCluster(s1Cluster(b, addr))
	if err != nil {
		b.Fatalf("CompileCluster: %v", err)
	}
	m := NewManager(stats.NewStore(), slog.New(slog.DiscardHandler))
	m.Apply([]*Spec{spec})
	b.Cleanup(m.Close)
	c := m.Get("backend")
	if c == nil {
		b.Fatal("Manager.Get(backend) = nil after Apply")
	}
	return func(ctx context.Context) error {
		h := c.Pick()
		if h == nil {
			return fmt.Errorf("cluster backend: no host to pick")
		}
		req := &stream.Request{Method: http.MethodGet, Scheme: "http", Authority: "backend", Path: "/",
			Header: header.Make(0), ContentLength: 0, EndStream: true}
		s, err := h.NewStream(ctx, req, true)
		if err != nil {
			return fmt.Errorf("NewStream: %w", err)
		}
		resp, err := s.Response(ctx)
		if err != nil {
			return fmt.Errorf("response: %w", err)
		}
		if resp.Status != http.StatusOK {
			s.Reset(stream.ErrCodeCancel)
			return fmt.Errorf("status %d", resp.Status)
		}
		if _, err := io.Copy(io.Discard, s); err != nil {
			return fmt.Errorf("reading the body: %w", err)
		}
		return nil
	}
}

// openXNetTransport sends each request through an x/net/http2 Transport
// speaking h2c with prior knowledge.
func openXNetTransport(b *testing.B, addr string) roundTripper {
	var d net.Dialer
	tr := &http2.Transport{
		AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		},
	}
	b.Cleanup(tr.CloseIdleConnections)
	url := "http://" + addr + "/"
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := tr.RoundTrip(req)
		if err != nil {
			return fmt.Errorf("RoundTrip: %w", err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			return fmt.Errorf("reading the body: %w", err)
		}
		return nil
	}
}
