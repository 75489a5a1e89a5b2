// Package sidecar is the data-plane runtime: it applies config snapshots to
// live listeners and clusters, serves the admin API, and drains gracefully.
//
// Applying a snapshot is one swap: clusters first (so new routes find their
// clusters), then listeners. A listener whose socket settings did not change
// keeps its socket and connections and only swaps its connection manager
// config; a changed or removed listener is drained.
package sidecar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"meshd.dev/meshd/otel/metrics"
	"meshd.dev/meshd/otel/tracing"
	"meshd.dev/meshd/proxy/accesslog"
	"meshd.dev/meshd/proxy/admin"
	"meshd.dev/meshd/proxy/config"
	"meshd.dev/meshd/proxy/http/h1"
	"meshd.dev/meshd/proxy/http/h2"
	"meshd.dev/meshd/proxy/http/hcm"
	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/proxy/identity"
	"meshd.dev/meshd/proxy/listener"
	"meshd.dev/meshd/proxy/overload"
	"meshd.dev/meshd/proxy/stats"
	"meshd.dev/meshd/proxy/tcpproxy"
	"meshd.dev/meshd/proxy/upstream"
	"meshd.dev/meshd/xds/client"
)

// Options configure a Sidecar.
type Options struct {
	// AdminAddressPath, when set, receives the bound admin address.
	AdminAddressPath string
	// DrainTime bounds the graceful drain on shutdown (default 10s).
	DrainTime time.Duration
	Logger    *slog.Logger
	// Stats is the sidecar's stats store; nil creates one. Pass the store
	// the identity manager counts into, so /stats shows both.
	Stats *stats.Store
	// Identities serves the SDS secrets of TLS contexts (see
	// proxy/identity); nil when the configuration has none. The sidecar
	// reports ready only once every identity source it uses has an SVID,
	// shows them on /certs and /config_dump, and closes it on Shutdown.
	Identities *identity.Manager
	// Durations, when set, records the semantic-convention HTTP duration
	// histograms of every connection manager (see otel/metrics); nil
	// records none.
	Durations *metrics.HTTPDurations
	// Version is the build's version string the admin's /server_info
	// shows ("meshd/VERSION/GO_VERSION/BUILD"); empty shows none.
	Version string
}

// Sidecar is one running data plane.
type Sidecar struct {
	opts     Options
	logger   *slog.Logger
	store    *stats.Store
	clusters *upstream.Manager
	snap     config.Store
	// tracers are the span exporters of every connection manager that
	// traces, kept across config swaps.
	tracers *tracing.Providers
	// accessLogs owns the access-log files of every connection manager;
	// it outlives config swaps and is closed (flushed) after the drain.
	accessLogs *accesslog.Manager

	mu        sync.Mutex // serialises Apply and shutdown
	listeners map[string]*liveListener
	// byAddr is the TCP listeners by configured address, replaced whole
	// by Apply; use_original_dst looks connections' original
	// destinations up in it.
	byAddr atomic.Pointer[map[string]*listener.Listener]
	admin  *admin.Server

	// xds runs the ADS client when the bootstrap has dynamic_resources;
	// xdsStop ends it and xdsDone is closed when it returned.
	xds     *client.Client
	xdsStop context.CancelFunc
	xdsDone chan struct{}

	// readyStop ends the goroutine started by readyAfterIdentities;
	// readyDone is closed when it returned (both nil when none runs).
	readyStop context.CancelFunc
	readyDone chan struct{}

	// overload is the bootstrap's overload manager, started by Start (nil
	// without overload_manager).
	overload *overload.Manager

	ready    atomic.Bool
	hcFailed atomic.Bool
	draining atomic.Bool
	quit     chan struct{}
	quitOnce sync.Once
}

// boundListener is a bound socket serving connections: a TCP
// listener.Listener or a QUIC listener.QUICListener.
type boundListener interface {
	Addr() net.Addr
	Serve() error
	StopAccepting()
	Shutdown(ctx context.Context) error
	Close() error
}

type liveListener struct {
	cfg     *config.Listener
	ln      boundListener
	handler *hcm.Handler    // nil for tcp_proxy
	h1      *h1.Server      // nil for tcp_proxy
	tcp     *tcpproxy.Proxy // nil for HTTP
	served  chan struct{}   // closed when Serve returned
	// logs is the listener's own access_log (config.Listener.AccessLogs),
	// swapped with its config; nil or empty: none.
	logs atomic.Pointer[[]*accesslog.Logger]
}

