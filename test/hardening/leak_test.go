package hardening

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"
)

// Bounds of TestLeaksAfterChurn (issue 11 item 7).
const (
	leakStreams     = 10000
	leakConns       = 10000
	leakGoroutines  = 10
	leakFDs         = 5
	leakHeapPercent = 10
	// leakHeapSlack covers the buffer pools' maximum: two GCs (POST
	// /debug/gc) empty every sync.Pool (the codec's 16 KiB body chunks
	// included), so what remains is allocator rounding.
	leakHeapSlack = 1 << 20
	leakWorkers   = 8
	leakTimeout   = 4 * time.Minute
)

// memory is the sidecar's POST /debug/gc answer.
type memory struct {
	LiveHeapBytes uint64 `json:"live_heap_bytes"`
	Goroutines    int    `json:"goroutines"`
}

func (m *mesh) gc(t *testing.T) memory {
	t.Helper()
	code, body, err := m.sc.AdminRequest(http.MethodPost, "/debug/gc")
	if err != nil || code != http.StatusOK {
		t.Fatalf("POST /debug/gc: %d %v %s", code, err, body)
	}
	var mem memory
	if err := json.Unmarshal([]byte(body), &mem); err != nil {
		t.Fatalf("/debug/gc: %v: %s", err, body)
	}
	return mem
}

func (m *mesh) fds(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", m.sc.PID()))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestLeaksAfterChurn: after 10 000 HTTP/2 streams cancelled mid-flight
// and 10 000 connections opened, used once and closed, and two forced GCs,
// the sidecar's goroutines are back within 10 of the baseline, its open
// fds within 5, and its live heap within 10% (+1 MiB).
func TestLeaksAfterChurn(t *testing.T) {
	m := startSidecar(t, sidecarParams{HCM: "common_http_protocol_options: { idle_timeout: 1s }"})
	pr := newProber(m.plain)
	// Warm up: pools, the upstream connection, lazily built state.
	if _, errs := pr.window(300*time.Millisecond, 0); errs > 0 {
		t.Fatalf("warm-up: %d errors", errs)
	}
	pr.close()
	time.Sleep(1500 * time.Millisecond) // the warm-up connection idles out
	base, baseFDs := m.gc(t), m.fds(t)
	t.Logf("baseline: %d goroutines, %d fds, live heap %d KiB", base.Goroutines, baseFDs, base.LiveHeapBytes>>10)

	ctx, cancel := context.WithTimeout(context.Background(), leakTimeout)
	defer cancel()
	// Cancelled streams: each worker's HTTP/2 client connection carries
	// streams to /hang that are cancelled after 1 ms.
	var wg sync.WaitGroup
	var mu sync.Mutex
	var unexpected []string
	for w := range leakWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := newProber(m.plain)
			defer p.close()
			for i := w; i < leakStreams && ctx.Err() == nil; i += leakWorkers {
				rctx, rcancel := context.WithTimeout(ctx, time.Millisecond)
				req, _ := http.NewRequestWithContext(rctx, http.MethodGet, p.url+"hang", nil)
				resp, err := p.client.Do(req)
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					_ = resp.Body.Close()
					mu.Lock()
					unexpected = append(unexpected, fmt.Sprintf("stream %d answered %d", i, resp.StatusCode))
					mu.Unlock()
				}
				rcancel()
			}
		}()
	}
	wg.Wait()
	// Connection churn: a new HTTP/1.1 connection per request.
	for w := range leakWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
			for i := w; i < leakConns && ctx.Err() == nil; i += leakWorkers {
				resp, err := c.Get(p2url(m.plain))
				if err != nil {
					mu.Lock()
					unexpected = append(unexpected, fmt.Sprintf("connection %d: %v", i, err))
					mu.Unlock()
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
			}
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		t.Fatalf("churn did not finish within %v", leakTimeout)
	}
	if len(unexpected) > 0 {
		t.Errorf("%d unexpected outcomes, first: %s", len(unexpected), unexpected[0])
	}
	// Streams cancelled downstream finish upstream asynchronously, and
	// closed connections take a moment to be reaped: poll.
	var after memory
	var afterFDs int
	deadline := time.Now().Add(20 * time.Second)
	for {
		after, afterFDs = m.gc(t), m.fds(t)
		okG := after.Goroutines <= base.Goroutines+leakGoroutines
		okF := afterFDs <= baseFDs+leakFDs
		okH := after.LiveHeapBytes <= base.LiveHeapBytes*(100+leakHeapPercent)/100+leakHeapSlack
		if (okG && okF && okH) || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("FIGURES leaks: %d cancelled streams, %d connection churns: goroutines %d -> %d, fds %d -> %d, live heap %d KiB -> %d KiB",
		leakStreams, leakConns, base.Goroutines, after.Goroutines, baseFDs, afterFDs, base.LiveHeapBytes>>10, after.LiveHeapBytes>>10)
	if after.Goroutines > base.Goroutines+leakGoroutines {
		t.Errorf("goroutines %d, baseline %d (+%d allowed)", after.Goroutines, base.Goroutines, leakGoroutines)
	}
	if afterFDs > baseFDs+leakFDs {
		t.Errorf("fds %d, baseline %d (+%d allowed)", afterFDs, baseFDs, leakFDs)
	}
	if limit := base.LiveHeapBytes*(100+leakHeapPercent)/100 + leakHeapSlack; after.LiveHeapBytes > limit {
		t.Errorf("live heap %d KiB, baseline %d KiB (limit %d KiB)", after.LiveHeapBytes>>10, base.LiveHeapBytes>>10, limit>>10)
	}
}

func p2url(addr string) string { return "http://" + addr + "/" }
