package identity

import (
	"context"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"

	"meshd.dev/meshd/ca"
	caclient "meshd.dev/meshd/ca/client"
	"meshd.dev/meshd/examples"
	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/mtls"
	"meshd.dev/meshd/mtls/mtlstest"
	"meshd.dev/meshd/proxy/stats"
	"meshd.dev/meshd/xds/model"
	"meshd.dev/meshd/xds/server"
)

const testTimeout = 10 * time.Second

func secretConfig(name, cluster string) *tlsv3.SdsSecretConfig {
	return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: &corev3.ConfigSource{
		ResourceApiVersion: corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_ApiConfigSource{ApiConfigSource: &corev3.ApiConfigSource{
			ApiType:             corev3.ApiConfigSource_GRPC,
			TransportApiVersion: corev3.ApiVersion_V3,
			GrpcServices: []*corev3.GrpcService{{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
				EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: cluster}}}},
		}},
	}}
}

func staticCluster(name string, addr *corev3.Address) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name: name,
		LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{
			LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{
				Endpoint: &endpointv3.Endpoint{Address: addr}}}},
		}}},
	}
}

func pipeAddr(path string) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: path}}}
}

func tcpAddr(t *testing.T, hostport string) *corev3.Address {
	t.Helper()
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		t.Fatal(err)
	}
	var p uint32
	for _, c := range port {
		p = p*10 + uint32(c-'0')
	}
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: p}}}}
}

