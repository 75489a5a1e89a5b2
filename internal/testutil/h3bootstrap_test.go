package testutil

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"meshd.dev/meshd/proxy/config"
)

// TestH3BootstrapCompiles parses and compiles each rendering with the
// sidecar's own config code (strict decode, validation, the QUIC listener
// and meshd.quic metadata), and checks that set fields reach the YAML and
// unset ones are left out.
func TestH3BootstrapCompiles(t *testing.T) {
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	certs := filepath.Join(root, "examples", "certs")
	base := H3BootstrapParams{CertFile: filepath.Join(certs, "server.pem"), KeyFile: filepath.Join(certs, "server-key.pem"), BackendAddr: "127.0.0.1:8080"}
	full := base
	full.Port, full.MaxConcurrentStreams = 15101, 50
	full.IdleTimeout, full.HandshakeTimeout = 1500*time.Millisecond, 5*time.Second
	full.Retry, full.RetryThreshold = "under_load", 7
	full.StatelessResetSecretFile = filepath.Join(t.TempDir(), "reset.key")
	tests := []struct {
		name         string
		p            H3BootstrapParams
		want, absent []string
	}{
		{
			name:   "required fields only",
			p:      base,
			want:   []string{"quic_options: {}", "port_value: 0 }", "port_value: 8080 }"},
			absent: []string{"idle_timeout", "crypto_handshake_timeout", "max_concurrent_streams", "meshd.quic"},
		},
		{
			name: "every field",
			p:    full,
			want: []string{"port_value: 15101 }", "idle_timeout: 1.5s", "crypto_handshake_timeout: 5s",
				"max_concurrent_streams: 50", "retry: under_load", "retry_threshold: 7", "stateless_reset_secret_file: "},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			text := MustH3Bootstrap(t, tt.p)
			checkRendering(t, text, tt.want, tt.absent)
			b, err := config.ParseBootstrap([]byte(text), "h3.yaml")
			if err != nil {
				t.Fatalf("ParseBootstrap: %v\n%s", err, text)
			}
			snap, err := config.Compile(b)
			if err != nil {
				t.Fatalf("Compile: %v\n%s", err, text)
			}
			if snap == nil {
				t.Fatal("Compile returned no snapshot")
			}
			l := b.GetStaticResources().GetListeners()
			if len(l) != 1 || l[0].GetName() != H3ListenerName || l[0].GetUdpListenerConfig().GetQuicOptions() == nil {
				t.Fatalf("listeners = %v, want one QUIC listener %q", l, H3ListenerName)
			}
		})
	}
}

