package tcpproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"meshd.dev/meshd/proxy/accesslog"
	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/proxy/stats"
	"meshd.dev/meshd/proxy/upstream"
)

// Clusters finds live clusters by name; *upstream.Manager implements it.
type Clusters interface {
	Get(name string) *upstream.Cluster
}

var _ Clusters = (*upstream.Manager)(nil)

// Stats are the filter's Envoy-named stats under "tcp.<stat_prefix>."
// (Prometheus: envoy_tcp_<name>{envoy_tcp_prefix="<stat_prefix>"}).
type Stats struct {
	// DownstreamCxTotal counts connections handed to the filter.
	DownstreamCxTotal *stats.Counter
	// DownstreamCxNoRoute counts connections closed because the chosen
	// cluster does not exist.
	DownstreamCxNoRoute *stats.Counter
	// DownstreamCxRxBytesTotal counts bytes read from downstream;
	// DownstreamCxTxBytesTotal bytes written to downstream.
	DownstreamCxRxBytesTotal, DownstreamCxTxBytesTotal *stats.Counter
	// UpstreamFlushTotal counts connections whose downstream went away
	// while bytes it had sent were still being written upstream: the
	// upstream connection is kept open until that write finishes (or
	// idle_timeout), as Envoy flushes before closing. UpstreamFlushActive
	// is the number doing so now.
	UpstreamFlushTotal  *stats.Counter
	UpstreamFlushActive *stats.Gauge
	// IdleTimeout counts connections closed by idle_timeout.
	IdleTimeout *stats.Counter
}

// NewStats returns the stats of the tcp_proxy with statPrefix in store. The
// same prefix returns the same counters.
func NewStats(store *stats.Store, statPrefix string) *Stats {
	sc := store.Root().Scope("tcp").Tagged("envoy_tcp_prefix", statPrefix)
	return &Stats{
		DownstreamCxTotal:        sc.Counter("downstream_cx_total"),
		DownstreamCxNoRoute:      sc.Counter("downstream_cx_no_route"),
		DownstreamCxRxBytesTotal: sc.Counter("downstream_cx_rx_bytes_total"),
		DownstreamCxTxBytesTotal: sc.Counter("downstream_cx_tx_bytes_total"),
		UpstreamFlushTotal:       sc.Counter("upstream_flush_total"),
		UpstreamFlushActive:      sc.Gauge("upstream_flush_active"),
		IdleTimeout:              sc.Counter("idle_timeout"),
	}
}

// active is a config with its stats, swapped as one.
type active struct {
	cfg   *Config
	stats *Stats
}

// Proxy is one listener's tcp_proxy filter. Its config can be swapped at
// any time; a connection keeps the config it started with.
type Proxy struct {
	clusters Clusters
	store    *stats.Store
	log      *slog.Logger
	cur      atomic.Pointer[active]
	logs     atomic.Pointer[accesslog.Manager] // nil: access_log is not written
}

// SetAccessLogs makes the filter write its config's access_log through m
// for connections accepted from now on; without it no access log is
// written.
func (p *Proxy) SetAccessLogs(m *accesslog.Manager) { p.logs.Store(m) }

// New returns a filter serving cfg, with clusters from clusters and stats
// in store. A nil logger means slog.Default().
func New(cfg *Config, clusters Clusters, store *stats.Store, logger *slog.Logger) *Proxy {
	if logger == nil {
		logger = slog.Default()
	}
	p := &Proxy{clusters: clusters, store: store, log: logger}
	p.Swap(cfg)
	return p
}

// Swap makes cfg the config of connections accepted from now on.
func (p *Proxy) Swap(cfg *Config) {
	p.cur.Store(&active{cfg: cfg, stats: NewStats(p.store, cfg.StatPrefix)})
}

// Config returns the current config.
func (p *Proxy) Config() *Config { return p.cur.Load().cfg }

