package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/protobuf/encoding/protojson"

	"meshd.dev/meshd/ca"
	"meshd.dev/meshd/internal/meshtest"
	"meshd.dev/meshd/internal/testutil"
)

// The workloads of mtlsIdentityMesh and their SPIFFE IDs.
const (
	mtlsServerNode = "greeter-server.demo"
	mtlsClientNode = "greeter-client.demo"
	mtlsServerID   = "spiffe://test.example/ns/demo/sa/greeter-server"
	mtlsClientID   = "spiffe://test.example/ns/demo/sa/greeter-client"
)

// mtlsIdentityMesh declares the two workloads the control plane's CA
// issues SVIDs for (its token table follows the mesh); the sidecars run
// static bootstraps and nothing connects to the data-plane ports named
// here, so they need not be free.
const mtlsIdentityMesh = `apiVersion: meshd.dev/v1alpha1
kind: Mesh
metadata:
  name: test
spec:
  trustDomain: test.example
---
apiVersion: meshd.dev/v1alpha1
kind: Service
metadata:
  name: greeter
  namespace: demo
spec:
  protocol: grpc
  port: 50051
  upstreamProtocol: http2
---
apiVersion: meshd.dev/v1alpha1
kind: Workload
metadata:
  name: greeter-server
  namespace: demo
spec:
  serviceAccount: greeter-server
  service: greeter
  inbound:
    port: 15006
    app: 127.0.0.1:1
---
apiVersion: meshd.dev/v1alpha1
kind: Workload
metadata:
  name: greeter-client
  namespace: demo
spec:
  serviceAccount: greeter-client
  outbound:
    - service: greeter.demo
      port: 15001
`

// startIdentityControlPlane runs `meshd control-plane` (meshtest's
// harness: ready with a published version, killed at cleanup) with its
// built-in CA issuing SVIDs of lifetime ttl, and returns its xDS (and CA)
// address and the CA directory.
func startIdentityControlPlane(t *testing.T, ttl time.Duration) (xdsAddr, caDir string) {
	t.Helper()
	meshPath := filepath.Join(t.TempDir(), "mesh.yaml")
	if err := os.WriteFile(meshPath, []byte(mtlsIdentityMesh), 0o600); err != nil {
		t.Fatal(err)
	}
	cp := meshtest.StartControlPlane(t, meshtest.ControlPlaneConfig{MeshPath: meshPath, Args: []string{"--svid-ttl", ttl.String()}})
	return cp.XDS, cp.CADir
}

// sdsTLSFrom is the common_tls_context of both sides: SVID and bundle
// from the secrets "default" and "ROOTCA" of cluster, the peer matched by
// its SPIFFE ID.
func sdsTLSFrom(indent, peerID, cluster string) string {
	s := `common_tls_context:
  tls_certificate_sds_secret_configs:
  - name: default
    sds_config: {resource_api_version: V3, api_config_source: {api_type: GRPC, transport_api_version: V3, grpc_services: [{envoy_grpc: {cluster_name: CLUSTER}}]}}
  combined_validation_context:
    default_validation_context:
      match_typed_subject_alt_names: [{san_type: URI, matcher: {exact: "` + peerID + `"}}]
    validation_context_sds_secret_config:
      name: ROOTCA
      sds_config: {resource_api_version: V3, api_config_source: {api_type: GRPC, transport_api_version: V3, grpc_services: [{envoy_grpc: {cluster_name: CLUSTER}}]}}
`
	s = strings.ReplaceAll(s, "CLUSTER", cluster)
	return indent + strings.ReplaceAll(strings.TrimSuffix(s, "\n"), "\n", "\n"+indent) + "\n"
}

// identityCluster is the static cluster of the built-in CA.
func identityCluster(xdsAddr string) string {
	host, port, _ := net.SplitHostPort(xdsAddr)
	return fmt.Sprintf(`  - name: meshd_identity
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    load_assignment:
      cluster_name: meshd_identity
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: %s, port_value: %s}}}}]}]
`, host, port)
}

func hcmFilter(cluster string) string {
	return fmt.Sprintf(`      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: %[1]s
          codec_type: HTTP2
          route_config:
            virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: "/"}, route: {cluster: %[1]s}}]}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
`, cluster)
}

const h2Options = `    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
`

