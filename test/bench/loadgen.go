package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
)

// Scenario kinds.
const (
	// kindGRPCUnary is UnaryCall(SimpleRequest{response_size: 1024}).
	kindGRPCUnary = "grpc-unary"
	// kindH2CGet is GET /1k (1024-byte body).
	kindH2CGet = "h2c-get"
	// kindGRPCStream is one FullDuplexCall per stream slot, each request a
	// ping-pong of 100-byte messages on it (built-in generator only).
	kindGRPCStream = "grpc-stream"
	// kindIdle opens Idle HTTP/2 connections that stay idle, reads the
	// proxy's memory per connection, then drives GETs on Conns more.
	kindIdle = "idle"
)

// streamMessageSize is the payload size of both directions' messages in
// the streaming scenarios.
const streamMessageSize = 100

// scenario is one load shape: what each request is and how many connections
// and concurrent streams per connection drive it (a closed loop: every stream
// sends its next request as soon as the previous response has ended).
type scenario struct {
	Name    string `json:"name"`
	Kind    string `json:"kind"`
	Conns   int    `json:"connections"`
	Streams int    `json:"streams_per_connection"`
	// Rate, when positive, holds the load at this many requests per second
	// in total (a fixed low rate for latency) instead of saturating.
	Rate int `json:"rate,omitempty"`
	// Idle is the number of idle connections of a kindIdle scenario.
	Idle int `json:"idle_connections,omitempty"`
	// Variants runs the meshd feature variants (targetSpec.Variant) too.
	Variants bool `json:"variants,omitempty"`
}

// allScenarios are the scenarios of issue 12, in run order.
var allScenarios = []scenario{
	{Name: "grpc-unary-16x32", Kind: kindGRPCUnary, Conns: 16, Streams: 32, Variants: true},
	{Name: "grpc-unary-1x1", Kind: kindGRPCUnary, Conns: 1, Streams: 1},
	{Name: "grpc-unary-1000rps", Kind: kindGRPCUnary, Conns: 1, Streams: 4, Rate: 1000, Variants: true},
	{Name: "h2c-get-16x32", Kind: kindH2CGet, Conns: 16, Streams: 32},
	{Name: "grpc-stream-16x1", Kind: kindGRPCStream, Conns: 16, Streams: 1},
	{Name: "grpc-stream-16x100", Kind: kindGRPCStream, Conns: 16, Streams: 100},
	{Name: "idle-10k-active-1k", Kind: kindIdle, Conns: 1000, Streams: 1, Idle: 10000},
}

// requests returns what the scenario's requests are, for the report.
func (s scenario) requests() string {
	switch s.Kind {
	case kindGRPCUnary:
		return "gRPC UnaryCall, 1 KiB response"
	case kindH2CGet:
		return "HTTP/2 GET, 1 KiB response"
	case kindGRPCStream:
		return "gRPC FullDuplexCall ping-pong, 100-byte messages"
	case kindIdle:
		return "HTTP/2 GET, 1 KiB response, beside idle connections"
	}
	return s.Kind
}

// loadResult is what a generator measured over the measurement window
// (warm-up excluded).
type loadResult struct {
	// Requests is the number of requests that completed successfully.
	Requests int64 `json:"requests"`
	// Errors is the number of requests that failed.
	Errors int64 `json:"errors"`
	// Seconds is the length of the measurement window.
	Seconds float64 `json:"seconds"`
	// RPS is Requests / Seconds.
	RPS float64 `json:"rps"`
	// P50Ms, P99Ms and P999Ms are latency percentiles of successful
	// requests in milliseconds.
	P50Ms  float64 `json:"p50_ms"`
	P99Ms  float64 `json:"p99_ms"`
	P999Ms float64 `json:"p999_ms"`
	// ErrorDetail describes the failures when Errors > 0: the first error
	// (built-in generator) or h2load's status code line.
	ErrorDetail string `json:"error_detail,omitempty"`
}

// generator drives one scenario against one target for warm-up plus
// duration. It calls measuring exactly once, when the measurement window
// starts, so the caller can sample process counters at the same moment; the
// window ends when Run returns.
type generator interface {
	Name() string
	Run(ctx context.Context, sc scenario, addr string, warmup, duration time.Duration, measuring func()) (loadResult, error)
}

