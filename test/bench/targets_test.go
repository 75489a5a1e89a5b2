package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/proxy/config"
)

// TestRenderSidecar renders the bootstrap of every sidecar the targets
// start and checks meshd's own loader accepts and compiles it (certificate
// files included), so a template change cannot break a target only at run
// time.
func TestRenderSidecar(t *testing.T) {
	pki, err := newBenchPKI(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	wasmFile := filepath.Join(t.TempDir(), "guest.wasm")
	if err := os.WriteFile(wasmFile, []byte("\x00asm\x01\x00\x00\x00"), 0o600); err != nil {
		t.Fatal(err)
	}
	const be, hop = "127.0.0.1:9001", "127.0.0.1:9443"
	tests := []struct {
		name string
		cfg  sidecarConfig
		// want are substrings the rendered bootstrap must contain.
		want []string
	}{
		{name: "one sidecar", cfg: sidecarConfig{Node: "a", Listen: protoH2C, Upstream: protoH2C, GRPCAddr: be, HTTPAddr: be},
			want: []string{"codec_type: AUTO", "http2_protocol_options: {}", "port_value: 9001", "max_requests: 100000"}},
		{name: "tls server", cfg: sidecarConfig{Node: "s", Listen: protoTLS, ListenTLS: pki.Server, Upstream: protoH2C, GRPCAddr: be, HTTPAddr: be},
			want: []string{"DownstreamTlsContext", "require_client_certificate: true", benchClientID}},
		{name: "tls client", cfg: sidecarConfig{Node: "c", Listen: protoH2C, Upstream: protoTLS, UpstreamTLS: pki.Client, GRPCAddr: hop, HTTPAddr: hop},
			want: []string{"UpstreamTlsContext", benchServerID, "port_value: 9443"}},
		{name: "quic server", cfg: sidecarConfig{Node: "s3", Listen: protoH3, ListenTLS: pki.Server, Upstream: protoH2C, GRPCAddr: be, HTTPAddr: be},
			want: []string{"protocol: UDP", "codec_type: HTTP3", "QuicDownstreamTransport"}},
		{name: "quic client", cfg: sidecarConfig{Node: "c3", Listen: protoH2C, Upstream: protoH3, UpstreamTLS: pki.Client, GRPCAddr: hop, HTTPAddr: hop},
			want: []string{"http3_protocol_options: {}", "QuicUpstreamTransport"}},
		{name: "wasm", cfg: sidecarConfig{Node: "w", Listen: protoH2C, Upstream: protoH2C, GRPCAddr: be, HTTPAddr: be,
			Filters: []string{rateLimitFilter(wasmFile, rateLimitPerSecond)}},
			want: []string{"envoy.filters.http.wasm", `"requests_per_unit": 1000000000`}},
		{name: "tracing", cfg: sidecarConfig{Node: "tr", Listen: protoH2C, Upstream: protoH2C, GRPCAddr: be, HTTPAddr: be, TraceCollector: "127.0.0.1:4317"},
			want: []string{"envoy.tracers.opentelemetry", "cluster_name: otlp", "random_sampling: { value: 100 }"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			text, err := renderSidecar(tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tt.want {
				if !strings.Contains(text, w) {
					t.Errorf("bootstrap lacks %q:\n%s", w, text)
				}
			}
			b, err := config.ParseBootstrap([]byte(text), tt.name+".yaml")
			if err != nil {
				t.Fatalf("ParseBootstrap: %v\n%s", err, text)
			}
			if tt.cfg.Filters != nil {
				return // compiling would load the placeholder module
			}
			if _, err := config.Compile(b); err != nil {
				t.Fatalf("Compile: %v\n%s", err, text)
			}
		})
	}
}

func TestRenderSidecarErrors(t *testing.T) {
	tests := []struct {
		name    string
		cfg     sidecarConfig
		wantErr string
	}{
		{name: "bad listener protocol", cfg: sidecarConfig{Node: "x", Listen: "h1", Upstream: protoH2C, GRPCAddr: "127.0.0.1:1", HTTPAddr: "127.0.0.1:1"},
			wantErr: `listener protocol "h1"`},
		{name: "bad upstream protocol", cfg: sidecarConfig{Node: "x", Listen: protoH2C, Upstream: "spdy", GRPCAddr: "127.0.0.1:1", HTTPAddr: "127.0.0.1:1"},
			wantErr: `upstream protocol "spdy"`},
		{name: "port zero", cfg: sidecarConfig{Node: "x", Listen: protoH2C, Upstream: protoH2C, GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:1"},
			wantErr: "cluster grpc address \"127.0.0.1:0\": port must be in [1, 65535]"},
		{name: "no port", cfg: sidecarConfig{Node: "x", Listen: protoH2C, Upstream: protoH2C, GRPCAddr: "127.0.0.1:1", HTTPAddr: "localhost"},
			wantErr: "cluster http address \"localhost\""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := renderSidecar(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

// TestBenchPKI checks the two SVIDs: each chains to the bundle, carries its
// SPIFFE ID as its only URI SAN, and its key matches; each side expects the
// other's ID.
func TestBenchPKI(t *testing.T) {
	p, err := newBenchPKI(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := os.ReadFile(p.Client.Bundle)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(bundle) {
		t.Fatal("bundle holds no certificate")
	}
	for _, c := range []struct {
		f          svidFiles
		id, peerID string
	}{{p.Client, benchClientID, benchServerID}, {p.Server, benchServerID, benchClientID}} {
		pair, err := tls.LoadX509KeyPair(c.f.Cert, c.f.Key)
		if err != nil {
			t.Fatalf("%s: %v", c.id, err)
		}
		leaf, err := x509.ParseCertificate(pair.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		if len(leaf.URIs) != 1 || leaf.URIs[0].String() != c.id {
			t.Errorf("leaf URIs %v, want [%s]", leaf.URIs, c.id)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			t.Errorf("%s does not chain to the bundle: %v", c.id, err)
		}
		if c.f.PeerID != c.peerID {
			t.Errorf("%s expects peer %s, want %s", c.id, c.f.PeerID, c.peerID)
		}
	}
}

func TestPeerConfigs(t *testing.T) {
	p := peerParams{Port: 8081, GRPCHost: "127.0.0.1", GRPCPort: 9001, HTTPHost: "127.0.0.1", HTTPPort: 9000, MaxConns: 12000, MaxFDs: 19900, Dir: "/run/x"}
	tests := []struct {
		name string
		want []string
	}{
		{targetNghttpx, []string{"frontend=127.0.0.1,8081;no-tls", "backend=127.0.0.1,9001;/grpc.testing.TestService/;proto=h2",
			"backend=127.0.0.1,9000;/;proto=h2", "workers=1", "single-process=yes", "rlimit-nofile=19900", "worker-frontend-connections=12000"}},
		{targetHAProxy, []string{"nbthread 1", "maxconn 12000", "ulimit-n 19900", "no strict-limits", "bind 127.0.0.1:8081 proto h2",
			"use_backend be_grpc if { path_beg /grpc.testing.TestService/ }", "server s1 127.0.0.1:9000 proto h2", "server g1 127.0.0.1:9001 proto h2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmpl := nghttpxTemplate
			if tt.name == targetHAProxy {
				tmpl = haproxyTemplate
			}
			var b strings.Builder
			if err := tmpl.Execute(&b, p); err != nil {
				t.Fatal(err)
			}
			lines := make(map[string]bool)
			for l := range strings.Lines(b.String()) {
				lines[strings.TrimSpace(l)] = true
			}
			for _, w := range tt.want {
				if !lines[w] {
					t.Errorf("no line %q in:\n%s", w, b.String())
				}
			}
		})
	}
}

// TestOpenIdle opens idle HTTP/2 connections to the test backend and
// checks that a listener which is not HTTP/2 fails with a reason.
func TestOpenIdle(t *testing.T) {
	testutil.CheckGoroutines(t)
	be := startTestBackend(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	ic, err := openIdle(ctx, be.HTTPAddr, 100)
	if err != nil {
		t.Fatal(err)
	}
	if ic.Len() != 100 {
		t.Errorf("%d connections, want 100", ic.Len())
	}
	if err := ic.Close(); err != nil {
		t.Errorf("close: %v", err)
	}

	// A listener that answers in HTTP/1.1 and closes: the exchange fails
	// while writing the preface or SETTINGS, or while reading.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("HTTP/1.1 400 Bad Request\r\n\r\n"))
			c.Close()
		}
	}()
	if ic, err := openIdle(ctx, l.Addr().String(), 5); err == nil {
		ic.Close()
		t.Fatal("openIdle to a non-HTTP/2 listener succeeded")
	} else if !strings.Contains(err.Error(), "idle connection") || !strings.Contains(err.Error(), l.Addr().String()) {
		t.Errorf("error %v, want it to name the idle connection and the address", err)
	}
	l.Close()
	<-done
}
