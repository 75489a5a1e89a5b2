// Package client is the sidecar's ADS client: it subscribes to Listeners
// and Clusters (and, for them, RouteConfigurations and
// ClusterLoadAssignments) on one aggregated stream to the control plane
// named in the bootstrap, validates and compiles every update into a whole
// config.Snapshot, and hands it to the sidecar. An update that does not
// compile is NACKed with error_detail naming the resource, field and
// reason; the last good snapshot keeps serving.
//
// Both ADS variants are spoken: state of the world (api_type GRPC, the
// default) and incremental (DELTA_GRPC). Warming follows Envoy: an EDS
// cluster goes live once its endpoints arrived and a listener using rds once
// its route configuration arrived; until then the previous version of that
// resource (if any) keeps serving. The first snapshot is published when the
// initial fetch completed (or InitialFetchTimeout passed).
//
// On a broken stream the client reconnects with exponential backoff and
// jitter and re-subscribes with what it last accepted (SotW version_info,
// delta initial_resource_versions), so an unchanged control plane has
// nothing to resend and traffic is never interrupted.
package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"

	"meshd.dev/meshd/proxy/config"
	"meshd.dev/meshd/proxy/identity"
	"meshd.dev/meshd/proxy/stats"
	"meshd.dev/meshd/proxy/tlscontext"
)

// Defaults for Options.
const (
	DefaultInitialFetchTimeout = 15 * time.Second // Envoy's initial_fetch_timeout
	DefaultBackoffBase         = 500 * time.Millisecond
	DefaultBackoffMax          = 30 * time.Second
)

// Options configure a Client.
type Options struct {
	// Bootstrap must have dynamic_resources.ads_config (validated by
	// config.ValidateBootstrap); its node identifies the sidecar and its
	// static cluster named by ads_config is the control plane's address.
	Bootstrap *bootstrapv3.Bootstrap
	// Apply publishes a compiled snapshot. It is called from one goroutine
	// at a time; an error NACKs the update that produced the snapshot.
	Apply func(*config.Snapshot) error
	// InitialFetchTimeout bounds the initial warm-up: after it the client
	// publishes what it has (default DefaultInitialFetchTimeout).
	InitialFetchTimeout time.Duration
	// BackoffBase and BackoffMax bound the reconnect backoff (defaults
	// DefaultBackoffBase, DefaultBackoffMax); each wait is drawn uniformly
	// from [d/2, d) where d doubles from BackoffBase up to BackoffMax.
	BackoffBase, BackoffMax time.Duration
	// Stats receives the client's Envoy-named stats; nil: a private store.
	Stats  *stats.Store
	Logger *slog.Logger
	// Secrets resolves the SDS secrets of listeners' and clusters' TLS
	// contexts (the sidecar's identity manager); nil makes a TLS context
	// with SDS secrets a NACK naming it.
	Secrets tlscontext.Secrets
	// ADSSecrets receives every accepted set of Secret resources (those
	// TLS contexts name with `sds_config: {ads: {}}`), parsed; normally
	// identity.Manager.UpdateADS. An error NACKs the update. Nil: secrets
	// are validated and otherwise unused.
	ADSSecrets func([]identity.ADSSecret) error
}

// Client is one ADS client. Run drives it; the other methods are safe for
// concurrent use.
type Client struct {
	opts   Options
	target string
	delta  bool
	logger *slog.Logger
	st     clientStats

	warmed     chan struct{}
	warmedOnce sync.Once

	mu     sync.Mutex // guards status
	status Status
}

// Status is the client's view of its control plane, for tests and admin.
type Status struct {
	Connected bool
	// Accepted is the last ACKed version_info per type URL (SotW) or the
	// last accepted nonce's system version (delta).
	Accepted map[string]string
	// LastNACK is the error_detail message of the last NACK per type URL.
	LastNACK map[string]string
	// Reconnects counts streams opened after the first.
	Reconnects int
}

type clientStats struct {
	connected *stats.Gauge
	byType    map[string]typeStats
}

type typeStats struct {
	attempt, success, rejected *stats.Counter
}

