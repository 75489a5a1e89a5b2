package translate

import (
	"strconv"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	quicv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/quic/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"meshd.dev/meshd/xds/model"
)

// HTTP/3 between sidecars (Service.spec.upstreamProtocol: http3).
const (
	// QUICTransportSocketName is Envoy's name of the QUIC transport socket.
	QUICTransportSocketName = "envoy.transport_sockets.quic"
	// AlternateProtocolsCacheName names the alternate protocols cache of
	// the HTTP/3 clusters' auto_config.
	AlternateProtocolsCacheName = "meshd-sidecars"
)

// InboundQUICListenerName is the name of a Workload's HTTP/3 listener on
// UDP port (the same number as its TCP inbound port).
func InboundQUICListenerName(port uint32) string { return "inbound-quic|" + strconv.Itoa(int(port)) }

// autoHTTP3 is HttpProtocolOptions for an http3 service's outbound
// cluster: auto_config with HTTP/3 first and the policy's HTTP/2 settings
// for the HTTP/2-over-TCP fallback to an endpoint whose QUIC handshake
// fails.
func autoHTTP3(h2 *model.HTTP2, cp *model.ConnectionPool) *upstreamhttpv3.HttpProtocolOptions {
	o := explicitHTTP("http2", h2, cp)
	h2opts := o.GetExplicitHttpConfig().GetHttp2ProtocolOptions()
	o.UpstreamProtocolOptions = &upstreamhttpv3.HttpProtocolOptions_AutoConfig{AutoConfig: &upstreamhttpv3.HttpProtocolOptions_AutoHttpConfig{
		Http2ProtocolOptions: h2opts,
		Http3ProtocolOptions: &corev3.Http3ProtocolOptions{QuicProtocolOptions: quicPolicy(h2)},
		AlternateProtocolsCacheOptions: &corev3.AlternateProtocolsCacheOptions{
			Name: AlternateProtocolsCacheName,
		},
	}}
	return o
}

// Envoy's (QUICHE's) upper bounds of the QUIC receive windows; larger
// HTTP/2 windows of a policy are clamped to them.
const (
	maxQUICStreamWindow     = 16 << 20
	maxQUICConnectionWindow = 24 << 20
)

// quicPolicy carries the policy's HTTP/2 settings over to QUIC, so an
// http3 service's connections follow the same policy as its HTTP/2
// fallback: the stream limit and receive windows (clamped to QUIC's
// bounds), a PING every keepalive.interval (connection_keepalive.max_interval)
// and, where HTTP/2 closes a connection whose PING goes unanswered for
// keepalive.timeout, an idle_network_timeout of interval + timeout: a
// silent peer is given up after about the same time. Without a keepalive
// in the policy the sidecar's defaults apply (PINGs every 15 s). nil when
// the policy sets none of these.
func quicPolicy(h2 *model.HTTP2) *corev3.QuicProtocolOptions {
	if h2 == nil {
		return nil
	}
	q := &corev3.QuicProtocolOptions{MaxConcurrentStreams: u32(h2.MaxConcurrentStreams)}
	if w := h2.InitialStreamWindowSize; w != nil {
		q.InitialStreamWindowSize = wrapperspb.UInt32(min(*w, maxQUICStreamWindow))
	}
	if w := h2.InitialConnectionWindowSize; w != nil {
		q.InitialConnectionWindowSize = wrapperspb.UInt32(min(*w, maxQUICConnectionWindow))
	}
	if k := h2.Keepalive; k != nil && k.Interval != nil && k.Timeout != nil {
		q.ConnectionKeepalive = &corev3.QuicKeepAliveSettings{MaxInterval: dur(k.Interval)}
		q.IdleNetworkTimeout = durationpb.New(k.Interval.D() + k.Timeout.D())
	}
	if proto.Equal(q, &corev3.QuicProtocolOptions{}) {
		return nil
	}
	return q
}

// quicUpstream wraps an http3 cluster's TLS context in the QUIC transport
// socket. ALPN is left to the sidecar: h3 over QUIC, h2 for the fallback.
func (t *translator) quicUpstream(utc *tlsv3.UpstreamTlsContext) *corev3.TransportSocket {
	return &corev3.TransportSocket{
		Name: QUICTransportSocketName,
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: t.typed(&quicv3.QuicUpstreamTransport{
			UpstreamTlsContext: utc,
		})},
	}
}

// inboundQUIC is the HTTP/3 twin of an inbound listener: UDP on the same
// port number, the QUIC transport with the workload's SVID (client SVIDs
// required), and the same routes and filters with codec HTTP3.
func (t *translator) inboundQUIC(port uint32, tcp *listenerv3.Listener) *listenerv3.Listener {
	name := InboundQUICListenerName(port)
	var h hcmv3.HttpConnectionManager
	chain := tcp.GetFilterChains()[0]
	if err := chain.GetFilters()[0].GetTypedConfig().UnmarshalTo(&h); err != nil {
		// Unreachable: the TCP listener was built with an HCM just before.
		t.fail(err)
		return nil
	}
	h.StatPrefix = statPrefix(name)
	h.CodecType = hcmv3.HttpConnectionManager_HTTP3
	h.Http2ProtocolOptions = nil
	h.Http3ProtocolOptions = &corev3.Http3ProtocolOptions{}
	addr := socketAddress(LocalAddress, port)
	addr.GetSocketAddress().Protocol = corev3.SocketAddress_UDP
	return &listenerv3.Listener{
		Name:              name,
		Address:           addr,
		TrafficDirection:  corev3.TrafficDirection_INBOUND,
		UdpListenerConfig: &listenerv3.UdpListenerConfig{QuicOptions: &listenerv3.QuicProtocolOptions{}},
		FilterChains: []*listenerv3.FilterChain{{
			Filters: []*listenerv3.Filter{{
				Name:       HCMFilterName,
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: t.typed(&h)},
			}},
			TransportSocket: &corev3.TransportSocket{
				Name: QUICTransportSocketName,
				ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: t.typed(&quicv3.QuicDownstreamTransport{
					DownstreamTlsContext: &tlsv3.DownstreamTlsContext{
						CommonTlsContext:         commonTLS(nil, []string{"h3"}),
						RequireClientCertificate: wrapperspb.Bool(true),
					},
				})},
			},
		}},
	}
}
