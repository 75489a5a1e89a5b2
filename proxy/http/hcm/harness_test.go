package hcm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"

	"meshd.dev/meshd/proxy/http/h2"
	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/proxy/stats"
	"meshd.dev/meshd/proxy/upstream"
)

// Test time limits.
const (
	// exchangeTimeout bounds one proxied exchange in a test.
	exchangeTimeout = 10 * time.Second
)

// h2Upstream is an HTTP/2 (prior knowledge) server on 127.0.0.1 built on
// meshd's own codec, serving every stream with handler.
type h2Upstream struct {
	ln    net.Listener
	addr  string
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns []*h2.ServerConn
}

func startH2Upstream(t testing.TB, cfg h2.ServerConfig, handler stream.HandlerFunc) *h2Upstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	u := &h2Upstream{ln: ln, addr: ln.Addr().String()}
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			sc := h2.NewServerConn(c, &cfg, handler, stream.ConnInfo{LocalAddr: c.LocalAddr(), RemoteAddr: c.RemoteAddr(), Proto: "HTTP/2"})
			u.mu.Lock()
			u.conns = append(u.conns, sc)
			u.mu.Unlock()
			u.wg.Add(1)
			go func() {
				defer u.wg.Done()
				_ = sc.Serve()
			}()
		}
	}()
	t.Cleanup(u.close)
	return u
}

func (u *h2Upstream) close() {
	u.ln.Close()
	u.mu.Lock()
	for _, sc := range u.conns {
		sc.Close()
	}
	u.mu.Unlock()
	u.wg.Wait()
}

// respond answers s with status, body and trailers (none when nil).
func respond(s stream.ServerStream, status int, body string, trailers header.Header) {
	_, _ = io.Copy(io.Discard, s)
	resp := &stream.Response{Status: status, Header: header.Make(2), ContentLength: -1}
	end := body == "" && trailers.Len() == 0
	if err := s.WriteHeader(resp, end); err != nil || end {
		return
	}
	if body != "" {
		if _, err := io.WriteString(s, body); err != nil {
			return
		}
	}
	if trailers.Len() > 0 {
		_ = s.WriteTrailers(trailers)
		return
	}
	_ = s.CloseWrite()
}

// env is one connection manager in front of one cluster.
type env struct {
	h     *Handler
	store *stats.Store
	cm    *upstream.Manager
}

// clusterJSON renders a STATIC cluster named "backend" with the given
// endpoints and extra top-level fields (JSON object members); it speaks
// HTTP/2 unless extra sets typed_extension_protocol_options.
func clusterJSON(addrs []string, extra string) string {
	var eps []string
	for _, a := range addrs {
		host, port, _ := net.SplitHostPort(a)
		eps = append(eps, fmt.Sprintf(`{"endpoint":{"address":{"socket_address":{"address":%q,"port_value":%s}}}}`, host, port))
	}
	// extra may bring its own protocol options; HTTP/2 is the default.
	if !strings.Contains(extra, "typed_extension_protocol_options") {
		extra = strings.TrimSuffix(`"typed_extension_protocol_options":{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions":{
   "@type":"type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
   "explicit_http_config":{"http2_protocol_options":{}}}},`+extra, ",")
	}
	return fmt.Sprintf(`{
 "name":"backend","type":"STATIC","connect_timeout":"1s",
 "load_assignment":{"cluster_name":"backend","endpoints":[{"lb_endpoints":[%s]}]},
 %s}`, strings.Join(eps, ","), extra)
}

// hcmJSON renders an HCM whose one virtual host has the given routes (a
// JSON array body) and extra top-level fields.
func hcmJSON(routes, extra string) string {
	if extra != "" {
		extra = "," + extra
	}
	return fmt.Sprintf(`{"stat_prefix":"test","route_config":{"virtual_hosts":[{"name":"vh","domains":["*"],"routes":[%s]}]}%s}`, routes, extra)
}

// newEnv compiles the HCM and cluster JSON into a handler; opts adjust the
// compiled config the way the snapshot compiler does (listener fields).
func newEnv(t testing.TB, hcmSrc, clusterSrc string, opts ...func(*Config)) *env {
	t.Helper()
	var m hcmv3.HttpConnectionManager
	if err := protojson.Unmarshal([]byte(hcmSrc), &m); err != nil {
		t.Fatalf("HCM JSON: %v\n%s", err, hcmSrc)
	}
	cfg, err := Compile(&m)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	for _, o := range opts {
		o(cfg)
	}
	store := stats.NewStore()
	logger := slog.New(slog.DiscardHandler)
	cm := upstream.NewManager(store, logger)
	if clusterSrc != "" {
		cm.Apply([]*upstream.Spec{compileClusterJSON(t, clusterSrc)})
	}
	t.Cleanup(cm.Close)
	return &env{h: NewHandler(cfg, cm, NewStats(store, cfg.StatPrefix), logger), store: store, cm: cm}
}

