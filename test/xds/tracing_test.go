package xds_test

import (
	"context"
	"encoding/hex"
	"fmt"
	"math"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"

	"meshd.dev/meshd/internal/meshtest"
	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/otel/tracing/tracingtest"
	"meshd.dev/meshd/xds/server"
)

// tracedMesh starts a STRICT mTLS mesh (greeter-client's sidecar →
// greeter-server's sidecar → a grpc-go interop server) whose
// Mesh.spec.tracing exports with samplingPercent pct to a real
// OpenTelemetry collector when one is built (MESHD_OTELCOL=1 or a cached
// binary), else to the in-process OTLP receiver.
func tracedMesh(t *testing.T, pct float64) (client testgrpc.TestServiceClient, col receiver, srv, cli *testutil.Sidecar) {
	t.Helper()
	col = startReceiver(t)
	app := testutil.StartGRPCInteropServer(t)
	p := newMTLSPorts(t)
	text := strings.Replace(mtlsMesh(app.Addr, p, nil), "  mtls: STRICT\n",
		fmt.Sprintf("  mtls: STRICT\n  tracing: {collector: %q, samplingPercent: %v}\n", col.Addr(), pct), 1)
	meshPath := filepath.Join(t.TempDir(), "mesh.yaml")
	writeFile(t, meshPath, text)
	cp := startControlPlane(t, meshPath)
	cp.WaitStatus(t, "a published version", waitTimeout, func(st server.Status) bool { return st.Version != "" })
	srv = mtlsSidecar(t, cp, meshPath, serverNode, false)
	cli = mtlsSidecar(t, cp, meshPath, clientNode, false)
	client = meshtest.DialLoopback(t, p.Outbound)
	waitCallCode(t, client, 0, waitTimeout)
	return client, col, srv, cli
}

