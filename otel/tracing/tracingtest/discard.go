package tracingtest

import (
	"context"
	"net"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"

	"meshd.dev/meshd/internal/testutil"
)

// Discard is an OTLP/gRPC trace endpoint that accepts every export
// without decoding it, so that a benchmark measures the sender's cost
// rather than the collector's.
type Discard struct {
	addr     string
	requests atomic.Int64
	bytes    atomic.Int64
}

// StartDiscard starts a Discard collector on a free loopback port; it
// stops with the test.
func StartDiscard(t testing.TB) *Discard {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("discard collector listen: %v", err)
	}
	d := &Discard{addr: ln.Addr().String()}
	srv := d.Server()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return d
}

// NewDiscard returns a Discard that is not serving yet: serve its Server
// on a listener at addr (the discardcollector command does so in a
// process of its own).
func NewDiscard(addr string) *Discard { return &Discard{addr: addr} }

// Server returns a gRPC server with d's TraceService registered.
func (d *Discard) Server() *grpc.Server {
	srv := grpc.NewServer(grpc.ForceServerCodec(rawCodec{}))
	srv.RegisterService(&grpc.ServiceDesc{
		ServiceName: "opentelemetry.proto.collector.trace.v1.TraceService",
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{
			MethodName: "Export",
			Handler: func(_ any, _ context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
				var b []byte
				if err := dec(&b); err != nil {
					return nil, err
				}
				d.requests.Add(1)
				d.bytes.Add(int64(len(b)))
				return &[]byte{}, nil // an empty ExportTraceServiceResponse
			},
		}},
	}, struct{}{})
	return srv
}

// Addr is the endpoint's host:port.
func (d *Discard) Addr() string { return d.addr }

// Requests and Bytes count the exports received and their encoded size.
func (d *Discard) Requests() int64 { return d.requests.Load() }

// Bytes is the total encoded size of the exports received.
func (d *Discard) Bytes() int64 { return d.bytes.Load() }

// rawCodec hands message bytes through untouched.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }

func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append((*(v.(*[]byte)))[:0], data...)
	return nil
}

func (rawCodec) Name() string { return "proto" }

// DiscardAddrPrefix starts the line on which the discardcollector command
// announces its address.
const DiscardAddrPrefix = "listening "

// StartDiscardProcess runs bin, a build of the discardcollector command,
// and returns its address: a Discard endpoint in a process of its own, so
// a benchmark's CPU figures (getrusage of the test process) leave out the
// collector's receiving work and garbage. The process ends with the test
// (its stdin is closed, then it is killed if it lingers).
func StartDiscardProcess(t testing.TB, bin string) string {
	t.Helper()
	return testutil.StartAnnouncingProcess(t, bin, DiscardAddrPrefix)
}