// New returns a sidecar with no config.
func New(opts Options) *Sidecar {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.DrainTime <= 0 {
		opts.DrainTime = 10 * time.Second
	}
	store := opts.Stats
	if store == nil {
		store = stats.NewStore()
	}
	clusters := upstream.NewManager(store, opts.Logger)
	return &Sidecar{
		opts:       opts,
		logger:     opts.Logger,
		store:      store,
		clusters:   clusters,
		tracers:    hcm.NewTracers(clusters, store, opts.Logger),
		listeners:  map[string]*liveListener{},
		accessLogs: accesslog.NewManager(accesslog.ManagerOptions{Stats: store, Logger: opts.Logger, DialCluster: hcm.ClusterDialer(clusters)}),
		quit:       make(chan struct{}),
	}
}

// tracerFlushTime bounds sending the spans still queued at shutdown.
const tracerFlushTime = 2 * time.Second

// Stats returns the sidecar's stats store.
func (s *Sidecar) Stats() *stats.Store { return s.store }

// Start starts the admin server (when the snapshot names one) and applies the
// first snapshot. With a static bootstrap the sidecar is ready when it
// returns nil. When the bootstrap has dynamic_resources, Start also starts
// the ADS client: every snapshot it compiles is applied with Apply, and the
// sidecar becomes ready (/ready LIVE) once the first one is applied.
func (s *Sidecar) Start(snap *config.Snapshot) error {
	ocfg, err := overload.Compile(snap.Bootstrap.GetOverloadManager())
	if err != nil {
		return err
	}
	if ocfg != nil {
		// Listeners bound by Apply consult it; sampling starts once they are.
		s.overload = overload.New(ocfg, s.store, s.logger, nil)
	}
	if snap.Admin != "" {
		a := admin.New(s, s.store, s.logger)
		if _, err := a.Listen(snap.Admin); err != nil {
			return err // names admin.address and the address
		}
		s.admin = a
		if s.opts.AdminAddressPath != "" {
			if err := a.WriteAddressFile(s.opts.AdminAddressPath); err != nil {
				return fmt.Errorf("--admin-address-path: %w", err)
			}
		}
	}
	if err := s.Apply(snap); err != nil {
		return err
	}
	s.overload.Start()
	if snap.Bootstrap.GetDynamicResources() == nil {
		s.readyAfterIdentities(nil)
		return nil
	}
	// Name the node a proxy, as Envoy does with "envoy": a control plane
	// tells proxies from proxyless gRPC clients by it (xds/server serves a
	// proxy it does not know an empty config, not API listeners).
	bs := withUserAgent(snap.Bootstrap, UserAgentName)
	if s.admin != nil {
		// Tell the control plane where this sidecar's admin listens
		// (meshd doctor --control-plane finds sidecars by it).
		bs = withNodeMetadata(bs, NodeAdminKey, s.admin.Addr().String())
	}
	xo := client.Options{
		Bootstrap: bs,
		Apply:     s.Apply,
		Stats:     s.store,
		Logger:    s.logger,
	}
	if ids := s.opts.Identities; ids != nil {
		xo.Secrets, xo.ADSSecrets = ids, ids.UpdateADS
	}
	xc, err := client.New(xo)
	if err != nil {
		return err
	}
	lr, err := client.NewLoadReporter(bs, s.loadStats, s.logger)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.xds, s.xdsStop, s.xdsDone = xc, cancel, make(chan struct{})
	go func() {
		defer close(s.xdsDone)
		var wg sync.WaitGroup
		if lr != nil {
			wg.Go(func() { _ = lr.Run(ctx) })
		}
		_ = xc.Run(ctx)
		wg.Wait()
	}()
	s.readyAfterIdentities(xc.Warmed())
	return nil
}

