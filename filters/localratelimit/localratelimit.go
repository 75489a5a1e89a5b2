// Package localratelimit is envoy.filters.http.local_ratelimit
// (envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit): a
// token bucket in the sidecar that answers requests above the rate with
// 429, without any rate limit service.
//
// Supported: stat_prefix; token_bucket (required: meshd has no per-route
// filter config, so the listener-level bucket is the only one; max_tokens,
// tokens_per_fill defaulting to 1, fill_interval of at least 50 ms, as Envoy
// validates); status (codes below 400 become 429, as in Envoy);
// filter_enabled and filter_enforced (the default_value fraction; there is
// no runtime, so runtime_key is accepted and never looked up; unset means
// 0%, as in Envoy, so a filter without filter_enabled limits nothing);
// request_headers_to_add_when_not_enforced; response_headers_to_add (on
// rate-limited responses); enable_x_ratelimit_headers DRAFT_VERSION_03
// (x-ratelimit-limit, -remaining, -reset on every response of an enabled
// request); local_rate_limit_per_downstream_connection (one bucket per
// downstream connection, dropped when the connection is collected);
// rate_limited_as_resource_exhausted (gRPC RESOURCE_EXHAUSTED instead of
// the UNAVAILABLE Envoy maps 429 to); enable_retry_after_header;
// stage 0 and vh_rate_limits OVERRIDE (the defaults).
//
// Not supported, and a config error naming the field: descriptors,
// rate_limits, local_cluster_rate_limit, max_dynamic_descriptors. Envoy
// keys descriptors by route-level rate_limits actions, which meshd's route
// config does not implement; a descriptor with nothing to produce it would
// never match, so it is refused rather than silently ignored. Without
// descriptors the filter keeps no bucket per client-chosen value: its only
// buckets beyond the listener's are per connection and go away when the
// connection's info is collected, so their number follows the live
// connections (bounded by the listener's connection limits), and
// max_dynamic_descriptors would have nothing to bound.
//
// Stats are Envoy's, in the root scope: <stat_prefix>.http_local_rate_limit.
// enabled, ok, rate_limited, enforced.
package localratelimit

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	lrlv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"

	"meshd.dev/meshd/filters"
	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
	"meshd.dev/meshd/proxy/stats"
)

// TypeURL is the filter's config type URL.
const TypeURL = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"

// Name is the filter's well-known name.
const Name = "envoy.filters.http.local_ratelimit"

// RateLimitTag is the span attribute carrying the filter's decision on a
// traced request: "ok", "limited" (answered with the configured status) or
// "limited_not_enforced" (over the limit, let through by filter_enforced).
const RateLimitTag = "meshd.ratelimit"

// MinFillInterval is the shortest fill_interval Envoy accepts.
const MinFillInterval = 50 * time.Millisecond

// grpcResourceExhausted is gRPC's RESOURCE_EXHAUSTED code.
const grpcResourceExhausted = "8"

func init() {
	filters.Register(TypeURL, func(m proto.Message, _ filters.FactoryContext) (filters.Factory, error) {
		return Compile(m.(*lrlv3.LocalRateLimit), nil)
	}, Name)
}

// Factory is a compiled LocalRateLimit config with its token bucket (or
// per-connection buckets). It is immutable apart from the buckets'
// atomic state and safe for concurrent use.
type Factory struct {
	statPrefix        string
	status            int
	enabled, enforced fraction
	notEnforcedAdd    []headerAdd
	responseAdd       []headerAdd
	xRateLimit        bool
	retryAfter        bool
	resourceExhausted bool
	maxTokens         uint32

	bucket *Bucket // nil when per connection
	// newBucket creates a bucket with the configured parameters.
	newBucket func() *Bucket
	// perConn maps a connection ID to its *Bucket.
	perConn sync.Map
	stats   filters.StatsCache[*counters]
}

var _ filters.Factory = (*Factory)(nil)

type counters struct {
	enabled, ok, rateLimited, enforced *stats.Counter
}

// fraction is a FractionalPercent's default_value.
type fraction struct {
	num, den uint32
}

// sample reports whether a request falls within the fraction.
func (f fraction) sample() bool {
	switch {
	case f.num == 0:
		return false
	case f.num >= f.den:
		return true
	}
	return rand.Uint32N(f.den) < f.num
}

type headerAdd struct {
	key, value string
	appendIt   bool
}

func (h headerAdd) apply(hd *header.Header) {
	if h.appendIt {
		hd.Add(h.key, h.value)
	} else {
		hd.Set(h.key, h.value)
	}
}

