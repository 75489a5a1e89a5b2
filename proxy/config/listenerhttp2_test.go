package config

import (
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"meshd.dev/meshd/proxy/http/h2"
)

func TestCompileListenerHTTP2(t *testing.T) {
	withMeta := func(fields map[string]any) *listenerv3.Listener {
		st, err := structpb.NewStruct(fields)
		if err != nil {
			t.Fatal(err)
		}
		return &listenerv3.Listener{Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
			MeshdHTTP2MetadataKey: st,
			"some.other.filter":   {},
		}}}
	}
	tests := []struct {
		name    string
		l       *listenerv3.Listener
		want    h2.ServerConfig
		wantErr string
	}{
		{name: "nothing set", l: &listenerv3.Listener{}},
		{name: "ping policy", l: withMeta(map[string]any{"min_client_ping_interval": "1s", "permit_pings_without_stream": true}),
			want: h2.ServerConfig{MinPingInterval: time.Second, PermitWithoutStream: true}},
		{name: "fractional seconds", l: withMeta(map[string]any{"min_client_ping_interval": "0.5s"}),
			want: h2.ServerConfig{MinPingInterval: 500 * time.Millisecond}},
		{name: "buffer limit", l: &listenerv3.Listener{PerConnectionBufferLimitBytes: wrapperspb.UInt32(32768)},
			want: h2.ServerConfig{MaxBufferedBytes: 32768}},
		{name: "zero buffer limit", l: &listenerv3.Listener{PerConnectionBufferLimitBytes: wrapperspb.UInt32(0)},
			wantErr: "per_connection_buffer_limit_bytes: must be greater than 0"},
		{name: "unknown key", l: withMeta(map[string]any{"min_ping": "1s"}),
			wantErr: `metadata.filter_metadata["meshd.http2"].min_ping: unknown field`},
		{name: "duration not a string", l: withMeta(map[string]any{"min_client_ping_interval": 1.0}),
			wantErr: `metadata.filter_metadata["meshd.http2"].min_client_ping_interval: must be a duration string`},
		{name: "bad duration", l: withMeta(map[string]any{"min_client_ping_interval": "soon"}),
			wantErr: `min_client_ping_interval: invalid duration "soon"`},
		{name: "negative duration", l: withMeta(map[string]any{"min_client_ping_interval": "-1s"}),
			wantErr: "must be positive"},
		{name: "permit not a bool", l: withMeta(map[string]any{"permit_pings_without_stream": "yes"}),
			wantErr: "permit_pings_without_stream: must be a bool"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got h2.ServerConfig
			err := compileListenerHTTP2(tt.l, &got)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}