// counter returns the value of the counter with the flat name (0 when it
// was never created).
func (e *env) counter(name string) uint64 {
	var v uint64
	e.store.Visit(func(c *stats.Counter) {
		if c.FlatName() == name {
			v = c.Value()
		}
	}, func(*stats.Gauge) {}, func(*stats.Histogram) {})
	return v
}

// fakeStream is a downstream stream driven by a test: it feeds the request
// body from body (nil: no body) and records what the handler sends.
type fakeStream struct {
	req    stream.Request
	body   io.Reader
	ctx    context.Context
	cancel context.CancelFunc
	info   stream.ConnInfo
	// reqTrailers are the request trailers Trailers returns.
	reqTrailers header.Header

	mu       sync.Mutex
	resp     *stream.Response
	respEnd  bool
	out      bytes.Buffer
	trailers header.Header
	reset    *stream.ErrCode
	done     bool
}

func newFakeStream(method, path string, hdr header.Header, body io.Reader) *fakeStream {
	ctx, cancel := context.WithCancel(context.Background())
	fs := &fakeStream{
		req: stream.Request{
			Method: method, Scheme: "http", Authority: "test", Path: path,
			Header: hdr, ContentLength: -1, EndStream: body == nil,
		},
		body:   body,
		ctx:    ctx,
		cancel: cancel,
		info:   stream.ConnInfo{ID: 1, Proto: "HTTP/2", LocalAddr: &net.TCPAddr{}, RemoteAddr: &net.TCPAddr{}},
	}
	return fs
}

func grpcHeaders(kv ...string) header.Header {
	h := header.Make(4)
	h.Add("content-type", "application/grpc")
	h.Add("te", "trailers")
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

func (fs *fakeStream) Request() *stream.Request { return &fs.req }
func (fs *fakeStream) Read(p []byte) (int, error) {
	if fs.body == nil {
		return 0, io.EOF
	}
	if err := fs.ctx.Err(); err != nil {
		return 0, &stream.Error{Code: stream.ErrCodeCancel, Reason: "reset", Err: err}
	}
	return fs.body.Read(p)
}
func (fs *fakeStream) Trailers() header.Header { return fs.reqTrailers.Clone() }
func (fs *fakeStream) WriteHeader(resp *stream.Response, endStream bool) error {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.reset != nil {
		return errors.New("stream reset")
	}
	if resp.Status >= 200 {
		fs.resp, fs.respEnd = resp, endStream
	}
	return nil
}
func (fs *fakeStream) Write(p []byte) (int, error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.reset != nil {
		return 0, errors.New("stream reset")
	}
	return fs.out.Write(p)
}
func (fs *fakeStream) WriteTrailers(t header.Header) error {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.trailers, fs.done = t, true
	return nil
}
func (fs *fakeStream) CloseWrite() error {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.done = true
	return nil
}
func (fs *fakeStream) Reset(code stream.ErrCode) {
	fs.mu.Lock()
	if fs.reset == nil {
		fs.reset = &code
	}
	fs.mu.Unlock()
	fs.cancel()
}
func (fs *fakeStream) Context() context.Context { return fs.ctx }
func (fs *fakeStream) Conn() *stream.ConnInfo   { return &fs.info }

// serve runs the handler on fs and fails the test if it takes longer than
// exchangeTimeout. It returns how long the exchange took.
func (e *env) serve(t *testing.T, fs *fakeStream) time.Duration {
	t.Helper()
	start := time.Now()
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
		t.Fatalf("exchange %s %s did not end within %v", fs.req.Method, fs.req.Path, exchangeTimeout)
	}
	fs.cancel() // the stream is over, as a codec would end it
	return time.Since(start)
}

// result is what the downstream saw.
type result struct {
	status   int
	end      bool
	header   header.Header
	body     string
	trailers header.Header
	reset    *stream.ErrCode
}

func (fs *fakeStream) result() result {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	r := result{body: fs.out.String(), trailers: fs.trailers, reset: fs.reset}
	if fs.resp != nil {
		r.status, r.end, r.header = fs.resp.Status, fs.respEnd, fs.resp.Header
	}
	return r
}

// compileClusterJSON compiles a cluster rendered by clusterJSON.
func compileClusterJSON(t testing.TB, src string) *upstream.Spec {
	t.Helper()
	var c clusterv3.Cluster
	if err := protojson.Unmarshal([]byte(src), &c); err != nil {
		t.Fatalf("cluster JSON: %v\n%s", err, src)
	}
	spec, err := upstream.CompileCluster(&c)
	if err != nil {
		t.Fatalf("CompileCluster: %v", err)
	}
	return spec
}
