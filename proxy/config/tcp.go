package config

import (
	"fmt"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"meshd.dev/meshd/proxy/tcpproxy"
	"meshd.dev/meshd/proxy/tlscontext"
)

// tcpProxyType is the full name of the tcp_proxy network filter's config.
const tcpProxyType = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"

// isTCPProxy reports whether f is a tcp_proxy network filter.
func isTCPProxy(f *listenerv3.Filter) bool {
	return typeName(f.GetTypedConfig().GetTypeUrl()) == tcpProxyType
}

// compileTCPListener compiles a listener whose served filter chain fc has
// one network filter, tcp_proxy. Its TLS context, if any, negotiates ALPN only when
// common_tls_context.alpn_protocols lists protocols (a byte stream has no
// default). Errors name the field path below the listener.
func compileTCPListener(l *listenerv3.Listener, fc *listenerv3.FilterChain, addr string, secrets tlscontext.Secrets) (*Listener, error) {
	var tp tcpproxyv3.TcpProxy
	if err := fc.GetFilters()[0].GetTypedConfig().UnmarshalTo(&tp); err != nil {
		return nil, fmt.Errorf("filter_chains[0].filters[0].typed_config: %w", err)
	}
	cfg, err := tcpproxy.Compile(&tp)
	if err != nil {
		return nil, fmt.Errorf("filter_chains[0].filters[0].typed_config.%w", err)
	}
	if _, ok := l.GetMetadata().GetFilterMetadata()[MeshdHTTP2MetadataKey]; ok {
		return nil, fmt.Errorf("metadata.filter_metadata[%q]: HTTP/2 settings on a tcp_proxy listener have no effect", MeshdHTTP2MetadataKey)
	}
	out := &Listener{Name: l.GetName(), Address: addr, TCP: cfg, raw: l}
	if ts := fc.GetTransportSocket(); ts != nil {
		var dtc tlsv3.DownstreamTlsContext
		if err := ts.GetTypedConfig().UnmarshalTo(&dtc); err != nil {
			return nil, fmt.Errorf("filter_chains[0].transport_socket.typed_config: %w", err)
		}
		tc, src, err := downstreamTLS(&dtc, nil, secrets)
		if err != nil {
			return nil, fmt.Errorf("filter_chains[0].transport_socket.typed_config.%w", err)
		}
		out.TLS, out.Identity = tc, src
	}
	return out, nil
}

// sameFilter reports whether l and o serve connections the same way:
// both tcp_proxy, or both HTTP with the same codec.
func sameFilter(l, o *Listener) bool {
	if (l.TCP != nil) != (o.TCP != nil) {
		return false
	}
	return l.TCP != nil || l.HCM.Codec == o.HCM.Codec
}
