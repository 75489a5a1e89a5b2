package upstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"meshd.dev/meshd/proxy/http/h1"
	"meshd.dev/meshd/proxy/http/h2"
	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/proxy/lb"
	"meshd.dev/meshd/proxy/stats"
	"meshd.dev/meshd/xds/observe"
)

// connPool carries streams to one endpoint over one protocol.
type connPool interface {
	stream.ClientConn
	// newStreamAvoiding is NewStream for a retry of a stream the
	// connection refusedBy refused unprocessed (Host.NewStreamAvoiding).
	newStreamAvoiding(ctx context.Context, req *stream.Request, endStream bool, refusedBy stream.ClientConn) (stream.ClientStream, error)
	// Drain stops new streams and closes connections as their streams end.
	Drain()
}

// Stats are a cluster's Envoy-named counters and gauges
// ("cluster.<name>.upstream_cx_total", ...).
type Stats struct {
	Scope    *stats.Scope
	CxTotal  *stats.Counter
	CxActive *stats.Gauge
	// CxDestroy counts connections closed, whoever closed them
	// (upstream_cx_destroy); each is also counted in CxDestroyLocal or
	// CxDestroyRemote.
	CxDestroy *stats.Counter
	// CxDestroyLocal counts connections this side closed
	// (upstream_cx_destroy_local): drained (idle timeout, lifetimes, a
	// received GOAWAY's drain, config removal), closed, a keepalive or
	// idle timeout, a protocol error it detected.
	CxDestroyLocal *stats.Counter
	// CxDestroyRemote counts connections the peer closed
	// (upstream_cx_destroy_remote): end of stream or reset on TCP, a QUIC
	// CONNECTION_CLOSE or stateless reset, a failed write.
	CxDestroyRemote *stats.Counter
	// CxRxBytes and CxTxBytes are upstream_cx_rx_bytes_total and
	// upstream_cx_tx_bytes_total: bytes read from and written to the
	// cluster's connections (HTTP/1.1, HTTP/2, tcp_proxy), after TLS
	// decryption and before encryption, as Envoy counts them (HTTP/3 is
	// not counted).
	CxRxBytes, CxTxBytes *stats.Counter
	// CxConnectMs is upstream_cx_connect_ms: how long each established
	// connection took to connect, TCP (or QUIC) and TLS handshakes
	// included.
	CxConnectMs *stats.Histogram
	// CxLengthMs is upstream_cx_length_ms: how long each connection was
	// open, recorded when it closes.
	CxLengthMs       *stats.Histogram
	CxConnectFail    *stats.Counter
	CxConnectTimeout *stats.Counter
	CxCloseNotify    *stats.Counter
	RqTotal          *stats.Counter
	RqActive         *stats.Gauge
	RqTimeout        *stats.Counter
	RqPerTryTimeout  *stats.Counter
	RqCancelled      *stats.Counter
	RqReset          *stats.Counter // upstream_rq_rx_reset
	// RqCompleted counts upstream responses forwarded whole
	// (upstream_rq_completed); resets and timeouts are not completions.
	RqCompleted *stats.Counter
	// RqTime is upstream_rq_time, as Envoy's router keeps it: milliseconds
	// from the router having received the whole downstream request to the
	// end of the upstream response, retries and back-offs included,
	// recorded for completed responses only (and not when the response
	// ended before the request).
	RqTime            *stats.Histogram
	NoHealthyUpstream *stats.Counter
	// LBHealthyPanic counts hosts picked while the load balancer ignored
	// health because too few hosts were healthy (lb_healthy_panic).
	LBHealthyPanic *stats.Counter
	HTTP2          *h2.Stats
	// H3 are the HTTP/3 connection stats (h3pool.go).
	H3 *H3Stats
}

