package xds_test

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"meshd.dev/meshd/internal/meshtest"
	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/mtls/mtlstest"
	"meshd.dev/meshd/xds/server"
)

// TestHTTP3InteropUnderControlPlane is acceptance 1 of HTTP/3: with
// Service.spec.upstreamProtocol http3, the control plane gives the server's
// sidecar a QUIC inbound listener and the client's sidecar an auto_config
// HTTP/3 cluster with the built-in CA's SVIDs (mTLS, SPIFFE SAN match); the
// grpc-go interop cases pass through client sidecar -> HTTP/3 -> server
// sidecar while the applications speak HTTP/2 to their sidecars.
func TestHTTP3InteropUnderControlPlane(t *testing.T) {
	client := testutil.BuildGoBinary(t, "meshd.dev/meshd/test/e2e/internal/interopclient")
	app := testutil.StartGRPCInteropServer(t)
	p := newMTLSPorts(t)
	meshPath := filepath.Join(t.TempDir(), "mesh.yaml")
	mesh := strings.Replace(mtlsMesh(app.Addr, p, nil), "upstreamProtocol: http2", "upstreamProtocol: http3", 1)
	writeFile(t, meshPath, mesh)
	cp := startControlPlane(t, meshPath)
	cp.WaitStatus(t, "a published version", waitTimeout, func(st server.Status) bool { return st.Version != "" })
	srv := mtlsSidecar(t, cp, meshPath, serverNode, false)
	cli := mtlsSidecar(t, cp, meshPath, clientNode, false)
	waitCallCode(t, meshtest.DialLoopback(t, p.Outbound), codes.OK, waitTimeout)

	for _, tc := range sidecarInteropCases {
		t.Run(tc, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), interopCaseTimeout)
			defer cancel()
			cmd := exec.CommandContext(ctx, client,
				"--server_host=127.0.0.1", "--server_port="+strconv.Itoa(p.Outbound), "--test_case="+tc,
				"--timeout="+(interopCaseTimeout-5*time.Second).String())
			cmd.WaitDelay = time.Second
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("interop case %s over HTTP/3: %v\n%s", tc, err, out)
			}
		})
	}

	cst, sst := cli.Stats(t), srv.Stats(t)
	cluster := "cluster.outbound|50051||greeter.demo"
	quicPrefix := fmt.Sprintf("http.inbound-quic_%d", p.Inbound)
	for _, c := range []struct {
		st   map[string]int64
		name string
		min  int64
	}{
		{cst, cluster + ".upstream_cx_http3_total", 1},
		{cst, cluster + ".upstream_rq_total", int64(len(sidecarInteropCases))},
		{sst, quicPrefix + ".downstream_rq_http3_total", int64(len(sidecarInteropCases))},
		{sst, quicPrefix + ".downstream_cx_http3_total", 1},
	} {
		if c.st[c.name] < c.min {
			t.Errorf("%s = %d, want at least %d (client: %v; server: %v)", c.name, c.st[c.name], c.min, testutil.FilterStats(cst, "http3"), testutil.FilterStats(sst, "http3"))
		}
	}
	if n := cst[cluster+".upstream_http3_broken"]; n != 0 {
		t.Errorf("upstream_http3_broken = %d: the client fell back to HTTP/2", n)
	}
	if body := srv.Admin(t, "GET", "/config_dump"); !strings.Contains(body, "QuicDownstreamTransport") || !strings.Contains(body, "require_client_certificate") {
		t.Errorf("server sidecar's config has no QUIC listener requiring client certificates")
	}
}

// h3FallbackServerBootstrap is sidecar B with only a TCP inbound (TLS with
// a static SVID, client certificates required) in front of the app: no
// QUIC listener, as if UDP were blocked.
const h3FallbackServerBootstrap = `node: {id: b, cluster: fallback}
admin:
  address:
    socket_address: { address: 127.0.0.1, port_value: 0 }
static_resources:
  listeners:
  - name: inbound
    address:
      socket_address: { address: 127.0.0.1, port_value: %d }
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificates:
            - certificate_chain: { filename: %q }
              private_key: { filename: %q }
            validation_context:
              trusted_ca: { filename: %q }
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: app
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: app, timeout: 0s }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: app
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    load_assignment:
      cluster_name: app
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: 127.0.0.1, port_value: %s }
`

