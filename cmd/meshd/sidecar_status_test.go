package main

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/kube/probe"
)

// TestStatusServer starts the sidecar's status port as `meshd sidecar
// --status-address` does, with the probes `meshd inject` puts in the
// environment, and asks it what kubelet asks: an application probe against
// a live and a closed port, and the sidecar's readiness.
func TestStatusServer(t *testing.T) {
	testutil.CheckGoroutines(t)
	app, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadPort := dead.Addr().(*net.TCPAddr).Port
	dead.Close()
	probes := fmt.Sprintf(`{"/app-health/app/livez":{"tcpSocket":{"port":%d}},"/app-health/app/readyz":{"tcpSocket":{"port":%d},"timeoutSeconds":1}}`,
		app.Addr().(*net.TCPAddr).Port, deadPort)

	var ready atomic.Bool
	bound, stop, err := startStatusServer("127.0.0.1:0", probes, ready.Load, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	addr := bound.String()
	client := &http.Client{}
	defer client.CloseIdleConnections()
	get := func(path string) int {
		t.Helper()
		res, err := client.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		_, _ = io.Copy(io.Discard, res.Body)
		return res.StatusCode
	}
	for _, tt := range []struct {
		path string
		want int
	}{
		{"/app-health/app/livez", http.StatusOK},
		{"/app-health/app/readyz", http.StatusServiceUnavailable},
		{"/app-health/app/startupz", http.StatusNotFound},
		{probe.ReadyPath, http.StatusServiceUnavailable},
	} {
		if got := get(tt.path); got != tt.want {
			t.Errorf("GET %s: %d, want %d", tt.path, got, tt.want)
		}
	}
	ready.Store(true)
	if got := get(probe.ReadyPath); got != http.StatusOK {
		t.Errorf("GET %s once ready: %d, want 200", probe.ReadyPath, got)
	}

	// Bad probes are refused at start, naming the variable and the path.
	if _, _, err := startStatusServer("127.0.0.1:0", `{"/app-health/a/livez":{"tcpSocket":{"port":"http"}}}`, ready.Load, slog.New(slog.DiscardHandler)); err == nil ||
		!strings.Contains(err.Error(), probe.EnvAppProbes) || !strings.Contains(err.Error(), "/app-health/a/livez") {
		t.Errorf("bad probes: err = %v", err)
	}
}
