package xds_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"meshd.dev/meshd/internal/meshtest"
	"meshd.dev/meshd/internal/testutil"
)

// Bounds of TestSidecarEnforcesGRPCTimeout.
const (
	// callGRPCTimeout is the grpc-timeout the call carries ("300m" on the
	// wire).
	callGRPCTimeout = 300 * time.Millisecond
	// slowAppBound is how long the slow application holds a call before it
	// answers by itself; far beyond callGRPCTimeout and beyond the
	// client's own patience (waitTimeout), so an answer the client gets
	// can only have come from a sidecar.
	slowAppBound = 3 * waitTimeout
)

// slowGRPCApp is a gRPC-shaped h2c server that, unlike grpc-go, ignores
// grpc-timeout: /meshd.test.Slow/Ping answers OK at once, any other method
// is held until its request is cancelled (the stream reset) or
// slowAppBound passes. It reports how each held call ended on ended.
type slowGRPCApp struct {
	addr  string
	ended chan error // per held call: the context's error, or nil when the bound passed
}

func startSlowGRPCApp(t *testing.T) *slowGRPCApp {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("slow app: listen: %v", err)
	}
	a := &slowGRPCApp{addr: lis.Addr().String(), ended: make(chan error, 16)}
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Protocols:         &protocols,
		ReadHeaderTimeout: waitTimeout,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/grpc")
			w.Header().Set("Trailer", "Grpc-Status, Grpc-Message")
			if r.URL.Path == "/meshd.test.Slow/Ping" {
				w.WriteHeader(http.StatusOK)
				_, _ = w.Write([]byte{0, 0, 0, 0, 0})
				w.Header().Set("Grpc-Status", "0")
				return
			}
			timer := time.NewTimer(slowAppBound)
			defer timer.Stop()
			select {
			case <-r.Context().Done():
				a.ended <- r.Context().Err()
			case <-timer.C:
				a.ended <- nil
				w.WriteHeader(http.StatusOK)
				w.Header().Set("Grpc-Status", "0")
				w.Header().Set("Grpc-Message", "the slow app answered after "+slowAppBound.String())
			}
		}),
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(lis) // http.ErrServerClosed after Close
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		<-served
	})
	return a
}

// grpcCall is one unary gRPC call (an empty message) over h2c with prior
// knowledge, made with net/http so that the grpc-timeout header travels
// without the client enforcing it: only a proxy can end the call early.
// It returns the grpc-status.
func grpcCall(ctx context.Context, tr *http.Transport, addr, method, grpcTimeout string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+method, bytes.NewReader([]byte{0, 0, 0, 0, 0}))
	if err != nil {
		return "", fmt.Errorf("%s: %w", method, err)
	}
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Te", "trailers")
	if grpcTimeout != "" {
		req.Header.Set("Grpc-Timeout", grpcTimeout)
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return "", fmt.Errorf("%s: %w", method, err)
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return "", fmt.Errorf("%s: reading the response: %w", method, err)
	}
	// A trailers-only response (a proxy's local reply) carries the status
	// in its headers.
	status := resp.Trailer.Get("Grpc-Status")
	if status == "" {
		status = resp.Header.Get("Grpc-Status")
	}
	if resp.StatusCode != http.StatusOK || status == "" {
		return "", fmt.Errorf("%s: HTTP %d, grpc-status %q, grpc-message %q", method, resp.StatusCode, status, resp.Header.Get("Grpc-Message")+resp.Trailer.Get("Grpc-Message"))
	}
	return status, nil
}

// TestSidecarEnforcesGRPCTimeout: under the control plane (which sets
// max_stream_duration.grpc_timeout_header_max on the sidecars' routes), a
// gRPC call with grpc-timeout 300m through two sidecars to an application
// that ignores deadlines ends with DEADLINE_EXCEEDED from a sidecar: a
// sidecar counted upstream_rq_timeout (no more than once each), and the
// application saw its call cancelled instead of answering after
// slowAppBound.
func TestSidecarEnforcesGRPCTimeout(t *testing.T) {
	testutil.CheckGoroutines(t)
	app := startSlowGRPCApp(t)
	ports := meshtest.FreePorts(t, 4)
	inbound, outbound := ports[0], ports[1]
	meshPath := filepath.Join(t.TempDir(), "mesh.yaml")
	writeFile(t, meshPath, twoSidecarMesh(app.addr, inbound, outbound, ports[2], ports[3]))
	cp := startControlPlane(t, meshPath)
	server := meshtest.StartWorkload(t, cp, meshPath, "greeter-server.demo")
	client := meshtest.StartWorkload(t, cp, meshPath, "greeter-client.demo")

	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &protocols}
	t.Cleanup(tr.CloseIdleConnections)
	addr := fmt.Sprintf("127.0.0.1:%d", outbound)

	// The path is up (listeners, routes, endpoints, certificates) once a
	// quick call gets through; the timed call then finds it ready.
	deadline := time.Now().Add(waitTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		status, err := grpcCall(ctx, tr, addr, "/meshd.test.Slow/Ping", "")
		cancel()
		if err == nil && status == "0" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no OK Ping through the sidecars within %v: status %q, %v", waitTimeout, status, err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	start := time.Now()
	status, err := grpcCall(ctx, tr, addr, "/meshd.test.Slow/Hold", fmt.Sprintf("%dm", callGRPCTimeout.Milliseconds()))
	elapsed := time.Since(start)
	if err != nil {
		t.Fatalf("the call with grpc-timeout %v got no gRPC answer: %v (no sidecar enforced the deadline)", callGRPCTimeout, err)
	}
	if status != "4" {
		t.Errorf("grpc-status = %s, want 4 (DEADLINE_EXCEEDED)", status)
	}
	t.Logf("DEADLINE_EXCEEDED after %v for grpc-timeout %v", elapsed.Round(time.Millisecond), callGRPCTimeout)

	select {
	case err := <-app.ended:
		if err == nil {
			t.Errorf("the application answered after %v: no sidecar reset its stream", slowAppBound)
		}
	case <-time.After(waitTimeout):
		t.Errorf("the application still holds the call %v after the answer: no sidecar reset its stream", waitTimeout)
	}

	// The client's sidecar starts its timer first, but the server's
	// (started a hop later, on the same grpc-timeout) may fire too
	// before the client's reset reaches it: each counts the call at most
	// once, and at least one counts it.
	var timeouts []string
	var total int64
	for _, sc := range []struct {
		name string
		s    *testutil.Sidecar
	}{{"client", client}, {"server", server}} {
		var n int64
		for k, v := range testutil.FilterStats(sc.s.Stats(t), ".upstream_rq_timeout") {
			if strings.HasPrefix(k, "cluster.") && v > 0 {
				timeouts = append(timeouts, fmt.Sprintf("%s sidecar %s=%d", sc.name, k, v))
				n += v
			}
		}
		if n > 1 {
			t.Errorf("%s sidecar: upstream_rq_timeout = %d for one call (%q)", sc.name, n, timeouts)
		}
		total += n
	}
	if total == 0 {
		t.Errorf("upstream_rq_timeout = 0 in both sidecars: the deadline was not enforced by a sidecar's route")
	}
	t.Logf("enforced by: %s", strings.Join(timeouts, ", "))
}
