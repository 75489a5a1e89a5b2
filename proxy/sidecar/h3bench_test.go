package sidecar

import (
	"fmt"
	"testing"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/mtls/mtlstest"
)

// BenchmarkProxyGRPCUnaryHTTP3 is BenchmarkProxyGRPCUnary across two
// in-process sidecars speaking HTTP/3 to each other, the path of
// test/xds's TestHTTP3VersusHTTP2: h2c clients call sidecar A (HTTP
// listener, HTTP/3 cluster verifying the peer's SPIFFE ID), whose QUIC
// connection reaches sidecar B (QUIC listener, HTTP/2 cluster), which
// calls the in-process unary upstream. 16 calls in flight on one
// downstream connection, as that test's 16 callers. cpu-ns/op covers both
// sidecars, the client and the upstream; compare variants of the HTTP/3
// path, not absolute figures with the multi-process test. Run it serially
// with a fixed count, for example
//
//	go test -run '^$' -bench ProxyGRPCUnaryHTTP3 -benchtime 20000x -count 6 -cpu 2 ./proxy/sidecar/
func BenchmarkProxyGRPCUnaryHTTP3(b *testing.B) {
	for _, streams := range []int{1, 16} {
		b.Run(fmt.Sprintf("streams=%d", streams), func(b *testing.B) {
			benchUnaryCalls(b, startHTTP3Pair(b), 1, streams)
		})
	}
}

// startHTTP3Pair starts sidecar B (QUIC listener in front of a unary gRPC
// upstream) and sidecar A (HTTP listener "ingress" in front of B over
// HTTP/3) and returns A's listener address.
func startHTTP3Pair(b *testing.B) string {
	const serverID = "spiffe://bench.example/ns/demo/sa/server"
	ca := mtlstest.NewCA(b, "bench.example")
	certFile, keyFile, bundleFile := mtlstest.WriteFiles(b, b.TempDir(), ca.Issue(b, serverID), ca.Bundle())
	up := grpcUnaryUpstream(b)
	sb := start(b, compile(b, testutil.MustH3Bootstrap(b, testutil.H3BootstrapParams{
		CertFile: certFile, KeyFile: keyFile, BackendAddr: up.String(),
	})))
	sa := start(b, compile(b, testutil.MustH3UpstreamBootstrap(b, testutil.H3UpstreamParams{
		ListenerName: "ingress", Cluster: "h3up", UpstreamAddr: listenerAddr(b, sb, testutil.H3ListenerName),
		TrustedCA: bundleFile, PeerSAN: serverID,
	})))
	return listenerAddr(b, sa, "ingress")
}
