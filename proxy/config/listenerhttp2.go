package config

import (
	"fmt"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"meshd.dev/meshd/proxy/http/h2"
)

// MeshdHTTP2MetadataKey is the listener filter_metadata key that carries
// meshd's downstream HTTP/2 settings Envoy has no field for. Envoy accepts
// and ignores listener metadata, so a bootstrap using it still loads with
// `envoy -c`. The value is a struct with:
//
//	min_client_ping_interval: "1s"      # a duration string; PINGs sooner are strikes (grpc-go's MinTime)
//	permit_pings_without_stream: false  # grpc-go's PermitWithoutStream
const MeshdHTTP2MetadataKey = "meshd.http2"

// compileListenerHTTP2 applies the listener-level fields that shape the
// downstream HTTP/2 connection: per_connection_buffer_limit_bytes and the
// meshd.http2 metadata. Errors name the field below the listener.
func compileListenerHTTP2(l *listenerv3.Listener, cfg *h2.ServerConfig) error {
	if v := l.GetPerConnectionBufferLimitBytes(); v != nil {
		if v.GetValue() == 0 {
			return fmt.Errorf("per_connection_buffer_limit_bytes: must be greater than 0")
		}
		cfg.MaxBufferedBytes = v.GetValue()
	}
	md, ok := l.GetMetadata().GetFilterMetadata()[MeshdHTTP2MetadataKey]
	if !ok {
		return nil
	}
	path := fmt.Sprintf("metadata.filter_metadata[%q]", MeshdHTTP2MetadataKey)
	for name, v := range md.GetFields() {
		fpath := path + "." + name
		switch name {
		case "min_client_ping_interval":
			d, err := structDuration(v)
			if err != nil {
				return fmt.Errorf("%s: %w", fpath, err)
			}
			cfg.MinPingInterval = d
		case "permit_pings_without_stream":
			b, ok := v.GetKind().(*structpb.Value_BoolValue)
			if !ok {
				return fmt.Errorf("%s: must be a bool", fpath)
			}
			cfg.PermitWithoutStream = b.BoolValue
		default:
			return fmt.Errorf("%s: unknown field (min_client_ping_interval, permit_pings_without_stream)", fpath)
		}
	}
	return nil
}

// structDuration reads a positive duration written as a string ("1s",
// "0.5s", "100ms").
func structDuration(v *structpb.Value) (time.Duration, error) {
	s, ok := v.GetKind().(*structpb.Value_StringValue)
	if !ok {
		return 0, fmt.Errorf("must be a duration string such as \"1s\"")
	}
	d, err := time.ParseDuration(s.StringValue)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q: %w", s.StringValue, err)
	}
	if d <= 0 {
		return 0, fmt.Errorf("duration %q must be positive", s.StringValue)
	}
	return d, nil
}
