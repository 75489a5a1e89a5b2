package h3

import (
	"fmt"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

// Role is the end of its connections a QUICOptions configures: Envoy's
// keepalive defaults differ between the two.
type Role int

// Roles.
const (
	// RoleClient configures upstream connections (a cluster's
	// http3_protocol_options.quic_protocol_options).
	RoleClient Role = iota
	// RoleServer configures downstream connections (a listener's
	// udp_listener_config.quic_options.quic_protocol_options).
	RoleServer
)

// Limits of Envoy's QuicProtocolOptions (those of QUICHE).
const (
	// DefaultKeepalive is the PING interval of a client connection whose
	// connection_keepalive or max_interval is absent (QUICHE's 15 s).
	DefaultKeepalive = 15 * time.Second
	// MinKeepalive is the shortest max_interval Envoy allows, so probes
	// neither throttle the connection nor flood the peer.
	MinKeepalive = time.Second
	// MaxStreamWindowSize and MaxConnectionWindowSize bound
	// initial_stream_window_size and initial_connection_window_size.
	MaxStreamWindowSize     = 16 << 20
	MaxConnectionWindowSize = 24 << 20
)

// OptionsFromProto compiles Envoy's QuicProtocolOptions for role; nil p
// gives the role's defaults. Errors start with the field name below p.
//
// Keepalive follows Envoy's defaults: a client PINGs every
// connection_keepalive.max_interval (absent: DefaultKeepalive; zero: no
// PINGs); a server PINGs only when initial_interval is set, then every
// max_interval (absent: DefaultKeepalive). quic-go sends PINGs at one
// period, so a client's initial_interval (Envoy's faster first probes,
// backing off to max_interval) is validated and the steady max_interval
// used. quic-go also caps the period at half the idle timeout, so a
// max_interval at or above it still keeps the connection alive.
func OptionsFromProto(p *corev3.QuicProtocolOptions, role Role) (QUICOptions, error) {
	var o QUICOptions
	if role == RoleClient {
		o.KeepalivePeriod = DefaultKeepalive
	}
	if p == nil {
		return o, nil
	}
	if v := p.GetMaxConcurrentStreams(); v != nil {
		if v.GetValue() == 0 {
			return o, fmt.Errorf("max_concurrent_streams: must be at least 1")
		}
		o.MaxConcurrentStreams = int64(v.GetValue())
	}
	if v := p.GetInitialStreamWindowSize(); v != nil {
		if v.GetValue() == 0 || v.GetValue() > MaxStreamWindowSize {
			return o, fmt.Errorf("initial_stream_window_size: %d is outside 1..%d", v.GetValue(), MaxStreamWindowSize)
		}
		o.InitialStreamWindowSize = uint64(v.GetValue())
	}
	if v := p.GetInitialConnectionWindowSize(); v != nil {
		if v.GetValue() == 0 || v.GetValue() > MaxConnectionWindowSize {
			return o, fmt.Errorf("initial_connection_window_size: %d is outside 1..%d", v.GetValue(), MaxConnectionWindowSize)
		}
		o.InitialConnectionWindowSize = uint64(v.GetValue())
	}
	if d := p.GetIdleNetworkTimeout(); d != nil {
		if err := d.CheckValid(); err != nil {
			return o, fmt.Errorf("idle_network_timeout: %w", err)
		}
		if d.AsDuration() <= 0 {
			return o, fmt.Errorf("idle_network_timeout: must be positive, got %v", d.AsDuration())
		}
		o.IdleTimeout = d.AsDuration()
	}
	if ka := p.GetConnectionKeepalive(); ka != nil {
		period, err := keepalivePeriod(ka, role)
		if err != nil {
			return o, fmt.Errorf("connection_keepalive.%w", err)
		}
		o.KeepalivePeriod = period
	}
	return o, nil
}

// keepalivePeriod is the PING period of connection_keepalive for role.
// Errors start with the field name.
func keepalivePeriod(ka *corev3.QuicKeepAliveSettings, role Role) (time.Duration, error) {
	maxI, initial := DefaultKeepalive, time.Duration(0)
	if d := ka.GetMaxInterval(); d != nil {
		if err := d.CheckValid(); err != nil {
			return 0, fmt.Errorf("max_interval: %w", err)
		}
		maxI = d.AsDuration()
		if maxI < 0 || (maxI > 0 && maxI < MinKeepalive) {
			return 0, fmt.Errorf("max_interval: %v must be 0 (no keepalive) or at least %v", maxI, MinKeepalive)
		}
	}
	if d := ka.GetInitialInterval(); d != nil {
		if err := d.CheckValid(); err != nil {
			return 0, fmt.Errorf("initial_interval: %w", err)
		}
		initial = d.AsDuration()
		if initial < 0 || (initial > 0 && initial < time.Millisecond) {
			return 0, fmt.Errorf("initial_interval: %v must be 0 or at least 1ms", initial)
		}
	}
	if role == RoleServer && initial == 0 {
		// Envoy: without initial_interval a server connection does not probe.
		return 0, nil
	}
	return maxI, nil
}