// spansWhere waits until pred holds for the collector's spans.
func spansWhere(t *testing.T, col receiver, what string, pred func([]tracingtest.Span) bool) []tracingtest.Span {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		s := col.Spans()
		if pred(s) {
			return s
		}
		if time.Now().After(deadline) {
			out := ""
			if o, ok := col.(interface{ Output() string }); ok {
				out = o.Output()
				out = "\ncollector output:\n" + out[max(0, len(out)-4000):]
			}
			t.Fatalf("timed out waiting for %s; collector has %d spans%s", what, len(s), out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestTracingAcrossSidecars (issue 7, acceptance 1): a grpc-go call with
// its own traceparent through two sidecars over mTLS yields the four spans
// of both sidecars in the client's trace, each the child of the one
// before, with the peers' SPIFFE IDs.
func TestTracingAcrossSidecars(t *testing.T) {
	client, col, _, cli := tracedMesh(t, 100)
	col.Reset()
	const traceID, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	ctx, cancel := context.WithTimeout(context.Background(), meshtest.CallTimeout)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "traceparent", "00-"+traceID+"-"+parent+"-01")
	if _, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{}); err != nil {
		t.Fatalf("UnaryCall: %v", err)
	}
	inTrace := func(ss []tracingtest.Span) []tracingtest.Span {
		var out []tracingtest.Span
		for _, s := range ss {
			if hex.EncodeToString(s.GetTraceId()) == traceID {
				out = append(out, s)
			}
		}
		return out
	}
	spans := inTrace(spansWhere(t, col, "four spans of the trace", func(ss []tracingtest.Span) bool { return len(inTrace(ss)) >= 4 }))
	find := func(service string, kind int32) tracingtest.Span {
		for _, s := range spans {
			if s.Service == service && int32(s.GetKind()) == kind {
				return s
			}
		}
		t.Fatalf("no span of %s kind %d in %v", service, kind, spans)
		return tracingtest.Span{}
	}
	aServer, aClient := find(clientNode, 2), find(clientNode, 3)
	bServer, bClient := find(serverNode, 2), find(serverNode, 3)
	chain := []struct {
		name   string
		s      tracingtest.Span
		parent string
	}{
		{"sidecar A server span", aServer, parent},
		{"sidecar A client span", aClient, hex.EncodeToString(aServer.GetSpanId())},
		{"sidecar B server span", bServer, hex.EncodeToString(aClient.GetSpanId())},
		{"sidecar B client span", bClient, hex.EncodeToString(bServer.GetSpanId())},
	}
	for _, c := range chain {
		if got := hex.EncodeToString(c.s.GetParentSpanId()); got != c.parent {
			t.Errorf("%s: parent %s, want %s", c.name, got, c.parent)
		}
		if c.s.GetName() != "grpc.testing.TestService/UnaryCall" {
			t.Errorf("%s: name %q", c.name, c.s.GetName())
		}
		if v, _ := c.s.Attr("rpc.grpc.status_code"); v != "0" {
			t.Errorf("%s: rpc.grpc.status_code %q, want 0", c.name, v)
		}
	}
	for _, c := range []struct {
		name      string
		s         tracingtest.Span
		key, want string
	}{
		{"B server span", bServer, "meshd.peer.spiffe_id", clientID},
		{"A client span", aClient, "meshd.upstream.spiffe_id", serverID},
		{"A server span", aServer, "http.request.method", "POST"},
		{"B server span", bServer, "url.scheme", "https"},
	} {
		if got, _ := c.s.Attr(c.key); got != c.want {
			t.Errorf("%s: %s = %q, want %q", c.name, c.key, got, c.want)
		}
	}
	if n := cli.Stats(t)["tracing.opentelemetry.spans_sent"]; n < 2 {
		t.Errorf("client sidecar tracing.opentelemetry.spans_sent = %d, want ≥ 2", n)
	}
}

// TestTracingCollectorOutage (issue 7, acceptance 2): the collector is
// down for 10 s under load: no call fails, the sidecars count the spans
// they dropped, and export resumes once the collector is back.
func TestTracingCollectorOutage(t *testing.T) {
	client, col, srv, cli := tracedMesh(t, 100)
	load := meshtest.StartCallLoad(t, client, 4)
	load.WaitCalls(t, 50, "calls before the outage")
	col.Stop()
	time.Sleep(10 * time.Second)
	dropped := cli.Stats(t)["tracing.opentelemetry.spans_dropped"] + srv.Stats(t)["tracing.opentelemetry.spans_dropped"]
	col.Reset()
	col.Restart()
	load.WaitCalls(t, 50, "calls after the outage")
	spansWhere(t, col, "spans after the collector restarted", func(ss []tracingtest.Span) bool {
		var a, b bool
		for _, s := range ss {
			a = a || s.Service == clientNode
			b = b || s.Service == serverNode
		}
		return a && b
	})
	load.Stop()
	ok, fail := load.Counts()
	first := load.FirstError()
	t.Logf("%d calls, %d failed; %d spans dropped during the outage", ok, fail, dropped)
	if fail != 0 {
		t.Errorf("%d calls failed (first: %v), want 0", fail, first)
	}
	if dropped == 0 {
		t.Errorf("no spans counted in tracing.opentelemetry.spans_dropped during the outage")
	}
}

// TestTracingSampling (issue 7, acceptance 3): with samplingPercent 0, 10
// and 100, the client sidecar's server spans for n calls without a trace
// context are within 4σ of the binomial expectation, and the server
// sidecar follows the client sidecar's decision.
func TestTracingSampling(t *testing.T) {
	const n = 300
	for _, pct := range []float64{0, 10, 100} {
		t.Run(strconv.FormatFloat(pct, 'f', -1, 64), func(t *testing.T) {
			client, col, _, _ := tracedMesh(t, pct)
			col.Reset()
			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			defer cancel()
			for i := range n {
				if _, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{}); err != nil {
					t.Fatalf("call %d: %v", i, err)
				}
			}
			p := pct / 100
			mean, sigma := n*p, math.Sqrt(n*p*(1-p))
			lo, hi := int(math.Ceil(mean-4*sigma)), int(math.Floor(mean+4*sigma))
			count := func(ss []tracingtest.Span, service string) int {
				c := 0
				for _, s := range ss {
					if s.Service == service && s.GetKind() == 2 && s.GetName() == "grpc.testing.TestService/UnaryCall" {
						c++
					}
				}
				return c
			}
			// Wait for the export of everything recorded: both sidecars
			// agree and the count is stable for three flush intervals.
			var last, a, b int
			stable := 0
			deadline := time.Now().Add(waitTimeout)
			for stable < 3 && time.Now().Before(deadline) {
				time.Sleep(time.Second)
				ss := col.Spans()
				a, b = count(ss, clientNode), count(ss, serverNode)
				if a == b && a == last {
					stable++
				} else {
					stable = 0
				}
				last = a
			}
			t.Logf("sampling %v%%: %d of %d calls traced (bounds [%d, %d])", pct, a, n, lo, hi)
			if a < lo || a > hi {
				t.Errorf("client sidecar traced %d of %d calls, want within [%d, %d]", a, n, lo, hi)
			}
			if a != b {
				t.Errorf("server sidecar traced %d calls, client sidecar %d: want the same decision", b, a)
			}
		})
	}
}