func newManager(t *testing.T, node *corev3.Node, clusters ...*clusterv3.Cluster) (*Manager, *stats.Store) {
	t.Helper()
	st := stats.NewStore()
	m, err := New(Options{
		Bootstrap: &bootstrapv3.Bootstrap{Node: node, StaticResources: &bootstrapv3.Bootstrap_StaticResources{Clusters: clusters}},
		Stats:     st,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m, st
}

func waitSVID(t *testing.T, m *Manager) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := m.Wait(ctx); err != nil {
		t.Fatal(err)
	}
}

func counter(st *stats.Store, name string) uint64 {
	return st.Root().Counter(name).Value()
}

// TestBuiltinCA: cluster meshd_identity runs the CA client against a real
// control-plane gRPC server with ca.Service; the SVID carries the
// workload's ID, rotates at half-life, and every rotation is counted.
func TestBuiltinCA(t *testing.T) {
	testutil.CheckGoroutines(t)
	secret := []byte("0123456789abcdef0123456789abcdef")
	td := spiffeid.RequireTrustDomainFromString("example.org")
	root, err := ca.GenerateRoot(td)
	if err != nil {
		t.Fatal(err)
	}
	authority, err := ca.New(td, ca.Options{}, root)
	if err != nil {
		t.Fatal(err)
	}
	tokens := ca.NewTokenAuthenticator(secret, td)
	mesh, err := model.Parse(examples.Mesh, "example")
	if err != nil {
		t.Fatal(err)
	}
	if err := tokens.SetMesh(mesh); err != nil {
		t.Fatal(err)
	}
	srv := server.New(server.Options{Services: ca.NewService(authority, tokens, ca.ServiceOptions{}).Register})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { _ = srv.Serve(lis) })
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		srv.Stop(ctx)
		wg.Wait()
	}()

	node := &corev3.Node{Id: "greeter-server.demo"}
	ca.SetNodeToken(node, ca.BootstrapToken(secret, node.Id))
	st := stats.NewStore()
	m, err := New(Options{
		Bootstrap: &bootstrapv3.Bootstrap{Node: node, StaticResources: &bootstrapv3.Bootstrap_StaticResources{
			Clusters: []*clusterv3.Cluster{staticCluster(BuiltinCACluster, tcpAddr(t, lis.Addr().String()))}}},
		Stats: st,
		CATTL: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	src, err := m.Source(secretConfig("default", BuiltinCACluster), secretConfig("ROOTCA", BuiltinCACluster))
	if err != nil {
		t.Fatal(err)
	}
	waitSVID(t, m)
	svid, err := src.GetX509SVID()
	if err != nil || svid.ID.String() != "spiffe://example.org/ns/demo/sa/greeter-server" {
		t.Fatalf("SVID %v, %v", svid, err)
	}
	if _, err := src.GetX509BundleForTrustDomain(td); err != nil {
		t.Fatal(err)
	}
	// The same config source answers with the same source.
	again, err := m.Source(secretConfig("default", BuiltinCACluster), secretConfig("ROOTCA", BuiltinCACluster))
	if err != nil || again != src {
		t.Fatalf("second Source = %v, %v; want the same source", again, err)
	}
	// TTL 2 s: renewed about every second.
	deadline := time.Now().Add(testTimeout)
	for counter(st, "sds.default.update_success") < 3 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := counter(st, "sds.default.update_success"); n < 3 {
		t.Fatalf("sds.default.update_success = %d after %v, want >= 3", n, testTimeout)
	}
	if counter(st, "sds.ROOTCA.update_success") < 3 || counter(st, "ca_client.renewals") < 2 {
		t.Errorf("ROOTCA updates %d, renewals %d", counter(st, "sds.ROOTCA.update_success"), counter(st, "ca_client.renewals"))
	}
	certs := m.Certs()
	if len(certs) != 1 || certs[0].Kind != "builtin_ca" || len(certs[0].Chain) == 0 || len(certs[0].Roots) != 1 || !certs[0].Roots[0].Equal(root.Root) {
		t.Errorf("Certs() = %+v", certs)
	}

	// With Options.CAToken (meshd sidecar --token-file) the node needs no
	// token: the client asks the function for every request.
	tokenPath := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenPath, []byte(ca.BootstrapToken(secret, "greeter-client.demo")), 0o600); err != nil {
		t.Fatal(err)
	}
	tf, err := caclient.NewTokenFile(tokenPath, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	m2, err := New(Options{
		Bootstrap: &bootstrapv3.Bootstrap{Node: &corev3.Node{Id: "greeter-client.demo"}, StaticResources: &bootstrapv3.Bootstrap_StaticResources{
			Clusters: []*clusterv3.Cluster{staticCluster(BuiltinCACluster, tcpAddr(t, lis.Addr().String()))}}},
		CAToken: tf.Token,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	src2, err := m2.Source(secretConfig("default", BuiltinCACluster), secretConfig("ROOTCA", BuiltinCACluster))
	if err != nil {
		t.Fatal(err)
	}
	waitSVID(t, m2)
	if svid, err := src2.GetX509SVID(); err != nil || svid.ID.String() != "spiffe://example.org/ns/demo/sa/greeter-client" {
		t.Fatalf("SVID from the token file: %v, %v", svid, err)
	}
}

// TestSourceErrors: config sources the manager cannot serve fail with the
// reason.
func TestSourceErrors(t *testing.T) {
	testutil.CheckGoroutines(t)
	m, _ := newManager(t, &corev3.Node{Id: "a.b"},
		staticCluster(BuiltinCACluster, tcpAddr(t, "127.0.0.1:1")),
		staticCluster(WorkloadAPICluster, tcpAddr(t, "127.0.0.1:1")),
		staticCluster("spire_agent", pipeAddr(filepath.Join(t.TempDir(), "agent.sock"))),
	)
	if _, err := m.Source(secretConfig("default", "spire_agent"), secretConfig("ROOTCA", "spire_agent")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name       string
		cert, vali *tlsv3.SdsSecretConfig
		want       string
	}{
		{"unknown cluster", secretConfig("default", "nope"), secretConfig("ROOTCA", "nope"), `cluster "nope" is not a static cluster`},
		{"no token", secretConfig("default", BuiltinCACluster), secretConfig("ROOTCA", BuiltinCACluster), `node.metadata["meshd.token"]`},
		{"workload API without pipe", secretConfig("default", WorkloadAPICluster), secretConfig("ROOTCA", WorkloadAPICluster), "a pipe endpoint"},
		{"other names on one source", secretConfig("other", "spire_agent"), secretConfig("ROOTCA", "spire_agent"), `already serves secrets "default" and "ROOTCA"`},
		{"rest config source", &tlsv3.SdsSecretConfig{Name: "default", SdsConfig: &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_ApiConfigSource{
			ApiConfigSource: &corev3.ApiConfigSource{ApiType: corev3.ApiConfigSource_REST}}}}, secretConfig("ROOTCA", "x"), "api_type: REST is not supported"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := m.Source(tc.cert, tc.vali)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

// sdsServer is a go-control-plane SDS server on a Unix socket, serving
// the secrets of a snapshot cache.
type sdsServer struct {
	cache cachev3.SnapshotCache
	path  string
	ver   int
}

func startSDSServer(t *testing.T) *sdsServer {
	t.Helper()
	s := &sdsServer{cache: cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil), path: filepath.Join(t.TempDir(), "sds.sock")}
	lis, err := net.Listen("unix", s.path)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	secretv3.RegisterSecretDiscoveryServiceServer(g, serverv3.NewServer(context.Background(), s.cache, nil))
	var wg sync.WaitGroup
	wg.Go(func() { _ = g.Serve(lis) })
	t.Cleanup(func() {
		g.Stop()
		wg.Wait()
	})
	return s
}

func (s *sdsServer) set(t *testing.T, node string, secrets ...types.Resource) {
	t.Helper()
	s.ver++
	snap, err := cachev3.NewSnapshot(string(rune('0'+s.ver)), map[resourcev3.Type][]types.Resource{resourcev3.SecretType: secrets})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cache.SetSnapshot(context.Background(), node, snap); err != nil {
		t.Fatal(err)
	}
}

func certSecret(t *testing.T, name string, svid *x509svid.SVID) *tlsv3.Secret {
	t.Helper()
	certPEM, keyPEM, err := svid.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
		CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: certPEM}},
		PrivateKey:       &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: keyPEM}},
	}}}
}

