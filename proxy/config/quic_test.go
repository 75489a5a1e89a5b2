package config

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"meshd.dev/meshd/mtls/mtlstest"
	"meshd.dev/meshd/proxy/http/h3"
	httpcm "meshd.dev/meshd/proxy/http/hcm"
)

// quicBootstrap is one HTTP/3 listener with a static certificate; %s are
// the certificate and key files.
const quicBootstrap = `node: {id: node1, cluster: c1}
static_resources:
  listeners:
  - name: h3
    address:
      socket_address: { protocol: UDP, address: 127.0.0.1, port_value: 8443 }
    udp_listener_config:
      quic_options:
        idle_timeout: 30s
        crypto_handshake_timeout: 5s
        quic_protocol_options:
          max_concurrent_streams: 10
          initial_stream_window_size: 1048576
          initial_connection_window_size: 2097152
          connection_keepalive: { max_interval: 15s, initial_interval: 1s }
    metadata:
      filter_metadata:
        meshd.quic: { retry: always, retry_threshold: 5 }
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.quic
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.quic.v3.QuicDownstreamTransport
          downstream_tls_context:
            common_tls_context:
              tls_certificates:
              - certificate_chain: { filename: %q }
                private_key: { filename: %q }
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: h3
          codec_type: HTTP3
          http3_protocol_options: {}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                direct_response: { status: 200 }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
`

func quicBase(t *testing.T) string {
	t.Helper()
	ca := mtlstest.NewCA(t, "test.example")
	cert, key, _ := mtlstest.WriteFiles(t, t.TempDir(), ca.Issue(t, "spiffe://test.example/ns/a/sa/b"), ca.Bundle())
	return fmt.Sprintf(quicBootstrap, cert, key)
}

func TestCompileQUICListener(t *testing.T) {
	b, err := ParseBootstrap([]byte(quicBase(t)), "h3.yaml")
	if err != nil {
		t.Fatal(err)
	}
	snap, err := Compile(b)
	if err != nil {
		t.Fatal(err)
	}
	l := snap.Listeners[0]
	if l.QUIC == nil || l.HCM.Codec != httpcm.CodecHTTP3 {
		t.Fatalf("QUIC %v codec %v; want a QUIC listener with codec HTTP3", l.QUIC, l.HCM.Codec)
	}
	want := QUICListener{
		Options: h3.QUICOptions{
			MaxConcurrentStreams:        10,
			InitialStreamWindowSize:     1 << 20,
			InitialConnectionWindowSize: 2 << 20,
			IdleTimeout:                 30 * time.Second,
			KeepalivePeriod:             15 * time.Second,
			HandshakeTimeout:            5 * time.Second,
		},
		Retry:          h3.RetryAlways,
		RetryThreshold: 5,
	}
	if *l.QUIC != want {
		t.Errorf("QUIC = %+v, want %+v", *l.QUIC, want)
	}
	if got := l.TLS.NextProtos; len(got) != 1 || got[0] != "h3" {
		t.Errorf("ALPN %q, want [h3]", got)
	}
	qc := l.QUIC.Options.Config()
	if qc.MaxIncomingStreams != 10 || qc.MaxStreamReceiveWindow != 1<<20 || qc.MaxConnectionReceiveWindow != 2<<20 || qc.Allow0RTT {
		t.Errorf("quic.Config %+v", qc)
	}
}

func TestCompileQUICListenerRejects(t *testing.T) {
	lis := "static_resources.listeners[0]"
	hcmPath := lis + ".filter_chains[0].filters[0].typed_config"
	for _, tc := range []struct {
		name       string
		edits      []edit
		wantPath   string // ParseBootstrap's field path, or "" when Compile rejects
		wantReason string
	}{
		{"TCP protocol", []edit{{"protocol: UDP, ", ""}}, "", "address.socket_address.protocol: must be UDP"},
		{"codec not HTTP3", []edit{{"codec_type: HTTP3", "codec_type: HTTP2"}}, hcmPath + ".codec_type", "must be HTTP3 on a QUIC listener"},
		{"quic_protocol_options on the HCM", []edit{{"http3_protocol_options: {}", "http3_protocol_options: {quic_protocol_options: {}}"}}, hcmPath + ".http3_protocol_options.quic_protocol_options", "set the listener's"},
		{"no quic_options", []edit{{"      quic_options:\n", "      quic_options_unset:\n"}}, lis + ".udp_listener_config", "quic_options_unset"},
		{"zero streams", []edit{{"max_concurrent_streams: 10", "max_concurrent_streams: 0"}}, lis + ".udp_listener_config.quic_options.quic_protocol_options.max_concurrent_streams", "greater than or equal to 1"},
		{"bad retry", []edit{{"retry: always", "retry: sometimes"}}, "", `"sometimes" is not always, under_load or never`},
		{"bad threshold", []edit{{"retry_threshold: 5", "retry_threshold: 0.5"}}, "", "retry_threshold: must be a positive integer"},
		{"unknown metadata", []edit{{"retry: always", "retries: 3"}}, "", "unknown field"},
		{"keepalive below 1s", []edit{{"max_interval: 15s", "max_interval: 0.5s"}}, "", "udp_listener_config.quic_options.quic_protocol_options.connection_keepalive.max_interval: 500ms must be 0 (no keepalive) or at least 1s"},
		{"zero idle timeout", []edit{{"idle_timeout: 30s", "idle_timeout: 0s"}}, "", "udp_listener_config.quic_options.idle_timeout: must be positive"},
		{"stream window too big", []edit{{"initial_stream_window_size: 1048576", "initial_stream_window_size: 16777217"}}, lis + ".udp_listener_config.quic_options.quic_protocol_options.initial_stream_window_size", ""},
		{"TLS transport on QUIC", []edit{{"quic.v3.QuicDownstreamTransport\n          downstream_tls_context:\n            common_tls_context:", "tls.v3.DownstreamTlsContext\n          common_tls_context:"}}, "", "must be " + quicDownstreamType},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc := mutate(t, quicBase(t), tc.edits)
			b, err := ParseBootstrap([]byte(doc), "h3.yaml")
			if tc.wantPath != "" || err != nil {
				if err == nil {
					t.Fatalf("ParseBootstrap accepted it")
				}
				if !strings.Contains(err.Error(), tc.wantPath) || !strings.Contains(err.Error(), tc.wantReason) {
					t.Fatalf("error %q, want path %q and %q", err, tc.wantPath, tc.wantReason)
				}
				return
			}
			_, err = Compile(b)
			if err == nil || !strings.Contains(err.Error(), tc.wantReason) {
				t.Fatalf("Compile error %v, want %q", err, tc.wantReason)
			}
		})
	}
}
