package listener

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"meshd.dev/meshd/proxy/http/h3"
	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/proxy/stats"
)

// QUICConfig configures a QUICListener: Envoy's UDP listener with
// udp_listener_config.quic_options, the envoy.transport_sockets.quic
// downstream transport and an HTTP/3 connection manager.
type QUICConfig struct {
	// Name identifies the listener in logs and errors.
	Name string
	// Address is host:port to bind (UDP); port 0 picks a free port.
	Address string
	// TLS is the server TLS config (from the QuicDownstreamTransport's
	// DownstreamTlsContext). The listener uses a copy with NextProtos
	// "h3" and TLS 1.3 as the minimum; certificates are looked up per
	// handshake as the config says, so SDS rotation applies to new
	// connections.
	TLS *tls.Config
	// QUIC holds the QUIC transport settings.
	QUIC h3.QUICOptions
	// Retry and RetryThreshold decide when client addresses are validated
	// with a Retry packet.
	Retry          h3.RetryPolicy
	RetryThreshold int
	// StatelessResetKey keys stateless resets; nil generates a random key
	// for the listener's life (resets then work until a restart).
	StatelessResetKey *quic.StatelessResetKey
	// HTTP3 configures the HTTP/3 server (ConnInfo is set by the listener).
	HTTP3 h3.ServerConfig
	// Handler serves the streams.
	Handler stream.Handler
	// OnConn, when set, is called with each new connection's context,
	// which ends when the connection closes (connection manager stats).
	OnConn func(ctx context.Context)
	// Logger receives diagnostics; nil means slog.Default().
	Logger *slog.Logger
	// Stats is the listener's scope (see StatsScope); the listener counts
	// downstream_cx_total, downstream_cx_active, downstream_cx_destroy,
	// ssl.handshake (QUIC handshakes completed), ssl.connection_error
	// (connections that ended before their handshake completed) and the
	// meshd stats quic.retry_required, quic.conn_state_created,
	// quic.conn_state_active and quic.amplification_dropped. Nil keeps
	// them private.
	Stats *stats.Scope
}

// QUICListener is a bound UDP socket serving HTTP/3 over QUIC.
type QUICListener struct {
	cfg  QUICConfig
	udp  *net.UDPConn
	tr   *quic.Transport
	ln   *quic.Listener
	srv  *h3.Server
	log  *slog.Logger
	stop sync.Once

	active        atomic.Int64
	cxTotal       *stats.Counter
	cxDestroy     *stats.Counter
	cxActive      *stats.Gauge
	retryRequired *stats.Counter
	sslHandshake  *stats.Counter
	sslConnError  *stats.Counter
	// stateCreated and stateActive count quic-go connection state from
	// the Initial that creates it, handshake complete or not, until it is
	// released (closed, or the handshake failed or timed out): what a
	// flood of Initials from unvalidated addresses costs the listener.
	stateCreated *stats.Counter
	stateActive  *stats.Gauge
}

// handshakeKey marks a connection's context with its *atomic.Bool, set
// once the handshake completed.
type handshakeKey struct{}

