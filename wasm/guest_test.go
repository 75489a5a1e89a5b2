package wasm

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetratelabs/wazero"
)

// The Go test guest (testdata/guest) is built once per test binary into a
// temporary directory; the build cache makes later runs take about a second.
var (
	guestOnce sync.Once
	guestBin  []byte
	guestErr  error
	guestDir  string
	// testCache shares compiled code between the tests' Engines, so each
	// test pays instantiation, not compilation of the 2 MB guest.
	testCache = wazero.NewCompilationCache()
)

func TestMain(m *testing.M) {
	code := m.Run()
	if guestDir != "" {
		_ = os.RemoveAll(guestDir)
	}
	os.Exit(code)
}

// goGuest returns the test guest module, building it on first use.
func goGuest(t testing.TB) []byte {
	t.Helper()
	guestOnce.Do(func() {
		guestDir, guestErr = os.MkdirTemp("", "meshd-wasm-guest-")
		if guestErr != nil {
			return
		}
		out := filepath.Join(guestDir, "guest.wasm")
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "go", "build", "-buildmode=c-shared", "-o", out, "./testdata/guest")
		cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm")
		if b, err := cmd.CombinedOutput(); err != nil {
			guestErr = err
			t.Logf("go build: %s", b)
			return
		}
		guestBin, guestErr = os.ReadFile(out)
	})
	if guestErr != nil {
		t.Fatalf("build test guest: %v", guestErr)
	}
	return guestBin
}

// fakeHost is a HostServices with a cluster "auth" answering every call
// asynchronously, and counter metrics.
type fakeHost struct {
	mu      sync.Mutex
	metrics map[string]*fakeMetric
	calls   []string
	props   map[string]string
}

func newFakeHost() *fakeHost {
	return &fakeHost{metrics: map[string]*fakeMetric{}, props: map[string]string{"plugin_name": "test-plugin"}}
}

func (h *fakeHost) HTTPCall(cluster string, headers [][2]string, body []byte, _ [][2]string, timeout time.Duration,
	done func([][2]string, []byte, [][2]string, error)) error {
	if cluster != "auth" {
		return ErrUnknownCluster
	}
	h.mu.Lock()
	path, _ := getPair(headers, ":path")
	h.calls = append(h.calls, path+" "+string(body)+" "+timeout.String())
	h.mu.Unlock()
	go done([][2]string{{":status", "200"}, {"x-a", "1"}}, []byte("pong"), nil, nil)
	return nil
}

func (h *fakeHost) Metric(name string, kind MetricKind) MetricHandle {
	h.mu.Lock()
	defer h.mu.Unlock()
	m := &fakeMetric{kind: kind}
	h.metrics[name] = m
	return m
}

func (h *fakeHost) Property(path []string) ([]byte, bool) {
	v, ok := h.props[strings.Join(path, ".")]
	return []byte(v), ok
}

type fakeMetric struct {
	mu   sync.Mutex
	kind MetricKind
	v    uint64
}

func (m *fakeMetric) Add(d int64)     { m.mu.Lock(); m.v += uint64(d); m.mu.Unlock() }
func (m *fakeMetric) Record(v uint64) { m.mu.Lock(); m.v = v; m.mu.Unlock() }
func (m *fakeMetric) Value() uint64   { m.mu.Lock(); defer m.mu.Unlock(); return m.v }

// fakeHeaders is a HeaderMap over a pair slice.
type fakeHeaders struct{ pairs [][2]string }

func (h *fakeHeaders) Get(name string) (string, bool) { return getPair(h.pairs, name) }
func (h *fakeHeaders) Pairs() [][2]string             { return slices.Clone(h.pairs) }
func (h *fakeHeaders) SetPairs(p [][2]string)         { h.pairs = slices.Clone(p) }
func (h *fakeHeaders) Add(k, v string)                { h.pairs = append(h.pairs, [2]string{k, v}) }
func (h *fakeHeaders) Set(k, v string)                { h.Del(k); h.Add(k, v) }
func (h *fakeHeaders) Del(k string) {
	h.pairs = slices.DeleteFunc(h.pairs, func(p [2]string) bool { return p[0] == k })
}

// fakeStream is a StreamHost recording what the guest did.
type fakeStream struct {
	maps    map[MapType]*fakeHeaders
	body    []byte
	hasBody bool
	props   map[string]string
	local   *localResponse
	resumed chan StreamType
	resets  []StreamType
}

type localResponse struct {
	status  int
	details string
	body    string
	headers [][2]string
	grpc    int32
}

func newStream(reqHeaders ...[2]string) *fakeStream {
	return &fakeStream{
		maps:    map[MapType]*fakeHeaders{MapRequestHeaders: {pairs: reqHeaders}, MapResponseHeaders: {}},
		props:   map[string]string{},
		resumed: make(chan StreamType, 4),
	}
}

func (s *fakeStream) Headers(m MapType) HeaderMap {
	if h, ok := s.maps[m]; ok {
		return h
	}
	return nil
}
func (s *fakeStream) Body(BufferType) ([]byte, bool) { return s.body, s.hasBody }
func (s *fakeStream) SetBody(_ BufferType, b []byte) bool {
	s.body = b
	return s.hasBody
}
func (s *fakeStream) Property(path []string) ([]byte, bool) {
	v, ok := s.props[strings.Join(path, ".")]
	return []byte(v), ok
}
func (s *fakeStream) SendLocalResponse(status int, details string, body []byte, headers [][2]string, grpc int32) error {
	s.local = &localResponse{status, details, string(body), headers, grpc}
	return nil
}
func (s *fakeStream) Resume(d StreamType) { s.resumed <- d }
func (s *fakeStream) Reset(d StreamType)  { s.resets = append(s.resets, d) }

func (s *fakeStream) header(m MapType, k string) string {
	v, _ := s.maps[m].Get(k)
	return v
}

// newTestPlugin starts the Go guest with plugin configuration cfg.
func newTestPlugin(t testing.TB, cfg string, mutate ...func(*Config)) (*Plugin, *fakeHost) {
	t.Helper()
	host := newFakeHost()
	// Generous start bounds: a Go guest's runtime init under -race on a
	// busy 2-core machine takes seconds per instance.
	c := Config{Module: goGuest(t), RootID: "root", VMID: "vm", PluginConfig: []byte(cfg), PoolSize: 2, Host: host,
		StartTimeout: 60 * time.Second}
	for _, f := range mutate {
		f(&c)
	}
	if c.Engine == nil {
		eng, err := NewEngine(context.Background(), EngineConfig{Cache: testCache})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = eng.Close(context.Background()) })
		c.Engine = eng
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	p, err := NewPlugin(ctx, c)
	if err != nil {
		t.Fatalf("NewPlugin(%q): %v", cfg, err)
	}
	t.Cleanup(p.Close)
	return p, host
}

// waitFor polls cond every 5ms for up to d.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
