package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync/atomic"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"

	"meshd.dev/meshd/internal/wasmbuild"
)

// Target names besides the peers'.
const (
	targetDirect = "direct"
	targetMeshd  = "meshd"
	// targetMTLS is two sidecars (client and server side) with HTTP/2
	// over mTLS between them, the mesh's usual hop.
	targetMTLS = "meshd-mtls"
	// targetTwoHop is the same two sidecars with a cleartext h2c hop:
	// mTLS off.
	targetTwoHop = "meshd-2hop"
	// targetH3 is the same two sidecars with HTTP/3 (QUIC, SVIDs) between
	// them.
	targetH3 = "meshd-h3"
	// targetWasm is one sidecar with the WASM rate-limit filter.
	targetWasm = "meshd-wasm"
	// targetTrace is one sidecar tracing every request to the harness's
	// OTLP receiver.
	targetTrace = "meshd-trace"
)

// rateLimitGuest is the WASM rate-limit filter's guest package, built by
// internal/wasmbuild.
const rateLimitGuest = "meshd.dev/meshd/filters/ratelimit/guest"

// rateLimitPerSecond is the WASM filter's bucket: far above any bench rate,
// so the filter runs on every request and rejects none.
const rateLimitPerSecond = 1_000_000_000

// targetSpec is one kind of target the harness can start.
type targetSpec struct {
	Name string `json:"name"`
	// Desc says what the target is, for the report.
	Desc string `json:"description"`
	// Peer marks a peer proxy: "ratio to the best peer" compares with
	// these.
	Peer bool `json:"peer"`
	// Variant marks a meshd feature variant (mTLS off, HTTP/3 hop, WASM,
	// tracing): it runs only on scenarios with Variants set, to keep a
	// full run's length reasonable.
	Variant bool `json:"variant"`
}

// allTargets are the targets in interleaving order.
var allTargets = []targetSpec{
	{Name: targetDirect, Desc: "the backend, no proxy"},
	{Name: targetMeshd, Desc: "one meshd sidecar, h2c in, HTTP/2 to the backend"},
	{Name: targetMTLS, Desc: "two meshd sidecars, HTTP/2 over mTLS (SPIFFE SVIDs) between them"},
	{Name: targetNghttpx, Desc: "nghttpx, one worker, h2c in, HTTP/2 to the backend", Peer: true},
	{Name: targetHAProxy, Desc: "HAProxy, one thread, h2c in, HTTP/2 to the backend", Peer: true},
	{Name: targetTwoHop, Desc: "two meshd sidecars, cleartext h2c between them (mTLS off)", Variant: true},
	{Name: targetH3, Desc: "two meshd sidecars, HTTP/3 over QUIC (SVIDs) between them", Variant: true},
	{Name: targetWasm, Desc: "one meshd sidecar with the WASM rate-limit filter (limit never reached)", Variant: true},
	{Name: targetTrace, Desc: "one meshd sidecar tracing every request to an in-harness OTLP receiver", Variant: true},
}

// targetNames lists the known target names, comma-separated.
func targetNames() string {
	names := make([]string, len(allTargets))
	for i, t := range allTargets {
		names[i] = t.Name
	}
	return strings.Join(names, ",")
}

// selectTargets resolves a comma-separated list ("all" for every one),
// keeping allTargets' order.
func selectTargets(list string) ([]targetSpec, error) {
	if list == "all" || list == "" {
		return slices.Clone(allTargets), nil
	}
	want := make(map[string]bool)
	for _, n := range strings.Split(list, ",") {
		n = strings.TrimSpace(n)
		if !slices.ContainsFunc(allTargets, func(t targetSpec) bool { return t.Name == n }) {
			return nil, fmt.Errorf("unknown target %q (known: %s)", n, targetNames())
		}
		want[n] = true
	}
	var out []targetSpec
	for _, t := range allTargets {
		if want[t.Name] {
			out = append(out, t)
		}
	}
	return out, nil
}

// target is a started target: where load goes (gRPC calls to GRPCAddr,
// GETs to HTTPAddr) and the proxy processes whose CPU and memory count
// for it (none for direct).
type target struct {
	targetSpec
	GRPCAddr string
	HTTPAddr string
	// PIDs are the proxy processes; their CPU and RSS are summed.
	PIDs []int
	// IdleMem is the sum of the proxies' memory after start-up.
	IdleMem memSample
	// sidecars are the target's meshd processes (client side first).
	sidecars []*sidecarProc
	// stops stop the processes, last started first.
	stops []func() error
}

// addr returns the address the scenario's requests go to.
func (t *target) addr(sc scenario) string {
	if sc.Kind == kindH2CGet || sc.Kind == kindIdle {
		return t.HTTPAddr
	}
	return t.GRPCAddr
}

// Stop stops the target's processes and returns the first error.
func (t *target) Stop() error {
	var errs []error
	for i := len(t.stops) - 1; i >= 0; i-- {
		errs = append(errs, t.stops[i]())
	}
	t.stops = nil
	return errors.Join(errs...)
}

// starter holds what starting targets needs, shared by all of them.
type starter struct {
	meshd  string
	dir    string
	root   string
	be     *backendProc
	cpu    int    // proxy CPU, -1 unpinned
	noFile uint64 // RLIMIT_NOFILE the proxies inherit
	peers  map[string]string
	logger *slog.Logger

	pki       *benchPKI
	wasmFile  string
	collector *spanReceiver
}