func bundleSecret(name string, pem []byte) *tlsv3.Secret {
	return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
		TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: pem}},
	}}}
}

// waitVersion waits until src has published more than v updates.
func waitVersion(t *testing.T, src mtls.Source, v uint64) {
	t.Helper()
	deadline := time.After(testTimeout)
	for {
		cur, changed := src.Watch()
		if cur > v {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("source stayed at version %d", cur)
		}
	}
}

// TestSDSOverUnixSocket: a real SDS stream (go-control-plane server, Unix
// socket) feeds the source; a new SVID rotates it; a secret meshd cannot
// use is NACKed and the last good SVID keeps serving.
func TestSDSOverUnixSocket(t *testing.T) {
	testutil.CheckGoroutines(t)
	authority := mtlstest.NewCA(t, "example.org")
	const id = "spiffe://example.org/ns/demo/sa/web"
	srv := startSDSServer(t)
	const node = "web.demo"
	srv.set(t, node, certSecret(t, "default", authority.Issue(t, id)), bundleSecret("ROOTCA", authority.BundlePEM()))

	m, st := newManager(t, &corev3.Node{Id: node}, staticCluster("spire_agent", pipeAddr(srv.path)))
	src, err := m.Source(secretConfig("default", "spire_agent"), secretConfig("ROOTCA", "spire_agent"))
	if err != nil {
		t.Fatal(err)
	}
	waitSVID(t, m)
	first, _ := src.GetX509SVID()
	if first.ID.String() != id {
		t.Fatalf("SVID %s, want %s", first.ID, id)
	}
	if _, err := src.GetX509BundleForTrustDomain(first.ID.TrustDomain()); err != nil {
		t.Fatal(err)
	}

	v, _ := src.Watch()
	srv.set(t, node, certSecret(t, "default", authority.Issue(t, id)), bundleSecret("ROOTCA", authority.BundlePEM()))
	waitVersion(t, src, v)
	second, _ := src.GetX509SVID()
	if second.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) == 0 {
		t.Fatal("SVID did not rotate")
	}
	// The source publishes before the stat is counted: poll briefly.
	for deadline := time.Now().Add(testTimeout); counter(st, "sds.default.update_success") < 2 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if n := counter(st, "sds.default.update_success"); n != 2 {
		t.Errorf("sds.default.update_success = %d, want 2", n)
	}

	// A validation context meshd cannot use: NACKed, nothing changes.
	bad := &tlsv3.Secret{Name: "ROOTCA", Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
		CustomValidatorConfig: &corev3.TypedExtensionConfig{Name: "envoy.tls.cert_validator.spiffe"}}}}
	srv.set(t, node, certSecret(t, "default", authority.Issue(t, id)), bad)
	deadline := time.Now().Add(testTimeout)
	for counter(st, "sds.ROOTCA.update_rejected") == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if counter(st, "sds.ROOTCA.update_rejected") == 0 {
		t.Fatal("custom_validator_config was not rejected")
	}
	if cur, _ := src.GetX509SVID(); cur != second {
		t.Error("a rejected response changed the SVID")
	}
}

