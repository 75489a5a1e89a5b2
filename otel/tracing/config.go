package tracing

import (
	"fmt"
	mrand "math/rand/v2"
	"os"

	tracev3 "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
)

// ProviderName is the OpenTelemetry tracer's well-known name.
const ProviderName = "envoy.tracers.opentelemetry"

// OpenTelemetryConfigType is the full name of the provider's config type.
const OpenTelemetryConfigType = "envoy.config.trace.v3.OpenTelemetryConfig"

// DefaultMaxPathTagLength is Envoy's default for max_path_tag_length.
const DefaultMaxPathTagLength = 256

// Provider identifies an exporter: spans of every connection manager with
// the same Provider share one exporter (one queue, one collector
// connection).
type Provider struct {
	// Cluster is grpc_service.envoy_grpc.cluster_name: the collector.
	Cluster string
	// ServiceName is the resource's service.name.
	ServiceName string
}

// CustomTag is a compiled custom_tags entry: a literal or environment
// value (resolved at compile time, as Envoy does), or a request header.
type CustomTag struct {
	Tag string
	// Value is the literal or environment value; Header is the request
	// header to read, with Value the default when the header is absent.
	Value  string
	Header string
}

// Config is a compiled HttpConnectionManager.tracing: immutable and shared
// by every stream of the connection manager.
type Config struct {
	Provider Provider
	// RandomSampling, ClientSampling and OverallSampling are Envoy's
	// percentages (0..100), each 100 when unset.
	RandomSampling, ClientSampling, OverallSampling float64
	CustomTags                                      []CustomTag
	// SpawnUpstreamSpan records a client span per upstream attempt, child
	// of the server span. meshd's default is true (Envoy's is false for
	// the connection manager's router); false records attempts as events
	// of the server span.
	SpawnUpstreamSpan bool
	// MaxPathTagLength truncates url.path.
	MaxPathTagLength int
}

// Compile validates and compiles an HttpConnectionManager's tracing; it
// returns nil for nil. Errors name the field relative to tracing.
func Compile(t *hcmv3.HttpConnectionManager_Tracing) (*Config, error) {
	if t == nil {
		return nil, nil
	}
	c := &Config{SpawnUpstreamSpan: true, MaxPathTagLength: DefaultMaxPathTagLength}
	var err error
	if c.RandomSampling, err = percent("random_sampling", t.GetRandomSampling()); err != nil {
		return nil, err
	}
	if c.ClientSampling, err = percent("client_sampling", t.GetClientSampling()); err != nil {
		return nil, err
	}
	if c.OverallSampling, err = percent("overall_sampling", t.GetOverallSampling()); err != nil {
		return nil, err
	}
	if v := t.GetSpawnUpstreamSpan(); v != nil {
		c.SpawnUpstreamSpan = v.GetValue()
	}
	if v := t.GetMaxPathTagLength(); v != nil {
		c.MaxPathTagLength = int(v.GetValue())
	}
	for i, ct := range t.GetCustomTags() {
		path := fmt.Sprintf("custom_tags[%d]", i)
		if ct.GetTag() == "" {
			return nil, fmt.Errorf("%s.tag: required", path)
		}
		tag := CustomTag{Tag: ct.GetTag()}
		switch {
		case ct.GetLiteral() != nil:
			tag.Value = ct.GetLiteral().GetValue()
		case ct.GetEnvironment() != nil:
			e := ct.GetEnvironment()
			if e.GetName() == "" {
				return nil, fmt.Errorf("%s.environment.name: required", path)
			}
			v, ok := os.LookupEnv(e.GetName())
			if !ok {
				v = e.GetDefaultValue()
			}
			tag.Value = v
		case ct.GetRequestHeader() != nil:
			h := ct.GetRequestHeader()
			if h.GetName() == "" {
				return nil, fmt.Errorf("%s.request_header.name: required", path)
			}
			tag.Header, tag.Value = lower(h.GetName()), h.GetDefaultValue()
		default:
			return nil, fmt.Errorf("%s: a literal, environment or request_header tag is required (metadata tags are not supported)", path)
		}
		c.CustomTags = append(c.CustomTags, tag)
	}
	p := t.GetProvider()
	if p == nil {
		return nil, fmt.Errorf("provider: required (meshd traces with %s)", ProviderName)
	}
	if p.GetTypedConfig() == nil {
		return nil, fmt.Errorf("provider.typed_config: required (%s)", OpenTelemetryConfigType)
	}
	var otc tracev3.OpenTelemetryConfig
	if err := p.GetTypedConfig().UnmarshalTo(&otc); err != nil {
		return nil, fmt.Errorf("provider.typed_config: %w (meshd supports %s)", err, OpenTelemetryConfigType)
	}
	if otc.GetHttpService() != nil {
		return nil, fmt.Errorf("provider.typed_config.http_service: OTLP over HTTP is not supported (use grpc_service)")
	}
	eg := otc.GetGrpcService().GetEnvoyGrpc()
	if eg.GetClusterName() == "" {
		return nil, fmt.Errorf("provider.typed_config.grpc_service.envoy_grpc.cluster_name: required")
	}
	c.Provider = Provider{Cluster: eg.GetClusterName(), ServiceName: otc.GetServiceName()}
	if c.Provider.ServiceName == "" {
		c.Provider.ServiceName = "meshd"
	}
	return c, nil
}

func percent(field string, p *typev3.Percent) (float64, error) {
	if p == nil {
		return 100, nil
	}
	v := p.GetValue()
	if !(v >= 0 && v <= 100) {
		return 0, fmt.Errorf("%s.value: %v is outside [0, 100]", field, v)
	}
	return v, nil
}

func lower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// Reason says why a request was or was not sampled, for Envoy's
// http.<stat_prefix>.tracing.* stats.
type Reason int8

// Sampling reasons.
const (
	// ReasonParent: the request's trace context decided (W3C sampled flag,
	// or B3's).
	ReasonParent Reason = iota
	// ReasonClient: x-client-trace-id was present (client_sampling).
	ReasonClient
	// ReasonRandom: random_sampling decided.
	ReasonRandom
)

// Sample decides whether a request is traced, as Envoy's connection
// manager does with OpenTelemetry: a request with a valid parent context
// follows the parent's sampled flag; otherwise x-client-trace-id selects
// client_sampling, else random_sampling, and overall_sampling applies on
// top of either.
func (c *Config) Sample(parent SpanContext, hasParent, hasClientTraceID bool) (bool, Reason) {
	if hasParent {
		return parent.Sampled, ReasonParent
	}
	r, p := ReasonRandom, c.RandomSampling
	if hasClientTraceID {
		r, p = ReasonClient, c.ClientSampling
	}
	return chance(p) && chance(c.OverallSampling), r
}

func chance(pct float64) bool {
	switch {
	case pct >= 100:
		return true
	case pct <= 0:
		return false
	}
	return mrand.Float64()*100 < pct
}