func TestH3BootstrapRejectsBadParams(t *testing.T) {
	ok := H3BootstrapParams{CertFile: "c.pem", KeyFile: "k.pem", BackendAddr: "127.0.0.1:1"}
	with := func(f func(*H3BootstrapParams)) H3BootstrapParams {
		p := ok
		f(&p)
		return p
	}
	tests := []struct {
		name string
		p    H3BootstrapParams
		want string
	}{
		{"no backend", with(func(p *H3BootstrapParams) { p.BackendAddr = "" }), "BackendAddr"},
		{"backend port zero", with(func(p *H3BootstrapParams) { p.BackendAddr = "127.0.0.1:0" }), "port"},
		{"no certificate", with(func(p *H3BootstrapParams) { p.CertFile = "" }), "CertFile"},
		{"no key", with(func(p *H3BootstrapParams) { p.KeyFile = "" }), "KeyFile"},
		{"port too big", with(func(p *H3BootstrapParams) { p.Port = 70000 }), "Port"},
		{"negative streams", with(func(p *H3BootstrapParams) { p.MaxConcurrentStreams = -1 }), "MaxConcurrentStreams"},
		{"negative timeout", with(func(p *H3BootstrapParams) { p.IdleTimeout = -time.Second }), "IdleTimeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := H3Bootstrap(tt.p)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("H3Bootstrap error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

// TestH3UpstreamBootstrapCompiles parses and compiles both upstream
// protocol selections, with and without a client certificate, with the
// sidecar's own config code.
func TestH3UpstreamBootstrapCompiles(t *testing.T) {
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	certs := filepath.Join(root, "examples", "certs")
	base := H3UpstreamParams{ListenerName: "outbound", Cluster: "greeter", UpstreamAddr: "127.0.0.1:15101",
		TrustedCA: filepath.Join(certs, "ca.pem"), PeerSAN: "spiffe://test.example/ns/demo/sa/server"}
	withCert := base
	withCert.CertFile, withCert.KeyFile = filepath.Join(certs, "server.pem"), filepath.Join(certs, "server-key.pem")
	withCert.Fallback, withCert.MaxConcurrentStreams, withCert.RouteTimeout = true, 100, 10*time.Second
	keepalive := base
	keepalive.IdleTimeout, keepalive.Keepalive = time.Second, new(time.Duration)
	tests := []struct {
		name         string
		p            H3UpstreamParams
		want, absent []string
	}{
		{
			name:   "HTTP/3 only, no client certificate",
			p:      base,
			want:   []string{"explicit_http_config:", "http3_protocol_options: {}", "connect_timeout: 1s", "timeout: 0s\n"},
			absent: []string{"auto_config", "tls_certificates", "max_concurrent_streams"},
		},
		{
			name:   "fallback with a client certificate",
			p:      withCert,
			want:   []string{"auto_config:", "http2_protocol_options: {}", "alternate_protocols_cache_options", "tls_certificates", "max_concurrent_streams: 100", "timeout: 10s\n"},
			absent: []string{"explicit_http_config"},
		},
		{
			name:   "idle timeout, keepalive off",
			p:      keepalive,
			want:   []string{"quic_protocol_options: { idle_network_timeout: 1s, connection_keepalive: { max_interval: 0s } }"},
			absent: []string{"max_concurrent_streams"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			text := MustH3UpstreamBootstrap(t, tt.p)
			checkRendering(t, text, tt.want, tt.absent)
			b, err := config.ParseBootstrap([]byte(text), "h3up.yaml")
			if err != nil {
				t.Fatalf("ParseBootstrap: %v\n%s", err, text)
			}
			if _, err := config.Compile(b); err != nil {
				t.Fatalf("Compile: %v\n%s", err, text)
			}
			c := b.GetStaticResources().GetClusters()
			if len(c) != 1 || c[0].GetName() != tt.p.Cluster || c[0].GetTransportSocket().GetName() != "envoy.transport_sockets.quic" {
				t.Fatalf("clusters = %v, want one QUIC cluster %q", c, tt.p.Cluster)
			}
		})
	}
}

func TestH3UpstreamBootstrapRejectsBadParams(t *testing.T) {
	ok := H3UpstreamParams{ListenerName: "l", Cluster: "c", UpstreamAddr: "127.0.0.1:1", TrustedCA: "ca.pem", PeerSAN: "spiffe://x/y"}
	with := func(f func(*H3UpstreamParams)) H3UpstreamParams {
		p := ok
		f(&p)
		return p
	}
	tests := []struct {
		name string
		p    H3UpstreamParams
		want string
	}{
		{"no upstream", with(func(p *H3UpstreamParams) { p.UpstreamAddr = "" }), "UpstreamAddr"},
		{"no listener", with(func(p *H3UpstreamParams) { p.ListenerName = "" }), "ListenerName"},
		{"no cluster", with(func(p *H3UpstreamParams) { p.Cluster = "" }), "Cluster"},
		{"no CA", with(func(p *H3UpstreamParams) { p.TrustedCA = "" }), "TrustedCA"},
		{"no SAN", with(func(p *H3UpstreamParams) { p.PeerSAN = "" }), "PeerSAN"},
		{"certificate without key", with(func(p *H3UpstreamParams) { p.CertFile = "c.pem" }), "KeyFile"},
		{"negative streams", with(func(p *H3UpstreamParams) { p.MaxConcurrentStreams = -1 }), "MaxConcurrentStreams"},
		{"negative timeout", with(func(p *H3UpstreamParams) { p.RouteTimeout = -time.Second }), "RouteTimeout"},
		{"negative keepalive", with(func(p *H3UpstreamParams) { d := -time.Second; p.Keepalive = &d }), "Keepalive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := H3UpstreamBootstrap(tt.p)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("H3UpstreamBootstrap error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

// checkRendering fails the test for each of want that text lacks and each
// of absent that it has.
func checkRendering(t *testing.T, text string, want, absent []string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(text, w) {
			t.Errorf("bootstrap has no %q:\n%s", w, text)
		}
	}
	for _, a := range absent {
		if strings.Contains(text, a) {
			t.Errorf("bootstrap has %q, want it left out:\n%s", a, text)
		}
	}
}
