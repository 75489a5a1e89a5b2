package upstream

import (
	"crypto/tls"
	"fmt"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	quicv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/quic/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"meshd.dev/meshd/mtls"
	"meshd.dev/meshd/proxy/http/h3"
	"meshd.dev/meshd/proxy/tlscontext"
)

// quicUpstreamType is the transport socket an HTTP/3 cluster needs
// (envoy.transport_sockets.quic).
const quicUpstreamType = "envoy.extensions.transport_sockets.quic.v3.QuicUpstreamTransport"

// compileHTTP3 reads http3_protocol_options: the QUIC settings, with
// Envoy's client defaults (keepalive PINGs every 15 s) when absent. Errors
// start with the field below it.
func (s *Spec) compileHTTP3(o *corev3.Http3ProtocolOptions) error {
	q, err := h3.OptionsFromProto(o.GetQuicProtocolOptions(), h3.RoleClient)
	if err != nil {
		return fmt.Errorf("quic_protocol_options.%w", err)
	}
	s.HTTP3 = q
	return nil
}

// upstreamTLSContext returns the UpstreamTlsContext of a cluster's
// transport socket: the socket's own, or the one inside a
// QuicUpstreamTransport, which an HTTP/3 cluster must use (and only it).
// where is the field path of the context, for errors.
func (s *Spec) upstreamTLSContext(ts *corev3.TransportSocket) (utc *tlsv3.UpstreamTlsContext, where string, err error) {
	where = "transport_socket.typed_config"
	if ts.GetTypedConfig().MessageIs(&quicv3.QuicUpstreamTransport{}) {
		if s.Protocol != HTTP3 {
			return nil, "", fmt.Errorf("%s: %s needs http3_protocol_options (explicit_http_config or auto_config)", where, quicUpstreamType)
		}
		var q quicv3.QuicUpstreamTransport
		if err := ts.GetTypedConfig().UnmarshalTo(&q); err != nil {
			return nil, "", fmt.Errorf("%s: %w", where, err)
		}
		if q.GetUpstreamTlsContext() == nil {
			return nil, "", fmt.Errorf("%s.upstream_tls_context: required", where)
		}
		return q.GetUpstreamTlsContext(), where + ".upstream_tls_context", nil
	}
	if s.Protocol == HTTP3 {
		return nil, "", fmt.Errorf("%s: HTTP/3 needs %s", where, quicUpstreamType)
	}
	utc = &tlsv3.UpstreamTlsContext{}
	if err := ts.GetTypedConfig().UnmarshalTo(utc); err != nil {
		return nil, "", fmt.Errorf("%s: %w", where, err)
	}
	return utc, where, nil
}

// clientTLS builds the client TLS config of utc for protocol p: from SDS
// secrets (with the source) or static files.
func (s *Spec) clientTLS(utc *tlsv3.UpstreamTlsContext, p Protocol, secrets tlscontext.Secrets) (*tls.Config, mtls.Source, error) {
	if tlscontext.UsesSDS(utc.GetCommonTlsContext()) {
		return tlscontext.SDSClientConfig(utc, defaultALPN(p), secrets)
	}
	cfg, err := clientTLS(utc, p)
	return cfg, nil, err
}

// fallback returns the spec of an HTTP3Fallback cluster's HTTP/2 pools:
// the same cluster over HTTP/2 on TCP.
func (s *Spec) fallback() *Spec {
	f := *s
	f.Protocol, f.HTTP3Fallback, f.TLS, f.TLSFallback = HTTP2, false, s.TLSFallback, nil
	return &f
}
