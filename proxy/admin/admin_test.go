package admin

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/proxy/http/h2"
	"meshd.dev/meshd/proxy/stats"
)

const testTimeout = 5 * time.Second

// fakeBackend is a Backend whose state the tests set and inspect.
type fakeBackend struct {
	mu        sync.Mutex
	ready     bool
	hcFailed  bool
	draining  bool
	dump      *adminv3.ConfigDump
	dumpErr   error
	clusters  []ClusterStatus
	listeners []ListenerStatus
	drains    [][2]bool
	quits     chan struct{}
}

func newFakeBackend() *fakeBackend {
	return &fakeBackend{
		ready: true,
		dump:  &adminv3.ConfigDump{Configs: []*anypb.Any{{TypeUrl: "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump"}}},
		clusters: []ClusterStatus{{
			Name: "backend",
			Hosts: []HostStatus{
				{
					Address: "127.0.0.1:9000",
					Stats: []HostStat{
						{Name: "cx_active", Value: 2, Gauge: true},
						{Name: "cx_connect_fail", Value: 0},
						{Name: "cx_total", Value: 3},
					},
					Healthy: true,
					Weight:  1,
				},
				{Address: "[::1]:9001", Stats: []HostStat{{Name: "rq_total", Value: 7}}, Weight: 5},
			},
		}},
		listeners: []ListenerStatus{
			{Name: "l0", Address: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 10000}},
			{Name: "quic", Address: &net.UDPAddr{IP: net.IPv6loopback, Port: 10443}},
			{Name: "uds", Address: &net.UnixAddr{Name: "/run/meshd.sock", Net: "unix"}},
		},
		quits: make(chan struct{}, 8),
	}
}

func (b *fakeBackend) Ready() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.ready
}

func (b *fakeBackend) ConfigDump() (*adminv3.ConfigDump, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.dump, b.dumpErr
}

func (b *fakeBackend) Clusters() []ClusterStatus { return b.clusters }

func (b *fakeBackend) Listeners() []ListenerStatus { return b.listeners }

func (b *fakeBackend) SetHealthcheckFailed(f bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.hcFailed = f
}

func (b *fakeBackend) HealthcheckFailed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.hcFailed
}

func (b *fakeBackend) DrainListeners(graceful, inboundOnly bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.drains = append(b.drains, [2]bool{graceful, inboundOnly})
}

func (b *fakeBackend) drainCalls() [][2]bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([][2]bool(nil), b.drains...)
}

func (b *fakeBackend) Quit() { b.quits <- struct{}{} }

func (b *fakeBackend) Draining() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.draining
}

func (b *fakeBackend) set(f func(*fakeBackend)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	f(b)
}

// testStore is a small store with every kind of metric.
func testStore() *stats.Store {
	s := stats.NewStore()
	cl := s.Root().Scope("cluster").Tagged("envoy_cluster_name", "backend")
	cl.Counter("upstream_rq_total").Add(3)
	cl.Counter("upstream_cx_connect_fail")
	cl.Gauge("upstream_cx_active").Set(2)
	cl.ResponseCode("upstream_rq", 200)
	cl.Histogram("upstream_rq_time").Record(0.3)
	return s
}

type harness struct {
	srv     *Server
	backend *fakeBackend
	base    string
	client  *http.Client
}

// start runs an admin server on 127.0.0.1:0 for the test, closed (and
// leak-checked) at cleanup.
func start(t *testing.T, b *fakeBackend, store *stats.Store) *harness {
	t.Helper()
	testutil.CheckGoroutines(t) // registered first, so it runs after the cleanups below
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv := New(b, store, logger)
	addr, err := srv.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	tr := &http.Transport{}
	h := &harness{srv: srv, backend: b, base: "http://" + addr.String(), client: &http.Client{Transport: tr, Timeout: testTimeout}}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		if err := srv.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return h
}

type reply struct {
	code int
	body string
	hdr  http.Header
}

func (h *harness) do(t *testing.T, method, path string) reply {
	t.Helper()
	req, err := http.NewRequest(method, h.base+path, nil)
	if err != nil {
		t.Fatalf("NewRequest %s %s: %v", method, path, err)
	}
	resp, err := h.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	return reply{resp.StatusCode, string(body), resp.Header}
}