func TestParseSecret(t *testing.T) {
	authority := mtlstest.NewCA(t, "example.org")
	svid := authority.Issue(t, "spiffe://example.org/ns/a/sa/b")
	good := certSecret(t, "default", svid)
	badKey := certSecret(t, "default", svid)
	badKey.GetTlsCertificate().PrivateKey = &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "nope"}}
	for _, tc := range []struct {
		name    string
		secret  *tlsv3.Secret
		wantErr string
	}{
		{"tls certificate", good, ""},
		{"trusted ca", bundleSecret("ROOTCA", authority.BundlePEM()), ""},
		{"bad key", badKey, `secret "default": tls_certificate`},
		{"no trusted ca", &tlsv3.Secret{Name: "ROOTCA", Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{}}}, "validation_context.trusted_ca: required"},
		{"generic secret", &tlsv3.Secret{Name: "x", Type: &tlsv3.Secret_GenericSecret{GenericSecret: &tlsv3.GenericSecret{}}}, "is not supported"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ps, err := ParseSecret(tc.secret)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (ps.SVID == nil) == (ps.TrustedCA == nil) {
				t.Fatalf("parsed %+v: want exactly one of SVID and TrustedCA", ps)
			}
		})
	}
}

// TestADSSecrets: secrets handed in by the xDS client feed the ADS
// source; the bundle may arrive before the certificate.
func TestADSSecrets(t *testing.T) {
	testutil.CheckGoroutines(t)
	authority := mtlstest.NewCA(t, "example.org")
	m, st := newManager(t, &corev3.Node{Id: "a.b"})
	ads := &tlsv3.SdsSecretConfig{Name: "default", SdsConfig: &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}}
	adsCA := &tlsv3.SdsSecretConfig{Name: "ROOTCA", SdsConfig: ads.SdsConfig}
	src, err := m.Source(ads, adsCA)
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := ParseSecret(bundleSecret("ROOTCA", authority.BundlePEM()))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.UpdateADS([]ADSSecret{{Name: "ROOTCA", Parsed: bundle}}); err != nil {
		t.Fatal(err)
	}
	if _, err := src.GetX509SVID(); err == nil {
		t.Fatal("SVID before the certificate secret")
	}
	cert, err := ParseSecret(certSecret(t, "default", authority.Issue(t, "spiffe://example.org/ns/a/sa/b")))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.UpdateADS([]ADSSecret{{Name: "default", Parsed: cert}}); err != nil {
		t.Fatal(err)
	}
	waitSVID(t, m)
	if _, err := src.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("example.org")); err != nil {
		t.Fatal(err)
	}
	// A certificate from another CA does not verify against the bundle.
	other := mtlstest.NewCA(t, "example.org")
	foreign, _ := ParseSecret(certSecret(t, "default", other.Issue(t, "spiffe://example.org/ns/a/sa/b")))
	if err := m.UpdateADS([]ADSSecret{{Name: "default", Parsed: foreign}}); err == nil || !strings.Contains(err.Error(), "does not verify") {
		t.Fatalf("foreign SVID: err = %v", err)
	}
	if counter(st, "sds.default.update_success") != 1 || counter(st, "sds.default.update_rejected") != 1 {
		t.Errorf("default: success %d rejected %d, want 1 and 1", counter(st, "sds.default.update_success"), counter(st, "sds.default.update_rejected"))
	}
}

