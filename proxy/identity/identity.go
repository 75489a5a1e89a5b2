// Package identity is the sidecar's SDS secret side: it resolves the
// sds_config of TLS contexts to rotating [mtls.Source] values that outlive
// config snapshots, and keeps them fed.
//
// A secret's sds_config names where identities come from:
//
//   - api_config_source with envoy_grpc cluster "meshd_identity" (a static
//     cluster at the control plane's gRPC address): meshd's built-in CA.
//     The sidecar does not speak SDS to it; it runs ca/client with the
//     bootstrap token in node.metadata["meshd.token"] and serves the
//     signed SVID and the CA's bundle as the local secrets. This is
//     meshd-specific: Envoy would try SDS against that cluster.
//   - cluster "meshd_spiffe_workload_api" (a pipe address): the SPIFFE
//     Workload API through go-spiffe ([mtls.NewWorkloadAPISource]).
//   - any other static cluster (pipe or TCP): a real SDS client
//     (SecretDiscoveryService.StreamSecrets, state of the world), as Envoy
//     speaks to a SPIRE agent.
//   - ads: secrets arriving on the control plane's ADS stream, handed in
//     by the xDS client through [Manager.UpdateADS].
//
// Each config source yields one [mtls.StaticSource]: its TLS certificate
// secret sets the SVID, its validation context secret the trust bundle of
// the SVID's trust domain. Every update counts
// sds.<secret name>.update_success, as Envoy does.
package identity

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"meshd.dev/meshd/mtls"
	"meshd.dev/meshd/proxy/stats"
	"meshd.dev/meshd/proxy/tlscontext"
)

// Cluster names with a meshd-specific meaning in a secret's sds_config.
const (
	// BuiltinCACluster names the static cluster of the control plane's
	// built-in CA (meshd.ca.v1.CertificateAuthority).
	BuiltinCACluster = "meshd_identity"
	// WorkloadAPICluster names the static pipe cluster of a SPIFFE
	// Workload API socket.
	WorkloadAPICluster = "meshd_spiffe_workload_api"
)

// Options configure a Manager.
type Options struct {
	// Bootstrap supplies the node (and its CA token) and the static
	// clusters that sds_config names. Required.
	Bootstrap *bootstrapv3.Bootstrap
	// Stats receives sds.<name>.update_success / update_rejected and the
	// ca_client.* stats; nil creates a private store.
	Stats *stats.Store
	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// CATTL is the SVID lifetime asked of the built-in CA; zero takes the
	// CA's default.
	CATTL time.Duration
	// CAToken, when set, supplies the built-in CA token for every SVID
	// request instead of node.metadata["meshd.token"] (which is read once
	// at start): `meshd sidecar --token-file` passes a rotating projected
	// service-account token (caclient.TokenFile.Token) here.
	CAToken func() (string, error)
}

// Manager owns the identity providers of one sidecar. It implements
// [tlscontext.Secrets]; it is safe for concurrent use.
type Manager struct {
	opts     Options
	log      *slog.Logger
	clusters map[string]*clusterv3.Cluster
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup

	mu        sync.Mutex
	providers map[string]*provider // by cluster name; "" is ADS
	closed    bool
}

var _ tlscontext.Secrets = (*Manager)(nil)

// provider is one config source's identity: a StaticSource kept fed by a
// goroutine (or by UpdateADS), and the secret names it serves.
type provider struct {
	key       string // cluster name, or "" for ADS
	kind      string // "builtin_ca", "workload_api", "sds", "ads"
	src       *mtls.StaticSource
	certName  string
	validName string
	close     func() // closes what run opened; nil when none

	adsMu sync.Mutex  // serialises UpdateADS
	ads   secretState // what ADS delivered so far (kind "ads")
}