// readyAfterIdentities marks the sidecar ready once warmed is closed (nil:
// at once) and then every identity source in use has an SVID: like
// Envoy's listener warming on SDS secrets, /ready stays 503 until TLS
// contexts can handshake. It gives up when shutdown begins.
func (s *Sidecar) readyAfterIdentities(warmed <-chan struct{}) {
	if warmed == nil {
		// A static bootstrap whose identities are all there (or that has
		// none) is ready when Start returns, as before identities.
		done, cancel := context.WithCancel(context.Background())
		cancel()
		if s.opts.Identities == nil || s.opts.Identities.Wait(done) == nil {
			s.markReady()
			return
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.readyStop = cancel
	s.readyDone = make(chan struct{})
	go func() {
		defer close(s.readyDone)
		if warmed != nil {
			select {
			case <-warmed:
			case <-ctx.Done():
				return
			}
		}
		if ids := s.opts.Identities; ids != nil {
			if err := ids.Wait(ctx); err != nil {
				return
			}
		}
		s.markReady()
	}()
}

// markReady makes /ready answer LIVE and logs "sidecar ready" the first
// time: with xDS or SDS identities that is after Start has returned.
func (s *Sidecar) markReady() {
	if !s.ready.Swap(true) {
		s.logger.Info("sidecar ready")
	}
}

// XDS returns the ADS client, nil when the bootstrap has no
// dynamic_resources.
func (s *Sidecar) XDS() *client.Client { return s.xds }

// Apply makes snap the live configuration. A listener that cannot bind
// fails the whole apply before anything is swapped.
func (s *Sidecar) Apply(snap *config.Snapshot) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining.Load() {
		return errors.New("sidecar is draining")
	}
	// Open every access log first: a path that cannot be written fails
	// the config, as in Envoy.
	for _, lc := range snap.Listeners {
		logs := lc.AccessLogs
		switch {
		case lc.HCM != nil:
			logs = append(logs[:len(logs):len(logs)], lc.HCM.AccessLogs...)
		case lc.TCP != nil:
			logs = append(logs[:len(logs):len(logs)], lc.TCP.AccessLogs...)
		}
		if err := s.accessLogs.Open(logs); err != nil {
			return fmt.Errorf("listener %q: %w", lc.Name, err)
		}
	}
	// Bind every new socket first so a bind failure changes nothing.
	fresh := map[string]*liveListener{}
	for _, lc := range snap.Listeners {
		if old, ok := s.listeners[lc.Name]; ok && old.cfg.SameSocket(lc) {
			continue
		}
		ll, err := s.bind(lc)
		if err != nil {
			for _, f := range fresh {
				f.ln.Close()
			}
			return err // names the listener
		}
		fresh[lc.Name] = ll
	}
	s.clusters.Apply(snap.Clusters)
	next := map[string]*liveListener{}
	for _, lc := range snap.Listeners {
		if ll, ok := fresh[lc.Name]; ok {
			next[lc.Name] = ll
			go s.serve(ll)
			continue
		}
		ll := s.listeners[lc.Name]
		ll.cfg = lc
		ll.logs.Store(&lc.AccessLogs)
		ll.swap(lc)
		next[lc.Name] = ll
	}
	for name, ll := range s.listeners {
		if next[name] != ll {
			go s.drainListener(ll)
		}
	}
	s.listeners = next
	byAddr := make(map[string]*listener.Listener, len(next))
	for _, ll := range next {
		if l, ok := ll.ln.(*listener.Listener); ok {
			byAddr[ll.cfg.Address] = l
		}
	}
	s.byAddr.Store(&byAddr)
	s.snap.Swap(snap)
	return nil
}

// redirect returns lc's use_original_dst hook, nil without it: the
// listener whose address is the original destination, else one on the
// wildcard address and that port, as Envoy picks.
func (s *Sidecar) redirect(lc *config.Listener) func(netip.AddrPort) *listener.Listener {
	if !lc.UseOriginalDst {
		return nil
	}
	return func(dst netip.AddrPort) *listener.Listener {
		m := s.byAddr.Load()
		if m == nil {
			return nil
		}
		if l := (*m)[dst.String()]; l != nil {
			return l
		}
		wildcard := netip.IPv4Unspecified()
		if dst.Addr().Is6() && !dst.Addr().Is4In6() {
			wildcard = netip.IPv6Unspecified()
		}
		return (*m)[netip.AddrPortFrom(wildcard, dst.Port()).String()]
	}
}

// bind opens lc's socket and builds what serves it. Its errors name the
// listener (`listener "NAME": ...`).
func (s *Sidecar) bind(lc *config.Listener) (*liveListener, error) {
	if lc.TCP != nil {
		return s.bindTCP(lc)
	}
	if lc.QUIC != nil {
		return s.bindQUIC(lc)
	}
	hc := lc.HCM
	hst := hcm.NewStats(s.store, hc.StatPrefix)
	handler := hcm.NewHandler(hc, s.clusters, hst, s.logger)
	handler.SetTracing(s.tracers)
	handler.SetObservers(hcm.Observers{AccessLogs: s.accessLogs, Durations: s.opts.Durations})
	if s.overload != nil {
		handler.SetOverload(s.overload.ShedRequest)
	}
	h1s := h1.NewServer(h1.ServerConfig{
		RxBytes:                  hst.CxRxBytes,
		TxBytes:                  hst.CxTxBytes,
		IdleTimeout:              hc.IdleTimeout,
		MaxConnectionDuration:    hc.MaxConnectionDuration,
		MaxRequestsPerConnection: hc.MaxRequestsPerConnection,
		MaxDurationReached:       hst.HTTP2.CxMaxDurationReached,
		MaxRequestsReached:       hst.HTTP2.CxMaxRequestsReached,
		MaxHeaderBytes:           hc.MaxRequestHeadersBytes,
		MaxHeadersCount:          int(hc.MaxHeadersCount),
		ReadHeaderTimeout:        hc.HTTP1HeaderTimeout(),
		Logger:                   s.logger,
	}, handler)
	codec := listener.Auto
	switch hc.Codec {
	case hcm.CodecHTTP1:
		codec = listener.HTTP1
	case hcm.CodecHTTP2:
		codec = listener.HTTP2
	}
	ll := &liveListener{cfg: lc, handler: handler, h1: h1s, served: make(chan struct{})}
	ll.logs.Store(&lc.AccessLogs)
	ln, err := listener.Listen(listener.Config{
		Name:    lc.Name,
		Address: lc.Address,
		TLS:     lc.TLS,
		// PERMISSIVE: plaintext connections are served too.
		TLSOptional: lc.TLSOptional,
		Codec:       codec,
		OriginalDst: lc.OriginalDst,
		Redirect:    s.redirect(lc),
		NoBind:      lc.NoBind,
		HTTP1: func(c net.Conn, info stream.ConnInfo) stream.ServerConn {
			return countConn(h1s.NewConn(c, info), hst.CxHTTP1Total, hst.CxHTTP1Active, hst)
		},
		HTTP2: func(c net.Conn, info stream.ConnInfo) stream.ServerConn {
			// Each connection reads the manager's current HTTP/2 settings.
			cfg := handler.Config().HTTP2
			cfg.Logger = s.logger
			cfg.Stats = hst.HTTP2
			cfg.Bytes = h2.ByteCounters{Rx: hst.CxRxBytes, Tx: hst.CxTxBytes}
			return countConn(h2.NewServerConn(c, &cfg, handler, info), hst.CxHTTP2Total, hst.CxHTTP2Active, hst)
		},
		Logger:   s.logger,
		Stats:    listener.StatsScope(s.store.Root(), lc.Address),
		Admit:    s.admit(),
		Rejected: s.rejected(ll),
	})
	if err != nil {
		return nil, err
	}
	ll.ln = ln
	s.logger.Info("listener bound", "name", lc.Name, "address", ln.Addr().String())
	return ll, nil
}

// rejected is a listener's Rejected hook: it writes the listener's
// access_log line for a connection closed before a filter chain served it,
// as Envoy's listener access log does. A TLS handshake failure sets
// %DOWNSTREAM_TRANSPORT_FAILURE_REASON%; a protocol no chain serves sets
// NR and %CONNECTION_TERMINATION_DETAILS% filter_chain_not_found.
func (s *Sidecar) rejected(ll *liveListener) func(listener.Rejection) {
	return func(r listener.Rejection) {
		logs := ll.logs.Load()
		if logs == nil || len(*logs) == 0 {
			return
		}
		i := accesslog.Info{Start: r.Start, End: time.Now(), Conn: &r.Conn}
		switch {
		case r.TLSFailure:
			i.DownstreamTransportFailureReason = r.Err.Error()
		case r.NoFilterChain:
			i.Flags = accesslog.NoRouteFound
			i.TerminationDetails = "filter_chain_not_found"
		}
		s.accessLogs.Log(*logs, &i)
	}
}

// admit is the listeners' Admit: the overload manager's
// stop_accepting_connections gate, nil without an overload manager.
func (s *Sidecar) admit() func(<-chan struct{}) bool {
	if s.overload == nil {
		return nil
	}
	return s.overload.WaitAccepting
}

func (s *Sidecar) serve(ll *liveListener) {
	defer close(ll.served)
	if err := ll.ln.Serve(); err != nil {
		s.logger.Error("listener stopped", "name", ll.cfg.Name, "err", err)
	}
}

func (s *Sidecar) drainListener(ll *liveListener) {
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.DrainTime)
	defer cancel()
	_ = ll.ln.Shutdown(ctx)
	ll.shutdownHTTP1(ctx)
	<-ll.served
}

