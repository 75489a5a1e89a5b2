package h3

import (
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func TestOptionsFromProtoConfig(t *testing.T) {
	d := durationpb.New
	for _, tc := range []struct {
		name string
		p    *corev3.QuicProtocolOptions
		role Role
		// want is checked against the quic.Config the options produce.
		idle, keepalive time.Duration
		streams         int64
		streamWin       uint64
		connWin         uint64
	}{
		{"client defaults", nil, RoleClient, DefaultIdleTimeout, DefaultKeepalive, DefaultMaxConcurrentStreams, DefaultInitialStreamWindowSize, DefaultInitialConnectionWindowSize},
		{"server defaults", nil, RoleServer, DefaultIdleTimeout, 0, DefaultMaxConcurrentStreams, DefaultInitialStreamWindowSize, DefaultInitialConnectionWindowSize},
		{"all set", &corev3.QuicProtocolOptions{
			MaxConcurrentStreams:        wrapperspb.UInt32(10),
			InitialStreamWindowSize:     wrapperspb.UInt32(1 << 20),
			InitialConnectionWindowSize: wrapperspb.UInt32(2 << 20),
			IdleNetworkTimeout:          d(30 * time.Second),
			ConnectionKeepalive:         &corev3.QuicKeepAliveSettings{MaxInterval: d(5 * time.Second)},
		}, RoleClient, 30 * time.Second, 5 * time.Second, 10, 1 << 20, 2 << 20},
		{"client keepalive off", &corev3.QuicProtocolOptions{
			ConnectionKeepalive: &corev3.QuicKeepAliveSettings{MaxInterval: d(0)},
		}, RoleClient, DefaultIdleTimeout, 0, DefaultMaxConcurrentStreams, DefaultInitialStreamWindowSize, DefaultInitialConnectionWindowSize},
		{"client keepalive without max_interval", &corev3.QuicProtocolOptions{
			ConnectionKeepalive: &corev3.QuicKeepAliveSettings{InitialInterval: d(time.Second)},
		}, RoleClient, DefaultIdleTimeout, DefaultKeepalive, DefaultMaxConcurrentStreams, DefaultInitialStreamWindowSize, DefaultInitialConnectionWindowSize},
		{"server keepalive needs initial_interval", &corev3.QuicProtocolOptions{
			ConnectionKeepalive: &corev3.QuicKeepAliveSettings{MaxInterval: d(4 * time.Second)},
		}, RoleServer, DefaultIdleTimeout, 0, DefaultMaxConcurrentStreams, DefaultInitialStreamWindowSize, DefaultInitialConnectionWindowSize},
		{"server keepalive", &corev3.QuicProtocolOptions{
			ConnectionKeepalive: &corev3.QuicKeepAliveSettings{MaxInterval: d(4 * time.Second), InitialInterval: d(time.Second)},
		}, RoleServer, DefaultIdleTimeout, 4 * time.Second, DefaultMaxConcurrentStreams, DefaultInitialStreamWindowSize, DefaultInitialConnectionWindowSize},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, err := OptionsFromProto(tc.p, tc.role)
			if err != nil {
				t.Fatal(err)
			}
			qc := o.Config()
			if qc.MaxIdleTimeout != tc.idle || qc.KeepAlivePeriod != tc.keepalive || qc.MaxIncomingStreams != tc.streams ||
				qc.MaxStreamReceiveWindow != tc.streamWin || qc.MaxConnectionReceiveWindow != tc.connWin {
				t.Errorf("quic.Config idle %v keepalive %v streams %d windows %d/%d; want %v %v %d %d/%d",
					qc.MaxIdleTimeout, qc.KeepAlivePeriod, qc.MaxIncomingStreams, qc.MaxStreamReceiveWindow, qc.MaxConnectionReceiveWindow,
					tc.idle, tc.keepalive, tc.streams, tc.streamWin, tc.connWin)
			}
			if qc.InitialStreamReceiveWindow > qc.MaxStreamReceiveWindow || qc.InitialConnectionReceiveWindow > qc.MaxConnectionReceiveWindow {
				t.Errorf("initial windows %d/%d above their maxima", qc.InitialStreamReceiveWindow, qc.InitialConnectionReceiveWindow)
			}
		})
	}
}

func TestOptionsFromProtoRejects(t *testing.T) {
	d := durationpb.New
	for _, tc := range []struct {
		name string
		p    *corev3.QuicProtocolOptions
		want string
	}{
		{"zero streams", &corev3.QuicProtocolOptions{MaxConcurrentStreams: wrapperspb.UInt32(0)}, "max_concurrent_streams: must be at least 1"},
		{"zero stream window", &corev3.QuicProtocolOptions{InitialStreamWindowSize: wrapperspb.UInt32(0)}, "initial_stream_window_size: 0 is outside"},
		{"stream window too big", &corev3.QuicProtocolOptions{InitialStreamWindowSize: wrapperspb.UInt32(MaxStreamWindowSize + 1)}, "initial_stream_window_size: 16777217 is outside"},
		{"connection window too big", &corev3.QuicProtocolOptions{InitialConnectionWindowSize: wrapperspb.UInt32(MaxConnectionWindowSize + 1)}, "initial_connection_window_size: 25165825 is outside"},
		{"zero idle timeout", &corev3.QuicProtocolOptions{IdleNetworkTimeout: d(0)}, "idle_network_timeout: must be positive"},
		{"negative idle timeout", &corev3.QuicProtocolOptions{IdleNetworkTimeout: d(-time.Second)}, "idle_network_timeout: must be positive"},
		{"keepalive below 1s", &corev3.QuicProtocolOptions{ConnectionKeepalive: &corev3.QuicKeepAliveSettings{MaxInterval: d(500 * time.Millisecond)}}, "connection_keepalive.max_interval: 500ms must be 0 (no keepalive) or at least 1s"},
		{"negative keepalive", &corev3.QuicProtocolOptions{ConnectionKeepalive: &corev3.QuicKeepAliveSettings{MaxInterval: d(-time.Second)}}, "connection_keepalive.max_interval"},
		{"initial interval below 1ms", &corev3.QuicProtocolOptions{ConnectionKeepalive: &corev3.QuicKeepAliveSettings{InitialInterval: d(time.Microsecond)}}, "connection_keepalive.initial_interval: 1µs must be 0 or at least 1ms"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, role := range []Role{RoleClient, RoleServer} {
				_, err := OptionsFromProto(tc.p, role)
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("role %d: error %v, want %q", role, err, tc.want)
				}
			}
		})
	}
}
