package config

import (
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

func TestSelectFilterChain(t *testing.T) {
	typed := func(msg *tcpproxyv3.TcpProxy) *anypb.Any {
		a, err := anypb.New(msg)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	filters := func(cluster string) []*listenerv3.Filter {
		return []*listenerv3.Filter{{Name: "envoy.filters.network.tcp_proxy", ConfigType: &listenerv3.Filter_TypedConfig{
			TypedConfig: typed(&tcpproxyv3.TcpProxy{StatPrefix: "p", ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: cluster}}),
		}}}
	}
	dtc, err := anypb.New(&tlsv3.DownstreamTlsContext{})
	if err != nil {
		t.Fatal(err)
	}
	inspector, err := anypb.New(&tlsinspectorv3.TlsInspector{})
	if err != nil {
		t.Fatal(err)
	}
	otherLF, err := anypb.New(&tcpproxyv3.TcpProxy{})
	if err != nil {
		t.Fatal(err)
	}
	tlsSock := &corev3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: dtc}}
	chain := func(proto string, tls bool, cluster string) *listenerv3.FilterChain {
		fc := &listenerv3.FilterChain{Filters: filters(cluster)}
		if proto != "" {
			fc.FilterChainMatch = &listenerv3.FilterChainMatch{TransportProtocol: proto}
		}
		if tls {
			fc.TransportSocket = tlsSock
		}
		return fc
	}
	lfInspector := []*listenerv3.ListenerFilter{{Name: TLSInspectorName, ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: inspector}}}
	tests := []struct {
		name    string
		lfs     []*listenerv3.ListenerFilter
		chains  []*listenerv3.FilterChain
		want    chainSelection
		wantErr string
	}{
		{"one plaintext chain", nil, []*listenerv3.FilterChain{chain("", false, "c")}, chainSelection{}, ""},
		{"one TLS chain", nil, []*listenerv3.FilterChain{chain("", true, "c")}, chainSelection{}, ""},
		{"one tls-matched chain", lfInspector, []*listenerv3.FilterChain{chain("tls", true, "c")}, chainSelection{}, ""},
		{"permissive tls first", lfInspector, []*listenerv3.FilterChain{chain("tls", true, "c"), chain("raw_buffer", false, "c")}, chainSelection{index: 0, tlsOptional: true}, ""},
		{"permissive tls second, catch-all plaintext", lfInspector, []*listenerv3.FilterChain{chain("", false, "c"), chain("tls", true, "c")}, chainSelection{index: 1, tlsOptional: true}, ""},
		{"no inspector", nil, []*listenerv3.FilterChain{chain("tls", true, "c"), chain("raw_buffer", false, "c")}, chainSelection{},
			"filter_chains[0].filter_chain_match.transport_protocol: needs listener_filters with envoy.filters.listener.tls_inspector"},
		{"other listener filter", []*listenerv3.ListenerFilter{{Name: "x", ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: otherLF}}},
			[]*listenerv3.FilterChain{chain("", false, "c")}, chainSelection{}, "listener_filters[0]: unsupported listener filter"},
		{"unknown transport", lfInspector, []*listenerv3.FilterChain{chain("quic", false, "c")}, chainSelection{}, `filter_chains[0].filter_chain_match.transport_protocol: "quic" is not "tls" or "raw_buffer"`},
		{"tls chain without socket", lfInspector, []*listenerv3.FilterChain{chain("tls", false, "c")}, chainSelection{}, "filter_chains[0].transport_socket: required"},
		{"raw_buffer chain with socket", lfInspector, []*listenerv3.FilterChain{chain("raw_buffer", true, "c")}, chainSelection{}, "filter_chains[0].transport_socket: a transport_protocol \"raw_buffer\" chain is plaintext"},
		{"two tls chains", lfInspector, []*listenerv3.FilterChain{chain("tls", true, "c"), chain("", true, "c")}, chainSelection{}, "filter_chains[1]: the chain beside the \"tls\" chain must be plaintext"},
		{"two plaintext chains", lfInspector, []*listenerv3.FilterChain{chain("", false, "c"), chain("raw_buffer", false, "c")}, chainSelection{}, "two chains are supported only as"},
		{"different filters", lfInspector, []*listenerv3.FilterChain{chain("tls", true, "a"), chain("raw_buffer", false, "b")}, chainSelection{}, "filter_chains[1].filters[0]: must equal filter_chains[0].filters[0]"},
		{"three chains", lfInspector, []*listenerv3.FilterChain{chain("tls", true, "c"), chain("raw_buffer", false, "c"), chain("", false, "c")}, chainSelection{}, "got 3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := selectFilterChain(&listenerv3.Listener{ListenerFilters: tt.lfs, FilterChains: tt.chains})
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("error %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			case tt.wantErr == "" && got != tt.want:
				t.Errorf("selection %+v, want %+v", got, tt.want)
			}
		})
	}
}