// countedConn keeps the connection manager's per-protocol connection stats.
type countedConn struct {
	stream.ServerConn
	active *stats.Gauge
	st     *hcm.Stats
}

func countConn(c stream.ServerConn, total *stats.Counter, active *stats.Gauge, st *hcm.Stats) stream.ServerConn {
	total.Inc()
	active.Inc()
	st.CxTotal.Inc()
	st.CxActive.Inc()
	return &countedConn{ServerConn: c, active: active, st: st}
}

func (c *countedConn) Serve() error {
	start := time.Now()
	defer func() {
		c.active.Dec()
		c.st.CxActive.Dec()
		c.st.CxDestroy.Inc()
		c.st.CxLengthMs.Record(float64(time.Since(start).Microseconds()) / 1000)
	}()
	return c.ServerConn.Serve()
}

// Done is closed once Quit was called (SIGTERM, /quitquitquit).
func (s *Sidecar) Done() <-chan struct{} { return s.quit }

// Shutdown drains gracefully: listeners stop accepting at once (new
// connections are refused), every connection gets GOAWAY or
// "Connection: close", streams in flight finish; at ctx's deadline the rest
// are closed. Then upstream pools and the admin server close.
func (s *Sidecar) Shutdown(ctx context.Context) error {
	s.draining.Store(true)
	if s.xdsStop != nil {
		s.xdsStop()
		<-s.xdsDone
	}
	if s.readyStop != nil {
		s.readyStop()
		<-s.readyDone
	}
	s.mu.Lock()
	lls := make([]*liveListener, 0, len(s.listeners))
	for _, ll := range s.listeners {
		lls = append(lls, ll)
	}
	s.mu.Unlock()
	for _, ll := range lls {
		ll.ln.StopAccepting()
	}
	s.overload.Stop()
	var wg sync.WaitGroup
	errs := make([]error, len(lls))
	for i, ll := range lls {
		wg.Go(func() {
			errs[i] = ll.ln.Shutdown(ctx)
			ll.shutdownHTTP1(ctx)
			<-ll.served
		})
	}
	wg.Wait()
	fctx, cancel := context.WithTimeout(context.Background(), tracerFlushTime)
	if err := s.tracers.Close(fctx); err != nil {
		s.logger.Warn("tracing: spans not flushed at shutdown", "err", err)
	}
	cancel()
	if err := s.accessLogs.Close(); err != nil {
		s.logger.Warn("closing access logs", "err", err)
	}
	s.clusters.Close()
	if s.admin != nil {
		_ = s.admin.Close()
	}
	if s.opts.Identities != nil {
		_ = s.opts.Identities.Close()
	}
	return errors.Join(errs...)
}

