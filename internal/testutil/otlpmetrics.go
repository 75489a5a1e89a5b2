package testutil

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	colmetricspb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"
	"google.golang.org/grpc"
)

// MetricsReceiver is an OTLP/gRPC metrics receiver (the collector's
// MetricsService) on 127.0.0.1 that keeps every export it receives.
type MetricsReceiver struct {
	colmetricspb.UnimplementedMetricsServiceServer
	// Addr is the receiver's host:port.
	Addr string

	mu      sync.Mutex
	exports []*colmetricspb.ExportMetricsServiceRequest
	changed chan struct{}
}

// StartMetricsReceiver starts a receiver; t.Cleanup stops it.
func StartMetricsReceiver(t testing.TB) *MetricsReceiver {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &MetricsReceiver{Addr: ln.Addr().String(), changed: make(chan struct{})}
	s := grpc.NewServer()
	colmetricspb.RegisterMetricsServiceServer(s, r)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Serve(ln)
	}()
	t.Cleanup(func() {
		s.Stop()
		<-done
	})
	return r
}

// Export implements the MetricsService.
func (r *MetricsReceiver) Export(_ context.Context, req *colmetricspb.ExportMetricsServiceRequest) (*colmetricspb.ExportMetricsServiceResponse, error) {
	r.mu.Lock()
	r.exports = append(r.exports, req)
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
	return &colmetricspb.ExportMetricsServiceResponse{}, nil
}

// Exports returns the number of exports received so far.
func (r *MetricsReceiver) Exports() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.exports)
}

// WaitMetric waits up to timeout for an export containing a metric for
// which match returns true, and returns that metric (from the latest
// export that has one). It fails the test on timeout.
func (r *MetricsReceiver) WaitMetric(t testing.TB, timeout time.Duration, what string, match func(*metricspb.Metric) bool) *metricspb.Metric {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		for k := len(r.exports) - 1; k >= 0; k-- {
			for _, rm := range r.exports[k].GetResourceMetrics() {
				for _, sm := range rm.GetScopeMetrics() {
					for _, m := range sm.GetMetrics() {
						if match(m) {
							r.mu.Unlock()
							return m
						}
					}
				}
			}
		}
		ch := r.changed
		n := len(r.exports)
		r.mu.Unlock()
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("no OTLP metric %s after %v (%d exports received)", what, timeout, n)
			return nil
		}
	}
}
