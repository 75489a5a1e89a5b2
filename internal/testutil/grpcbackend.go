package testutil

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
)

// grpcStopTimeout bounds GracefulStop at cleanup before falling back to Stop.
const grpcStopTimeout = 5 * time.Second

// GRPCServer is a grpc-go server with the interop TestService
// (interop.NewTestServer) registered, listening with plaintext HTTP/2 (h2c
// prior knowledge) on 127.0.0.1. It counts the RPCs its handlers are running,
// so tests can tell when calls have reached the backend.
type GRPCServer struct {
	// Addr is the listening address ("127.0.0.1:port"). Immutable.
	Addr string
	// Server is the underlying server; tests may GracefulStop it early.
	Server *grpc.Server

	active  atomic.Int64
	started atomic.Int64
}

// StartGRPCInteropServer starts a GRPCServer with opts added to the server
// options. It is stopped (gracefully, then forcibly after a few seconds) when
// the test ends.
func StartGRPCInteropServer(t testing.TB, opts ...grpc.ServerOption) *GRPCServer {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("grpc interop server: listen: %v", err)
	}
	g := &GRPCServer{Addr: lis.Addr().String()}
	opts = append([]grpc.ServerOption{
		grpc.ChainUnaryInterceptor(g.unaryInterceptor),
		grpc.ChainStreamInterceptor(g.streamInterceptor),
	}, opts...)
	g.Server = grpc.NewServer(opts...)
	testgrpc.RegisterTestServiceServer(g.Server, interop.NewTestServer())
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = g.Server.Serve(lis) // returns once Stop/GracefulStop is called
	}()
	t.Cleanup(func() {
		stopped := make(chan struct{})
		go func() {
			g.Server.GracefulStop()
			close(stopped)
		}()
		select {
		case <-stopped:
		case <-time.After(grpcStopTimeout):
			g.Server.Stop()
			<-stopped
		}
		<-served
	})
	return g
}

// ActiveRPCs returns how many RPC handlers are running now.
func (g *GRPCServer) ActiveRPCs() int64 { return g.active.Load() }

// StartedRPCs returns how many RPC handlers have been entered in total.
func (g *GRPCServer) StartedRPCs() int64 { return g.started.Load() }

func (g *GRPCServer) unaryInterceptor(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	g.started.Add(1)
	g.active.Add(1)
	defer g.active.Add(-1)
	return h(ctx, req)
}

func (g *GRPCServer) streamInterceptor(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	g.started.Add(1)
	g.active.Add(1)
	defer g.active.Add(-1)
	return h(srv, ss)
}
