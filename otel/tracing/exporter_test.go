package tracing_test

import (
	"context"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/otel/tracing"
	"meshd.dev/meshd/otel/tracing/tracingtest"
)

const waitTimeout = 10 * time.Second

type counter struct{ atomic.Uint64 }

func (c *counter) Add(n uint64) { c.Uint64.Add(n) }

type exporterStats struct{ sent, dropped, timer counter }

func (s *exporterStats) stats() tracing.ExporterStats {
	return tracing.ExporterStats{SpansSent: &s.sent, SpansDropped: &s.dropped, TimerFlushed: &s.timer}
}

func newSpan(i int) *tracing.Span {
	s := tracing.NewSpan()
	s.TraceID, s.SpanID, s.Kind, s.Name = tracing.NewTraceID(), tracing.NewSpanID(), tracing.KindServer, "GET"
	s.Start = time.Now()
	s.End = s.Start
	s.SetInt("i", int64(i))
	return s
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func closeExporter(t *testing.T, e *tracing.Exporter) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := e.Close(ctx); err != nil {
		t.Errorf("Close: %v", err)
	}
}

// TestExporterBatching: a full batch is sent without waiting for the
// flush interval, a partial one goes on the tick (counted as
// timer_flushed), a batch whose spans pass the byte bound goes at once,
// and Close sends what is queued.
func TestExporterBatching(t *testing.T) {
	for _, tc := range []struct {
		name          string
		batch, spans  int
		attrBytes     int // the size of an extra attribute on each span
		flush         time.Duration
		closeFirst    bool // Close before waiting: the final drain sends them
		wantRequests  int
		wantTimerMin  uint64
		wantTimerZero bool
	}{
		{name: "full batches at once", batch: 4, spans: 8, flush: time.Hour, wantRequests: 2, wantTimerZero: true},
		{name: "partial batch on the tick", batch: 100, spans: 3, flush: 20 * time.Millisecond, wantRequests: 1, wantTimerMin: 1},
		{name: "close drains the queue", batch: 100, spans: 5, flush: time.Hour, closeFirst: true, wantRequests: 1, wantTimerZero: true},
		// Two spans pass the exporter's 1 MiB bound on a batch's spans.
		{name: "large spans end a batch early", batch: 100, spans: 2, attrBytes: 600 << 10, flush: time.Hour, wantRequests: 1, wantTimerZero: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			col := tracingtest.Start(t)
			var st exporterStats
			e, err := tracing.NewExporter(tracing.ExporterConfig{Target: col.Addr(), BatchSize: tc.batch, FlushInterval: tc.flush, Stats: st.stats()})
			if err != nil {
				t.Fatal(err)
			}
			big := strings.Repeat("x", tc.attrBytes)
			for i := range tc.spans {
				s := newSpan(i)
				s.SetStr("big", big)
				e.Export(s)
			}
			if tc.closeFirst {
				closeExporter(t, e)
			} else {
				defer closeExporter(t, e)
			}
			waitFor(t, "the spans at the collector", func() bool { return len(col.Spans()) == tc.spans })
			for _, s := range col.Spans() {
				if v, _ := s.Attr("big"); len(v) != tc.attrBytes {
					t.Errorf("span %x: attribute big has %d bytes, want %d", s.GetSpanId(), len(v), tc.attrBytes)
				}
			}
			if got := col.Requests(); got != tc.wantRequests {
				t.Errorf("export requests %d, want %d", got, tc.wantRequests)
			}
			waitFor(t, "spans_sent", func() bool { return st.sent.Load() == uint64(tc.spans) })
			if d := st.dropped.Load(); d != 0 {
				t.Errorf("spans_dropped %d, want 0", d)
			}
			if got := st.timer.Load(); got < tc.wantTimerMin || (tc.wantTimerZero && got != 0) {
				t.Errorf("timer_flushed %d, want >= %d (zero: %v)", got, tc.wantTimerMin, tc.wantTimerZero)
			}
		})
	}
}

// startCollector serves col as an OTLP/gRPC trace collector on
// 127.0.0.1:0 until the test's cleanup and returns its address.
func startCollector(t *testing.T, col coltracepb.TraceServiceServer) string {
	t.Helper()
	srv := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(srv, col)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-served
	})
	return ln.Addr().String()
}

// blockingCollector holds every export until release is closed.
type blockingCollector struct {
	coltracepb.UnimplementedTraceServiceServer
	inExport chan struct{}
	release  chan struct{}
	spans    atomic.Int64
}