// Built-in generator limits.
const (
	// connectTimeout bounds establishing every connection of a run.
	connectTimeout = 10 * time.Second
	// requestTimeout bounds one request, so a stuck stream cannot stall a
	// closed-loop worker past the run.
	requestTimeout = 10 * time.Second
)

// Phases of a built-in run, read by every worker on each completion.
const (
	phaseWarmup int32 = iota
	phaseMeasure
	phaseStop
)

// goGenerator is the built-in closed-loop load generator: grpc-go clients for
// gRPC (one ClientConn per connection) and x/net/http2 ClientConns for h2c
// GET (one TCP connection each), Streams goroutines per connection.
type goGenerator struct{}

// Name implements generator.
func (goGenerator) Name() string { return "built-in (grpc-go, x/net/http2)" }

// worker issues one request and reports whether it succeeded. It must honour
// ctx's deadline.
type worker func(ctx context.Context) error

// Run implements generator.
func (g goGenerator) Run(ctx context.Context, sc scenario, addr string, warmup, duration time.Duration, measuring func()) (loadResult, error) {
	if sc.Conns < 1 || sc.Streams < 1 {
		return loadResult{}, fmt.Errorf("scenario %s: connections and streams must be positive", sc.Name)
	}
	newWorker, closeAll, err := g.connect(ctx, sc, addr)
	if err != nil {
		return loadResult{}, err
	}
	defer closeAll()

	var phase atomic.Int32
	var ok, failed atomic.Int64
	var firstErr atomic.Pointer[string]
	lat := make([][]time.Duration, sc.Conns*sc.Streams)
	// With a rate, every slot paces itself to an equal share of it.
	var interval time.Duration
	if sc.Rate > 0 {
		interval = time.Duration(float64(time.Second) * float64(sc.Conns*sc.Streams) / float64(sc.Rate))
	}
	var wg sync.WaitGroup
	for c := range sc.Conns {
		for s := range sc.Streams {
			slot := c*sc.Streams + s
			do := newWorker(c)
			wg.Go(func() {
				next := time.Now()
				for {
					p := phase.Load()
					if p == phaseStop || ctx.Err() != nil {
						return
					}
					if interval > 0 {
						if d := time.Until(next); d > 0 {
							time.Sleep(d)
						}
						next = next.Add(interval)
					}
					rctx, cancel := context.WithTimeout(ctx, requestTimeout)
					start := time.Now()
					err := do(rctx)
					d := time.Since(start)
					cancel()
					if phase.Load() != phaseMeasure || p != phaseMeasure {
						continue // started or ended outside the window
					}
					if err != nil {
						failed.Add(1)
						msg := err.Error()
						firstErr.CompareAndSwap(nil, &msg)
						continue
					}
					ok.Add(1)
					lat[slot] = append(lat[slot], d)
				}
			})
		}
	}

	timer := time.NewTimer(warmup)
	select {
	case <-timer.C:
	case <-ctx.Done():
	}
	measuring()
	phase.Store(phaseMeasure)
	begin := time.Now()
	timer.Reset(duration)
	select {
	case <-timer.C:
	case <-ctx.Done():
	}
	phase.Store(phaseStop)
	window := time.Since(begin)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return loadResult{}, err
	}

	all := slices.Concat(lat...)
	slices.Sort(all)
	r := loadResult{
		Requests: ok.Load(),
		Errors:   failed.Load(),
		Seconds:  window.Seconds(),
		P50Ms:    ms(percentile(all, 50)),
		P99Ms:    ms(percentile(all, 99)),
		P999Ms:   ms(percentile(all, 99.9)),
	}
	r.RPS = float64(r.Requests) / r.Seconds
	if e := firstErr.Load(); e != nil {
		r.ErrorDetail = *e
	}
	return r, nil
}