// Compile validates cfg and compiles it; now is the buckets' clock
// (time.Now when nil). Errors name the field.
func Compile(cfg *lrlv3.LocalRateLimit, now func() time.Time) (*Factory, error) {
	switch {
	case cfg.GetStatPrefix() == "":
		return nil, fmt.Errorf("stat_prefix: required")
	case len(cfg.GetDescriptors()) > 0:
		return nil, fmt.Errorf("descriptors: not supported (they are keyed by route rate_limits actions, which meshd does not implement)")
	case len(cfg.GetRateLimits()) > 0:
		return nil, fmt.Errorf("rate_limits: not supported")
	case cfg.GetLocalClusterRateLimit() != nil:
		return nil, fmt.Errorf("local_cluster_rate_limit: not supported")
	case cfg.GetMaxDynamicDescriptors() != nil:
		return nil, fmt.Errorf("max_dynamic_descriptors: not supported")
	case cfg.GetStage() != 0:
		return nil, fmt.Errorf("stage: only 0 is supported (there are no route rate_limits)")
	case cfg.GetVhRateLimits() != ratelimitv3.VhRateLimitsOptions_OVERRIDE:
		return nil, fmt.Errorf("vh_rate_limits: %s is not supported (there are no route rate_limits)", cfg.GetVhRateLimits())
	}
	f := &Factory{
		statPrefix:        cfg.GetStatPrefix(),
		status:            429,
		retryAfter:        cfg.GetEnableRetryAfterHeader(),
		resourceExhausted: cfg.GetRateLimitedAsResourceExhausted(),
	}
	if c := int(cfg.GetStatus().GetCode()); c >= 400 {
		f.status = c
	}
	var err error
	if f.enabled, err = compileFraction("filter_enabled", cfg.GetFilterEnabled()); err != nil {
		return nil, err
	}
	if f.enforced, err = compileFraction("filter_enforced", cfg.GetFilterEnforced()); err != nil {
		return nil, err
	}
	if f.notEnforcedAdd, err = compileHeaders("request_headers_to_add_when_not_enforced", cfg.GetRequestHeadersToAddWhenNotEnforced()); err != nil {
		return nil, err
	}
	if f.responseAdd, err = compileHeaders("response_headers_to_add", cfg.GetResponseHeadersToAdd()); err != nil {
		return nil, err
	}
	switch v := cfg.GetEnableXRatelimitHeaders(); v {
	case ratelimitv3.XRateLimitHeadersRFCVersion_OFF:
	case ratelimitv3.XRateLimitHeadersRFCVersion_DRAFT_VERSION_03:
		f.xRateLimit = true
	default:
		return nil, fmt.Errorf("enable_x_ratelimit_headers: %s is not supported (OFF, DRAFT_VERSION_03)", v)
	}
	if err := f.compileBucket(cfg.GetTokenBucket(), now); err != nil {
		return nil, err
	}
	if !cfg.GetLocalRateLimitPerDownstreamConnection() {
		f.bucket = f.newBucket()
	}
	return f, nil
}

func (f *Factory) compileBucket(tb *typev3.TokenBucket, now func() time.Time) error {
	if tb == nil {
		return fmt.Errorf("token_bucket: required (meshd has no per-route local rate limit config)")
	}
	if tb.GetMaxTokens() == 0 {
		return fmt.Errorf("token_bucket.max_tokens: must be greater than 0")
	}
	perFill := uint32(1)
	if v := tb.GetTokensPerFill(); v != nil {
		if v.GetValue() == 0 {
			return fmt.Errorf("token_bucket.tokens_per_fill: must be greater than 0")
		}
		perFill = v.GetValue()
	}
	if tb.GetFillInterval() == nil {
		return fmt.Errorf("token_bucket.fill_interval: required")
	}
	interval := tb.GetFillInterval().AsDuration()
	if interval < MinFillInterval {
		return fmt.Errorf("token_bucket.fill_interval: %v is below the minimum of %v", interval, MinFillInterval)
	}
	f.maxTokens = tb.GetMaxTokens()
	f.newBucket = func() *Bucket { return NewBucket(tb.GetMaxTokens(), perFill, interval, now) }
	return nil
}

func compileFraction(path string, rf *corev3.RuntimeFractionalPercent) (fraction, error) {
	if rf == nil {
		return fraction{}, nil // Envoy: unset is 0%
	}
	dv := rf.GetDefaultValue()
	var den uint32
	switch d := dv.GetDenominator(); d {
	case typev3.FractionalPercent_HUNDRED:
		den = 100
	case typev3.FractionalPercent_TEN_THOUSAND:
		den = 10_000
	case typev3.FractionalPercent_MILLION:
		den = 1_000_000
	default:
		return fraction{}, fmt.Errorf("%s.default_value.denominator: %s is not supported", path, d)
	}
	return fraction{num: min(dv.GetNumerator(), den), den: den}, nil
}

