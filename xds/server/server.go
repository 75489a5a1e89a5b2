// Package server is meshd's xDS control-plane server: go-control-plane's
// ADS/xDS gRPC server (state of the world and delta) over its SnapshotCache,
// fed with per-node snapshots translated from the mesh file.
//
// Nodes. A node whose ID is a Workload's node ID ("<name>.<namespace>") is a
// sidecar and gets the resources translated for it. A proxy the mesh does
// not name (IsProxyNode: Envoy or a meshd sidecar whose Workload is missing,
// or whose Pod the Kubernetes source left out) is hashed to
// UnknownSidecarKey and gets an empty config at the published version: no
// listeners, no clusters, which it accepts (rather than NACKing API
// listeners it cannot bind), so it serves nothing until the mesh names it.
// The server warns once per such node and lists it on /status
// (unknown_nodes). Every other node (a proxyless grpc-go client, whose node
// IDs are arbitrary) is hashed to ProxylessKey and gets the proxyless
// resources: API listeners named "<name>.<namespace>:<port>" with their
// routes, EDS clusters and endpoints. Shared keys keep the cache at one
// snapshot for any number of such nodes, and need no per-stream bookkeeping
// to set snapshots lazily.
//
// Publishing. Publish checks every snapshot (go-control-plane's
// Snapshot.Consistent for sidecars, plus meshd's own cross-reference check,
// which also follows the RDS names of api_listeners that Consistent skips).
// If any snapshot is inconsistent nothing is published: the last good set
// keeps being served, and the error is logged and shown on /status.
//
// NACKs. go-control-plane's SnapshotCache answers a state-of-the-world NACK
// by sending the rejected version again at once, so a bad push would become
// a request/response storm. The server records every NACK (node, type,
// version, error_detail) and holds that stream on the rejected version: the
// next response for that type goes out only when a different snapshot is
// published. Delta streams track what they sent, so the cache does not
// resend there; NACKs are recorded the same way.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"meshd.dev/meshd/proxy/stats"
	"meshd.dev/meshd/xds/model"
	"meshd.dev/meshd/xds/translate"
)

// ProxylessKey is the cache key every node that is not a Workload of the
// current mesh is hashed to. It contains a '/', which no Workload node ID
// ("<name>.<namespace>", DNS labels) can.
const ProxylessKey = "proxyless/*"

// UnknownSidecarKey is the cache key of every proxy (IsProxyNode) that is
// not a Workload of the current mesh; its snapshot has no resources. Like
// ProxylessKey it contains a '/', which no Workload node ID can.
const UnknownSidecarKey = "unknown-sidecar/*"

// Options configure a Server. The zero value is usable.
type Options struct {
	// Logger receives the server's logs; nil discards them.
	Logger *slog.Logger
	// Stats is the store the server's counters live in; nil creates one.
	// The counters are "control_plane.xds_pushes", "xds_acks", "xds_nacks",
	// "snapshots_published", "snapshots_rejected", the gauges
	// "control_plane.xds_streams_active", "control_plane.connected_nodes"
	// (distinct node IDs with a stream) and "control_plane.unknown_nodes"
	// (proxies with a stream whose node ID the mesh does not name), and the
	// histogram
	// "control_plane.xds_push_ack_latency_ms" (response sent to ACK).
	Stats *stats.Store
	// Services, when set, registers further gRPC services (meshd's CA)
	// on the gRPC server Serve creates, beside the xDS services.
	Services func(grpc.ServiceRegistrar)
	// Tracer, when set, records a span per push from the response to the
	// node's ACK or NACK (span "xds.push", status ERROR with the NACK's
	// error_detail).
	Tracer trace.Tracer
	// Tuning, when set, lists the automatic changes of closed-loop tuning
	// (xds/autotune) for /status.
	Tuning func() []TuningChange
	// Rejected, when set, lists the source's objects that are left out of
	// the published mesh, for /status (the Kubernetes source's
	// Rejections).
	Rejected func() []RejectedObject
}