// New returns a manager for opts.Bootstrap. Nothing starts until a TLS
// context is compiled against it: each provider starts when Source first
// asks for it, so compiling the bootstrap starts the static ones and a
// following Wait covers them.
func New(opts Options) (*Manager, error) {
	if opts.Bootstrap == nil {
		return nil, errors.New("identity: Bootstrap is required")
	}
	if opts.Stats == nil {
		opts.Stats = stats.NewStore()
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	m := &Manager{
		opts:      opts,
		log:       opts.Logger,
		clusters:  map[string]*clusterv3.Cluster{},
		providers: map[string]*provider{},
	}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	for _, c := range opts.Bootstrap.GetStaticResources().GetClusters() {
		m.clusters[c.GetName()] = c
	}
	return m, nil
}

// Source implements [tlscontext.Secrets]: it returns the source of the
// config source both secrets name, starting its provider on first use.
// One config source serves one certificate secret name and one
// validation secret name; asking it for different names is an error.
func (m *Manager) Source(cert, validation *tlsv3.SdsSecretConfig) (mtls.Source, error) {
	cluster, ads, err := tlscontext.SDSClusterName(cert.GetSdsConfig())
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, errors.New("identity: manager is closed")
	}
	if p, ok := m.providers[cluster]; ok {
		if p.certName != cert.GetName() || p.validName != validation.GetName() {
			return nil, fmt.Errorf("secrets %q and %q: the identity source %s already serves secrets %q and %q (one certificate and one validation secret per source)",
				cert.GetName(), validation.GetName(), p.describe(), p.certName, p.validName)
		}
		return p.src, nil
	}
	p := &provider{key: cluster, src: mtls.NewStaticSource(), certName: cert.GetName(), validName: validation.GetName()}
	if ads {
		p.kind = "ads"
		m.providers[cluster] = p
		return p.src, nil
	}
	c, ok := m.clusters[cluster]
	if !ok {
		return nil, fmt.Errorf("sds_config: cluster %q is not a static cluster (identity sources are named in static_resources)", cluster)
	}
	var start func(*provider) error
	switch cluster {
	case BuiltinCACluster:
		start = func(p *provider) error { return m.startBuiltinCA(p, c) }
	case WorkloadAPICluster:
		start = func(p *provider) error { return m.startWorkloadAPI(p, c) }
	default:
		start = func(p *provider) error { return m.startSDS(p, c) }
	}
	if err := start(p); err != nil {
		return nil, fmt.Errorf("sds_config cluster %q: %w", cluster, err)
	}
	m.providers[cluster] = p
	return p.src, nil
}

// StartWellKnown starts the providers of the static clusters named
// BuiltinCACluster and WorkloadAPICluster at once, serving the secrets
// tlscontext.SVIDSecretName and tlscontext.BundleSecretName, so that the
// SVID is fetched while dynamic listeners and clusters are still on their
// way. It reports how many providers run afterwards.
func (m *Manager) StartWellKnown() (int, error) {
	for _, name := range []string{BuiltinCACluster, WorkloadAPICluster} {
		if _, ok := m.clusters[name]; !ok {
			continue
		}
		sc := func(secret string) *tlsv3.SdsSecretConfig {
			return &tlsv3.SdsSecretConfig{Name: secret, SdsConfig: &corev3.ConfigSource{
				ConfigSourceSpecifier: &corev3.ConfigSource_ApiConfigSource{ApiConfigSource: &corev3.ApiConfigSource{
					ApiType: corev3.ApiConfigSource_GRPC,
					GrpcServices: []*corev3.GrpcService{{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
						EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: name}}}},
				}},
			}}
		}
		if _, err := m.Source(sc(tlscontext.SVIDSecretName), sc(tlscontext.BundleSecretName)); err != nil {
			return 0, err
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.providers), nil
}

func (p *provider) describe() string {
	if p.key == "" {
		return "ads"
	}
	return fmt.Sprintf("cluster %q", p.key)
}