// ReopenLogs makes every access-log file close and reopen its path (log
// rotation: SIGUSR1 and POST /reopen_logs).
func (s *Sidecar) ReopenLogs() { s.accessLogs.Reopen() }

// DrainTime is the configured drain bound.
func (s *Sidecar) DrainTime() time.Duration { return s.opts.DrainTime }

// --- admin.Backend ---

// Ready reports whether listeners are bound and config is applied.
func (s *Sidecar) Ready() bool { return s.ready.Load() }

// Draining reports whether shutdown has begun.
func (s *Sidecar) Draining() bool { return s.draining.Load() }

// ConfigDump returns the current config in Envoy's /config_dump shape: the
// bootstrap, its static listeners and clusters, and with xDS the dynamic
// listeners, clusters, route configurations and endpoints with the version
// and time each was accepted. Before the first config it has no configs.
func (s *Sidecar) ConfigDump() (*adminv3.ConfigDump, error) {
	snap := s.snap.Load()
	if snap == nil {
		return &adminv3.ConfigDump{}, nil
	}
	return configDump(snap, s.opts.Identities)
}

// Version implements admin.Informer: Options.Version.
func (s *Sidecar) Version() string { return s.opts.Version }

// Node implements admin.Informer: the node of the current snapshot (the
// bootstrap's, with --service-node applied), nil before the first, with
// the built-in CA's bootstrap token redacted as on /config_dump.
func (s *Sidecar) Node() *corev3.Node {
	snap := s.snap.Load()
	if snap == nil {
		return nil
	}
	return redactedNode(snap.Node)
}

