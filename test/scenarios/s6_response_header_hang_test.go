package scenarios

// S6 (response header hang): the upstream takes the request and never
// answers. meshd ends the call with the route timeout (504; gRPC
// DEADLINE_EXCEEDED) or the caller's grpc-timeout, resets the upstream
// stream (the backend's handler sees its context cancelled), and leaks no
// goroutine.
//
// Numeric assertions: every hung call ends with DEADLINE_EXCEEDED; the
// backend sees exactly as many cancellations as hung calls; the sidecar's
// upstream_rq_timeout grows by that count; its goroutine count returns to
// within s6GoroutineSlack of the count measured before the hung calls. The
// timing variant checks each call ends within s6RouteTimeout plus
// s6Tolerance over the fastest call measured in the same test.

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

const (
	// s6RouteTimeout is the route timeout the sidecar enforces.
	s6RouteTimeout = 500 * time.Millisecond
	// s6Calls is how many hung calls run at once.
	s6Calls = 20
	// s6GoroutineSlack is how far above its earlier count the sidecar's
	// goroutine count may settle (the admin request itself, timers).
	s6GoroutineSlack = 3
	// s6Tolerance is how much later than the timeout a call may end.
	s6Tolerance = 250 * time.Millisecond
	// s6HeaderOffset is grpc_timeout_header_offset: the sidecar times a call
	// out this long before the caller's own deadline, so the status the
	// caller gets is the sidecar's.
	s6HeaderOffset = 300 * time.Millisecond
)

// s6Case is one way a hung call is ended.
type s6Case struct {
	name string
	// callTimeout is the caller's deadline (sent as grpc-timeout); 0 for
	// none.
	callTimeout time.Duration
	// grpcTimeout makes the route honour grpc-timeout (less
	// s6HeaderOffset) instead of its timeout.
	grpcTimeout bool
	// want is when the sidecar ends the call.
	want time.Duration
}

var s6Cases = []s6Case{
	{name: "route timeout", want: s6RouteTimeout},
	{name: "grpc-timeout", callTimeout: 1500 * time.Millisecond, grpcTimeout: true, want: 1500*time.Millisecond - s6HeaderOffset},
}

// s6Setup starts a backend and a sidecar for tc.
func s6Setup(t *testing.T, tc s6Case) (*grpcBackend, *scenarioSidecar) {
	t.Helper()
	be := startGRPCBackend(t, backendConfig{})
	b := scenarioBootstrap{Endpoints: []string{be.Addr}, RouteTimeout: s6RouteTimeout}
	if tc.grpcTimeout {
		b.RouteTimeout = 10 * time.Second
		b.RouteActionExtra = map[string]any{
			"max_stream_duration": map[string]any{
				"grpc_timeout_header_max":    dur(10 * time.Second),
				"grpc_timeout_header_offset": dur(s6HeaderOffset),
			},
		}
	}
	return be, startScenarioSidecar(t, b)
}

// warmUp makes n calls the backend answers at once and returns the fastest
// call's duration.
func warmUp(t *testing.T, addr string, n int) time.Duration {
	t.Helper()
	client := dialGRPC(t, addr)
	fastest := time.Duration(1<<63 - 1)
	for range n {
		ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
		start := time.Now()
		_, err := client.EmptyCall(ctx, &testpb.Empty{})
		cancel()
		if err != nil {
			t.Fatalf("warm-up call: %v", err)
		}
		fastest = min(fastest, time.Since(start))
	}
	return fastest
}

// hangCalls runs n concurrent calls that the backend never answers, each
// with callTimeout as the caller's deadline (0: none, EmptyCall; else
// UnaryCall with grpc-timeout), and returns each call's error and duration.
func hangCalls(t *testing.T, addr string, n int, callTimeout time.Duration) ([]error, []time.Duration) {
	t.Helper()
	client := dialGRPC(t, addr)
	errs := make([]error, n)
	took := make([]time.Duration, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// rpcTimeout bounds a call the sidecar fails to end.
			bound := rpcTimeout
			if callTimeout > 0 {
				bound = callTimeout
			}
			ctx, cancel := context.WithTimeout(context.Background(), bound)
			defer cancel()
			ctx = metadata.AppendToOutgoingContext(ctx, mdHang, "1")
			start := time.Now()
			if callTimeout > 0 {
				_, errs[i] = client.UnaryCall(ctx, &testpb.SimpleRequest{})
			} else {
				_, errs[i] = client.EmptyCall(ctx, &testpb.Empty{})
			}
			took[i] = time.Since(start)
		}()
	}
	wg.Wait()
	return errs, took
}

func TestS6ResponseHeaderHang(t *testing.T) {
	for _, tc := range s6Cases {
		t.Run(tc.name, func(t *testing.T) {
			be, sc := s6Setup(t, tc)
			// Connections both sides exist before the baseline is taken.
			warmUp(t, sc.Addr, 3)
			baseline := sc.goroutines(t)
			timeoutsBefore := sc.clusterStat(t, "upstream_rq_timeout")
			errs, _ := hangCalls(t, sc.Addr, s6Calls, tc.callTimeout)
			for i, err := range errs {
				st := status.Convert(err)
				if st.Code() != codes.DeadlineExceeded || st.Message() != "upstream request timeout" {
					t.Errorf("call %d: %v; want DEADLINE_EXCEEDED \"upstream request timeout\" from the sidecar", i, err)
				}
			}
			if got := sc.clusterStat(t, "upstream_rq_timeout") - timeoutsBefore; got != s6Calls {
				t.Errorf("upstream_rq_timeout grew by %d, want %d", got, s6Calls)
			}
			waitFor(t, settleTimeout, "the backend sees every hung call cancelled", func() (bool, string) {
				got := be.Cancelled()
				return got == s6Calls, fmt.Sprintf("%d of %d cancelled", got, s6Calls)
			})
			waitFor(t, settleTimeout, "sidecar goroutines back to baseline", func() (bool, string) {
				n := sc.goroutines(t)
				return n <= baseline+s6GoroutineSlack, fmt.Sprintf("%d goroutines, baseline %d", n, baseline)
			})
			if got := be.Active(); got != 0 {
				t.Errorf("backend has %d handlers still running", got)
			}
		})
	}
}

func TestS6TimingResponseHeaderHang(t *testing.T) {
	timing(t)
	for _, tc := range s6Cases {
		t.Run(tc.name, func(t *testing.T) {
			_, sc := s6Setup(t, tc)
			// Baseline: the fastest call the backend answers at once.
			fastest := warmUp(t, sc.Addr, 10)
			errs, took := hangCalls(t, sc.Addr, s6Calls, tc.callTimeout)
			for i := range errs {
				if status.Code(errs[i]) != codes.DeadlineExceeded {
					t.Errorf("call %d: %v, want DEADLINE_EXCEEDED", i, errs[i])
				}
				if took[i] < tc.want || took[i] > tc.want+fastest+s6Tolerance {
					t.Errorf("call %d took %v, want [%v, %v]", i, took[i], tc.want, tc.want+fastest+s6Tolerance)
				}
			}
		})
	}
}