// ListenQUIC binds cfg.Address (UDP) and starts the QUIC transport; it
// accepts nothing until Serve.
func ListenQUIC(cfg QUICConfig) (*QUICListener, error) {
	if cfg.TLS == nil {
		return nil, fmt.Errorf("listener %q: QUIC requires a TLS context", cfg.Name)
	}
	ua, err := net.ResolveUDPAddr("udp", cfg.Address)
	if err != nil {
		return nil, fmt.Errorf("listener %q: address %s: %w", cfg.Name, cfg.Address, err)
	}
	udp, err := net.ListenUDP("udp", ua)
	if err != nil {
		// err reads "listen udp ADDR: bind: REASON".
		return nil, fmt.Errorf("listener %q: %w", cfg.Name, err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With(slog.String("listener", cfg.Name), slog.String("address", udp.LocalAddr().String()), slog.String("transport", "quic"))
	scope := cfg.Stats
	if scope == nil {
		scope = stats.NewStore().Root()
	}
	l := &QUICListener{
		cfg:           cfg,
		udp:           udp,
		log:           log,
		cxTotal:       scope.Counter("downstream_cx_total"),
		cxDestroy:     scope.Counter("downstream_cx_destroy"),
		cxActive:      scope.Gauge("downstream_cx_active"),
		retryRequired: scope.Scope("quic").Counter("retry_required"),
		sslHandshake:  scope.Scope("ssl").Counter("handshake"),
		sslConnError:  scope.Scope("ssl").Counter("connection_error"),
		stateCreated:  scope.Scope("quic").Counter("conn_state_created"),
		stateActive:   scope.Scope("quic").Gauge("conn_state_active"),
	}
	key := cfg.StatelessResetKey
	if key == nil {
		key = new(quic.StatelessResetKey)
		_, _ = rand.Read(key[:])
	}
	needRetry := h3.NewRetryDecider(cfg.Retry, cfg.RetryThreshold)
	qc := cfg.QUIC.Config()
	amp := newAmplificationConn(udp, qc.HandshakeIdleTimeout+time.Second, scope.Scope("quic").Counter("amplification_dropped"))
	l.tr = &quic.Transport{
		Conn:              amp,
		StatelessResetKey: key,
		VerifySourceAddress: func(net.Addr) bool {
			if needRetry() {
				l.retryRequired.Inc()
				return true
			}
			return false
		},
		ConnContext: l.connContext,
	}
	tc := cfg.TLS.Clone()
	tc.NextProtos = []string{h3.NextProto}
	tc.MinVersion = tls.VersionTLS13
	ln, err := l.tr.Listen(tc, qc)
	if err != nil {
		_ = l.tr.Close()
		return nil, fmt.Errorf("listener %q: quic: %w", cfg.Name, err)
	}
	l.ln = ln
	hc := cfg.HTTP3
	hc.Logger = log
	hc.ConnInfo = l.connInfo
	l.srv = h3.NewServer(hc, cfg.Handler)
	return l, nil
}

// connContext runs when quic-go creates a server connection, before its
// handshake, and counts the connection state (quic.conn_state_*). quic-go
// ends the context when the connection closes or its handshake fails or
// times out, which releases the state; one that ends before connInfo
// marked the handshake complete counts as ssl.connection_error (TLS
// alert, client certificate refused, handshake timeout).
func (l *QUICListener) connContext(ctx context.Context, _ *quic.ClientInfo) (context.Context, error) {
	l.stateCreated.Inc()
	l.stateActive.Inc()
	done := new(atomic.Bool)
	ctx = context.WithValue(ctx, handshakeKey{}, done)
	context.AfterFunc(ctx, func() {
		l.stateActive.Dec()
		if !done.Load() {
			l.sslConnError.Inc()
		}
	})
	return ctx, nil
}

// connInfo counts an accepted connection (its handshake is complete) and
// numbers it.
func (l *QUICListener) connInfo(c *quic.Conn) stream.ConnInfo {
	if done, ok := c.Context().Value(handshakeKey{}).(*atomic.Bool); ok {
		done.Store(true)
	}
	l.sslHandshake.Inc()
	l.cxTotal.Inc()
	l.cxActive.Inc()
	l.active.Add(1)
	context.AfterFunc(c.Context(), func() {
		l.cxActive.Dec()
		l.cxDestroy.Inc()
		l.active.Add(-1)
		if st := l.cfg.HTTP3.Stats; st != nil {
			connClosedStats(st, c)
		}
	})
	if l.cfg.OnConn != nil {
		l.cfg.OnConn(c.Context())
	}
	return stream.ConnInfo{ID: nextConnID.Add(1)}
}

// connClosedStats adds a closed connection's quic-go metrics to st: its
// packets sent and lost, its smoothed RTT, and whether QUIC's idle timeout
// closed it. Stats a server was given without those counters are skipped.
func connClosedStats(st *h3.Stats, c *quic.Conn) {
	cs := c.ConnectionStats()
	if st.PacketsSent != nil && st.PacketsLost != nil {
		st.PacketsSent.Add(cs.PacketsSent)
		st.PacketsLost.Add(cs.PacketsLost)
	}
	if st.RTTMs != nil {
		st.RTTMs.Record(float64(cs.SmoothedRTT.Microseconds()) / 1000)
	}
	if st.IdleTimeout != nil && h3.IsIdleTimeout(context.Cause(c.Context())) {
		st.IdleTimeout.Inc()
	}
}

// Addr is the bound UDP address.
func (l *QUICListener) Addr() net.Addr { return l.udp.LocalAddr() }

// Serve serves connections until StopAccepting, Shutdown or Close, then
// returns nil.
func (l *QUICListener) Serve() error {
	err := l.srv.ServeListener(l.ln)
	if err == nil || errors.Is(err, h3.ErrServerClosed) || errors.Is(err, quic.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return fmt.Errorf("listener %q: %w", l.cfg.Name, err)
}

// StopAccepting stops accepting new connections; connections in progress
// keep running (the UDP socket stays open for them).
func (l *QUICListener) StopAccepting() {
	l.stop.Do(func() { _ = l.ln.Close() })
}

// Shutdown sends HTTP/3 GOAWAY on every connection and waits until their
// streams end or ctx is done; then it closes the socket.
func (l *QUICListener) Shutdown(ctx context.Context) error {
	l.StopAccepting()
	err := l.srv.Shutdown(ctx)
	_ = l.tr.Close()
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// Close closes every connection and the socket at once.
func (l *QUICListener) Close() error {
	l.StopAccepting()
	_ = l.srv.Close()
	return l.tr.Close()
}

// ActiveConns is the number of open QUIC connections.
func (l *QUICListener) ActiveConns() int { return int(l.active.Load()) }