func compileHeaders(path string, hs []*corev3.HeaderValueOption) ([]headerAdd, error) {
	var out []headerAdd
	for i, h := range hs {
		p := fmt.Sprintf("%s[%d]", path, i)
		k := h.GetHeader().GetKey()
		if !header.ValidName(strings.ToLower(k)) {
			return nil, fmt.Errorf("%s.header.key: %q is not a valid header name", p, k)
		}
		v := h.GetHeader().GetValue()
		if v == "" && len(h.GetHeader().GetRawValue()) > 0 {
			v = string(h.GetHeader().GetRawValue())
		}
		add := headerAdd{key: strings.ToLower(k), value: v}
		//lint:ignore SA1019 deprecated in Envoy's API but still honoured by Envoy; the sidecar honours it for control planes that send it
		oldAppend := h.GetAppend()
		switch {
		case oldAppend != nil:
			add.appendIt = oldAppend.GetValue()
		case h.GetAppendAction() == corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD:
			add.appendIt = true
		case h.GetAppendAction() == corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD:
		default:
			return nil, fmt.Errorf("%s.append_action: %s is not supported", p, h.GetAppendAction())
		}
		out = append(out, add)
	}
	return out, nil
}

// bucketFor returns the bucket a request on conn draws from.
func (f *Factory) bucketFor(conn *stream.ConnInfo) *Bucket {
	if f.bucket != nil {
		return f.bucket
	}
	if b, ok := f.perConn.Load(conn.ID); ok {
		return b.(*Bucket)
	}
	b, loaded := f.perConn.LoadOrStore(conn.ID, f.newBucket())
	if !loaded {
		// The bucket lives as long as the connection's info does.
		runtime.AddCleanup(conn, func(id uint64) { f.perConn.Delete(id) }, conn.ID)
	}
	return b.(*Bucket)
}

func (f *Factory) counters(cb filters.Callbacks) *counters {
	return f.stats.Get(cb.Stats(), func(sc *stats.Scope) *counters {
		// Envoy's tag extraction takes the stat_prefix out of the
		// Prometheus name: "<prefix>.http_local_rate_limit.ok" is
		// envoy_http_local_rate_limit_ok{envoy_local_http_ratelimit_prefix="<prefix>"}.
		s := sc.Store().Root().Tagged("envoy_local_http_ratelimit_prefix", f.statPrefix).Scope("http_local_rate_limit")
		return &counters{
			enabled:     s.Counter("enabled"),
			ok:          s.Counter("ok"),
			rateLimited: s.Counter("rate_limited"),
			enforced:    s.Counter("enforced"),
		}
	})
}

// NewFilter returns the filter for one stream.
func (f *Factory) NewFilter() filters.Filter { return &filter{f: f} }

// filter is the per-stream state: what the request hook decided, for the
// response hook's headers.
type filter struct {
	f         *Factory
	checked   bool // the request was enabled and drew from the bucket
	limited   bool // and was answered with the local reply
	remaining uint32
	reset     time.Duration
}

// OnRequestHeaders draws a token for an enabled request and answers with
// the configured status when there is none and the request is enforced.
func (s *filter) OnRequestHeaders(cb filters.Callbacks, req *stream.Request, _ bool) filters.Status {
	f := s.f
	if !f.enabled.sample() {
		return filters.Continue
	}
	c := f.counters(cb)
	c.enabled.Inc()
	ok, remaining, reset := f.bucketFor(cb.Conn()).Consume()
	s.checked, s.remaining, s.reset = true, remaining, reset
	if ok {
		c.ok.Inc()
		filters.TagSpan(cb, RateLimitTag, "ok")
		return filters.Continue
	}
	c.rateLimited.Inc()
	if !f.enforced.sample() {
		filters.TagSpan(cb, RateLimitTag, "limited_not_enforced")
		for _, h := range f.notEnforcedAdd {
			h.apply(&req.Header)
		}
		return filters.Continue
	}
	c.enforced.Inc()
	filters.TagSpan(cb, RateLimitTag, "limited")
	s.limited = true
	cb.SendLocalReply(f.status, "local_rate_limited", "local_rate_limited")
	return filters.Stop
}

// OnResponseHeaders adds the rate limit headers.
func (s *filter) OnResponseHeaders(_ filters.Callbacks, resp *stream.Response, _ bool) filters.Status {
	f := s.f
	if !s.checked {
		return filters.Continue
	}
	if f.xRateLimit {
		resp.Header.Set("x-ratelimit-limit", strconv.FormatUint(uint64(f.maxTokens), 10))
		resp.Header.Set("x-ratelimit-remaining", strconv.FormatUint(uint64(s.remaining), 10))
		resp.Header.Set("x-ratelimit-reset", strconv.FormatInt(ceilSeconds(s.reset), 10))
	}
	if !s.limited {
		return filters.Continue
	}
	resp.Header.Set("x-envoy-ratelimited", "true")
	if f.retryAfter {
		resp.Header.Set("retry-after", strconv.FormatInt(ceilSeconds(s.reset), 10))
	}
	for _, h := range f.responseAdd {
		h.apply(&resp.Header)
	}
	if f.resourceExhausted && resp.Header.Get("grpc-status") != "" {
		resp.Header.Set("grpc-status", grpcResourceExhausted)
	}
	return filters.Continue
}

// ceilSeconds rounds d up to whole seconds.
func ceilSeconds(d time.Duration) int64 {
	return int64((d + time.Second - 1) / time.Second)
}