func (c *blockingCollector) Export(ctx context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	select {
	case c.inExport <- struct{}{}:
	default:
	}
	select {
	case <-c.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			c.spans.Add(int64(len(ss.GetSpans())))
		}
	}
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

// TestExporterQueueBound: while an export is stuck, the queue holds
// QueueSize spans and drops (and counts) the rest without blocking the
// caller; once the collector answers, the queued spans are sent. A span
// exported after Close is dropped and counted.
func TestExporterQueueBound(t *testing.T) {
	testutil.CheckGoroutines(t)
	const queue = 4
	col := &blockingCollector{inExport: make(chan struct{}, 1), release: make(chan struct{})}
	addr := startCollector(t, col)
	var st exporterStats
	e, err := tracing.NewExporter(tracing.ExporterConfig{Target: addr, QueueSize: queue, BatchSize: queue, FlushInterval: time.Hour, Stats: st.stats()})
	if err != nil {
		t.Fatal(err)
	}
	for i := range queue { // one full batch: the exporter takes it and blocks
		e.Export(newSpan(i))
	}
	select {
	case <-col.inExport:
	case <-time.After(waitTimeout):
		t.Fatal("no export reached the collector")
	}
	const extra = 3
	start := time.Now()
	for i := range queue + extra { // a full queue, then drops
		e.Export(newSpan(i))
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Export blocked for %v with the collector stuck", d)
	}
	if d := st.dropped.Load(); d != extra {
		t.Errorf("spans_dropped %d with the queue full, want %d", d, extra)
	}
	close(col.release)
	waitFor(t, "the queued spans at the collector", func() bool { return col.spans.Load() == 2*queue })
	closeExporter(t, e)
	e.Export(newSpan(0))
	if got, want := st.dropped.Load(), uint64(extra+1); got != want {
		t.Errorf("spans_dropped %d after an export past Close, want %d", got, want)
	}
	if got := st.sent.Load(); got != 2*queue {
		t.Errorf("spans_sent %d, want %d", got, 2*queue)
	}
}

// gatedCollector reports each export's arrival and span count, then holds
// it until the test sends a release token.
type gatedCollector struct {
	coltracepb.UnimplementedTraceServiceServer
	arrived chan gatedExport
	release chan struct{}
}

type gatedExport struct {
	at    time.Time
	spans int
}

func (c *gatedCollector) Export(ctx context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	n := 0
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			n += len(ss.GetSpans())
		}
	}
	c.arrived <- gatedExport{at: time.Now(), spans: n}
	select {
	case <-c.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

// TestExporterTickSendsWhatWasQueued: a tick sends the spans queued at the
// tick; spans queued while that export is in flight wait for the next tick
// rather than following at once in a small batch of their own (with a slow
// collector that would become a stream of small exports, one per round
// trip).
func TestExporterTickSendsWhatWasQueued(t *testing.T) {
	testutil.CheckGoroutines(t)
	const interval = time.Second
	col := &gatedCollector{arrived: make(chan gatedExport, 8), release: make(chan struct{}, 8)}
	addr := startCollector(t, col)
	var st exporterStats
	e, err := tracing.NewExporter(tracing.ExporterConfig{Target: addr, BatchSize: 100, FlushInterval: interval, Stats: st.stats()})
	if err != nil {
		t.Fatal(err)
	}
	defer closeExporter(t, e)
	next := func(what string) gatedExport {
		t.Helper()
		select {
		case x := <-col.arrived:
			return x
		case <-time.After(waitTimeout):
			t.Fatalf("no %s export reached the collector", what)
		}
		return gatedExport{}
	}
	// A first export sets up the connection, whose dial would otherwise
	// delay the first measured export and shorten the gap below.
	e.Export(newSpan(0))
	next("warm-up")
	col.release <- struct{}{}
	for i := range 5 {
		e.Export(newSpan(i))
	}
	first := next("first")
	for i := range 3 { // queued while the first export is in flight
		e.Export(newSpan(i))
	}
	col.release <- struct{}{}
	second := next("second")
	col.release <- struct{}{}
	if first.spans != 5 || second.spans != 3 {
		t.Errorf("exports carried %d and %d spans, want 5 and 3", first.spans, second.spans)
	}
	// The second export waits for the next tick: about one interval
	// after the first (half of it allows for scheduling delays).
	if gap := second.at.Sub(first.at); gap < interval/2 {
		t.Errorf("second export %v after the first, want the next tick (~%v)", gap, interval)
	}
	waitFor(t, "spans_sent", func() bool { return st.sent.Load() == 9 })
	if got := st.timer.Load(); got != 3 {
		t.Errorf("timer_flushed %d, want 3", got)
	}
}