// start starts the target called spec.Name.
func (s *starter) start(ctx context.Context, spec targetSpec) (*target, error) {
	t := &target{targetSpec: spec}
	switch spec.Name {
	case targetDirect:
		t.GRPCAddr, t.HTTPAddr = s.be.GRPCAddr, s.be.HTTPAddr
		return t, nil
	case targetNghttpx, targetHAProxy:
		path, ok := s.peers[spec.Name]
		if !ok {
			return nil, fmt.Errorf("%s not installed", spec.Name)
		}
		p, addr, err := startPeer(ctx, spec.Name, path, s.dir, s.be, s.cpu, s.noFile)
		if err != nil {
			return nil, err
		}
		t.GRPCAddr, t.HTTPAddr, t.PIDs, t.stops = addr, addr, []int{p.PID()}, []func() error{p.Stop}
		return t, nil
	}

	// meshd targets: an optional server-side sidecar, then the one the
	// load enters.
	entry := sidecarConfig{Node: spec.Name, Listen: protoH2C, Upstream: protoH2C,
		GRPCAddr: s.be.GRPCAddr, HTTPAddr: s.be.HTTPAddr}
	hop := ""
	switch spec.Name {
	case targetMeshd:
	case targetMTLS:
		hop = protoTLS
	case targetTwoHop:
		hop = protoH2C
	case targetH3:
		hop = protoH3
	case targetWasm:
		if s.wasmFile == "" {
			env, err := wasmbuild.LoadEnv(ctx, s.root)
			if err != nil {
				return nil, err
			}
			s.logger.Info("building the WASM rate-limit guest (cached by source hash)", "package", rateLimitGuest)
			if s.wasmFile, err = env.Cached(ctx, rateLimitGuest); err != nil {
				return nil, err
			}
		}
		entry.Filters = []string{rateLimitFilter(s.wasmFile, rateLimitPerSecond)}
	case targetTrace:
		if s.collector == nil {
			c, err := startSpanReceiver()
			if err != nil {
				return nil, err
			}
			s.collector = c
			// Stopped with the target: only this target uses it.
			t.stops = append(t.stops, func() error { c.Stop(); return nil })
		}
		entry.TraceCollector = s.collector.Addr()
	default:
		return nil, fmt.Errorf("unknown target %q", spec.Name)
	}
	if hop != "" {
		if hop != protoH2C && s.pki == nil {
			p, err := newBenchPKI(s.dir)
			if err != nil {
				return nil, err
			}
			s.pki = p
		}
		server := sidecarConfig{Node: spec.Name + "-server", Listen: hop, Upstream: protoH2C,
			GRPCAddr: s.be.GRPCAddr, HTTPAddr: s.be.HTTPAddr}
		if hop != protoH2C {
			server.ListenTLS = s.pki.Server
			entry.UpstreamTLS = s.pki.Client
		}
		sc, err := s.sidecar(ctx, server)
		if err != nil {
			_ = t.Stop()
			return nil, err
		}
		t.sidecars = append(t.sidecars, sc)
		t.stops = append(t.stops, sc.Stop)
		entry.GRPCAddr, entry.HTTPAddr, entry.Upstream = sc.ListenerAddr, sc.ListenerAddr, hop
	}
	sc, err := s.sidecar(ctx, entry)
	if err != nil {
		_ = t.Stop()
		return nil, err
	}
	t.sidecars = append([]*sidecarProc{sc}, t.sidecars...)
	t.stops = append(t.stops, sc.Stop)
	t.GRPCAddr, t.HTTPAddr = sc.ListenerAddr, sc.ListenerAddr
	for _, sc := range t.sidecars {
		t.PIDs = append(t.PIDs, sc.PID())
	}
	return t, nil
}

// sidecar renders c and starts meshd on it.
func (s *starter) sidecar(ctx context.Context, c sidecarConfig) (*sidecarProc, error) {
	boot, err := renderSidecar(c)
	if err != nil {
		return nil, err
	}
	return startSidecar(ctx, s.meshd, s.dir, c.Node, boot, s.cpu)
}

// spanReceiver is an OTLP/gRPC trace receiver counting the spans it gets:
// the tracing target's collector. It runs in the harness, on the load CPU.
type spanReceiver struct {
	coltracepb.UnimplementedTraceServiceServer
	srv   *grpc.Server
	addr  string
	spans atomic.Int64
	done  chan struct{}
}

// startSpanReceiver listens on 127.0.0.1:0 and serves until Stop.
func startSpanReceiver() (*spanReceiver, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("OTLP receiver: %w", err)
	}
	r := &spanReceiver{srv: grpc.NewServer(), addr: l.Addr().String(), done: make(chan struct{})}
	coltracepb.RegisterTraceServiceServer(r.srv, r)
	go func() { _ = r.srv.Serve(l); close(r.done) }()
	return r, nil
}

// Export implements the OTLP trace service: it counts the spans.
func (r *spanReceiver) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	var n int64
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			n += int64(len(ss.GetSpans()))
		}
	}
	r.spans.Add(n)
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

// Addr returns the receiver's address.
func (r *spanReceiver) Addr() string { return r.addr }

// Spans returns how many spans were received so far.
func (r *spanReceiver) Spans() int64 { return r.spans.Load() }

// Stop stops serving and waits for the server to end.
func (r *spanReceiver) Stop() {
	r.srv.Stop()
	<-r.done
}
