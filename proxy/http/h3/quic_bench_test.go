package h3

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/qlogwriter"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/mtls/mtlstest"
)

// quicBenchCallers is the concurrency of BenchmarkQUICUnary, that of the
// sidecar benchmark (test/xds TestHTTP3VersusHTTP2).
const quicBenchCallers = 16

// BenchmarkQUICUnary measures the QUIC transport alone as meshd sets it
// up, under unary exchanges shaped like a gRPC EmptyCall between sidecars:
// quicBenchCallers callers each open a stream, write a 200-byte request
// with FIN, and read a 100-byte response to its FIN. Both ends use
// QUICOptions.Config, the client allowing no incoming bidirectional
// streams as Dial does. It reports the process's CPU per exchange (both
// ends, from getrusage) and the QUIC packets both ends sent per exchange.
//
// Variants: the ClientConn's qlog trace (quic-go builds an event for every
// packet once a connection has a trace); and the callers spread over
// several connections, each with its own UDP socket or all on one
// quic.Transport.
func BenchmarkQUICUnary(b *testing.B) {
	trace := func(c *quic.Config) {
		c.Tracer = func(context.Context, bool, quic.ConnectionID) qlogwriter.Trace { return nopTrace{} }
	}
	for _, bc := range []struct {
		name   string
		client func(*quic.Config)
		conns  int
		shared bool
	}{
		{name: "meshd", conns: 1},
		{name: "client-trace", client: trace, conns: 1},
		{name: "4conns-own-sockets", conns: 4},
		{name: "4conns-one-transport", conns: 4, shared: true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			cc := QUICOptions{}.Config()
			cc.MaxIncomingStreams = -1
			if bc.client != nil {
				bc.client(cc)
			}
			benchQUICUnary(b, QUICOptions{}.Config(), cc, bc.conns, bc.shared)
		})
	}
}

// nopTrace is a qlog trace recording nothing: what a trace that only
// watches a few events costs quic-go.
type nopTrace struct{}

func (nopTrace) AddProducer() qlogwriter.Recorder { return nopTrace{} }
func (nopTrace) RecordEvent(qlogwriter.Event)     {}
func (nopTrace) Close() error                     { return nil }

func benchQUICUnary(b *testing.B, sc, cc *quic.Config, conns int, shared bool) {
	testutil.CheckGoroutines(b)
	ca := mtlstest.NewCA(b, "test.example")
	svid := ca.Issue(b, "spiffe://test.example/ns/a/sa/server")
	cert := mtlstest.TLSCertificate(svid)
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	tr := &quic.Transport{Conn: udp}
	ln, err := tr.Listen(&tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{NextProto}, MinVersion: tls.VersionTLS13}, sc)
	if err != nil {
		b.Fatal(err)
	}
	var served sync.WaitGroup
	defer func() {
		_ = ln.Close()
		_ = tr.Close()
		_ = udp.Close()
		served.Wait()
	}()
	served.Go(func() {
		for {
			conn, err := ln.Accept(context.Background())
			if err != nil {
				return
			}
			served.Go(func() { serveUnary(conn) })
		}
	})

	pool := x509.NewCertPool()
	pool.AddCert(ca.Bundle().X509Authorities()[0])
	ctc := &tls.Config{RootCAs: pool, ServerName: "test.example", InsecureSkipVerify: true, NextProtos: []string{NextProto}}
	dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var clientTr *quic.Transport
	if shared {
		cu, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			b.Fatal(err)
		}
		clientTr = &quic.Transport{Conn: cu}
		defer func() { _ = clientTr.Close(); _ = cu.Close() }()
	}
	cs := make([]*quic.Conn, conns)
	for i := range cs {
		var c *quic.Conn
		if clientTr != nil {
			c, err = clientTr.Dial(dctx, udp.LocalAddr(), ctc, cc)
		} else {
			c, err = quic.DialAddr(dctx, udp.LocalAddr().String(), ctc, cc)
		}
		if err != nil {
			b.Fatal(err)
		}
		defer c.CloseWithError(0, "")
		cs[i] = c
	}

	// A call waiting for stream credit gives up after a minute; reads
	// end when the connection does (its idle timeout at the latest).
	ctx, stop := context.WithTimeout(context.Background(), time.Minute)
	defer stop()
	req := make([]byte, 200)
	var (
		mu     sync.Mutex
		failed error
		fails  int
	)
	call := func(conn *quic.Conn, buf []byte) {
		s, err := conn.OpenStreamSync(ctx)
		if err == nil {
			_, err = s.Write(req)
		}
		if err == nil {
			err = s.Close()
		}
		var n int
		if err == nil {
			n, err = io.ReadFull(s, buf[:100])
			if err == nil {
				_, err = s.Read(buf)
			}
			if errors.Is(err, io.EOF) && n == 100 {
				err = nil
			}
		}
		if err != nil {
			mu.Lock()
			if fails++; failed == nil {
				failed = err
			}
			mu.Unlock()
		}
	}
	run := func(n int) {
		var wg sync.WaitGroup
		for i := range quicBenchCallers {
			share := n / quicBenchCallers
			if i < n%quicBenchCallers {
				share++
			}
			conn := cs[i%len(cs)]
			wg.Go(func() {
				buf := make([]byte, 512)
				for range share {
					call(conn, buf)
				}
			})
		}
		wg.Wait()
	}
	packets := func() (n uint64) {
		for _, c := range cs {
			st := c.ConnectionStats()
			n += st.PacketsSent + st.PacketsReceived
		}
		return n
	}
	run(1000) // warm up: flow-control and congestion windows open
	pkts := packets()
	cpu := testutil.ProcessCPU(b)
	b.ResetTimer()
	run(b.N)
	b.StopTimer()
	cpu = testutil.ProcessCPU(b) - cpu
	pkts = packets() - pkts
	if failed != nil {
		b.Fatalf("%d calls failed; first: %v", fails, failed)
	}
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
	b.ReportMetric(float64(pkts)/float64(b.N), "pkts/op")
}

// serveUnary answers each request stream of conn with 100 bytes once the
// request's FIN arrived.
func serveUnary(conn *quic.Conn) {
	resp := make([]byte, 100)
	for {
		s, err := conn.AcceptStream(context.Background())
		if err != nil {
			return
		}
		go func() {
			if _, err := io.Copy(io.Discard, s); err != nil {
				s.CancelWrite(0)
				return
			}
			_, _ = s.Write(resp)
			_ = s.Close()
		}()
	}
}
