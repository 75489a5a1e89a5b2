package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/mtls/mtlstest"
)

// sdsAgent is an SDS server on a Unix socket, as a SPIRE agent serves
// Envoy: go-control-plane's SecretDiscoveryService over a snapshot cache
// holding each node's "default" SVID and the "ROOTCA" bundle.
type sdsAgent struct {
	cache cachev3.SnapshotCache
	path  string
	ca    *mtlstest.CA
}

func startSDSAgent(t *testing.T) *sdsAgent {
	t.Helper()
	// Unix socket paths are short: keep it out of the long test temp dir.
	dir, err := os.MkdirTemp("", "sds")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	a := &sdsAgent{cache: cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil), path: filepath.Join(dir, "agent.sock"), ca: mtlstest.NewCA(t, "test.example")}
	lis, err := net.Listen("unix", a.path)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	secretv3.RegisterSecretDiscoveryServiceServer(g, serverv3.NewServer(context.Background(), a.cache, nil))
	var wg sync.WaitGroup
	wg.Go(func() { _ = g.Serve(lis) })
	t.Cleanup(func() {
		g.Stop()
		wg.Wait()
	})
	return a
}

// issue gives node a new SVID for id (version v).
func (a *sdsAgent) issue(t *testing.T, node, id, v string) {
	t.Helper()
	certPEM, keyPEM, err := a.ca.Issue(t, id).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	snap, err := cachev3.NewSnapshot(v, map[resourcev3.Type][]types.Resource{resourcev3.SecretType: {
		&tlsv3.Secret{Name: "default", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: certPEM}},
			PrivateKey:       &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: keyPEM}},
		}}},
		&tlsv3.Secret{Name: "ROOTCA", Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: a.ca.BundlePEM()}},
		}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.cache.SetSnapshot(context.Background(), node, snap); err != nil {
		t.Fatal(err)
	}
}

// agentCluster is the static pipe cluster naming the agent's socket.
func agentCluster(path string) string {
	return fmt.Sprintf(`  - name: spire_agent
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: spire_agent
      endpoints: [{lb_endpoints: [{endpoint: {address: {pipe: {path: %q}}}}]}]
`, path)
}

func plainNode(node string) string {
	return fmt.Sprintf(`node: {id: %s, cluster: demo}
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 0}}
`, node)
}

// TestMTLSSidecarsSDSPipe (issue 5, SDS source): two real sidecars take
// their SVIDs over SDS from an agent on a Unix socket, as Envoy does from a
// SPIRE agent, and carry calls over mTLS; new SVIDs pushed by the agent are
// applied (sds.default.update_success) with no failed call and show on
// /certs.
func TestMTLSSidecarsSDSPipe(t *testing.T) {
	app := testutil.StartGRPCInteropServer(t)
	agent := startSDSAgent(t)
	agent.issue(t, mtlsServerNode, mtlsServerID, "1")
	agent.issue(t, mtlsClientNode, mtlsClientID, "1")
	server := testutil.StartSidecar(t, serverBootstrap(plainNode(mtlsServerNode), app.Addr, "spire_agent", agentCluster(agent.path)))
	client := testutil.StartSidecar(t, clientBootstrap(plainNode(mtlsClientNode), server.ListenerAddr(t, "inbound"), "spire_agent", agentCluster(agent.path)))
	if got := certIDs(t, client); len(got) != 1 || got[0] != mtlsClientID {
		t.Errorf("client /certs SPIFFE IDs %v, want [%s]", got, mtlsClientID)
	}

	cc, err := grpc.NewClient(client.ListenerAddr(t, "outbound"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	tc := testgrpc.NewTestServiceClient(cc)
	call := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
		defer cancel()
		_, err := tc.UnaryCall(ctx, &testgrpc.SimpleRequest{ResponseSize: 64})
		return err
	}
	if err := call(); err != nil {
		t.Fatalf("call over mTLS: %v", err)
	}
	for v := 2; v <= 4; v++ {
		agent.issue(t, mtlsServerNode, mtlsServerID, fmt.Sprint(v))
		agent.issue(t, mtlsClientNode, mtlsClientID, fmt.Sprint(v))
		deadline := time.Now().Add(requestTimeout)
		for server.Stats(t)["sds.default.update_success"] < int64(v) || client.Stats(t)["sds.default.update_success"] < int64(v) {
			if time.Now().After(deadline) {
				t.Fatalf("update %d not applied: server %d, client %d", v, server.Stats(t)["sds.default.update_success"], client.Stats(t)["sds.default.update_success"])
			}
			if err := call(); err != nil {
				t.Fatalf("call during rotation %d: %v", v, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// A new downstream connection after the rotations is served too.
	fresh, err := grpc.NewClient(client.ListenerAddr(t, "outbound"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	if _, err := testgrpc.NewTestServiceClient(fresh).EmptyCall(ctx, &testgrpc.Empty{}); err != nil {
		t.Fatalf("call on a fresh connection after rotations: %v", err)
	}
}