func TestEndpoints(t *testing.T) {
	h := start(t, newFakeBackend(), testStore())
	const cl = `envoy_cluster_name="backend"`
	var buckets strings.Builder
	for _, le := range []string{"0.5", "1", "5", "10", "25", "50", "100", "250", "500", "1000", "2500",
		"5000", "10000", "30000", "60000", "300000", "600000", "1800000", "3600000", "+Inf"} {
		buckets.WriteString("envoy_cluster_upstream_rq_time_bucket{" + cl + `,le="` + le + "\"} 1\n")
	}
	prom := "# TYPE envoy_cluster_upstream_cx_connect_fail counter\n" +
		"envoy_cluster_upstream_cx_connect_fail{" + cl + "} 0\n" +
		"# TYPE envoy_cluster_upstream_rq counter\n" +
		"envoy_cluster_upstream_rq{" + cl + `,envoy_response_code="200"} 1` + "\n" +
		"# TYPE envoy_cluster_upstream_rq_total counter\n" +
		"envoy_cluster_upstream_rq_total{" + cl + "} 3\n" +
		"# TYPE envoy_cluster_upstream_rq_xx counter\n" +
		"envoy_cluster_upstream_rq_xx{" + cl + `,envoy_response_code_class="2"} 1` + "\n" +
		"# TYPE envoy_cluster_upstream_cx_active gauge\n" +
		"envoy_cluster_upstream_cx_active{" + cl + "} 2\n" +
		"# TYPE envoy_cluster_upstream_rq_time histogram\n" +
		buckets.String() +
		"envoy_cluster_upstream_rq_time_sum{" + cl + "} 0.3\n" +
		"envoy_cluster_upstream_rq_time_count{" + cl + "} 1\n"
	histLine := "cluster.backend.upstream_rq_time: P0(nan,0) P25(nan,0.125) P50(nan,0.25) P75(nan,0.375) " +
		"P90(nan,0.45) P95(nan,0.475) P99(nan,0.495) P99.5(nan,0.4975) P99.9(nan,0.4995) P100(nan,0.5)\n"

	tests := []struct {
		method, path string
		code         int
		ctype        string
		body         string // exact, unless prefix or contains is set
		prefix       bool
		contains     bool
	}{
		{"GET", "/ready", 200, "text/plain", "LIVE\n", false, false},
		{"GET", "/stats", 200, "text/plain", "cluster.backend.upstream_cx_active: 2\n" +
			"cluster.backend.upstream_cx_connect_fail: 0\n" +
			"cluster.backend.upstream_rq_200: 1\n" +
			"cluster.backend.upstream_rq_2xx: 1\n" +
			"cluster.backend.upstream_rq_total: 3\n" + histLine, false, false},
		{"GET", "/stats?usedonly&filter=rq_", 200, "text/plain", "cluster.backend.upstream_rq_200: 1\n" +
			"cluster.backend.upstream_rq_2xx: 1\n" +
			"cluster.backend.upstream_rq_total: 3\n" + histLine, false, false},
		{"GET", "/stats?filter=cx_&format=json", 200, "application/json",
			`{"stats":[{"name":"cluster.backend.upstream_cx_active","value":2},` +
				`{"name":"cluster.backend.upstream_cx_connect_fail","value":0}]}` + "\n", false, false},
		{"GET", "/stats?filter=(", 400, "text/plain", "Invalid re2 regex in filter=\"(\"", true, false},
		{"GET", "/stats?format=xml", 400, "text/plain", "invalid format=\"xml\"", true, false},
		{"GET", "/stats?format=prometheus", 200, "text/plain; version=0.0.4", prom, false, false},
		{"GET", "/stats/prometheus", 200, "text/plain; version=0.0.4", prom, false, false},
		{"GET", "/stats/prometheus?usedonly&filter=upstream_cx", 200, "text/plain; version=0.0.4",
			"# TYPE envoy_cluster_upstream_cx_active gauge\n" +
				"envoy_cluster_upstream_cx_active{" + cl + "} 2\n", false, false},
		{"GET", "/config_dump", 200, "application/json",
			`"type.googleapis.com/envoy.admin.v3.BootstrapConfigDump"`, false, true},
		{"GET", "/clusters", 200, "text/plain", "backend::observability_name::backend\n" +
			"backend::127.0.0.1:9000::cx_active::2\n" +
			"backend::127.0.0.1:9000::cx_connect_fail::0\n" +
			"backend::127.0.0.1:9000::cx_total::3\n" +
			"backend::127.0.0.1:9000::health_flags::healthy\n" +
			"backend::127.0.0.1:9000::weight::1\n" +
			"backend::[::1]:9001::rq_total::7\n" +
			"backend::[::1]:9001::health_flags::/failed_eds_health\n" +
			"backend::[::1]:9001::weight::5\n", false, false},
		{"GET", "/clusters?format=json", 200, "application/json",
			`{"cluster_statuses":[{"name":"backend","host_statuses":[` +
				`{"address":{"socket_address":{"address":"127.0.0.1","port_value":9000}},` +
				`"stats":[{"type":"GAUGE","value":"2","name":"cx_active"},{"name":"cx_connect_fail"},{"value":"3","name":"cx_total"}],` +
				`"health_status":{"eds_health_status":"HEALTHY"},"weight":1},` +
				`{"address":{"socket_address":{"address":"::1","port_value":9001}},` +
				`"stats":[{"value":"7","name":"rq_total"}],` +
				`"health_status":{"eds_health_status":"UNHEALTHY"},"weight":5}],` +
				`"observability_name":"backend"}]}` + "\n", false, false},
		{"GET", "/clusters?format=yaml", 400, "text/plain", "invalid format=\"yaml\"", true, false},
		{"GET", "/listeners", 200, "text/plain",
			"l0::127.0.0.1:10000\nquic::[::1]:10443\nuds::/run/meshd.sock\n", false, false},
		{"GET", "/listeners?format=json", 200, "application/json",
			`{"listener_statuses":[` +
				`{"name":"l0","local_address":{"socket_address":{"address":"127.0.0.1","port_value":10000}}},` +
				`{"name":"quic","local_address":{"socket_address":{"protocol":"UDP","address":"::1","port_value":10443}}},` +
				`{"name":"uds","local_address":{"pipe":{"path":"/run/meshd.sock"}}}]}` + "\n", false, false},
		{"GET", "/", 200, "text/plain", "admin commands are:\n  /: admin home page (this list)\n", true, false},
		{"GET", "/help", 200, "text/plain", "  /quitquitquit: exit the server\n", false, true},
		{"GET", "/nope", 404, "text/plain", "invalid path. admin commands are:\n", true, false},
		{"GET", "/stats/", 404, "text/plain", "invalid path. ", true, false},
		{"GET", "/debug/pprof/", 200, "text/html", "goroutine", false, true},
		{"GET", "/debug/pprof/goroutine?debug=1", 200, "text/plain", "goroutine profile:", true, false},
		{"GET", "/debug/pprof", 200, "text/html", "goroutine", false, true}, // redirected
		{"GET", "/debug/pprof/cmdline", 200, "text/plain", os.Args[0], true, false},
	}
	for _, tc := range tests {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			r := h.do(t, tc.method, tc.path)
			if r.code != tc.code {
				t.Errorf("status = %d, want %d; body %q", r.code, tc.code, r.body)
			}
			if ct := r.hdr.Get("Content-Type"); !strings.HasPrefix(ct, tc.ctype) {
				t.Errorf("Content-Type = %q, want prefix %q", ct, tc.ctype)
			}
			// The server.* gauges (TestServerStats) sample the process
			// and the clock; the bodies here are the test store's stats.
			body := withoutServerStats(r.body)
			switch {
			case tc.prefix && !strings.HasPrefix(body, tc.body),
				tc.contains && !strings.Contains(body, tc.body),
				!tc.prefix && !tc.contains && body != tc.body:
				t.Errorf("body:\n%s\nwant (prefix %v, contains %v):\n%s", r.body, tc.prefix, tc.contains, tc.body)
			}
			if strings.HasPrefix(tc.ctype, "application/json") && tc.code == 200 && !json.Valid([]byte(r.body)) {
				t.Errorf("body is not JSON: %s", r.body)
			}
		})
	}
}

