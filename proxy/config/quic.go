package config

import (
	"fmt"
	"slices"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	quicv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/quic/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"meshd.dev/meshd/proxy/http/h3"
	"meshd.dev/meshd/proxy/tlscontext"
)

// QUIC transport socket types (envoy.transport_sockets.quic).
const (
	quicDownstreamType = "envoy.extensions.transport_sockets.quic.v3.QuicDownstreamTransport"
	quicUpstreamType   = "envoy.extensions.transport_sockets.quic.v3.QuicUpstreamTransport"
)

func init() {
	RegisterType(DownstreamTransportSocket, quicDownstreamType)
	RegisterType(UpstreamTransportSocket, quicUpstreamType)
}

// MeshdQUICMetadataKey is the listener filter_metadata key that carries
// meshd's QUIC safety settings Envoy has no field for (Envoy accepts and
// ignores listener metadata). The value is a struct with:
//
//	retry: under_load                  # always | under_load (default) | never: address validation with Retry
//	retry_threshold: 100               # connection attempts per second above which under_load sends Retry
//	stateless_reset_secret_file: PATH  # >= 32 secret bytes; the stateless reset key is derived from it
const MeshdQUICMetadataKey = "meshd.quic"

// QUICListener is the QUIC side of a UDP listener
// (udp_listener_config.quic_options plus meshd.quic metadata).
type QUICListener struct {
	Options        h3.QUICOptions
	Retry          h3.RetryPolicy
	RetryThreshold int
	// StatelessResetSecretFile is where the stateless reset key comes
	// from; "" means a random key per listener.
	StatelessResetSecretFile string
}

// isQUICListener reports whether l is a UDP listener with QUIC options.
func isQUICListener(l *listenerv3.Listener) bool {
	return l.GetUdpListenerConfig() != nil
}

