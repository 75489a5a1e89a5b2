package tracingtest

import (
	"context"
	"net"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
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
