package h3

import (
	"crypto/hkdf"
	"crypto/sha256"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

// Defaults of Envoy's QuicProtocolOptions for the zero values of
// QUICOptions fields.
const (
	DefaultMaxConcurrentStreams        = 100
	DefaultInitialStreamWindowSize     = 16 << 20 // 16 MiB
	DefaultInitialConnectionWindowSize = 24 << 20 // 24 MiB
	DefaultIdleTimeout                 = 300 * time.Second
	DefaultHandshakeTimeout            = 20 * time.Second
)

// maxIncomingUniStreams bounds the unidirectional streams a peer may open:
// HTTP/3 needs three (control, QPACK encoder and decoder); server push is
// not supported.
const maxIncomingUniStreams = 8

// QUICOptions are the QUIC settings of Envoy's
// config.core.v3.QuicProtocolOptions, shared by listeners
// (udp_listener_config.quic_options.quic_protocol_options) and clusters
// (http3_protocol_options.quic_protocol_options). Zero fields take Envoy's
// defaults.
type QUICOptions struct {
	// MaxConcurrentStreams is the bidirectional stream limit this side
	// grants its peer (MAX_STREAMS); max_concurrent_streams, default 100.
	MaxConcurrentStreams int64
	// InitialStreamWindowSize and InitialConnectionWindowSize are the
	// receive windows (initial_stream_window_size, default 16 MiB;
	// initial_connection_window_size, default 24 MiB). quic-go starts
	// smaller and grows towards them as the RTT allows.
	InitialStreamWindowSize     uint64
	InitialConnectionWindowSize uint64
	// IdleTimeout closes a connection with no network activity for this
	// long (idle_network_timeout, or the listener's quic_options.idle_timeout;
	// default 300 s).
	IdleTimeout time.Duration
	// KeepalivePeriod sends a QUIC PING after this long without sending
	// (connection_keepalive.max_interval; zero: no keepalive).
	// OptionsFromProto applies Envoy's defaults: 15 s for a client, none
	// for a server.
	KeepalivePeriod time.Duration
	// HandshakeTimeout bounds the handshake (crypto_handshake_timeout,
	// default 20 s; a cluster's connect_timeout when dialling).
	HandshakeTimeout time.Duration
	// Allow0RTT accepts 0-RTT data (server side) or sends it (client side).
	// Off unless a transport enables early data explicitly: 0-RTT requests
	// can be replayed.
	Allow0RTT bool
}

// Config returns the quic-go config for o.
func (o QUICOptions) Config() *quic.Config {
	mcs := o.MaxConcurrentStreams
	if mcs <= 0 {
		mcs = DefaultMaxConcurrentStreams
	}
	sw, cw := o.InitialStreamWindowSize, o.InitialConnectionWindowSize
	if sw == 0 {
		sw = DefaultInitialStreamWindowSize
	}
	if cw == 0 {
		cw = DefaultInitialConnectionWindowSize
	}
	idle, hs := o.IdleTimeout, o.HandshakeTimeout
	if idle <= 0 {
		idle = DefaultIdleTimeout
	}
	if hs <= 0 {
		hs = DefaultHandshakeTimeout
	}
	return &quic.Config{
		HandshakeIdleTimeout:           hs,
		MaxIdleTimeout:                 idle,
		KeepAlivePeriod:                o.KeepalivePeriod,
		MaxIncomingStreams:             mcs,
		MaxIncomingUniStreams:          maxIncomingUniStreams,
		InitialStreamReceiveWindow:     min(sw, 512<<10),
		MaxStreamReceiveWindow:         sw,
		InitialConnectionReceiveWindow: min(cw, 768<<10),
		MaxConnectionReceiveWindow:     cw,
		Allow0RTT:                      o.Allow0RTT,
	}
}

// RetryPolicy says when a listener validates a client's address with a
// QUIC Retry before spending a handshake on it (RFC 9000 section 8.1.2).
type RetryPolicy int

// Retry policies.
const (
	// RetryUnderLoad sends Retry once more than RetryThreshold connection
	// attempts arrived within one second (the default).
	RetryUnderLoad RetryPolicy = iota
	// RetryAlways validates every new client address.
	RetryAlways
	// RetryNever never sends Retry; the amplification limit (3x) still
	// applies.
	RetryNever
)

// DefaultRetryThreshold is the connection attempts per second above which
// RetryUnderLoad starts validating addresses.
const DefaultRetryThreshold = 100

// NewRetryDecider returns the quic.Transport VerifySourceAddress callback
// for policy: under load it counts attempts in one-second windows and asks
// for Retry while the count is above threshold.
func NewRetryDecider(policy RetryPolicy, threshold int) func() bool {
	switch policy {
	case RetryAlways:
		return func() bool { return true }
	case RetryNever:
		return func() bool { return false }
	}
	if threshold <= 0 {
		threshold = DefaultRetryThreshold
	}
	var (
		mu     sync.Mutex
		window time.Time
		n      int
	)
	return func() bool {
		mu.Lock()
		defer mu.Unlock()
		now := time.Now()
		if now.Sub(window) >= time.Second {
			window, n = now, 0
		}
		n++
		return n > threshold
	}
}

// StatelessResetKeyFromFile derives a stateless reset key from the secret
// in file (at least 32 bytes), so a restarted listener sends resets that
// its peers' tokens from before the restart accept (RFC 9000 section
// 10.3). The key is HKDF-SHA256 of the secret with a fixed label.
func StatelessResetKeyFromFile(file string) (*quic.StatelessResetKey, error) {
	secret, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("stateless reset secret: %w", err)
	}
	if len(secret) < 32 {
		return nil, fmt.Errorf("stateless reset secret %s: %d bytes, need at least 32", file, len(secret))
	}
	b, err := hkdf.Key(sha256.New, secret, nil, "meshd quic stateless reset key", 32)
	if err != nil {
		return nil, fmt.Errorf("stateless reset secret %s: %w", file, err)
	}
	var k quic.StatelessResetKey
	copy(k[:], b)
	return &k, nil
}
