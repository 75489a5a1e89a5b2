package scenarios

// S4 (TIME_WAIT storm): an HTTP/1.1 upstream behind the sidecar under a
// steady load of s4Workers keep-alive callers for s4Run. A pool that opens
// a connection per request leaves one socket in TIME_WAIT per request
// (thousands here); meshd's HTTP/1.1 pool keeps idle connections (up to
// max_connections per endpoint) and reuses them.
//
// Numeric assertions:
//   - sockets in TIME_WAIT to or from the backend's port (/proc/net/tcp and
//     tcp6), sampled every 100 ms during the run and once after it, never
//     exceed s4MaxTimeWait (10, the number of workers: even if every
//     connection of the pool were closed once, that is all);
//   - the backend accepts at most 2 x s4Workers connections in total (the
//     pool's peak concurrency, with room for one replacement each);
//   - zero failed requests.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const (
	s4Workers     = 10
	s4Run         = 3 * time.Second
	s4MaxTimeWait = s4Workers
	// s4MaxRequests bounds each worker's loop besides s4Run.
	s4MaxRequests = 20000
)

// timeWaitCount counts TCP sockets in TIME_WAIT (state 06) whose local or
// remote port is port, from /proc/net/tcp and /proc/net/tcp6.
func timeWaitCount(t *testing.T, port int) int {
	t.Helper()
	hexPort := fmt.Sprintf(":%04X", port)
	n := 0
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		file, err := os.Open(f)
		if err != nil {
			if os.IsNotExist(err) {
				continue
			}
			t.Fatalf("reading %s: %v", f, err)
		}
		sc := bufio.NewScanner(file)
		sc.Scan() // header
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 4 || fields[3] != "06" {
				continue
			}
			if strings.HasSuffix(fields[1], hexPort) || strings.HasSuffix(fields[2], hexPort) {
				n++
			}
		}
		file.Close()
	}
	return n
}

func TestS4TimeWait(t *testing.T) {
	if _, err := os.Stat("/proc/net/tcp"); err != nil {
		t.Skipf("no /proc/net/tcp: %v", err)
	}
	lis := listenCounting(t)
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			_, _ = io.WriteString(w, "ok")
		}),
		ReadHeaderTimeout: rpcTimeout,
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), backendStopTimeout)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-served
	})
	_, portText, err := net.SplitHostPort(lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		t.Fatal(err)
	}
	before := timeWaitCount(t, port)

	sc := startScenarioSidecar(t, scenarioBootstrap{Endpoints: []string{lis.Addr().String()}, UpstreamHTTP1: true})
	client := &http.Client{
		Transport: &http.Transport{MaxIdleConnsPerHost: s4Workers, DisableCompression: true},
		Timeout:   rpcTimeout,
	}
	t.Cleanup(client.CloseIdleConnections)

	var requests, failures atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	start := time.Now()
	for range s4Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < s4MaxRequests && time.Since(start) < s4Run; i++ {
				resp, err := client.Get("http://" + sc.Addr + "/")
				requests.Add(1)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode != 200 {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				if err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		}()
	}
	peak := 0
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				peak = max(peak, timeWaitCount(t, port)-before)
			}
		}
	}()
	wg.Wait()
	close(stop)
	<-sampled
	peak = max(peak, timeWaitCount(t, port)-before)

	t.Logf("%d requests, %d failed; backend accepted %d connections; peak TIME_WAIT on the backend port %d",
		requests.Load(), failures.Load(), lis.Accepted(), peak)
	if n := failures.Load(); n != 0 {
		t.Errorf("%d of %d requests failed; first: %v", n, requests.Load(), firstErr.Load())
	}
	if peak > s4MaxTimeWait {
		t.Errorf("%d sockets in TIME_WAIT on the backend port, want at most %d", peak, s4MaxTimeWait)
	}
	if got := lis.Accepted(); got > 2*s4Workers {
		t.Errorf("backend accepted %d connections, want at most %d", got, 2*s4Workers)
	}
}
