package translate

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	lrlv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"meshd.dev/meshd/xds/model"
)

// LocalRateLimitFilterName is the HTTP filter a RateLimitPolicy with engine
// native becomes.
const LocalRateLimitFilterName = "envoy.filters.http.local_ratelimit"

// RateLimitStatPrefix is the local_ratelimit stat_prefix of a
// RateLimitPolicy: its stats are
// <prefix>.http_local_rate_limit.{enabled,ok,rate_limited,enforced}.
func RateLimitStatPrefix(p *model.RateLimitPolicy) string {
	return "rate_limit_policy_" + p.Metadata.Namespace + "_" + p.Metadata.Name
}

// rateLimitFilter is the limiter of svc's inbound listeners: an
// envoy.filters.http.local_ratelimit with the policy's token bucket,
// enabled and enforced for every request, answering gRPC calls with
// RESOURCE_EXHAUSTED. It returns nil when no RateLimitPolicy targets svc.
// Validation admits engine native with key global only, so one
// listener-level bucket is exactly the policy.
func (t *translator) rateLimitFilter(svc *model.Service) []*hcmv3.HttpFilter {
	p := t.m.RateLimitPolicyFor(svc)
	if p == nil {
		return nil
	}
	b := p.Spec.TokenBucket()
	all := func() *corev3.RuntimeFractionalPercent {
		return &corev3.RuntimeFractionalPercent{
			DefaultValue: &typev3.FractionalPercent{Numerator: 100, Denominator: typev3.FractionalPercent_HUNDRED},
		}
	}
	cfg := &lrlv3.LocalRateLimit{
		StatPrefix: RateLimitStatPrefix(p),
		TokenBucket: &typev3.TokenBucket{
			MaxTokens:     b.MaxTokens,
			TokensPerFill: wrapperspb.UInt32(b.TokensPerFill),
			FillInterval:  durationpb.New(b.FillInterval),
		},
		FilterEnabled:                  all(),
		FilterEnforced:                 all(),
		EnableXRatelimitHeaders:        ratelimitv3.XRateLimitHeadersRFCVersion_DRAFT_VERSION_03,
		RateLimitedAsResourceExhausted: true,
	}
	return []*hcmv3.HttpFilter{{
		Name:       LocalRateLimitFilterName,
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: t.typed(cfg)},
	}}
}