// fakeWorkloadAPI serves FetchX509SVID from a channel of responses, as a
// SPIRE agent streams rotations.
type fakeWorkloadAPI struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	updates chan *workload.X509SVIDResponse
}

func (f *fakeWorkloadAPI) FetchX509SVID(_ *workload.X509SVIDRequest, stream workload.SpiffeWorkloadAPI_FetchX509SVIDServer) error {
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case r := <-f.updates:
			if err := stream.Send(r); err != nil {
				return err
			}
		}
	}
}

func workloadResponse(t *testing.T, authority *mtlstest.CA, svid *x509svid.SVID) *workload.X509SVIDResponse {
	t.Helper()
	var chain []byte
	for _, c := range svid.Certificates {
		chain = append(chain, c.Raw...)
	}
	key, err := x509.MarshalPKCS8PrivateKey(svid.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	var bundle []byte
	for _, c := range authority.Bundle().X509Authorities() {
		bundle = append(bundle, c.Raw...)
	}
	return &workload.X509SVIDResponse{Svids: []*workload.X509SVID{{
		SpiffeId: svid.ID.String(), X509Svid: chain, X509SvidKey: key, Bundle: bundle,
	}}}
}

// TestWorkloadAPI: cluster meshd_spiffe_workload_api follows a Workload
// API server on its pipe through go-spiffe's X509Source, rotations
// included.
func TestWorkloadAPI(t *testing.T) {
	testutil.CheckGoroutines(t)
	authority := mtlstest.NewCA(t, "example.org")
	const id = "spiffe://example.org/ns/demo/sa/web"
	path := filepath.Join(t.TempDir(), "agent.sock")
	lis, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	fake := &fakeWorkloadAPI{updates: make(chan *workload.X509SVIDResponse, 4)}
	g := grpc.NewServer()
	workload.RegisterSpiffeWorkloadAPIServer(g, fake)
	var wg sync.WaitGroup
	wg.Go(func() { _ = g.Serve(lis) })
	defer func() {
		g.Stop()
		wg.Wait()
	}()
	first := authority.Issue(t, id)
	fake.updates <- workloadResponse(t, authority, first)

	m, st := newManager(t, &corev3.Node{Id: "web.demo"}, staticCluster(WorkloadAPICluster, pipeAddr(path)))
	defer m.Close()
	src, err := m.Source(secretConfig("default", WorkloadAPICluster), secretConfig("ROOTCA", WorkloadAPICluster))
	if err != nil {
		t.Fatal(err)
	}
	waitSVID(t, m)
	got, _ := src.GetX509SVID()
	if got.ID.String() != id {
		t.Fatalf("SVID %s, want %s", got.ID, id)
	}
	v, _ := src.Watch()
	fake.updates <- workloadResponse(t, authority, authority.Issue(t, id))
	waitVersion(t, src, v)
	got, _ = src.GetX509SVID()
	if got.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) == 0 {
		t.Fatal("SVID did not rotate")
	}
	deadline := time.Now().Add(testTimeout)
	for counter(st, "sds.default.update_success") < 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := counter(st, "sds.default.update_success"); n < 2 {
		t.Errorf("sds.default.update_success = %d, want >= 2", n)
	}
}