// NewConn wraps an accepted (and, for TLS listeners, handshaken)
// downstream connection. Serve proxies it; the returned ServerConn owns c.
func (p *Proxy) NewConn(c net.Conn, info stream.ConnInfo) stream.ServerConn {
	a := p.cur.Load()
	ctx, cancel := context.WithCancel(context.Background())
	pc := &conn{
		p:      p,
		cfg:    a.cfg,
		st:     a.stats,
		down:   c,
		ctx:    ctx,
		cancel: cancel,
		log:    p.log.With(slog.Uint64("conn", info.ID), slog.String("remote", addrString(info.RemoteAddr))),
	}
	if m := p.logs.Load(); m != nil && len(a.cfg.AccessLogs) > 0 {
		pc.logs = m
		pc.ci = info
		pc.info = &accesslog.Info{Start: time.Now(), Conn: &pc.ci}
	}
	return pc
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

// conn is one proxied connection.
type conn struct {
	p      *Proxy
	cfg    *Config // immutable
	st     *Stats
	down   net.Conn
	ctx    context.Context // cancelled by Close: aborts the upstream dial
	cancel context.CancelFunc
	log    *slog.Logger

	lastActive atomic.Int64 // unix nanos of the last byte moved
	idleFired  atomic.Bool
	upState    atomic.Int32 // upIdle, upWriting or upFlushing

	mu     sync.Mutex
	up     net.Conn    // set once connected
	idle   *time.Timer // idle_timeout timer, nil when disabled
	closed bool        // closeAll ran: up is closed as soon as it is set

	// info is the connection's access-log record, nil when the config has
	// no access_log. Only Serve writes it; the byte counts live in rx and
	// tx (written by both pipes) until a line is formatted.
	info   *accesslog.Info
	logs   *accesslog.Manager // set with info
	ci     stream.ConnInfo
	rx, tx atomic.Uint64 // bytes read from / written to downstream
}

// errNoHost is the cause when the cluster has no host to connect to.
var errNoHost = errors.New("no healthy upstream host")

// Serve connects upstream and proxies until both directions are done. It
// returns nil when both sides closed cleanly, and the cause otherwise.
func (c *conn) Serve() (err error) {
	defer c.cancel()
	defer c.down.Close()
	c.st.DownstreamCxTotal.Inc()
	if c.info != nil {
		defer func() { c.writeLog(time.Now()) }()
	}

	cl, host, up, err := c.connect()
	if err != nil {
		return err
	}
	cst := cl.Stats()
	cst.CxTotal.Inc()
	cst.CxActive.Inc()
	host.LB.Acquire()
	upRx := cst.Scope.Counter("upstream_cx_rx_bytes_total")
	upTx := cst.Scope.Counter("upstream_cx_tx_bytes_total")
	defer func() {
		up.Close()
		host.LB.Release()
		cst.CxActive.Dec()
		cst.Scope.Counter("upstream_cx_destroy").Inc()
	}()

	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return errors.New("closed while connecting upstream")
	}
	c.up = up
	c.mu.Unlock()

	c.touch()
	defer c.closeAll()
	stopLogs := func() {}
	if c.info != nil {
		if c.cfg.FlushOnConnected {
			c.writeLog(time.Time{})
		}
		if d := c.cfg.FlushInterval; d > 0 {
			stopLogs = c.periodicLogs(d)
		}
	}
	if d := c.cfg.IdleTimeout; d > 0 {
		c.mu.Lock()
		if !c.closed {
			c.idle = time.AfterFunc(d, c.idleCheck)
		}
		c.mu.Unlock()
	}

	upErr := make(chan error, 1)
	go func() { upErr <- c.pipe(c.down, up, upRx, c.st.DownstreamCxTxBytesTotal, false) }()
	downErr := c.pipe(up, c.down, c.st.DownstreamCxRxBytesTotal, upTx, true)
	err = errors.Join(downErr, <-upErr)
	stopLogs()
	if c.idleFired.Load() {
		if c.info != nil {
			c.info.TerminationDetails = "idle_timeout"
		}
		return fmt.Errorf("idle_timeout %v elapsed", c.cfg.IdleTimeout)
	}
	return err
}

