package sidecar

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
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

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/mtls/mtlstest"
	"meshd.dev/meshd/proxy/config"
	"meshd.dev/meshd/proxy/identity"
	"meshd.dev/meshd/proxy/stats"
)

// sdsListenerBootstrap: listener "ingress" serving mTLS with secrets from
// the SDS server on the pipe at sock.
func sdsListenerBootstrap(sock string) string {
	y := bootstrap(0, "hi")
	y = strings.Replace(y, "    filter_chains:\n    - filters:", `    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificate_sds_secret_configs:
            - name: default
              sds_config: {api_config_source: {api_type: GRPC, grpc_services: [{envoy_grpc: {cluster_name: spire_agent}}]}}
            validation_context_sds_secret_config:
              name: ROOTCA
              sds_config: {api_config_source: {api_type: GRPC, grpc_services: [{envoy_grpc: {cluster_name: spire_agent}}]}}
      filters:`, 1)
	return "node: {id: web.demo}\n" + y + `  - name: spire_agent
    type: STATIC
    load_assignment:
      cluster_name: spire_agent
      endpoints: [{lb_endpoints: [{endpoint: {address: {pipe: {path: ` + sock + `}}}}]}]
`
}

// TestReadyWaitsForIdentities: /ready stays false until the SDS source has
// sent the SVID (Envoy's listener warming on secrets); then the listener's
// local principal, /certs and the config dump's secrets show it.
func TestReadyWaitsForIdentities(t *testing.T) {
	testutil.CheckGoroutines(t)
	dir, err := os.MkdirTemp("", "sds")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "agent.sock")
	cache := cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil)
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	secretv3.RegisterSecretDiscoveryServiceServer(g, serverv3.NewServer(context.Background(), cache, nil))
	var wg sync.WaitGroup
	wg.Go(func() { _ = g.Serve(lis) })
	defer func() {
		g.Stop()
		wg.Wait()
	}()

	b, err := config.ParseBootstrap([]byte(sdsListenerBootstrap(sock)), "sds.yaml")
	if err != nil {
		t.Fatal(err)
	}
	store := stats.NewStore()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	ids, err := identity.New(identity.Options{Bootstrap: b, Stats: store, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	snap, err := config.CompileResourcesWith(b, nil, ids)
	if err != nil {
		t.Fatal(err)
	}
	s := New(Options{DrainTime: time.Second, Logger: logger, Stats: store, Identities: ids})
	if err := s.Start(snap); err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
	}()
	time.Sleep(200 * time.Millisecond)
	if s.Ready() {
		t.Fatal("ready before the SVID arrived")
	}

	authority := mtlstest.NewCA(t, "example.org")
	certPEM, keyPEM, err := authority.Issue(t, "spiffe://example.org/ns/demo/sa/web").Marshal()
	if err != nil {
		t.Fatal(err)
	}
	secrets, err := cachev3.NewSnapshot("1", map[resourcev3.Type][]types.Resource{resourcev3.SecretType: {
		&tlsv3.Secret{Name: "default", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: certPEM}},
			PrivateKey:       &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: keyPEM}},
		}}},
		&tlsv3.Secret{Name: "ROOTCA", Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: authority.BundlePEM()}},
		}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := cache.SetSnapshot(context.Background(), "web.demo", secrets); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !s.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("not ready 5s after the secrets were served")
		}
		time.Sleep(10 * time.Millisecond)
	}
	certs := s.Certificates()
	if len(certs) != 1 || certs[0].CertChain[0].URIs[0].String() != "spiffe://example.org/ns/demo/sa/web" || len(certs[0].CACerts) != 1 {
		t.Errorf("Certificates() = %+v", certs)
	}
	dump := dumpJSON(t, s)
	for _, want := range []string{"SecretsConfigDump", `"name":"default"`, `"name":"ROOTCA"`, "[redacted]"} {
		if !strings.Contains(string(dump), want) {
			t.Errorf("config dump lacks %s", want)
		}
	}
	if strings.Contains(string(dump), "PRIVATE KEY") {
		t.Error("config dump shows the private key")
	}
	if n := store.Root().Counter("sds.default.update_success").Value(); n != 1 {
		t.Errorf("sds.default.update_success = %d, want 1", n)
	}
}