// NewStats returns the stats of cluster name in store.
func NewStats(store *stats.Store, name string) *Stats {
	sc := store.Root().Scope("cluster").Tagged("envoy_cluster_name", name)
	return &Stats{
		Scope:             sc,
		CxTotal:           sc.Counter("upstream_cx_total"),
		CxActive:          sc.Gauge("upstream_cx_active"),
		CxDestroy:         sc.Counter("upstream_cx_destroy"),
		CxDestroyLocal:    sc.Counter("upstream_cx_destroy_local"),
		CxDestroyRemote:   sc.Counter("upstream_cx_destroy_remote"),
		CxRxBytes:         sc.Counter("upstream_cx_rx_bytes_total"),
		CxTxBytes:         sc.Counter("upstream_cx_tx_bytes_total"),
		CxConnectMs:       sc.Histogram("upstream_cx_connect_ms"),
		CxLengthMs:        sc.Histogram("upstream_cx_length_ms"),
		CxConnectFail:     sc.Counter("upstream_cx_connect_fail"),
		CxConnectTimeout:  sc.Counter("upstream_cx_connect_timeout"),
		CxCloseNotify:     sc.Counter("upstream_cx_close_notify"),
		RqTotal:           sc.Counter("upstream_rq_total"),
		RqActive:          sc.Gauge("upstream_rq_active"),
		RqTimeout:         sc.Counter("upstream_rq_timeout"),
		RqPerTryTimeout:   sc.Counter("upstream_rq_per_try_timeout"),
		RqCancelled:       sc.Counter("upstream_rq_cancelled"),
		RqReset:           sc.Counter("upstream_rq_rx_reset"),
		RqCompleted:       sc.Counter("upstream_rq_completed"),
		RqTime:            sc.Histogram("upstream_rq_time"),
		NoHealthyUpstream: sc.Counter("upstream_cx_none_healthy"),
		LBHealthyPanic:    sc.Counter("lb_healthy_panic"),
		HTTP2:             h2.NewStats(sc.Scope("http2")),
		H3:                newH3Stats(sc),
	}
}

// connClosed counts an established connection closed:
// upstream_cx_destroy_remote when the peer closed it (byPeer),
// upstream_cx_destroy_local otherwise, then upstream_cx_destroy, then
// upstream_cx_active down. In that order, a reader that sees the gauge
// down or upstream_cx_destroy up sees the close's other counts too.
func (s *Stats) connClosed(byPeer bool) {
	if byPeer {
		s.CxDestroyRemote.Inc()
	} else {
		s.CxDestroyLocal.Inc()
	}
	s.CxDestroy.Inc()
	s.CxActive.Dec()
}

// Host is one endpoint of a cluster with its connection pool.
type Host struct {
	// LB is the load balancer's view of the host (weight, active requests,
	// health).
	LB   *lb.Host
	Addr string
	pool connPool
	// outlier receives request outcomes; nil when the cluster has no
	// outlier_detection.
	outlier resultSink
	// health holds the active health check and outlier flags (health.go).
	health hostHealth
}

// resultSink is where a host's request outcomes go: outlier detection.
type resultSink interface {
	status(code int)
	localOrigin(success bool)
}

// ReportStatus records the HTTP status of a response from the host, for
// outlier detection (5xx and gateway failures).
func (h *Host) ReportStatus(code int) {
	if h.outlier != nil {
		h.outlier.status(code)
	}
}

// ReportLocalOrigin records a locally observed outcome of talking to the
// host: success false for a connect failure, timeout or reset, true for a
// connection and stream that worked (consecutive_local_origin_failure).
func (h *Host) ReportLocalOrigin(success bool) {
	if h.outlier != nil {
		h.outlier.localOrigin(success)
	}
}

// NewStream opens a stream to this host.
func (h *Host) NewStream(ctx context.Context, req *stream.Request, endStream bool) (stream.ClientStream, error) {
	return h.pool.NewStream(ctx, req, endStream)
}

// NewStreamAvoiding opens a stream to this host for the retry of a request
// whose previous attempt the connection refusedBy refused unprocessed
// (REFUSED_STREAM, H3_REQUEST_REJECTED, above a GOAWAY's last stream):
// refusedBy is stream.ConnOf of that attempt's stream; nil, or a
// connection that is not this host's, changes nothing. An HTTP/2 or
// HTTP/3 pool places the stream on another of its connections with a free
// slot, else on a new connection when max_connections allows, else on
// refusedBy or in the queue, so the retry fails only when NewStream would.
//
// The pool learns from every refusal itself, retried or not: a peer's
// REFUSED_STREAM or H3_REQUEST_REJECTED while the pool counted free slots
// on the connection holds it at capacity until one of the streams open on
// it at the refusal completes (counted once per hold in
// upstream_cx_refused_stream_hold), for every stream of the pool, whether
// the codec's report or this call comes first. A stream above a GOAWAY's
// last stream id holds nothing: the connection drains anyway.
func (h *Host) NewStreamAvoiding(ctx context.Context, req *stream.Request, endStream bool, refusedBy stream.ClientConn) (stream.ClientStream, error) {
	if refusedBy == nil {
		return h.pool.NewStream(ctx, req, endStream)
	}
	return h.pool.newStreamAvoiding(ctx, req, endStream, refusedBy)
}