// Wait blocks until every started provider has an SVID and a bundle, or
// ctx ends (the error then names the providers still waiting).
func (m *Manager) Wait(ctx context.Context) error {
	for {
		var pending []string
		var changed []<-chan struct{}
		m.mu.Lock()
		for _, p := range m.providers {
			_, ch := p.src.Watch()
			if _, err := p.src.GetX509SVID(); err != nil {
				pending = append(pending, p.describe())
				changed = append(changed, ch)
			}
		}
		m.mu.Unlock()
		if len(pending) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("identity: no SVID yet from %v: %w", pending, ctx.Err())
		case <-changed[0]:
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Close stops every provider and waits for their goroutines.
func (m *Manager) Close() error {
	m.mu.Lock()
	m.closed = true
	ps := make([]*provider, 0, len(m.providers))
	for _, p := range m.providers {
		ps = append(ps, p)
	}
	m.mu.Unlock()
	m.cancel()
	m.wg.Wait()
	for _, p := range ps {
		if p.close != nil {
			p.close()
		}
	}
	return nil
}

// counters returns sds.<name>.update_success and update_rejected.
func (m *Manager) counters(name string) (success, rejected *stats.Counter) {
	sc := m.opts.Stats.Root().Scope("sds").Scope(name)
	return sc.Counter("update_success"), sc.Counter("update_rejected")
}

// countUpdates counts every update of p's source as an update of both its
// secrets, until the manager closes.
func (m *Manager) countUpdates(p *provider) {
	certOK, _ := m.counters(p.certName)
	validOK, _ := m.counters(p.validName)
	m.wg.Go(func() {
		seen, changed := p.src.Watch()
		for {
			select {
			case <-m.ctx.Done():
				return
			case <-changed:
			}
			var v uint64
			v, changed = p.src.Watch()
			n := v - seen
			seen = v
			certOK.Add(n)
			if p.validName != p.certName {
				validOK.Add(n)
			}
		}
	})
}

// grpcTarget returns the gRPC target of static cluster c's first endpoint:
// "unix:///path" for a pipe, "passthrough:///ip:port" for a socket
// address.
func grpcTarget(c *clusterv3.Cluster) (string, error) {
	for _, lle := range c.GetLoadAssignment().GetEndpoints() {
		for _, lbe := range lle.GetLbEndpoints() {
			a := lbe.GetEndpoint().GetAddress()
			if p := a.GetPipe(); p != nil {
				return "unix://" + p.GetPath(), nil
			}
			if sa := a.GetSocketAddress(); sa != nil {
				return "passthrough:///" + net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue()))), nil
			}
		}
	}
	return "", errors.New("load_assignment: no endpoint with a pipe or socket_address")
}

// pipePath returns the path of c's first pipe endpoint.
func pipePath(c *clusterv3.Cluster) (string, error) {
	for _, lle := range c.GetLoadAssignment().GetEndpoints() {
		for _, lbe := range lle.GetLbEndpoints() {
			if p := lbe.GetEndpoint().GetAddress().GetPipe(); p != nil {
				return p.GetPath(), nil
			}
		}
	}
	return "", errors.New("load_assignment: a pipe endpoint (the Workload API socket) is required")
}

// dial opens a plaintext gRPC connection to cluster c (the identity
// sources are local sockets or the control plane's xDS port).
func dial(c *clusterv3.Cluster) (*grpc.ClientConn, error) {
	target, err := grpcTarget(c)
	if err != nil {
		return nil, err
	}
	return grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

// node returns the bootstrap's node.
func (m *Manager) node() *corev3.Node { return m.opts.Bootstrap.GetNode() }

// CertSet is one identity source's certificates in use, for the admin's
// /certs.
type CertSet struct {
	// Source describes the config source ("cluster \"meshd_identity\"",
	// "ads"); Kind is "builtin_ca", "workload_api", "sds" or "ads".
	Source, Kind string
	// CertSecret and ValidationSecret are the SDS secret names served.
	CertSecret, ValidationSecret string
	// Chain is the current SVID's chain, leaf first; Roots the trust
	// bundle of its trust domain. Both are shared: do not modify.
	Chain, Roots []*x509.Certificate
	// Version counts the source's updates so far.
	Version uint64
}

// Certs lists the current SVID chain and bundle roots of every source that
// has an SVID, ordered by source.
func (m *Manager) Certs() []CertSet {
	m.mu.Lock()
	ps := make([]*provider, 0, len(m.providers))
	for _, p := range m.providers {
		ps = append(ps, p)
	}
	m.mu.Unlock()
	slices.SortFunc(ps, func(a, b *provider) int { return strings.Compare(a.key, b.key) })
	var out []CertSet
	for _, p := range ps {
		version, _ := p.src.Watch()
		svid, err := p.src.GetX509SVID()
		if err != nil {
			continue
		}
		cs := CertSet{Source: p.describe(), Kind: p.kind, CertSecret: p.certName, ValidationSecret: p.validName, Chain: svid.Certificates, Version: version}
		if b, err := p.src.GetX509BundleForTrustDomain(svid.ID.TrustDomain()); err == nil {
			cs.Roots = b.X509Authorities()
		}
		out = append(out, cs)
	}
	return out
}

// SVIDs returns the current SVID of every provider that has one, keyed by
// its certificate secret name (for /config_dump's secrets).
func (m *Manager) SVIDs() map[string]*x509svid.SVID {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]*x509svid.SVID{}
	for _, p := range m.providers {
		if s, err := p.src.GetX509SVID(); err == nil {
			out[p.certName] = s
		}
	}
	return out
}