// TestListenersJSONDecodes reads /listeners?format=json the way the e2e
// tests find port-0 listeners.
func TestListenersJSONDecodes(t *testing.T) {
	h := start(t, newFakeBackend(), stats.NewStore())
	var got struct {
		ListenerStatuses []struct {
			Name         string `json:"name"`
			LocalAddress struct {
				SocketAddress struct {
					Address   string `json:"address"`
					PortValue int    `json:"port_value"`
				} `json:"socket_address"`
			} `json:"local_address"`
		} `json:"listener_statuses"`
	}
	r := h.do(t, "GET", "/listeners?format=json")
	if err := json.Unmarshal([]byte(r.body), &got); err != nil {
		t.Fatalf("decoding %s: %v", r.body, err)
	}
	if len(got.ListenerStatuses) != 3 {
		t.Fatalf("%d listeners, want 3: %s", len(got.ListenerStatuses), r.body)
	}
	l0 := got.ListenerStatuses[0]
	if l0.Name != "l0" || l0.LocalAddress.SocketAddress.Address != "127.0.0.1" || l0.LocalAddress.SocketAddress.PortValue != 10000 {
		t.Errorf("l0 = %+v", l0)
	}
}

func TestMutatingEndpointsRequirePOST(t *testing.T) {
	b := newFakeBackend()
	h := start(t, b, stats.NewStore())
	for _, path := range []string{"/healthcheck/fail", "/healthcheck/ok", "/drain_listeners", "/quitquitquit"} {
		for _, method := range []string{"GET", "PUT", "DELETE"} {
			t.Run(method+" "+path, func(t *testing.T) {
				r := h.do(t, method, path)
				if r.code != http.StatusMethodNotAllowed {
					t.Errorf("status = %d, want 405", r.code)
				}
				if want := "Method " + method + " not allowed, POST required.\n"; r.body != want {
					t.Errorf("body = %q, want %q", r.body, want)
				}
				if allow := r.hdr.Get("Allow"); allow != "POST" {
					t.Errorf("Allow = %q, want POST", allow)
				}
			})
		}
	}
	if b.HealthcheckFailed() || len(b.drainCalls()) != 0 || len(b.quits) != 0 {
		t.Errorf("a refused request changed state: hcFailed %v, drains %v, quits %d", b.HealthcheckFailed(), b.drainCalls(), len(b.quits))
	}
	if r := h.do(t, "GET", "/ready"); r.code != 200 {
		t.Errorf("/ready after refused requests = %d %q, want 200", r.code, r.body)
	}
}