// mtlsServerBootstrap: an inbound listener requiring the client's SVID
// (greeter-client only) in front of app.
func mtlsServerBootstrap(xdsAddr, caDir, app string) string {
	return serverBootstrap(nodeBlock(mtlsServerNode, caDir), app, "meshd_identity", identityCluster(xdsAddr))
}

// serverBootstrap is the server sidecar's bootstrap with its secrets from
// cluster idCluster, whose YAML is clusterYAML.
func serverBootstrap(node, app, idCluster, clusterYAML string) string {
	host, port, _ := net.SplitHostPort(app)
	return node + `static_resources:
  listeners:
  - name: inbound
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
` + sdsTLSFrom("          ", mtlsClientID, idCluster) + hcmFilter("app") + `  clusters:
  - name: app
    type: STATIC
    connect_timeout: 1s
` + h2Options + fmt.Sprintf(`    load_assignment:
      cluster_name: app
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: %s, port_value: %s}}}}]}]
`, host, port) + clusterYAML
}

// mtlsClientBootstrap: a plaintext outbound listener whose cluster calls
// the server sidecar over mTLS, accepting only greeter-server's ID.
func mtlsClientBootstrap(xdsAddr, caDir, inbound string) string {
	return clientBootstrap(nodeBlock(mtlsClientNode, caDir), inbound, "meshd_identity", identityCluster(xdsAddr))
}

// clientBootstrap is the client sidecar's bootstrap with its secrets from
// cluster idCluster, whose YAML is clusterYAML.
func clientBootstrap(node, inbound, idCluster, clusterYAML string) string {
	host, port, _ := net.SplitHostPort(inbound)
	return node + `static_resources:
  listeners:
  - name: outbound
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - ` + strings.TrimPrefix(hcmFilter("greeter"), "      ") + `  clusters:
  - name: greeter
    type: STATIC
    connect_timeout: 1s
` + h2Options + `        common_http_protocol_options: {max_requests_per_connection: 500}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
` + sdsTLSFrom("        ", mtlsServerID, idCluster) + fmt.Sprintf(`    load_assignment:
      cluster_name: greeter
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: %s, port_value: %s}}}}]}]
`, host, port) + clusterYAML
}

// nodeBlock is the node with its bootstrap token and an admin on port 0.
func nodeBlock(node, caDir string) string {
	secret, err := ca.LoadOrCreateTokenSecret(caDir)
	if err != nil {
		panic(err) // the test created caDir's control plane already
	}
	return fmt.Sprintf(`node:
  id: %s
  cluster: demo
  metadata: {%q: %q}
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 0}}
`, node, ca.TokenMetadataKey, ca.BootstrapToken(secret, node))
}

// certIDs returns the URI SANs of the leaves /certs lists.
func certIDs(t *testing.T, sc *testutil.Sidecar) []string {
	t.Helper()
	var certs adminv3.Certificates
	body := sc.Admin(t, "GET", "/certs")
	if err := protojson.Unmarshal([]byte(body), &certs); err != nil {
		t.Fatalf("/certs: %v\n%s", err, body)
	}
	var ids []string
	for _, c := range certs.GetCertificates() {
		if len(c.GetCertChain()) > 0 && len(c.GetCaCert()) > 0 {
			for _, san := range c.GetCertChain()[0].GetSubjectAltNames() {
				ids = append(ids, san.GetUri())
			}
		}
	}
	return ids
}