type hostSet struct {
	hosts  []*Host
	byLB   map[*lb.Host]*Host
	picker *lb.Balancer
}

// Cluster is a live cluster: its spec, its hosts and their pools. Hosts are
// replaced whole (an atomic swap of the host set) when DNS changes them.
type Cluster struct {
	spec   *Spec
	stats  *Stats
	logger *slog.Logger

	set    atomic.Pointer[hostSet]
	stop   chan struct{}
	stopWG sync.WaitGroup
	// outlier and checker are nil unless the spec configures
	// outlier_detection / health_checks (health.go).
	outlier *outlierDetector
	checker *healthChecker
	// pools is the circuit breaker and pool stats shared by the pools of
	// all the cluster's hosts.
	pools *poolShared
	// od holds the on-demand hosts of an ORIGINAL_DST cluster, nil for
	// other clusters (origdst.go).
	od *origDst
	// unsample stops the updates of the membership and circuit breaker
	// gauges (sampled.go); drain calls it.
	unsample func()
	// dnsLast is what each STRICT_DNS endpoint resolved to last, indexed
	// like spec.Endpoints; owned by resolve.
	dnsLast [][]resolved
}

// Observe returns, for each HTTP/2 endpoint of the cluster, what its pool
// saw since the previous call (xds/observe), keyed by "ip:port". Other
// protocols report nothing.
func (c *Cluster) Observe() map[string]observe.Endpoint {
	out := make(map[string]observe.Endpoint)
	for _, h := range c.Hosts() {
		if p, ok := h.pool.(*h2Pool); ok {
			out[h.Addr] = p.observe()
		}
	}
	return out
}

// Spec returns the cluster's compiled config.
func (c *Cluster) Spec() *Spec { return c.spec }

// Stats returns the cluster's stats.
func (c *Cluster) Stats() *Stats { return c.stats }

// Hosts returns the current hosts.
func (c *Cluster) Hosts() []*Host { return c.set.Load().hosts }

// Pick chooses a host with the cluster's load balancer, or nil when the
// cluster has no usable host. An ORIGINAL_DST cluster has no load
// balancer: its Pick returns nil (use PickFor).
func (c *Cluster) Pick() *Host {
	hs := c.set.Load()
	if hs.picker == nil {
		return nil
	}
	lh := hs.picker.Pick()
	if lh == nil {
		return nil
	}
	if hs.picker.Panic() {
		c.stats.LBHealthyPanic.Inc()
	}
	return hs.byLB[lh]
}