func TestReadyStates(t *testing.T) {
	b := newFakeBackend()
	b.ready = false
	h := start(t, b, stats.NewStore())
	steps := []struct {
		name         string
		method, path string // request made first, if any
		set          func(*fakeBackend)
		code         int
		body         string
	}{
		{name: "not ready", code: 503, body: "PRE_INITIALIZING\n"},
		{name: "not ready wins over healthcheck failed", set: func(b *fakeBackend) { b.hcFailed = true }, code: 503, body: "PRE_INITIALIZING\n"},
		{name: "ready", set: func(b *fakeBackend) { b.ready, b.hcFailed = true, false }, code: 200, body: "LIVE\n"},
		{name: "healthcheck fail", method: "POST", path: "/healthcheck/fail", code: 503, body: "DRAINING\n"},
		{name: "healthcheck ok", method: "POST", path: "/healthcheck/ok", code: 200, body: "LIVE\n"},
		{name: "backend draining", set: func(b *fakeBackend) { b.draining = true }, code: 503, body: "DRAINING\n"},
		{name: "backend done draining", set: func(b *fakeBackend) { b.draining = false }, code: 200, body: "LIVE\n"},
		{name: "drain listeners", method: "POST", path: "/drain_listeners?graceful&inboundonly", code: 503, body: "DRAINING\n"},
		{name: "healthcheck ok does not undo a drain", method: "POST", path: "/healthcheck/ok", code: 503, body: "DRAINING\n"},
	}
	for _, st := range steps {
		if st.set != nil {
			b.set(st.set)
		}
		if st.path != "" {
			if r := h.do(t, st.method, st.path); r.code != 200 || r.body != "OK\n" {
				t.Fatalf("%s: %s %s = %d %q, want 200 \"OK\\n\"", st.name, st.method, st.path, r.code, r.body)
			}
		}
		r := h.do(t, "GET", "/ready")
		if r.code != st.code || r.body != st.body {
			t.Errorf("%s: /ready = %d %q, want %d %q", st.name, r.code, r.body, st.code, st.body)
		}
	}
	if d := b.drainCalls(); len(d) != 1 || d[0] != [2]bool{true, true} {
		t.Errorf("DrainListeners calls = %v, want [[true true]]", d)
	}
}

