package hcm

import (
	"strings"
	"testing"
	"time"

	"meshd.dev/meshd/proxy/http/h2"
)

// TestCompileHardeningFields: the flood limits, max_headers_count and
// request_headers_timeout reach the codecs' configs, defaults are Envoy's,
// and out-of-range values are errors naming the field.
func TestCompileHardeningFields(t *testing.T) {
	const route = `"route_config":{"virtual_hosts":[{"name":"v","domains":["*"],"routes":[{"match":{"prefix":"/"},"direct_response":{"status":200}}]}]}`
	tests := []struct {
		name    string
		extra   string
		check   func(t *testing.T, c *Config)
		wantErr string
	}{
		{
			name: "defaults",
			check: func(t *testing.T, c *Config) {
				if c.HTTP2.Flood != nil || c.MaxHeadersCount != 100 || c.HTTP2.MaxHeadersCount != 100 || c.RequestHeadersTimeout != 0 {
					t.Fatalf("flood %v, max headers %d/%d, header timeout %v", c.HTTP2.Flood, c.MaxHeadersCount, c.HTTP2.MaxHeadersCount, c.RequestHeadersTimeout)
				}
				if c.HTTP1HeaderTimeout() != 5*time.Minute {
					t.Fatalf("HTTP/1.1 header timeout %v, want stream_idle_timeout's 5m", c.HTTP1HeaderTimeout())
				}
			},
		},
		{
			name: "all set",
			extra: `"request_headers_timeout":"2s","common_http_protocol_options":{"max_headers_count":7},
				"http2_protocol_options":{"max_outbound_frames":11,"max_outbound_control_frames":12,
				"max_consecutive_inbound_frames_with_empty_payload":0,"max_inbound_priority_frames_per_stream":14,
				"max_inbound_window_update_frames_per_data_frame_sent":15}`,
			check: func(t *testing.T, c *Config) {
				want := h2.FloodLimits{MaxOutboundFrames: 11, MaxOutboundControlFrames: 12, MaxConsecutiveEmptyFrames: 0,
					MaxPriorityFramesPerStream: 14, MaxWindowUpdatesPerDataFrame: 15}
				if c.HTTP2.Flood == nil || *c.HTTP2.Flood != want {
					t.Fatalf("flood limits %+v, want %+v", c.HTTP2.Flood, want)
				}
				if c.HTTP2.MaxHeadersCount != 7 || c.HTTP2.RequestHeadersTimeout != 2*time.Second || c.HTTP1HeaderTimeout() != 2*time.Second {
					t.Fatalf("max headers %d, header timeout %v / %v", c.HTTP2.MaxHeadersCount, c.HTTP2.RequestHeadersTimeout, c.HTTP1HeaderTimeout())
				}
			},
		},
		{
			name:  "one limit keeps the other defaults",
			extra: `"http2_protocol_options":{"max_outbound_frames":50}`,
			check: func(t *testing.T, c *Config) {
				want := h2.DefaultFloodLimits()
				want.MaxOutboundFrames = 50
				if *c.HTTP2.Flood != want {
					t.Fatalf("flood limits %+v, want %+v", *c.HTTP2.Flood, want)
				}
			},
		},
		{name: "zero outbound frames", extra: `"http2_protocol_options":{"max_outbound_frames":0}`,
			wantErr: "http2_protocol_options.max_outbound_frames: must be at least 1"},
		{name: "zero control frames", extra: `"http2_protocol_options":{"max_outbound_control_frames":0}`,
			wantErr: "http2_protocol_options.max_outbound_control_frames: must be at least 1"},
		{name: "zero window updates", extra: `"http2_protocol_options":{"max_inbound_window_update_frames_per_data_frame_sent":0}`,
			wantErr: "max_inbound_window_update_frames_per_data_frame_sent: must be at least 1"},
		{name: "zero headers", extra: `"common_http_protocol_options":{"max_headers_count":0}`,
			wantErr: "common_http_protocol_options.max_headers_count: must be at least 1"},
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
			tt.check(t, c)
		})
	}
}