func newCluster(spec *Spec, store *stats.Store, logger *slog.Logger) *Cluster {
	c := &Cluster{
		spec:   spec,
		stats:  NewStats(store, spec.Name),
		logger: logger.With("cluster", spec.Name),
		stop:   make(chan struct{}),
	}
	c.initHealth()
	c.pools = newPoolShared(spec, c.stats)
	ss := newSampledStats(c.stats.Scope)
	c.unsample = store.Refresh(func() { c.sample(ss) })
	if spec.Discovery == Static || spec.Discovery == EDS {
		c.setHosts(resolveStatic(spec.Endpoints))
		return c
	}
	if spec.Discovery == OriginalDst {
		c.od = &origDst{spec: spec.OriginalDst, hosts: map[netip.AddrPort]*origHost{}}
		c.set.Store(&hostSet{byLB: map[*lb.Host]*Host{}})
		c.stopWG.Add(1)
		go c.cleanupLoop()
		return c
	}
	c.setHosts(nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	c.resolve(ctx)
	cancel()
	c.stopWG.Add(1)
	go c.dnsLoop()
	return c
}

type resolved struct {
	addr   string
	weight uint32
}

// hasHosts reports whether the live host set is exactly eps, in order.
func (c *Cluster) hasHosts(eps []resolved) bool {
	return slices.EqualFunc(c.set.Load().hosts, eps, func(h *Host, e resolved) bool {
		return h.Addr == e.addr && h.LB.Weight == e.weight
	})
}

// resolveStatic returns the addresses of IP endpoints.
func resolveStatic(eps []Endpoint) []resolved {
	out := make([]resolved, 0, len(eps))
	for _, e := range eps {
		out = append(out, resolved{addr: net.JoinHostPort(e.Host, strconv.Itoa(e.Port)), weight: e.Weight})
	}
	return out
}

// setHosts publishes a host set for eps, keeping the Host (and its pool) of
// every address that is still present and draining the others.
func (c *Cluster) setHosts(eps []resolved) {
	old := c.set.Load()
	prev := map[string]*Host{}
	if old != nil {
		for _, h := range old.hosts {
			prev[h.Addr] = h
		}
	}
	hs := &hostSet{byLB: map[*lb.Host]*Host{}}
	lbHosts := make([]*lb.Host, 0, len(eps))
	var added []*Host
	for _, e := range eps {
		h := prev[e.addr]
		if h != nil && h.LB.Weight == e.weight {
			delete(prev, e.addr)
		} else {
			h = &Host{LB: lb.NewHost(e.addr, e.weight, ""), Addr: e.addr, pool: c.newPool(e.addr)}
			c.attachHealth(h)
			added = append(added, h)
		}
		hs.hosts = append(hs.hosts, h)
		hs.byLB[h.LB] = h
		lbHosts = append(lbHosts, h.LB)
	}
	if len(lbHosts) > 0 {
		// CompileCluster admits only registered policies.
		b, err := lb.NewBalancer(c.spec.LBPolicy, lbHosts, lb.DefaultPanicThreshold)
		if err != nil {
			panic(fmt.Sprintf("cluster %q: %v", c.spec.Name, err))
		}
		hs.picker = b
	}
	c.set.Store(hs)
	c.startHealth(added)
	for _, h := range prev {
		c.detachHealth(h)
		h.pool.Drain()
	}
}

func (c *Cluster) newPool(addr string) connPool {
	switch {
	case c.spec.Protocol == HTTP3 && c.spec.HTTP3Fallback:
		return newH3FallbackPool(addr, c.spec, c.stats, c.pools, c.logger)
	case c.spec.Protocol == HTTP2 || c.spec.Protocol == HTTP3:
		return newH2Pool(addr, c.spec, c.stats, c.pools, c.logger)
	}
	return &h1Pool{Client: h1.NewClient(h1.ClientConfig{
		Addr:           addr,
		ConnectTimeout: c.spec.ConnectTimeout,
		IdleTimeout:    c.spec.Lifetimes.IdleTimeout,
		MaxConns:       c.spec.Thresholds.MaxConnections,
		MaxIdleConns:   c.spec.Thresholds.MaxConnections,
		TCPKeepalive:   c.spec.TCPKeepalive,
		TLS:            c.spec.TLS,
		Logger:         c.logger,
		OnConnect: func(d time.Duration) {
			c.stats.CxTotal.Inc()
			c.stats.CxActive.Inc()
			c.stats.CxConnectMs.Record(durationMs(d))
		},
		OnConnectFailure: func(err error) {
			c.stats.CxConnectFail.Inc()
			if errors.Is(err, context.DeadlineExceeded) {
				c.stats.CxConnectTimeout.Inc()
			}
		},
		OnConnClose: func(d time.Duration, byPeer bool) {
			c.stats.connClosed(byPeer)
			c.stats.CxLengthMs.Record(durationMs(d))
		},
		MaxRequestsPerConnection: c.spec.Lifetimes.MaxRequestsPerConnection,
		OnMaxRequests:            c.pools.stats.cxMaxRequests.Inc,
		RxBytes:                  c.stats.CxRxBytes,
		TxBytes:                  c.stats.CxTxBytes,
	})}
}

// h1Pool adapts the HTTP/1.1 client, which pools connections itself.
type h1Pool struct{ *h1.Client }

func (p *h1Pool) Drain() { p.Client.Drain() }

// newStreamAvoiding is NewStream: an HTTP/1.1 connection carries one
// request at a time and never refuses one unprocessed while open.
func (p *h1Pool) newStreamAvoiding(ctx context.Context, req *stream.Request, endStream bool, _ stream.ClientConn) (stream.ClientStream, error) {
	return p.Client.NewStream(ctx, req, endStream)
}

func (c *Cluster) dnsLoop() {
	defer c.stopWG.Done()
	t := time.NewTicker(c.spec.DNSRefreshRate)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), c.spec.DNSRefreshRate)
			c.resolve(ctx)
			cancel()
		}
	}
}

// resolve looks up every STRICT_DNS endpoint and publishes the result.
// Called by newCluster, then by dnsLoop only.
func (c *Cluster) resolve(ctx context.Context) {
	var eps []resolved
	eps, c.dnsLast = resolveDNS(ctx, c.spec.Endpoints, c.dnsLast, net.DefaultResolver.LookupIPAddr, c.logger)
	c.setHosts(eps)
}