// writeLog writes the access_log lines for the connection as it stands;
// end is zero for an intermediate line (flush on connected, periodic
// flush), whose %DURATION% is the time so far. Only Serve calls it, or
// periodicLogs while Serve waits for the pipes (when Serve writes nothing
// to info).
func (c *conn) writeLog(end time.Time) {
	i := *c.info
	if end.IsZero() {
		end = time.Now()
	}
	i.End = end
	i.BytesReceived, i.BytesSent = c.rx.Load(), c.tx.Load()
	c.logs.Log(c.cfg.AccessLogs, &i)
}

// periodicLogs writes an intermediate access-log line every d until the
// returned stop is called; stop returns once no line is being written.
func (c *conn) periodicLogs(d time.Duration) (stop func()) {
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(d)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				c.writeLog(time.Time{})
			case <-quit:
				return
			}
		}
	}()
	return func() {
		close(quit)
		<-done
	}
}

// note records a response flag and the failure reason on the access-log
// record, when there is one.
func (c *conn) note(f accesslog.Flags, cluster, host, reason string) {
	if c.info == nil {
		return
	}
	c.info.Flags |= f
	if cluster != "" {
		c.info.UpstreamCluster = cluster
	}
	if host != "" {
		c.info.UpstreamHost = host
	}
	if reason != "" {
		c.info.UpstreamTransportFailureReason = reason
	}
}

// connect picks a cluster and up to MaxConnectAttempts hosts, and dials
// them in turn until one accepts.
func (c *conn) connect() (*upstream.Cluster, *upstream.Host, net.Conn, error) {
	name := c.cfg.pickCluster()
	cl := c.p.clusters.Get(name)
	if cl == nil {
		c.st.DownstreamCxNoRoute.Inc()
		c.note(accesslog.NoClusterFound, name, "", "")
		return nil, nil, nil, fmt.Errorf("cluster %q: not found", name)
	}
	c.note(0, name, "", "")
	tried := map[*upstream.Host]bool{}
	var errs []error
	for attempt := 0; attempt < c.cfg.MaxConnectAttempts; attempt++ {
		h := pickUntried(cl, tried, c.down.LocalAddr())
		if h == nil {
			cl.Stats().NoHealthyUpstream.Inc()
			c.note(accesslog.NoHealthyUpstream, "", "", "")
			errs = append(errs, fmt.Errorf("cluster %q: %w", name, errNoHost))
			break
		}
		tried[h] = true
		up, err := upstream.Dial(c.ctx, h.Addr, cl.Spec(), cl.Stats())
		if err == nil {
			h.ReportLocalOrigin(true)
			if c.info != nil {
				// A later attempt succeeded: the failure is history.
				c.info.Flags &^= accesslog.UpstreamConnectionFailure
				c.info.UpstreamTransportFailureReason = ""
				c.info.UpstreamHost = h.Addr
			}
			return cl, h, up, nil
		}
		h.ReportLocalOrigin(false)
		errs = append(errs, err)
		if c.ctx.Err() != nil {
			// Closed (downstream gone or drain deadline) while connecting.
			c.note(accesslog.DownstreamConnectionTermination, "", h.Addr, "")
			break
		}
		c.note(accesslog.UpstreamConnectionFailure, "", h.Addr, err.Error())
		c.log.Debug("tcp_proxy: upstream connect failed", slog.String("cluster", name), slog.Int("attempt", attempt+1), slog.Any("error", err))
	}
	return nil, nil, nil, fmt.Errorf("cluster %q: %d connect attempt(s) failed: %w", name, len(errs), errors.Join(errs...))
}

// pickUntried asks the load balancer for a host not yet tried, giving it
// as many chances as the cluster has hosts; when every pick was tried
// already it returns the last pick, so a one-host cluster is retried. An
// ORIGINAL_DST cluster always picks the host of local, the downstream
// connection's original destination.
func pickUntried(cl *upstream.Cluster, tried map[*upstream.Host]bool, local net.Addr) *upstream.Host {
	if cl.Spec().Discovery == upstream.OriginalDst {
		return cl.PickFor(upstream.Target{LocalAddr: local})
	}
	var h *upstream.Host
	for range max(len(cl.Hosts()), 1) {
		h = cl.Pick()
		if h == nil || !tried[h] {
			return h
		}
	}
	return h
}