// Server serves xDS from the last published mesh. All methods are safe for
// concurrent use.
type Server struct {
	log      *slog.Logger
	store    *stats.Store
	services func(grpc.ServiceRegistrar) // immutable; nil: xDS only
	tuning   func() []TuningChange       // immutable; nil: no autoTune
	rejected func() []RejectedObject     // immutable; nil: none reported
	metrics  metrics

	hash    *nodeHash
	cache   cachev3.SnapshotCache
	tracker *tracker
	xds     serverv3.Server
	ctx     context.Context // ends the xDS server's streams on Stop
	cancel  context.CancelFunc

	serving atomic.Bool // a listener is being served

	mu        sync.Mutex // guards the fields below
	published *publication
	lastError *ErrorRecord
	grpc      *grpc.Server
	stopped   bool
}

// publication is one published, consistent translation.
type publication struct {
	version  string
	at       time.Time
	nodes    []string // sidecar node IDs, sorted
	warnings []model.Warning
}

// ErrorRecord is the last mesh or publish error, kept for /status.
type ErrorRecord struct {
	Message string    `json:"message"`
	At      time.Time `json:"at"`
}

type metrics struct {
	pushes, acks, nacks *stats.Counter
	published, rejected *stats.Counter
	streamsActive       *stats.Gauge
	// connectedNodes counts distinct node IDs with an open stream.
	connectedNodes *stats.Gauge
	// unknownNodes counts proxies with an open stream that the mesh does
	// not name.
	unknownNodes *stats.Gauge
	// pushLatency is the time from a response being sent to the node's
	// ACK of it, in ms: how long nodes take to apply a push.
	pushLatency *stats.Histogram
}

// New returns a Server with nothing published: streams that open before the
// first Publish wait for it.
func New(opts Options) *Server {
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	store := opts.Stats
	if store == nil {
		store = stats.NewStore()
	}
	sc := store.Root().Scope("control_plane")
	s := &Server{
		log:      logger,
		store:    store,
		services: opts.Services,
		tuning:   opts.Tuning,
		rejected: opts.Rejected,
		metrics: metrics{
			pushes:         sc.Counter("xds_pushes"),
			acks:           sc.Counter("xds_acks"),
			nacks:          sc.Counter("xds_nacks"),
			published:      sc.Counter("snapshots_published"),
			rejected:       sc.Counter("snapshots_rejected"),
			streamsActive:  sc.Gauge("xds_streams_active"),
			connectedNodes: sc.Gauge("connected_nodes"),
			unknownNodes:   sc.Gauge("unknown_nodes"),
			pushLatency:    sc.Histogram("xds_push_ack_latency_ms"),
		},
		hash: newNodeHash(),
	}
	// ads=false: in ADS mode the SnapshotCache answers a request that
	// names resources only when it names every resource of the type in
	// the snapshot, and grpc-go's xDS client names just the ones it needs.
	s.cache = cachev3.NewSnapshotCache(false, s.hash, slogAdapter{logger})
	s.tracker = newTracker(s.hash, &s.metrics, logger)
	s.tracker.tracer = opts.Tracer
	s.tracker.unknownReason = s.unknownReason
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.xds = serverv3.NewServer(s.ctx, &holdCache{inner: s.cache, holds: s.tracker}, s.tracker)
	return s
}

// Register registers the ADS service and the per-type LDS, RDS, CDS, EDS
// and SDS services on g.
func (s *Server) Register(g *grpc.Server) {
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(g, s.xds)
	listenerservice.RegisterListenerDiscoveryServiceServer(g, s.xds)
	routeservice.RegisterRouteDiscoveryServiceServer(g, s.xds)
	clusterservice.RegisterClusterDiscoveryServiceServer(g, s.xds)
	endpointservice.RegisterEndpointDiscoveryServiceServer(g, s.xds)
	secretservice.RegisterSecretDiscoveryServiceServer(g, s.xds)
}