// resolveDNS looks up each endpoint's host with lookup and returns every
// address found, with each endpoint's own addresses (per, indexed like
// eps) for the next round. An endpoint whose lookup fails keeps the
// addresses it had in last, as Envoy keeps a failed STRICT_DNS target's
// hosts: one name failing to resolve does not take the others' hosts with
// it, nor its own.
func resolveDNS(ctx context.Context, eps []Endpoint, last [][]resolved, lookup func(context.Context, string) ([]net.IPAddr, error), logger *slog.Logger) (all []resolved, per [][]resolved) {
	per = make([][]resolved, len(eps))
	for i, e := range eps {
		ips, err := lookup(ctx, e.Host)
		if err != nil {
			if i < len(last) {
				per[i] = last[i]
			}
			logger.Warn("DNS resolution failed; keeping previous addresses", "host", e.Host, "kept", len(per[i]), "err", err)
		} else {
			for _, ip := range ips {
				per[i] = append(per[i], resolved{addr: net.JoinHostPort(ip.IP.String(), strconv.Itoa(e.Port)), weight: e.Weight})
			}
		}
		all = append(all, per[i]...)
	}
	return all, per
}

// drain stops DNS refresh and drains every pool.
func (c *Cluster) drain() {
	c.unsample()
	close(c.stop)
	c.stopWG.Wait()
	if c.od != nil {
		c.closeOriginalDst()
	}
	c.closeHealth()
	for _, h := range c.set.Load().hosts {
		h.pool.Drain()
	}
}

// Manager owns the live clusters. Reads are lock-free.
type Manager struct {
	store  *stats.Store
	logger *slog.Logger
	st     managerStats

	mu       sync.Mutex // serialises Apply
	clusters atomic.Pointer[map[string]*Cluster]
}

// managerStats are Envoy's cluster manager stats (cluster_manager.*):
// clusters live, and clusters added, modified (replaced by a different
// config: drained, a new one built) and removed by Apply, static ones
// included as Envoy counts them.
type managerStats struct {
	active                   *stats.Gauge   // active_clusters
	added, modified, removed *stats.Counter // cluster_added, cluster_modified, cluster_removed
}

// NewManager returns a manager with no clusters.
func NewManager(store *stats.Store, logger *slog.Logger) *Manager {
	sc := store.Root().Scope("cluster_manager")
	m := &Manager{store: store, logger: logger, st: managerStats{
		active:   sc.Gauge("active_clusters"),
		added:    sc.Counter("cluster_added"),
		modified: sc.Counter("cluster_modified"),
		removed:  sc.Counter("cluster_removed"),
	}}
	empty := map[string]*Cluster{}
	m.clusters.Store(&empty)
	return m
}

// Get returns the live cluster name, or nil.
func (m *Manager) Get(name string) *Cluster { return (*m.clusters.Load())[name] }

// All returns the live clusters.
func (m *Manager) All() map[string]*Cluster { return *m.clusters.Load() }

// Apply makes specs the live set of clusters: unchanged clusters keep their
// hosts and connections; changed and removed ones are drained after the
// swap, so requests already using them finish. An unchanged EDS cluster
// whose endpoints changed keeps the hosts still assigned (and their pools)
// and drains the removed ones.
func (m *Manager) Apply(specs []*Spec) {
	m.mu.Lock()
	defer m.mu.Unlock()
	old := *m.clusters.Load()
	next := make(map[string]*Cluster, len(specs))
	for _, s := range specs {
		if c, ok := old[s.Name]; ok && c.spec.Equal(s) {
			if s.Discovery == EDS {
				if eps := resolveStatic(s.Endpoints); !c.hasHosts(eps) {
					c.setHosts(eps)
				}
			}
			next[s.Name] = c
			continue
		}
		if _, ok := old[s.Name]; ok {
			m.st.modified.Inc()
		} else {
			m.st.added.Inc()
		}
		next[s.Name] = newCluster(s, m.store, m.logger)
	}
	m.clusters.Store(&next)
	m.st.active.Set(int64(len(next)))
	for name, c := range old {
		if _, kept := next[name]; !kept {
			m.st.removed.Inc()
		}
		if next[name] != c {
			c.drain()
		}
	}
}

// Close drains every cluster.
func (m *Manager) Close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	old := *m.clusters.Load()
	empty := map[string]*Cluster{}
	m.clusters.Store(&empty)
	m.st.active.Set(0)
	for _, c := range old {
		c.drain()
	}
}

// durationMs is d in milliseconds at microsecond resolution, the unit of
// Envoy's *_ms histograms.
func durationMs(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