// bufferSize is the copy buffer per direction, io.Copy's size.
const bufferSize = 32 << 10

// Flush states of the downstream→upstream direction (conn.upState).
const (
	upIdle     int32 = iota // not writing
	upWriting               // in a Write to upstream
	upFlushing              // downstream is gone; finishing that Write
)

// pipe copies src to dst until src ends. A clean end (EOF) is passed on as
// a half-close of dst and returns nil; a read or write error closes both
// connections (so the other direction ends too) and is returned.
// toUpstream marks the downstream→upstream direction, whose in-flight
// write survives the downstream going away (upstream_flush_total).
func (c *conn) pipe(dst, src net.Conn, rx, tx *stats.Counter, toUpstream bool) error {
	dir := "upstream→downstream"
	if toUpstream {
		dir = "downstream→upstream"
	}
	buf := make([]byte, bufferSize)
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			rx.Add(uint64(n))
			if toUpstream {
				c.rx.Add(uint64(n))
			}
			c.touch()
			if toUpstream {
				c.upState.Store(upWriting)
			}
			m, werr := dst.Write(buf[:n])
			tx.Add(uint64(m))
			if !toUpstream {
				c.tx.Add(uint64(m))
			}
			c.touch()
			if toUpstream && !c.upState.CompareAndSwap(upWriting, upIdle) {
				// Downstream went away during the write; it is flushed.
				c.st.UpstreamFlushActive.Dec()
				c.closeAll()
				if werr != nil {
					return fmt.Errorf("%s: flushing after downstream closed: write: %w", dir, werr)
				}
				return nil
			}
			if werr != nil {
				c.downGone(toUpstream)
				return fmt.Errorf("%s: write: %w", dir, werr)
			}
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				if err := closeWrite(dst); err != nil {
					c.closeAll()
					return fmt.Errorf("%s: half-close: %w", dir, err)
				}
				return nil
			}
			c.closeAll()
			return fmt.Errorf("%s: read: %w", dir, rerr)
		}
	}
}

// downGone handles a failed write to downstream (from the
// upstream→downstream direction, toUpstream false): when the other
// direction is mid-write upstream, only downstream is closed and that
// write is left to finish (an upstream flush, reported true); otherwise
// both connections close.
func (c *conn) downGone(toUpstream bool) bool {
	if !toUpstream && c.upState.CompareAndSwap(upWriting, upFlushing) {
		c.st.UpstreamFlushTotal.Inc()
		c.st.UpstreamFlushActive.Inc()
		c.down.Close()
		return true
	}
	c.closeAll()
	return false
}

// closeWrite half-closes c when it can, and closes it otherwise.
func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

// touch records activity for idle_timeout.
func (c *conn) touch() { c.lastActive.Store(time.Now().UnixNano()) }

// idleCheck runs when the idle timer fires: it closes the connection when
// nothing moved for IdleTimeout, and re-arms the timer for the rest
// otherwise.
func (c *conn) idleCheck() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	rest := c.cfg.IdleTimeout - time.Since(time.Unix(0, c.lastActive.Load()))
	if rest > 0 {
		c.idle.Reset(rest)
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	c.idleFired.Store(true)
	c.st.IdleTimeout.Inc()
	c.log.Debug("tcp_proxy: idle timeout", slog.Duration("idle_timeout", c.cfg.IdleTimeout))
	c.closeAll()
}

// closeAll closes both connections and stops the idle timer. Idempotent.
func (c *conn) closeAll() {
	c.cancel()
	c.mu.Lock()
	c.closed = true
	up, idle := c.up, c.idle
	c.mu.Unlock()
	if idle != nil {
		idle.Stop()
	}
	c.down.Close()
	if up != nil {
		up.Close()
	}
}

// Shutdown does nothing: like Envoy's tcp_proxy, a draining listener lets
// proxied connections run until they end or the drain deadline closes them
// (Close), since a byte stream has no way to ask the peer to finish.
func (c *conn) Shutdown() {}

// Close closes both connections at once (and abandons a connect in
// progress); Serve then returns.
func (c *conn) Close() error {
	c.closeAll()
	return nil
}
