package client

import (
	"context"
	"net"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	lrsv3 "github.com/envoyproxy/go-control-plane/envoy/service/load_stats/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	"meshd.dev/meshd/internal/testutil"
)

// lrsServer records the requests of one LRS stream at a time and answers
// the first with its plan.
type lrsServer struct {
	lrsv3.UnimplementedLoadReportingServiceServer
	plan *lrsv3.LoadStatsResponse
	reqs chan *lrsv3.LoadStatsRequest
}

func (s *lrsServer) StreamLoadStats(st lrsv3.LoadReportingService_StreamLoadStatsServer) error {
	for first := true; ; first = false {
		req, err := st.Recv()
		if err != nil {
			return err
		}
		select {
		case s.reqs <- req:
		case <-st.Context().Done():
			return st.Context().Err()
		}
		if first {
			if err := st.Send(s.plan); err != nil {
				return err
			}
		}
	}
}

// TestLoadReporter checks the LRS exchange: the node on the first request,
// then, at the interval the server asked, the stats collect returns for
// the clusters it named, each with its load_report_interval; Run ends with
// its context and leaks nothing.
func TestLoadReporter(t *testing.T) {
	testutil.CheckGoroutines(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &lrsServer{
		plan: &lrsv3.LoadStatsResponse{Clusters: []string{"a"}, LoadReportingInterval: durationpb.New(50 * time.Millisecond)},
		reqs: make(chan *lrsv3.LoadStatsRequest, 16),
	}
	g := grpc.NewServer()
	lrsv3.RegisterLoadReportingServiceServer(g, srv)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = g.Serve(lis)
	}()
	defer func() {
		g.Stop()
		<-served
	}()

	b := bootstrap(lis.Addr().String(), false)
	b.ClusterManager = &bootstrapv3.ClusterManager{LoadStatsConfig: &corev3.ApiConfigSource{
		ApiType: corev3.ApiConfigSource_GRPC, TransportApiVersion: corev3.ApiVersion_V3,
		GrpcServices: []*corev3.GrpcService{{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: "xds"}}}},
	}}
	asked := make(chan []string, 16)
	lr, err := NewLoadReporter(b, func(clusters []string, all bool) []*endpointv3.ClusterStats {
		if all {
			t.Error("collect asked for all clusters; the server named one")
		}
		select {
		case asked <- clusters:
		default:
		}
		return []*endpointv3.ClusterStats{{ClusterName: "a"}}
	}, nil)
	if err != nil || lr == nil {
		t.Fatalf("NewLoadReporter: %v, %v", lr, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- lr.Run(ctx) }()

	next := func(what string) *lrsv3.LoadStatsRequest {
		t.Helper()
		select {
		case r := <-srv.reqs:
			return r
		case <-time.After(10 * time.Second):
			t.Fatalf("no %s within 10s", what)
			return nil
		}
	}
	if first := next("first request"); first.GetNode().GetId() != nodeID || len(first.GetClusterStats()) != 0 {
		t.Errorf("first request: node %q, %d cluster stats; want node %q and none", first.GetNode().GetId(), len(first.GetClusterStats()), nodeID)
	}
	rep := next("report")
	if cs := rep.GetClusterStats(); len(cs) != 1 || cs[0].GetClusterName() != "a" || cs[0].GetLoadReportInterval().AsDuration() <= 0 {
		t.Errorf("report: %v; want cluster a with its interval", cs)
	}
	if got := <-asked; len(got) != 1 || got[0] != "a" {
		t.Errorf("collect asked for %v, want [a]", got)
	}
	cancel()
	select {
	case err := <-done:
		if err != context.Canceled {
			t.Errorf("Run returned %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}

	// No load_stats_config: no reporter.
	if lr, err := NewLoadReporter(bootstrap(lis.Addr().String(), false), nil, nil); lr != nil || err != nil {
		t.Errorf("without load_stats_config: %v, %v; want nil, nil", lr, err)
	}
}
