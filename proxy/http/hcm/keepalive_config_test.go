package hcm

import (
	"strings"
	"testing"
	"time"
)

// TestCompileDownstreamKeepalive: the HCM's
// http2_protocol_options.connection_keepalive reaches the HTTP/2 server's
// config with Envoy's 15% default jitter, and a zero timeout beside an
// interval is an error naming the field.
func TestCompileDownstreamKeepalive(t *testing.T) {
	const route = `"route_config":{"virtual_hosts":[{"name":"v","domains":["*"],"routes":[{"match":{"prefix":"/"},"direct_response":{"status":200}}]}]}`
	tests := []struct {
		name         string
		extra        string
		wantInterval time.Duration
		wantTimeout  time.Duration
		wantJitter   float64
		wantErr      string
	}{
		{name: "unset"},
		{name: "interval and timeout", extra: `"http2_protocol_options":{"connection_keepalive":{"interval":"30s","timeout":"5s"}}`,
			wantInterval: 30 * time.Second, wantTimeout: 5 * time.Second, wantJitter: 15},
		{name: "jitter", extra: `"http2_protocol_options":{"connection_keepalive":{"interval":"30s","timeout":"5s","interval_jitter":{"value":40}}}`,
			wantInterval: 30 * time.Second, wantTimeout: 5 * time.Second, wantJitter: 40},
		{name: "zero timeout", extra: `"http2_protocol_options":{"connection_keepalive":{"interval":"30s","timeout":"0s"}}`,
			wantErr: "http2_protocol_options.connection_keepalive.timeout: required and positive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := `{"stat_prefix":"p",` + route
			if tt.extra != "" {
				src += "," + tt.extra
			}
			c, err := Compile(mustHCM(t, src+"}"))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Compile error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := c.HTTP2; got.KeepaliveInterval != tt.wantInterval || got.KeepaliveTimeout != tt.wantTimeout || got.KeepaliveJitterPercent != tt.wantJitter {
				t.Errorf("keepalive interval %v timeout %v jitter %v%%, want %v %v %v%%",
					got.KeepaliveInterval, got.KeepaliveTimeout, got.KeepaliveJitterPercent, tt.wantInterval, tt.wantTimeout, tt.wantJitter)
			}
		})
	}
}