// compileQUICListener reads udp_listener_config.quic_options and the
// meshd.quic metadata. The filter chain's HCM must use codec_type HTTP3
// and its transport socket must be QuicDownstreamTransport. Errors name
// the field below the listener.
func compileQUICListener(l *listenerv3.Listener) (*QUICListener, error) {
	if l.GetAddress().GetSocketAddress().GetProtocol() != corev3.SocketAddress_UDP {
		return nil, fmt.Errorf("address.socket_address.protocol: must be UDP on a listener with udp_listener_config")
	}
	qo := l.GetUdpListenerConfig().GetQuicOptions()
	if qo == nil {
		return nil, fmt.Errorf("udp_listener_config.quic_options: required (meshd serves only QUIC on UDP)")
	}
	if e := qo.GetEnabled(); e != nil && !e.GetDefaultValue().GetValue() {
		return nil, fmt.Errorf("udp_listener_config.quic_options.enabled: a disabled QUIC listener is not supported")
	}
	out := &QUICListener{}
	o, err := h3.OptionsFromProto(qo.GetQuicProtocolOptions(), h3.RoleServer)
	if err != nil {
		return nil, fmt.Errorf("udp_listener_config.quic_options.quic_protocol_options.%w", err)
	}
	if d := qo.GetIdleTimeout(); d != nil {
		if d.AsDuration() <= 0 {
			return nil, fmt.Errorf("udp_listener_config.quic_options.idle_timeout: must be positive, got %v", d.AsDuration())
		}
		o.IdleTimeout = d.AsDuration()
	}
	if d := qo.GetCryptoHandshakeTimeout(); d != nil {
		if d.AsDuration() <= 0 {
			return nil, fmt.Errorf("udp_listener_config.quic_options.crypto_handshake_timeout: must be positive, got %v", d.AsDuration())
		}
		o.HandshakeTimeout = d.AsDuration()
	}
	out.Options = o
	if md, ok := l.GetMetadata().GetFilterMetadata()[MeshdQUICMetadataKey]; ok {
		if err := out.metadata(md); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func (q *QUICListener) metadata(md *structpb.Struct) error {
	path := fmt.Sprintf("metadata.filter_metadata[%q]", MeshdQUICMetadataKey)
	for name, v := range md.GetFields() {
		fpath := path + "." + name
		switch name {
		case "retry":
			switch v.GetStringValue() {
			case "under_load":
				q.Retry = h3.RetryUnderLoad
			case "always":
				q.Retry = h3.RetryAlways
			case "never":
				q.Retry = h3.RetryNever
			default:
				return fmt.Errorf("%s: %q is not always, under_load or never", fpath, v.GetStringValue())
			}
		case "retry_threshold":
			n, ok := v.GetKind().(*structpb.Value_NumberValue)
			if !ok || n.NumberValue < 1 || n.NumberValue != float64(int(n.NumberValue)) {
				return fmt.Errorf("%s: must be a positive integer", fpath)
			}
			q.RetryThreshold = int(n.NumberValue)
		case "stateless_reset_secret_file":
			s := v.GetStringValue()
			if s == "" {
				return fmt.Errorf("%s: must be a file path", fpath)
			}
			q.StatelessResetSecretFile = s
		default:
			return fmt.Errorf("%s: unknown field (retry, retry_threshold, stateless_reset_secret_file)", fpath)
		}
	}
	return nil
}

// quicDownstreamTLS unpacks a QuicDownstreamTransport and builds its TLS
// config with ALPN h3. 0-RTT stays off unless enable_early_data is set to
// true explicitly (Envoy defaults it to true; meshd does not accept
// replayable requests by default).
func quicDownstreamTLS(fc *listenerv3.FilterChain, index int, secrets tlscontext.Secrets, l *Listener) error {
	ts := fc.GetTransportSocket()
	path := fmt.Sprintf("filter_chains[%d].transport_socket", index)
	if ts == nil {
		return fmt.Errorf("%s: required on a QUIC listener (%s)", path, quicDownstreamType)
	}
	var qt quicv3.QuicDownstreamTransport
	if err := ts.GetTypedConfig().UnmarshalTo(&qt); err != nil {
		return fmt.Errorf("%s.typed_config: must be %s: %w", path, quicDownstreamType, err)
	}
	if qt.GetDownstreamTlsContext() == nil {
		return fmt.Errorf("%s.typed_config.downstream_tls_context: required", path)
	}
	cfg, src, err := downstreamTLS(qt.GetDownstreamTlsContext(), []string{h3.NextProto}, secrets)
	if err != nil {
		return fmt.Errorf("%s.typed_config.downstream_tls_context.%w", path, err)
	}
	if !slices.Contains(cfg.NextProtos, h3.NextProto) {
		return fmt.Errorf("%s.typed_config.downstream_tls_context.common_tls_context.alpn_protocols: must include %q", path, h3.NextProto)
	}
	l.TLS, l.Identity = cfg, src
	l.QUIC.Options.Allow0RTT = qt.GetEnableEarlyData().GetValue()
	return nil
}

// checkHTTP3Codec says whether the HCM's codec fits its listener: HTTP3
// exactly on QUIC listeners.
func checkHTTP3Codec(m *hcmv3.HttpConnectionManager, quic bool) error {
	isH3 := m.GetCodecType() == hcmv3.HttpConnectionManager_HTTP3
	switch {
	case quic && !isH3:
		return fmt.Errorf("codec_type: must be HTTP3 on a QUIC listener, got %s", m.GetCodecType())
	case !quic && isH3:
		return fmt.Errorf("codec_type: HTTP3 needs a UDP listener with udp_listener_config.quic_options")
	case !quic && m.GetHttp3ProtocolOptions() != nil:
		return fmt.Errorf("http3_protocol_options: only for codec_type HTTP3")
	case m.GetHttp3ProtocolOptions().GetQuicProtocolOptions() != nil:
		return fmt.Errorf("http3_protocol_options.quic_protocol_options: set the listener's udp_listener_config.quic_options.quic_protocol_options instead")
	}
	return nil
}
