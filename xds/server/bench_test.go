package server

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"

	"meshd.dev/meshd/xds/translate"
)

// Fan-out benchmark shape (issue 4, acceptance 7).
const (
	fanoutClients = 1000
	fanoutConns   = 4 // gRPC connections the clients' streams share
)

// fanoutResult is a mesh of fanoutClients sidecars, each with its own
// snapshot (one listener, route, cluster and assignment), whose endpoints
// point at port.
func fanoutResult(b testing.TB, version string, port uint32) *translate.Result {
	base := sidecarResources(b, 15001)
	res := &translate.Result{Nodes: map[string]*translate.Resources{}, Proxyless: proxylessResources(b, port), Version: version}
	for i := range fanoutClients {
		res.Nodes[fmt.Sprintf("w%d.bench", i)] = &translate.Resources{
			Listeners: base.Listeners,
			Routes:    base.Routes,
			Clusters:  base.Clusters,
			Endpoints: []types.Resource{assignment("outbound|greeter.demo", port)},
		}
	}
	return res
}

// BenchmarkDeltaFanout connects fanoutClients delta ADS clients, each a
// sidecar node subscribed to CDS, EDS, LDS and RDS, and measures, per
// iteration, the time from Publish of an endpoint change to each client's
// ACK of it: p50 and p99 over every client of every iteration, the slowest
// ACK ("last-ack-ms"), and the heap
// growth per connected client. The clients run in the benchmark's process,
// so heap-B/client is an upper bound of the control plane's share.
func BenchmarkDeltaFanout(b *testing.B) {
	s := New(Options{})
	if err := s.Publish(fanoutResult(b, "v0", 50000), nil); err != nil {
		b.Fatal(err)
	}
	cc := startServer(b, s)
	conns := []*grpc.ClientConn{cc}
	for len(conns) < fanoutConns {
		conns = append(conns, startClientConn(b, cc.Target()))
	}
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	ctx, cancel := context.WithCancel(context.Background())
	acks := make(chan ack, fanoutClients*4)
	var wg sync.WaitGroup
	for i := range fanoutClients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runDeltaClient(ctx, conns[i%len(conns)], fmt.Sprintf("w%d.bench", i), acks)
		}()
	}
	defer func() {
		cancel()
		wg.Wait()
	}()
	// Initial state: four types per client.
	waitAcks(b, acks, fanoutClients*4, "v0")
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)

	var lat []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		version := fmt.Sprintf("v%d", i+1)
		start := time.Now()
		if err := s.Publish(fanoutResult(b, version, uint32(50001+i%1000)), nil); err != nil {
			b.Fatal(err)
		}
		times := waitAcks(b, acks, fanoutClients, version)
		for _, t := range times {
			lat = append(lat, t.Sub(start))
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "last-ack-ms")
	b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/fanoutClients, "heap-B/client")
}

type ack struct {
	version string
	at      time.Time
}

// waitAcks collects n ACKs of version, failing after a minute.
func waitAcks(b testing.TB, acks <-chan ack, n int, version string) []time.Time {
	b.Helper()
	out := make([]time.Time, 0, n)
	deadline := time.After(time.Minute)
	for len(out) < n {
		select {
		case a := <-acks:
			if a.version != version {
				b.Fatalf("ACK of %q while waiting for %q", a.version, version)
			}
			out = append(out, a.at)
		case <-deadline:
			b.Fatalf("%d of %d ACKs of %s within a minute", len(out), n, version)
		}
	}
	return out
}

func startClientConn(b testing.TB, target string) *grpc.ClientConn {
	cc, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecureCreds()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cc.Close() })
	return cc
}

// runDeltaClient subscribes like a sidecar and ACKs every response,
// reporting each ACK, until ctx ends.
func runDeltaClient(ctx context.Context, cc *grpc.ClientConn, node string, acks chan<- ack) {
	st, err := discovery.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
	if err != nil {
		return
	}
	subs := []*discovery.DeltaDiscoveryRequest{
		{Node: &core.Node{Id: node}, TypeUrl: resource.ClusterType},
		{TypeUrl: resource.EndpointType, ResourceNamesSubscribe: []string{"outbound|greeter.demo"}},
		{TypeUrl: resource.ListenerType},
		{TypeUrl: resource.RouteType, ResourceNamesSubscribe: []string{"outbound_greeter"}},
	}
	for _, r := range subs {
		if st.Send(r) != nil {
			return
		}
	}
	for {
		r, err := st.Recv()
		if err != nil {
			return
		}
		if st.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: r.GetTypeUrl(), ResponseNonce: r.GetNonce()}) != nil {
			return
		}
		select {
		case acks <- ack{r.GetSystemVersionInfo(), time.Now()}:
		case <-ctx.Done():
			return
		}
	}
}