// Certificates lists the TLS identities in use for /certs: every SDS
// source's SVID chain (with its SPIFFE ID as URI SAN) and trust bundle.
func (s *Sidecar) Certificates() []admin.CertificateStatus {
	if s.opts.Identities == nil {
		return nil
	}
	var out []admin.CertificateStatus
	for _, cs := range s.opts.Identities.Certs() {
		out = append(out, admin.CertificateStatus{
			Path:      fmt.Sprintf("sds secrets %q and %q from %s (%s)", cs.CertSecret, cs.ValidationSecret, cs.Source, cs.Kind),
			CertChain: cs.Chain,
			CACerts:   cs.Roots,
		})
	}
	return out
}

// Clusters reports every cluster and host.
func (s *Sidecar) Clusters() []admin.ClusterStatus {
	all := s.clusters.All()
	names := make([]string, 0, len(all))
	for n := range all {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]admin.ClusterStatus, 0, len(names))
	for _, n := range names {
		c := all[n]
		cs := admin.ClusterStatus{Name: n}
		for _, h := range c.Hosts() {
			cs.Hosts = append(cs.Hosts, admin.HostStatus{
				Address: h.Addr,
				Healthy: h.LB.Healthy(),
				Weight:  h.LB.Weight,
				Stats: []admin.HostStat{
					{Name: "rq_active", Value: uint64(max(h.LB.ActiveRequests(), 0)), Gauge: true},
				},
			})
		}
		out = append(out, cs)
	}
	return out
}

// Listeners reports every listener's bound address.
func (s *Sidecar) Listeners() []admin.ListenerStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]admin.ListenerStatus, 0, len(s.listeners))
	for name, ll := range s.listeners {
		out = append(out, admin.ListenerStatus{Name: name, Address: ll.ln.Addr()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// SetHealthcheckFailed sets the /healthcheck/fail flag.
func (s *Sidecar) SetHealthcheckFailed(failed bool) { s.hcFailed.Store(failed) }

// HealthcheckFailed reports the /healthcheck/fail flag.
func (s *Sidecar) HealthcheckFailed() bool { return s.hcFailed.Load() }

// DrainListeners stops the listeners accepting and drains their
// connections in the background. With inboundOnly, listeners whose
// traffic_direction is OUTBOUND keep accepting (config.Listener.Outbound),
// so a pod shutting down can still call out while its inbound drains.
func (s *Sidecar) DrainListeners(graceful, inboundOnly bool) {
	s.mu.Lock()
	lls := make([]*liveListener, 0, len(s.listeners))
	for _, ll := range s.listeners {
		if inboundOnly && ll.cfg.Outbound {
			continue
		}
		lls = append(lls, ll)
	}
	s.mu.Unlock()
	for _, ll := range lls {
		if graceful {
			go s.drainListener(ll)
		} else {
			ll.ln.Close()
		}
	}
}

// Quit asks the process to shut down gracefully.
func (s *Sidecar) Quit() { s.quitOnce.Do(func() { close(s.quit) }) }

var (
	_ admin.Backend      = (*Sidecar)(nil)
	_ admin.CertProvider = (*Sidecar)(nil)
	_ admin.LogReopener  = (*Sidecar)(nil)
)

// NodeAdminKey is the node.metadata key carrying the sidecar's bound admin
// address to the control plane (the same key as xds/server.NodeAdminKey).
const NodeAdminKey = "meshd.admin"

// UserAgentName is the node.user_agent_name the sidecar sends to its xDS
// server, whatever the bootstrap says (Envoy likewise always sends
// "envoy").
const UserAgentName = "meshd"

// withUserAgent returns a copy of b whose node.user_agent_name is name; b
// is not modified.
func withUserAgent(b *bootstrapv3.Bootstrap, name string) *bootstrapv3.Bootstrap {
	b = proto.Clone(b).(*bootstrapv3.Bootstrap)
	if b.Node == nil {
		b.Node = &corev3.Node{}
	}
	b.Node.UserAgentName = name
	return b
}

// withNodeMetadata returns a copy of b whose node.metadata has key set to
// value; b is not modified.
func withNodeMetadata(b *bootstrapv3.Bootstrap, key, value string) *bootstrapv3.Bootstrap {
	b = proto.Clone(b).(*bootstrapv3.Bootstrap)
	if b.Node == nil {
		b.Node = &corev3.Node{}
	}
	if b.Node.Metadata == nil {
		b.Node.Metadata = &structpb.Struct{Fields: map[string]*structpb.Value{}}
	}
	if b.Node.Metadata.Fields == nil {
		b.Node.Metadata.Fields = map[string]*structpb.Value{}
	}
	b.Node.Metadata.Fields[key] = structpb.NewStringValue(value)
	return b
}
