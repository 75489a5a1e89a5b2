package hcm

import (
	"strings"
	"testing"
	"time"
)

// TestCompileDownstreamHTTP2Options: the HCM's http2_protocol_options
// (max_concurrent_streams, the initial windows, connection_keepalive with
// Envoy's 15% default jitter) reach the HTTP/2 server's config, and a zero
// keepalive timeout beside an interval is an error naming the field.
func TestCompileDownstreamHTTP2Options(t *testing.T) {
	const route = `"route_config":{"virtual_hosts":[{"name":"v","domains":["*"],"routes":[{"match":{"prefix":"/"},"direct_response":{"status":200}}]}]}`
	tests := []struct {
		name         string
		extra        string
		wantInterval time.Duration
		wantTimeout  time.Duration
		wantJitter   float64
		wantSettings [3]uint32 // max_concurrent_streams, stream and connection windows
		wantErr      string
	}{
		{name: "unset"},
		{name: "streams and windows", extra: `"http2_protocol_options":{"max_concurrent_streams":7,"initial_stream_window_size":70000,"initial_connection_window_size":1048576}`,
			wantSettings: [3]uint32{7, 70000, 1048576}},
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
			if got := [3]uint32{c.HTTP2.MaxConcurrentStreams, c.HTTP2.InitialStreamWindowSize, c.HTTP2.InitialConnectionWindowSize}; got != tt.wantSettings {
				t.Errorf("max_concurrent_streams, stream and connection windows = %v, want %v", got, tt.wantSettings)
			}
		})
	}
}
