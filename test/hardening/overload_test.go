package hardening

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// Shape of TestOverloadFixedHeap (issue 11 item 8).
const (
	overloadMaxHeap    = 64 << 20 // max_heap_size_bytes
	overloadStreams    = 24       // hung uploads, each buffering up to overloadStreamBody
	overloadStreamBody = 4 << 20  // = the stream window and per_connection_buffer_limit_bytes
	overloadWait       = 30 * time.Second
)

const (
	actRequests    = "overload.envoy.overload_actions.stop_accepting_requests."
	actConnections = "overload.envoy.overload_actions.stop_accepting_connections."
	heapPressure   = "overload.envoy.resource_monitors.fixed_heap.pressure"
)

// overloadBootstrap: shrink_heap collects garbage from 50 % (so pressure
// falls once the load is gone), requests are shed with a probability
// rising from 55 % to all at 70 %, and connections wait in the backlog
// from 85 %.
const overloadBootstrap = `overload_manager:
  refresh_interval: 0.1s
  resource_monitors:
  - name: envoy.resource_monitors.fixed_heap
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig
      max_heap_size_bytes: 67108864
  actions:
  - name: envoy.overload_actions.shrink_heap
    triggers: [{ name: envoy.resource_monitors.fixed_heap, threshold: { value: 0.5 } }]
    typed_config:
      "@type": type.googleapis.com/envoy.config.overload.v3.ShrinkHeapConfig
      timer_interval: 1s
  - name: envoy.overload_actions.stop_accepting_requests
    triggers: [{ name: envoy.resource_monitors.fixed_heap, scaled: { scaling_threshold: 0.55, saturation_threshold: 0.7 } }]
  - name: envoy.overload_actions.stop_accepting_connections
    triggers: [{ name: envoy.resource_monitors.fixed_heap, threshold: { value: 0.85 } }]`

// gatedBody yields n bytes once release is closed, then EOF.
type gatedBody struct {
	release <-chan struct{}
	ctx     context.Context
	r       *bytes.Reader
}

func (b *gatedBody) Read(p []byte) (int, error) {
	select {
	case <-b.release:
	case <-b.ctx.Done():
		return 0, b.ctx.Err()
	}
	return b.r.Read(p)
}

func (b *gatedBody) Close() error { return nil }

// waitStat polls the sidecar's stats until ok holds for stat name, for at
// most overloadWait, and returns the last value.
func (m *mesh) waitStat(t *testing.T, name string, ok func(int64) bool) int64 {
	t.Helper()
	deadline := time.Now().Add(overloadWait)
	for {
		v := m.stat(t, name)
		if ok(v) {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s = %d after %v", name, v, overloadWait)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestOverloadFixedHeap: a sidecar with a 64 MiB fixed_heap monitor takes
// 24 uploads of 4 MiB to an upstream that never reads them. As the
// buffered bodies push heap pressure over the thresholds, a new request on
// an open connection gets 503 "envoy overloaded" and a new connection is
// not served; once the uploads are cancelled, pressure falls, the waiting
// connection is served and requests succeed again.
func TestOverloadFixedHeap(t *testing.T) {
	m := startSidecar(t, sidecarParams{
		Bootstrap:       overloadBootstrap,
		ConnBufferLimit: overloadStreamBody,
		HCM: `http2_protocol_options:
  initial_stream_window_size: 4194304
  initial_connection_window_size: 134217728`,
	})
	pr := newProber(m.h2c)
	defer pr.close()
	if _, errs := pr.window(200*time.Millisecond, 0); errs > 0 {
		t.Fatalf("warm-up: %d errors", errs)
	}
	if p := m.stat(t, heapPressure); p >= 50 {
		t.Fatalf("idle heap pressure %d%% of %d MiB: the sidecar's baseline leaves no room for the test", p, overloadMaxHeap>>20)
	}
	basePressure := m.stat(t, heapPressure)

	// Open the uploads (headers only) while the sidecar is idle, then
	// release their bodies together.
	load := newProber(m.h2c)
	load.client.Timeout = 0
	defer load.close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	release := make(chan struct{})
	var wg sync.WaitGroup
	body := bytes.Repeat([]byte("o"), overloadStreamBody)
	for range overloadStreams {
		wg.Go(func() {
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, load.url+"hang", &gatedBody{release: release, ctx: ctx, r: bytes.NewReader(body)})
			req.ContentLength = overloadStreamBody
			if resp, err := load.client.Do(req); err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
			}
		})
	}
	defer wg.Wait()
	defer cancel()
	m.waitStat(t, "http.h2c.downstream_rq_active", func(v int64) bool { return v >= overloadStreams })
	start := time.Now()
	close(release)

	m.waitStat(t, actRequests+"active", func(v int64) bool { return v == 1 })
	shedAfter := time.Since(start)
	m.waitStat(t, actConnections+"active", func(v int64) bool { return v == 1 })
	refuseAfter := time.Since(start)
	peak := m.stat(t, heapPressure)

	// A new request on an open connection is shed.
	resp, err := pr.client.Get(pr.url)
	if err != nil {
		t.Fatalf("request while overloaded: %v", err)
	}
	got, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || string(got) != "envoy overloaded" {
		t.Fatalf("request while overloaded: %d %q, want 503 \"envoy overloaded\"", resp.StatusCode, got)
	}
	if n := m.stat(t, "http.h2c.downstream_rq_overload_close"); n < 1 {
		t.Errorf("http.h2c.downstream_rq_overload_close = %d, want >= 1", n)
	}

	// A new connection is not served while connections are stopped.
	nc, err := net.DialTimeout("tcp", m.plain, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := io.WriteString(nc, "GET / HTTP/1.1\r\nHost: overload\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(nc)
	_ = nc.SetReadDeadline(time.Now().Add(time.Second))
	if line, err := br.ReadString('\n'); !isTimeoutErr(err) {
		t.Fatalf("new connection while overloaded: read %q, %v; want no answer", line, err)
	}

	// Stop the load: pressure falls (shrink_heap collects the released
	// buffers), the waiting connection is served, requests succeed.
	stopped := time.Now()
	cancel()
	wg.Wait()
	m.waitStat(t, actConnections+"active", func(v int64) bool { return v == 0 })
	m.waitStat(t, actRequests+"active", func(v int64) bool { return v == 0 })
	m.waitStat(t, actRequests+"scale_percent", func(v int64) bool { return v == 0 })
	resumeAfter := time.Since(stopped)
	_ = nc.SetReadDeadline(time.Now().Add(overloadWait))
	line, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 200") {
		t.Fatalf("connection held during overload: %q, %v; want 200 once resumed", line, err)
	}
	if _, errs := pr.window(200*time.Millisecond, 0); errs > 0 {
		t.Fatalf("after the load: %d failed requests", errs)
	}
	t.Logf("FIGURES overload: %d x %d MiB uploads against max_heap_size_bytes %d MiB: pressure %d%% idle, %d%% peak; requests shed %v and connections stopped %v after the bodies were released; service resumed %v after the load stopped (pressure %d%%, %d shrink_heap runs, %d requests shed)",
		overloadStreams, overloadStreamBody>>20, overloadMaxHeap>>20, basePressure, peak,
		shedAfter.Round(time.Millisecond), refuseAfter.Round(time.Millisecond), resumeAfter.Round(time.Millisecond),
		m.stat(t, heapPressure), m.stat(t, "overload.envoy.overload_actions.shrink_heap.shrink_count"), m.stat(t, "http.h2c.downstream_rq_overload_close"))
}

func isTimeoutErr(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