func TestDrainListenersParams(t *testing.T) {
	tests := []struct {
		query string
		want  [2]bool
	}{
		{"", [2]bool{false, false}},
		{"?graceful", [2]bool{true, false}},
		{"?inboundonly", [2]bool{false, true}},
		{"?inboundonly&graceful", [2]bool{true, true}},
	}
	for _, tc := range tests {
		t.Run(tc.query, func(t *testing.T) {
			b := newFakeBackend()
			h := start(t, b, stats.NewStore())
			if r := h.do(t, "POST", "/drain_listeners"+tc.query); r.code != 200 {
				t.Fatalf("status %d %q", r.code, r.body)
			}
			if d := b.drainCalls(); len(d) != 1 || d[0] != tc.want {
				t.Errorf("DrainListeners calls = %v, want [%v]", d, tc.want)
			}
		})
	}
}

func TestQuitQuitQuit(t *testing.T) {
	b := newFakeBackend()
	h := start(t, b, stats.NewStore())
	for i := range 2 {
		r := h.do(t, "POST", "/quitquitquit")
		if r.code != 200 || r.body != "OK\n" {
			t.Fatalf("POST /quitquitquit #%d = %d %q, want 200 \"OK\\n\"", i+1, r.code, r.body)
		}
	}
	select {
	case <-b.quits:
	case <-time.After(testTimeout):
		t.Fatalf("Quit not called within %v", testTimeout)
	}
	select {
	case <-b.quits:
		t.Errorf("Quit called twice")
	case <-time.After(50 * time.Millisecond):
	}
	if r := h.do(t, "GET", "/ready"); r.code != 503 || r.body != "DRAINING\n" {
		t.Errorf("/ready after quitquitquit = %d %q, want 503 DRAINING", r.code, r.body)
	}
}

// quitCloser is a backend whose Quit closes the admin server, as the
// sidecar's does.
type quitCloser struct {
	*fakeBackend
	srv    *Server
	closed chan error
}

func (q *quitCloser) Quit() { q.closed <- q.srv.Close() }