// Serve serves xDS on lis until Stop is called; it returns nil after Stop,
// and the listener's error otherwise. It may be called once.
func (s *Server) Serve(lis net.Listener) error {
	g := grpc.NewServer(
		grpc.MaxConcurrentStreams(1<<20),
		// Sidecars and grpc-go clients keep their ADS stream open for
		// their lifetime; let them ping as often as grpc-go's default.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	s.Register(g)
	if s.services != nil {
		s.services(g)
	}
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return errors.New("xds server: Serve after Stop")
	}
	if s.grpc != nil {
		s.mu.Unlock()
		return errors.New("xds server: Serve called twice")
	}
	s.grpc = g
	s.mu.Unlock()
	s.serving.Store(true)
	defer s.serving.Store(false)
	if err := g.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("xds server on %s: %w", lis.Addr(), err)
	}
	return nil
}

// Stop ends every xDS stream and stops the gRPC server Serve started. It
// waits for the streams' handlers to return, bounded by ctx; when ctx ends
// first the remaining connections are closed at once.
func (s *Server) Stop(ctx context.Context) {
	s.mu.Lock()
	s.stopped = true
	g := s.grpc
	s.mu.Unlock()
	// Streams never end on their own; cancelling the server context makes
	// every handler return so GracefulStop can finish.
	s.cancel()
	if g == nil {
		return
	}
	done := make(chan struct{})
	go func() {
		g.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		g.Stop()
		<-done
	}
}

// Serving reports whether Serve is running.
func (s *Server) Serving() bool { return s.serving.Load() }

// Publish checks every snapshot of res and, if all are consistent, sets them
// in the cache at once (version res.Version for every type), so connected
// nodes receive the change. Sidecar nodes that were in the previous
// publication but not in res get an empty snapshot, so they drop their
// config rather than keep a stale one; proxies res does not name get an
// empty snapshot too (UnknownSidecarKey). On error nothing changes and the
// error is recorded for /status. warnings are shown on /warnings.
func (s *Server) Publish(res *translate.Result, warnings []model.Warning) error {
	if err := s.publish(res, warnings); err != nil {
		s.metrics.rejected.Inc()
		s.RecordError(err)
		return err
	}
	s.tracker.refreshUnknown()
	return nil
}

func (s *Server) publish(res *translate.Result, warnings []model.Warning) error {
	if res == nil {
		return errors.New("publish: nil translation result")
	}
	if res.Version == "" {
		return errors.New("publish: translation result has an empty version")
	}
	snaps := make(map[string]*cachev3.Snapshot, len(res.Nodes)+1)
	for id, r := range res.Nodes {
		if id == ProxylessKey || id == UnknownSidecarKey {
			return fmt.Errorf("publish: node %q: reserved node ID", id)
		}
		snap, err := newSnapshot(res.Version, r)
		if err != nil {
			return fmt.Errorf("publish: node %q: %w", id, err)
		}
		if err := snap.Consistent(); err != nil {
			return fmt.Errorf("publish: node %q: inconsistent snapshot: %w", id, err)
		}
		if err := checkReferences(r); err != nil {
			return fmt.Errorf("publish: node %q: %w", id, err)
		}
		snaps[id] = snap
	}
	proxyless, err := newSnapshot(res.Version, res.Proxyless)
	if err != nil {
		return fmt.Errorf("publish: proxyless resources: %w", err)
	}
	// Snapshot.Consistent does not see api_listener RDS names and would
	// call every proxyless route unreferenced; checkReferences does.
	if err := checkReferences(res.Proxyless); err != nil {
		return fmt.Errorf("publish: proxyless resources: %w", err)
	}
	snaps[ProxylessKey] = proxyless

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.published != nil && s.published.version == res.Version {
		s.published.warnings = warnings
		s.lastError = nil
		return nil
	}
	var previous []string
	if s.published != nil {
		previous = s.published.nodes
	}
	empty, err := newSnapshot(res.Version, nil)
	if err != nil {
		return fmt.Errorf("publish: empty snapshot: %w", err)
	}
	// Removed sidecars keep their own key (with an empty snapshot), so
	// their open streams see the removal instead of switching keys.
	for _, id := range previous {
		if _, ok := snaps[id]; !ok {
			snaps[id] = empty
		}
	}
	snaps[UnknownSidecarKey] = empty
	ids := make([]string, 0, len(snaps))
	for id := range snaps {
		if id != ProxylessKey && id != UnknownSidecarKey {
			ids = append(ids, id)
		}
	}
	sortStrings(ids)
	s.hash.setSidecars(ids)
	for _, id := range append(ids, ProxylessKey, UnknownSidecarKey) {
		if err := s.cache.SetSnapshot(context.Background(), id, snaps[id]); err != nil {
			// SetSnapshot fails only when a response cannot be built;
			// the other nodes keep what they had.
			return fmt.Errorf("publish: node %q: %w", id, err)
		}
	}
	s.published = &publication{version: res.Version, at: time.Now(), nodes: ids, warnings: warnings}
	s.lastError = nil
	s.metrics.published.Inc()
	s.log.Info("published mesh", "version", res.Version, "sidecars", len(res.Nodes))
	return nil
}