// TestHTTP3FallbackUDPBlocked is acceptance 4 of HTTP/3: the UDP port of
// sidecar B is held by a socket that drops every datagram, so sidecar A's
// QUIC handshakes never complete; A marks B's HTTP/3 broken (counted in
// upstream_http3_broken) and carries every call over HTTP/2 on TCP with
// mTLS: zero failed calls out of a concurrent load.
func TestHTTP3FallbackUDPBlocked(t *testing.T) {
	app := testutil.StartGRPCInteropServer(t)
	ca := mtlstest.NewCA(t, meshTrustDomain)
	bCert, bKey, bundle := mtlstest.WriteFiles(t, t.TempDir(), ca.Issue(t, serverID), ca.Bundle())
	aCert, aKey, _ := mtlstest.WriteFiles(t, t.TempDir(), ca.Issue(t, clientID), ca.Bundle())

	port := meshtest.FreePorts(t, 1)[0]
	blackhole, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	if err != nil {
		t.Fatalf("UDP port %d for the blackhole: %v", port, err)
	}
	var dropped atomic.Int64
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		buf := make([]byte, 2048)
		for {
			if _, _, err := blackhole.ReadFromUDP(buf); err != nil {
				return
			}
			dropped.Add(1)
		}
	}()
	t.Cleanup(func() { _ = blackhole.Close(); <-drained })

	_, appPort, _ := net.SplitHostPort(app.Addr)
	testutil.StartSidecar(t, fmt.Sprintf(h3FallbackServerBootstrap, port, bCert, bKey, bundle, appPort))
	// Sidecar A: an HTTP listener for the app and an auto_config cluster
	// (HTTP/3 first, HTTP/2 over TCP while HTTP/3 is broken) to B with
	// SPIFFE SAN matching.
	a := testutil.StartSidecar(t, testutil.MustH3UpstreamBootstrap(t, testutil.H3UpstreamParams{
		ListenerName: "outbound", Cluster: "greeter", UpstreamAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		TrustedCA: bundle, PeerSAN: serverID, CertFile: aCert, KeyFile: aKey, Fallback: true, RouteTimeout: 10 * time.Second,
	}))
	out, _ := strconv.Atoi(strings.Split(a.ListenerAddr(t, "outbound"), ":")[1])
	client := meshtest.DialLoopback(t, out)

	const callers, perCaller = 8, 50
	var failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			for range perCaller {
				ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
				_, err := client.EmptyCall(ctx, &testpb.Empty{})
				cancel()
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		})
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d of %d calls failed with UDP blocked; first: %v", n, callers*perCaller, firstErr.Load())
	}
	st := a.Stats(t)
	if st["cluster.greeter.upstream_http3_broken"] < 1 || st["cluster.greeter.upstream_cx_http3_total"] != 0 || st["cluster.greeter.upstream_cx_total"] < 1 || dropped.Load() == 0 {
		t.Errorf("upstream_http3_broken %d, upstream_cx_http3_total %d, upstream_cx_total %d, datagrams dropped %d; want HTTP/3 marked broken, no HTTP/3 connection, HTTP/2 connections, and QUIC attempts dropped",
			st["cluster.greeter.upstream_http3_broken"], st["cluster.greeter.upstream_cx_http3_total"], st["cluster.greeter.upstream_cx_total"], dropped.Load())
	}
	t.Logf("%d calls over the HTTP/2 fallback; %d QUIC datagrams dropped; %s", callers*perCaller, dropped.Load(), fmt.Sprint(testutil.FilterStats(st, "http3")))
}