func TestQuitClosesServer(t *testing.T) {
	testutil.CheckGoroutines(t)
	q := &quitCloser{fakeBackend: newFakeBackend(), closed: make(chan error, 1)}
	q.srv = New(q, stats.NewStore(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	addr, err := q.srv.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: testTimeout}
	resp, err := c.Post("http://"+addr.String()+"/quitquitquit", "", nil)
	if err != nil {
		t.Fatalf("POST /quitquitquit: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || string(body) != "OK\n" {
		t.Fatalf("POST /quitquitquit = %d %q, %v", resp.StatusCode, body, err)
	}
	select {
	case err := <-q.closed:
		if err != nil {
			t.Errorf("Close from Quit: %v", err)
		}
	case <-time.After(testTimeout):
		t.Fatalf("Quit did not close the server within %v", testTimeout)
	}
	if _, err := net.DialTimeout("tcp", addr.String(), time.Second); err == nil {
		t.Errorf("admin address still accepts connections after Close")
	}
}

// TestConfigDumpErrors: a backend that cannot produce its dump gets 500
// with the error's text, and an empty dump reads as Envoy's does.
func TestConfigDumpErrors(t *testing.T) {
	tests := []struct {
		name string
		dump *adminv3.ConfigDump
		err  error
		code int
		want string
	}{
		{"backend error", nil, errors.New("snapshot not ready"), 500, "config_dump: snapshot not ready\n"},
		{"no config yet", &adminv3.ConfigDump{}, nil, 200, `{"configs":[]}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := newFakeBackend()
			b.dump, b.dumpErr = tc.dump, tc.err
			h := start(t, b, stats.NewStore())
			r := h.do(t, "GET", "/config_dump")
			if r.code != tc.code || r.body != tc.want {
				t.Errorf("/config_dump = %d %q, want %d %q", r.code, r.body, tc.code, tc.want)
			}
		})
	}
}

func TestLifecycle(t *testing.T) {
	testutil.CheckGoroutines(t)
	srv := New(newFakeBackend(), stats.NewStore(), nil)
	path := filepath.Join(t.TempDir(), "admin-address")
	if err := srv.WriteAddressFile(path); err == nil {
		t.Errorf("WriteAddressFile before Listen succeeded")
	}
	if srv.Addr() != nil {
		t.Errorf("Addr before Listen = %v, want nil", srv.Addr())
	}
	if _, err := srv.Listen("127.0.0.1:-1"); err == nil || !strings.Contains(err.Error(), "admin.address") {
		t.Errorf("Listen on a bad address: err = %v, want one naming admin.address", err)
	}
	addr, err := srv.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	if _, err := srv.Listen("127.0.0.1:0"); err == nil {
		t.Errorf("second Listen succeeded")
	}
	if err := srv.WriteAddressFile(path); err != nil {
		t.Fatalf("WriteAddressFile: %v", err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading address file: %v", err)
	}
	if string(got) != addr.String() || !strings.HasPrefix(string(got), "127.0.0.1:") {
		t.Errorf("address file = %q, want %q", got, addr.String())
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Errorf("address file directory holds %d entries, want only the file", len(entries))
	}
	for i := range 2 {
		if err := srv.Close(); err != nil {
			t.Errorf("Close #%d: %v", i+1, err)
		}
	}
	if _, err := srv.Listen("127.0.0.1:0"); err == nil {
		t.Errorf("Listen after Close succeeded")
	}
}

// TestDebugStreams: /debug/streams serves the store's HTTP/2 stream table
// as JSON, here with one stream waiting in a pool for a slot.
func TestDebugStreams(t *testing.T) {
	store := stats.NewStore()
	st := h2.NewStats(store.Root().Scope("cluster").Tagged("envoy_cluster_name", "backend").Scope("http2"))
	h := start(t, newFakeBackend(), store)
	done := st.WaitForSlot("127.0.0.1:9")
	r := h.do(t, http.MethodGet, "/debug/streams")
	done()
	var rep h2.StreamsReport
	if err := json.Unmarshal([]byte(r.body), &rep); err != nil || r.code != http.StatusOK || r.hdr.Get("Content-Type") != contentJSON {
		t.Fatalf("/debug/streams = %d %q (%s): %v", r.code, r.body, r.hdr.Get("Content-Type"), err)
	}
	if len(rep.Waiting) != 1 || rep.Waiting[0].State != "stream_slot" || rep.Waiting[0].Scope != "cluster.backend.http2" ||
		rep.Waiting[0].Peer != "127.0.0.1:9" || rep.States["stream_slot"] != 1 || rep.CountThresholdMS != 1000 {
		t.Errorf("/debug/streams = %+v; want one stream_slot wait to 127.0.0.1:9 in cluster.backend.http2", rep)
	}
	if r := h.do(t, http.MethodGet, "/debug/streams"); !strings.Contains(r.body, `"waiting": []`) {
		t.Errorf("/debug/streams after the wait ended = %s; want no waiting streams", r.body)
	}
}

// withoutServerStats drops the lines of the server.* gauges from a /stats
// body in text or Prometheus format.
func withoutServerStats(body string) string {
	if !strings.Contains(body, "server") {
		return body
	}
	lines := strings.SplitAfter(body, "\n")
	out := lines[:0]
	for _, l := range lines {
		if strings.HasPrefix(l, "server.") || strings.HasPrefix(l, "envoy_server_") || strings.HasPrefix(l, "# TYPE envoy_server_") {
			continue
		}
		out = append(out, l)
	}
	return strings.Join(out, "")
}