// RecordError records err as the last mesh error (shown on /status) and
// logs it. The published snapshots are untouched.
func (s *Server) RecordError(err error) {
	s.log.Error("mesh rejected; serving the last good config", "err", err)
	s.mu.Lock()
	s.lastError = &ErrorRecord{Message: err.Error(), At: time.Now()}
	s.mu.Unlock()
}

// Version returns the version of the last published snapshot set, "" before
// the first.
func (s *Server) Version() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.published == nil {
		return ""
	}
	return s.published.version
}

// newSnapshot builds a snapshot of r (nil: no resources) at version.
func newSnapshot(version string, r *translate.Resources) (*cachev3.Snapshot, error) {
	if r == nil {
		r = &translate.Resources{}
	}
	byType := map[resource.Type][]types.Resource{
		resource.ListenerType: r.Listeners,
		resource.RouteType:    r.Routes,
		resource.ClusterType:  r.Clusters,
		resource.EndpointType: r.Endpoints,
		resource.SecretType:   r.Secrets,
	}
	for typ, rs := range byType {
		seen := make(map[string]bool, len(rs))
		for i, res := range rs {
			if res == nil {
				return nil, fmt.Errorf("%s[%d]: nil resource", shortType(typ), i)
			}
			name := cachev3.GetResourceName(res)
			if name == "" {
				return nil, fmt.Errorf("%s[%d]: empty name", shortType(typ), i)
			}
			if seen[name] {
				return nil, fmt.Errorf("%s %q: duplicate name", shortType(typ), name)
			}
			seen[name] = true
		}
	}
	snap, err := cachev3.NewSnapshot(version, byType)
	if err != nil {
		return nil, fmt.Errorf("building snapshot: %w", err)
	}
	return snap, nil
}

// slogAdapter routes go-control-plane's logs to slog. Its Debug and Info
// messages are per request and go to Debug.
type slogAdapter struct{ l *slog.Logger }

func (a slogAdapter) Debugf(format string, args ...any) { a.l.Debug(fmt.Sprintf(format, args...)) }
func (a slogAdapter) Infof(format string, args ...any)  { a.l.Debug(fmt.Sprintf(format, args...)) }
func (a slogAdapter) Warnf(format string, args ...any)  { a.l.Warn(fmt.Sprintf(format, args...)) }
func (a slogAdapter) Errorf(format string, args ...any) { a.l.Error(fmt.Sprintf(format, args...)) }
