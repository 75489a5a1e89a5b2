package localmesh

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/interop"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"meshd.dev/meshd/xds/model"
)

// sampleServer reports whether meshd up runs a sample gRPC server for w:
// w has an inbound side for a grpc Service.
func sampleServer(w *model.Workload) bool {
	return w.Spec.Inbound != nil && w.ServiceRef != nil && w.ServiceRef.Spec.Protocol == model.ProtocolGRPC
}

// sampleTarget is one outbound port a sample client calls.
type sampleTarget struct {
	workload *model.Workload
	service  *model.Service
	addr     string // 127.0.0.1:<outbound port>
}

// sampleTargets returns the outbound ports of m's Workloads that lead to
// grpc Services: where sample clients call.
func sampleTargets(m *model.Mesh) []sampleTarget {
	var ts []sampleTarget
	for _, w := range m.Workloads {
		for i, out := range w.Spec.Outbound {
			svc := w.OutboundRefs[i]
			if svc == nil || svc.Spec.Protocol != model.ProtocolGRPC {
				continue
			}
			ts = append(ts, sampleTarget{w, svc, net.JoinHostPort("127.0.0.1", fmt.Sprint(out.Port))})
		}
	}
	return ts
}

// greeterServer is the sample server: grpc-go's interop TestService (and
// server reflection, so grpcurl can list it) with the limits its Service
// declares in spec.serverLimits enforced as grpc-go enforces them.
type greeterServer struct {
	addr string
	srv  *grpc.Server
	done chan struct{}
}

// serverOptions returns the grpc-go options that enforce limits: a nil
// field is grpc-go's default.
func serverOptions(limits *model.ServerLimits) []grpc.ServerOption {
	if limits == nil {
		return nil
	}
	var opts []grpc.ServerOption
	if limits.MaxConcurrentStreams != nil {
		opts = append(opts, grpc.MaxConcurrentStreams(*limits.MaxConcurrentStreams))
	}
	if limits.MinPingInterval != nil {
		opts = append(opts, grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime: limits.MinPingInterval.D(),
			// Sidecars keep idle pooled connections alive with PINGs;
			// grpc-go's default would strike those.
			PermitWithoutStream: true,
		}))
	}
	return opts
}

// startGreeterServer listens on w's spec.inbound.app and serves there.
func startGreeterServer(w *model.Workload) (*greeterServer, error) {
	lis, err := net.Listen("tcp", w.Spec.Inbound.App)
	if err != nil {
		return nil, fmt.Errorf("sample server for Workload %s: spec.inbound.app: %w", w.NodeID(), err)
	}
	s := grpc.NewServer(serverOptions(w.ServiceRef.Spec.ServerLimits)...)
	testpb.RegisterTestServiceServer(s, interop.NewTestServer())
	reflection.Register(s)
	g := &greeterServer{addr: lis.Addr().String(), srv: s, done: make(chan struct{})}
	go func() {
		defer close(g.done)
		_ = s.Serve(lis) // returns when stopped
	}()
	return g, nil
}

// stop stops the server gracefully, then at once after timeout.
func (g *greeterServer) stop(timeout time.Duration) {
	t := time.AfterFunc(timeout, g.srv.Stop)
	defer t.Stop()
	g.srv.GracefulStop()
	<-g.done
}

// callTimeout bounds one sample call.
const callTimeout = 5 * time.Second

// samplePayload is the size of the request and response payloads.
const samplePayload = 32

// greeterClient calls UnaryCall on one target from several callers,
// recording each call in a Recorder.
type greeterClient struct {
	target sampleTarget
	conn   *grpc.ClientConn
	rec    *Recorder
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// startGreeterClient starts callers goroutines calling target, together at
// most rate calls per second (0: as fast as they can).
func startGreeterClient(target sampleTarget, callers int, rate float64, rec *Recorder) (*greeterClient, error) {
	conn, err := grpc.NewClient("passthrough:///"+target.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("sample client to %s on %s: %w", target.service.Key(), target.addr, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &greeterClient{target: target, conn: conn, rec: rec, cancel: cancel}
	client := testpb.NewTestServiceClient(conn)
	var every time.Duration
	if rate > 0 {
		every = time.Duration(float64(callers) / rate * float64(time.Second))
	}
	for range callers {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.loop(ctx, client, every)
		}()
	}
	return c, nil
}

func (c *greeterClient) loop(ctx context.Context, client testpb.TestServiceClient, every time.Duration) {
	req := &testpb.SimpleRequest{
		ResponseSize: samplePayload,
		Payload:      &testpb.Payload{Body: make([]byte, samplePayload)},
	}
	var tick <-chan time.Time
	if every > 0 {
		t := time.NewTicker(every)
		defer t.Stop()
		tick = t.C
	}
	for {
		if tick != nil {
			select {
			case <-ctx.Done():
				return
			case <-tick:
			}
		} else if ctx.Err() != nil {
			return
		}
		callCtx, cancel := context.WithTimeout(ctx, callTimeout)
		start := time.Now()
		_, err := client.UnaryCall(callCtx, req)
		d := time.Since(start)
		cancel()
		if err != nil && ctx.Err() != nil {
			return // stopping: the call was cancelled by us, not failed
		}
		c.rec.Record(d, err)
	}
}

// stop cancels the callers, waits for them and closes the connection.
func (c *greeterClient) stop() error {
	c.cancel()
	c.wg.Wait()
	if err := c.conn.Close(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("sample client to %s: %w", c.target.addr, err)
	}
	return nil
}
