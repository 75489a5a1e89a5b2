package config

import (
	"fmt"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"  // registered in registry.go
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3" // registered in registry.go
	"google.golang.org/protobuf/proto"
)

// Listener filter and transport protocol names (Envoy's).
const (
	// TLSInspectorName is envoy.filters.listener.tls_inspector, the one
	// listener filter meshd implements: it sets the transport protocol a
	// filter_chain_match.transport_protocol selects on.
	TLSInspectorName = "envoy.filters.listener.tls_inspector"
	tlsInspectorType = "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
	// OriginalDstName is envoy.filters.listener.original_dst: the
	// connection's local address becomes the destination it had before an
	// iptables/nftables REDIRECT (SO_ORIGINAL_DST), which use_original_dst
	// then routes by.
	OriginalDstName = "envoy.filters.listener.original_dst"
	originalDstType = "envoy.extensions.filters.listener.original_dst.v3.OriginalDst"
	// TransportTLS and TransportRawBuffer are the transport_protocol values
	// tls_inspector detects.
	TransportTLS       = "tls"
	TransportRawBuffer = "raw_buffer"
)

// chainSelection is the filter chain a listener serves and how.
type chainSelection struct {
	// index is the chain whose filters and transport socket are used.
	index int
	// tlsOptional: the chain at index is a "tls" chain and plaintext
	// connections are served by its plaintext twin (Listener.TLSOptional).
	tlsOptional bool
	// originalDst: the listener runs original_dst.
	originalDst bool
}

// selectFilterChain decides which of l's filter chains meshd serves. meshd
// selects on filter_chain_match.transport_protocol only, as PERMISSIVE mTLS
// needs it:
//
//   - one chain: served for every connection; a transport_protocol on it
//     must agree with its transport socket ("tls" needs a TLS socket and
//     tls_inspector, "raw_buffer" a plaintext chain);
//   - two chains under tls_inspector: one matching "tls" with a TLS
//     transport socket, the other matching "raw_buffer" (or anything) with
//     none, and the same network filters. Connections opening with a TLS
//     handshake get the first, others the second.
//
// Anything else is an error naming the field.
func selectFilterChain(l *listenerv3.Listener) (chainSelection, error) {
	inspector, originalDst := false, false
	for i, lf := range l.GetListenerFilters() {
		if lf.GetTypedConfig() == nil {
			return chainSelection{}, fmt.Errorf("listener_filters[%d].typed_config: required (%s for %s, %s for %s)", i, tlsInspectorType, TLSInspectorName, originalDstType, OriginalDstName)
		}
		switch lf.GetTypedConfig().MessageName() {
		case tlsInspectorType:
			inspector = true
		case originalDstType:
			originalDst = true
		default:
			return chainSelection{}, fmt.Errorf("listener_filters[%d]: unsupported listener filter %q (meshd implements %s and %s)", i, lf.GetTypedConfig().GetTypeUrl(), TLSInspectorName, OriginalDstName)
		}
	}
	if l.GetUseOriginalDst().GetValue() && !originalDst {
		return chainSelection{}, fmt.Errorf("use_original_dst: needs listener_filters with %s to recover the original destination", OriginalDstName)
	}
	fcs := l.GetFilterChains()
	for i, fc := range fcs {
		p := fc.GetFilterChainMatch().GetTransportProtocol()
		hasTLS := fc.GetTransportSocket() != nil
		switch {
		case p != "" && p != TransportTLS && p != TransportRawBuffer:
			return chainSelection{}, fmt.Errorf("filter_chains[%d].filter_chain_match.transport_protocol: %q is not %q or %q", i, p, TransportTLS, TransportRawBuffer)
		case p != "" && !inspector:
			return chainSelection{}, fmt.Errorf("filter_chains[%d].filter_chain_match.transport_protocol: needs listener_filters with %s to detect it", i, TLSInspectorName)
		case p == TransportTLS && !hasTLS:
			return chainSelection{}, fmt.Errorf("filter_chains[%d].transport_socket: required on a transport_protocol %q chain", i, TransportTLS)
		case p == TransportRawBuffer && hasTLS:
			return chainSelection{}, fmt.Errorf("filter_chains[%d].transport_socket: a transport_protocol %q chain is plaintext", i, TransportRawBuffer)
		}
	}
	switch len(fcs) {
	case 1:
		return chainSelection{index: 0, originalDst: originalDst}, nil
	case 2:
	default:
		return chainSelection{}, fmt.Errorf("filter_chains: one chain, or a transport_protocol %q and a plaintext chain, are supported; got %d", TransportTLS, len(fcs))
	}
	tlsIdx := -1
	for i, fc := range fcs {
		if fc.GetFilterChainMatch().GetTransportProtocol() == TransportTLS {
			tlsIdx = i
		}
	}
	if tlsIdx < 0 || !inspector {
		return chainSelection{}, fmt.Errorf("filter_chains: two chains are supported only as a transport_protocol %q chain and a plaintext chain under %s", TransportTLS, TLSInspectorName)
	}
	plain := fcs[1-tlsIdx]
	if plain.GetTransportSocket() != nil {
		return chainSelection{}, fmt.Errorf("filter_chains[%d]: the chain beside the %q chain must be plaintext (no transport_socket)", 1-tlsIdx, TransportTLS)
	}
	if len(plain.GetFilters()) != len(fcs[tlsIdx].GetFilters()) {
		return chainSelection{}, fmt.Errorf("filter_chains[%d].filters: must equal filter_chains[%d].filters (meshd serves one set of filters on a listener)", 1-tlsIdx, tlsIdx)
	}
	for i, f := range plain.GetFilters() {
		if !proto.Equal(f, fcs[tlsIdx].GetFilters()[i]) {
			return chainSelection{}, fmt.Errorf("filter_chains[%d].filters[%d]: must equal filter_chains[%d].filters[%d] (meshd serves one set of filters on a listener)", 1-tlsIdx, i, tlsIdx, i)
		}
	}
	return chainSelection{index: tlsIdx, tlsOptional: true, originalDst: originalDst}, nil
}