// ms converts a duration to fractional milliseconds.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// connect opens sc.Conns connections to addr and returns a constructor for
// one stream slot's request function on connection i (each call a new
// slot), and a func closing them all.
func (goGenerator) connect(ctx context.Context, sc scenario, addr string) (func(i int) worker, func(), error) {
	cctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	switch sc.Kind {
	case kindGRPCUnary, kindGRPCStream:
		conns := make([]*grpc.ClientConn, 0, sc.Conns)
		closeAll := func() {
			for _, cc := range conns {
				_ = cc.Close()
			}
		}
		for range sc.Conns {
			cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				closeAll()
				return nil, nil, fmt.Errorf("grpc client for %s: %w", addr, err)
			}
			conns = append(conns, cc)
			if err := waitReady(cctx, cc); err != nil {
				closeAll()
				return nil, nil, fmt.Errorf("grpc connect to %s: %w", addr, err)
			}
		}
		if sc.Kind == kindGRPCStream {
			return func(i int) worker { return streamWorker(ctx, testgrpc.NewTestServiceClient(conns[i])) }, closeAll, nil
		}
		req := unaryRequest()
		return func(i int) worker {
			client := testgrpc.NewTestServiceClient(conns[i])
			return func(ctx context.Context) error {
				resp, err := client.UnaryCall(ctx, req)
				if err != nil {
					return err
				}
				if n := len(resp.GetPayload().GetBody()); n != responseSize {
					return fmt.Errorf("response payload %d bytes, want %d", n, responseSize)
				}
				return nil
			}
		}, closeAll, nil

	case kindH2CGet, kindIdle:
		var protos http.Protocols
		protos.SetUnencryptedHTTP2(true)
		tr := &http.Transport{Protocols: &protos}
		conns := make([]*http.ClientConn, 0, sc.Conns)
		closeAll := func() {
			for _, cc := range conns {
				_ = cc.Close()
			}
		}
		for range sc.Conns {
			cc, err := tr.NewClientConn(cctx, "http", addr)
			if err != nil {
				closeAll()
				return nil, nil, fmt.Errorf("h2c client conn to %s: %w", addr, err)
			}
			conns = append(conns, cc)
		}
		url := "http://" + addr + getPath
		return func(i int) worker {
			cc := conns[i]
			return func(ctx context.Context) error {
				req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
				if err != nil {
					return err
				}
				resp, err := cc.RoundTrip(req)
				if err != nil {
					return err
				}
				n, err := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err != nil {
					return err
				}
				if resp.StatusCode != http.StatusOK || n != getBodySize {
					return fmt.Errorf("GET %s: status %d, %d bytes; want 200, %d", getPath, resp.StatusCode, n, getBodySize)
				}
				return nil
			}
		}, closeAll, nil
	}
	return nil, nil, fmt.Errorf("scenario %s: unknown kind %q", sc.Name, sc.Kind)
}

// waitReady connects cc and waits until it is READY or ctx ends.
func waitReady(ctx context.Context, cc *grpc.ClientConn) error {
	cc.Connect()
	for {
		s := cc.GetState()
		if s == connectivity.Ready {
			return nil
		}
		if !cc.WaitForStateChange(ctx, s) {
			return fmt.Errorf("still %v: %w", s, context.Cause(ctx))
		}
	}
}

// streamWorker returns a worker whose every request is one ping-pong on its
// own FullDuplexCall: a 100-byte message out, a 100-byte message back. The
// stream is opened on the first request and again after a failure; a
// request not answered within requestTimeout cancels its stream.
func streamWorker(ctx context.Context, client testgrpc.TestServiceClient) worker {
	req := &testgrpc.StreamingOutputCallRequest{
		ResponseParameters: []*testgrpc.ResponseParameters{{Size: streamMessageSize}},
		Payload:            &testgrpc.Payload{Body: make([]byte, streamMessageSize)},
	}
	var (
		stream testgrpc.TestService_FullDuplexCallClient
		cancel context.CancelFunc
	)
	reset := func() {
		if cancel != nil {
			cancel()
		}
		stream, cancel = nil, nil
	}
	return func(rctx context.Context) error {
		if stream == nil {
			sctx, c := context.WithCancel(ctx)
			s, err := client.FullDuplexCall(sctx)
			if err != nil {
				c()
				return fmt.Errorf("FullDuplexCall: %w", err)
			}
			stream, cancel = s, c
		}
		stop := context.AfterFunc(rctx, cancel)
		defer stop()
		if err := stream.Send(req); err != nil {
			reset()
			return fmt.Errorf("stream send: %w", err)
		}
		resp, err := stream.Recv()
		if err != nil {
			reset()
			return fmt.Errorf("stream recv: %w", err)
		}
		if n := len(resp.GetPayload().GetBody()); n != streamMessageSize {
			reset()
			return fmt.Errorf("stream response payload %d bytes, want %d", n, streamMessageSize)
		}
		return nil
	}
}