// New checks the bootstrap's ADS settings and returns a client; it does not
// connect until Run.
func New(opts Options) (*Client, error) {
	b := opts.Bootstrap
	ads := b.GetDynamicResources().GetAdsConfig()
	if ads == nil {
		return nil, errors.New("dynamic_resources.ads_config: required for the xDS client")
	}
	if opts.Apply == nil {
		return nil, errors.New("xds client: Options.Apply is required")
	}
	if opts.InitialFetchTimeout <= 0 {
		opts.InitialFetchTimeout = DefaultInitialFetchTimeout
	}
	if opts.BackoffBase <= 0 {
		opts.BackoffBase = DefaultBackoffBase
	}
	if opts.BackoffMax < opts.BackoffBase {
		opts.BackoffMax = max(DefaultBackoffMax, opts.BackoffBase)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Stats == nil {
		opts.Stats = stats.NewStore()
	}
	target, err := controlPlaneAddress(b)
	if err != nil {
		return nil, err
	}
	c := &Client{
		opts:   opts,
		target: target,
		delta:  ads.GetApiType() == corev3.ApiConfigSource_DELTA_GRPC,
		logger: opts.Logger.With("xds", target),
		warmed: make(chan struct{}),
		status: Status{Accepted: map[string]string{}, LastNACK: map[string]string{}},
	}
	root := opts.Stats.Root()
	c.st.connected = root.Scope("control_plane").Gauge("connected_state")
	c.st.byType = map[string]typeStats{}
	for _, tu := range allTypes {
		sc := root.Scope(typeStatScope[tu])
		c.st.byType[tu] = typeStats{
			attempt:  sc.Counter("update_attempt"),
			success:  sc.Counter("update_success"),
			rejected: sc.Counter("update_rejected"),
		}
	}
	return c, nil
}

// controlPlaneAddress returns host:port of the first endpoint of the static
// cluster that ads_config's envoy_grpc names.
func controlPlaneAddress(b *bootstrapv3.Bootstrap) (string, error) {
	gs := b.GetDynamicResources().GetAdsConfig().GetGrpcServices()
	if len(gs) != 1 || gs[0].GetEnvoyGrpc() == nil {
		return "", errors.New("dynamic_resources.ads_config.grpc_services: exactly one envoy_grpc service is required")
	}
	return staticClusterAddress(b, gs[0].GetEnvoyGrpc().GetClusterName(), "dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name")
}

// staticClusterAddress returns host:port of the first endpoint of the
// static cluster name; field names the bootstrap field that refers to it.
func staticClusterAddress(b *bootstrapv3.Bootstrap, name, field string) (string, error) {
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() != name {
			continue
		}
		for _, lep := range c.GetLoadAssignment().GetEndpoints() {
			for _, e := range lep.GetLbEndpoints() {
				sa := e.GetEndpoint().GetAddress().GetSocketAddress()
				if sa != nil && sa.GetPortValue() != 0 {
					return net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue()))), nil
				}
			}
		}
		return "", fmt.Errorf("%s: static cluster %q: load_assignment has no endpoint with a port", field, name)
	}
	return "", fmt.Errorf("%s: no static cluster %q", field, name)
}

// Warmed is closed once the first snapshot was applied.
func (c *Client) Warmed() <-chan struct{} { return c.warmed }

// Status returns a copy of the client's status.
func (c *Client) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.status
	s.Accepted = cloneMap(s.Accepted)
	s.LastNACK = cloneMap(s.LastNACK)
	return s
}

func cloneMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// Run connects to the control plane and keeps the sidecar's config in step
// with it until ctx is done; it then closes the connection and returns
// ctx's error. A broken stream is re-opened with backoff; the served config
// stays as it was meanwhile.
func (c *Client) Run(ctx context.Context) error {
	cc, err := grpc.NewClient("passthrough:///"+c.target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: c.opts.BackoffBase, Multiplier: 2, Jitter: 0.2, MaxDelay: c.opts.BackoffMax},
			MinConnectTimeout: time.Second,
		}),
	)
	if err != nil {
		return fmt.Errorf("xds client: control plane %s: %w", c.target, err)
	}
	defer cc.Close()

	st := newState(c)
	initTimer := time.NewTimer(c.opts.InitialFetchTimeout)
	defer initTimer.Stop()
	go func() {
		select {
		case <-initTimer.C:
			st.initTimedOut()
		case <-ctx.Done():
		}
	}()

	delay := c.opts.BackoffBase
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			c.mu.Lock()
			c.status.Reconnects++
			c.mu.Unlock()
		}
		progressed, err := c.runStream(ctx, cc, st)
		c.setConnected(false)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if progressed {
			delay = c.opts.BackoffBase
		}
		wait := delay/2 + rand.N(delay/2+1)
		c.logger.Warn("ADS stream ended; reconnecting", "err", err, "backoff", wait)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		delay = min(delay*2, c.opts.BackoffMax)
	}
}

func (c *Client) setConnected(v bool) {
	c.mu.Lock()
	c.status.Connected = v
	c.mu.Unlock()
	if v {
		c.st.connected.Set(1)
	} else {
		c.st.connected.Set(0)
	}
}

// runStream serves one ADS stream until it breaks; progressed reports
// whether the control plane answered at least once.
func (c *Client) runStream(ctx context.Context, cc *grpc.ClientConn, st *state) (progressed bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(cc)
	var t transport
	if c.delta {
		s, err := ads.DeltaAggregatedResources(sctx)
		if err != nil {
			return false, err
		}
		t = &deltaTransport{s: s}
	} else {
		s, err := ads.StreamAggregatedResources(sctx)
		if err != nil {
			return false, err
		}
		t = &sotwTransport{s: s}
	}
	return st.serve(sctx, cancel, t)
}

func (c *Client) recordAccepted(typeURL, version string) {
	c.mu.Lock()
	c.status.Accepted[typeURL] = version
	c.mu.Unlock()
	c.st.byType[typeURL].success.Inc()
}

func (c *Client) recordNACK(typeURL, msg string) {
	c.mu.Lock()
	c.status.LastNACK[typeURL] = msg
	c.mu.Unlock()
	c.st.byType[typeURL].rejected.Inc()
}
