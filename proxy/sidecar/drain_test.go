package sidecar

import (
	"net"
	"net/http"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
)

// TestDrainListeners: POST /drain_listeners (Sidecar.DrainListeners), with
// or without ?graceful, stops every listener accepting, so a new
// connection is refused, while the sidecar keeps running until Shutdown.
func TestDrainListeners(t *testing.T) {
	for _, tt := range []struct {
		name     string
		graceful bool
	}{
		{"immediate", false},
		{"graceful", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			s := start(t, compile(t, bootstrap(0, "x")))
			addr := listenerAddr(t, s, "ingress")
			tr := &http.Transport{}
			defer tr.CloseIdleConnections()
			if got := get(t, &http.Client{Transport: tr, Timeout: 5 * time.Second}, addr); got != "x" {
				t.Fatalf("before the drain: body %q, want x", got)
			}
			s.DrainListeners(tt.graceful, false)
			deadline := time.Now().Add(5 * time.Second)
			for {
				c, err := net.DialTimeout("tcp", addr, time.Second)
				if err != nil {
					break
				}
				c.Close()
				if time.Now().After(deadline) {
					t.Fatalf("listener %s still accepts connections 5s after the drain", addr)
				}
				time.Sleep(10 * time.Millisecond)
			}
			select {
			case <-s.Done():
				t.Fatal("draining the listeners quit the sidecar")
			default:
			}
		})
	}
}