// TestMTLSSidecarsBuiltinCA (issue 5, acceptance 1 and 4 in small): two
// real sidecars with static bootstraps get their SVIDs from a real
// `meshd control-plane` through cluster meshd_identity, and carry the
// grpc-go interop cases over mTLS; /certs shows each side's SPIFFE ID. With
// SVIDs living 2 s, concurrent callers see no failed call while both
// sidecars rotate at least 3 times (sds.default.update_success).
func TestMTLSSidecarsBuiltinCA(t *testing.T) {
	interop := testutil.BuildGoBinary(t, "meshd.dev/meshd/test/e2e/internal/interopclient")
	app := testutil.StartGRPCInteropServer(t)
	xdsAddr, caDir := startIdentityControlPlane(t, 2*time.Second)
	server := testutil.StartSidecar(t, mtlsServerBootstrap(xdsAddr, caDir, app.Addr))
	inbound := server.ListenerAddr(t, "inbound")
	client := testutil.StartSidecar(t, mtlsClientBootstrap(xdsAddr, caDir, inbound))
	outbound := client.ListenerAddr(t, "outbound")

	if got := certIDs(t, server); len(got) != 1 || got[0] != mtlsServerID {
		t.Errorf("server /certs SPIFFE IDs %v, want [%s]", got, mtlsServerID)
	}
	if got := certIDs(t, client); len(got) != 1 || got[0] != mtlsClientID {
		t.Errorf("client /certs SPIFFE IDs %v, want [%s]", got, mtlsClientID)
	}
	if dump := server.Admin(t, "GET", "/config_dump"); !strings.Contains(dump, "dynamic_active_secrets") || !strings.Contains(dump, "[redacted]") {
		t.Errorf("/config_dump lacks the redacted SDS secrets:\n%.1500s", dump)
	}

	// A client without a certificate is refused at the handshake.
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: requestTimeout}, "tcp", inbound,
		&tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}}) //nolint:gosec // the test only checks the server refuses
	if err == nil {
		_ = conn.SetReadDeadline(time.Now().Add(requestTimeout))
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
	}
	// mtls.ServerConfig refuses it in VerifyConnection: a bad_certificate
	// alert.
	if err == nil || !strings.Contains(err.Error(), "bad certificate") {
		t.Errorf("client without certificate: %v, want the handshake refused with bad_certificate", err)
	}

	host, port, _ := net.SplitHostPort(outbound)
	for _, tc := range []string{"empty_unary", "large_unary", "client_streaming", "server_streaming", "ping_pong", "custom_metadata", "status_code_and_message"} {
		t.Run(tc, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), interopCaseTimeout)
			defer cancel()
			cmd := exec.CommandContext(ctx, interop, "--server_host="+host, "--server_port="+port, "--test_case="+tc,
				"--timeout="+(interopCaseTimeout-5*time.Second).String())
			cmd.WaitDelay = time.Second
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("interop case %s: %v\n%s", tc, err, out)
			}
		})
	}

	t.Run("rotation under load", func(t *testing.T) {
		startServer := server.Stats(t)["sds.default.update_success"]
		startClient := client.Stats(t)["sds.default.update_success"]
		cc, err := grpc.NewClient(outbound, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		tc := testgrpc.NewTestServiceClient(cc)
		var calls, failures atomic.Int64
		var firstErr atomic.Value
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
					_, err := tc.EmptyCall(ctx, &testgrpc.Empty{})
					cancel()
					calls.Add(1)
					if err != nil {
						failures.Add(1)
						firstErr.CompareAndSwap(nil, err.Error())
					}
				}
			})
		}
		// The client cluster's connections carry 500 requests each, so
		// new sidecar-to-sidecar handshakes keep happening while both
		// SVIDs rotate.
		deadline := time.Now().Add(20 * time.Second)
		// Run until both SVIDs rotated 3 times and the client cluster
		// opened 3 connections (handshakes under rotating SVIDs), however
		// slow the machine: the deadline only bounds the test.
		for time.Now().Before(deadline) {
			cs := client.Stats(t)
			if server.Stats(t)["sds.default.update_success"]-startServer >= 3 &&
				cs["sds.default.update_success"]-startClient >= 3 &&
				cs["cluster.greeter.upstream_cx_total"] >= 3 {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		fresh, err := grpc.NewClient(outbound, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
		_, freshErr := testgrpc.NewTestServiceClient(fresh).EmptyCall(ctx, &testgrpc.Empty{})
		cancel()
		fresh.Close()
		close(stop)
		wg.Wait()

		rs := server.Stats(t)["sds.default.update_success"] - startServer
		rc := client.Stats(t)["sds.default.update_success"] - startClient
		t.Logf("%d calls, %d failed; rotations: server %d, client %d", calls.Load(), failures.Load(), rs, rc)
		if failures.Load() != 0 {
			t.Errorf("%d of %d calls failed during rotation; first: %v", failures.Load(), calls.Load(), firstErr.Load())
		}
		if rs < 3 || rc < 3 {
			t.Errorf("rotations seen: server %d, client %d; want >= 3 each", rs, rc)
		}
		if freshErr != nil {
			t.Errorf("call on a fresh connection after rotations: %v", freshErr)
		}
		if n := client.Stats(t)["cluster.greeter.upstream_cx_total"]; n < 3 {
			t.Errorf("cluster.greeter.upstream_cx_total = %d, want new connections (handshakes) during the rotations", n)
		}
	})
}
