package route

import (
	"fmt"
	"strings"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
)

// RetryOn is the set of retry_on conditions, one bit each.
type RetryOn uint32

// The retry_on conditions Envoy's router and gRPC retry policies define.
const (
	Retry5xx RetryOn = 1 << iota
	RetryGatewayError
	RetryReset
	RetryResetBeforeRequest
	RetryConnectFailure
	RetryEnvoyRateLimited
	RetryRetriable4xx
	RetryRefusedStream
	RetryRetriableStatusCodes
	RetryHTTP3PostConnectFailure
	RetryGRPCCancelled
	RetryGRPCDeadlineExceeded
	RetryGRPCInternal
	RetryGRPCResourceExhausted
	RetryGRPCUnavailable
)

var retryOnNames = map[string]RetryOn{
	"5xx":                        Retry5xx,
	"gateway-error":              RetryGatewayError,
	"reset":                      RetryReset,
	"reset-before-request":       RetryResetBeforeRequest,
	"connect-failure":            RetryConnectFailure,
	"envoy-ratelimited":          RetryEnvoyRateLimited,
	"retriable-4xx":              RetryRetriable4xx,
	"refused-stream":             RetryRefusedStream,
	"retriable-status-codes":     RetryRetriableStatusCodes,
	"http3-post-connect-failure": RetryHTTP3PostConnectFailure,
	"cancelled":                  RetryGRPCCancelled,
	"deadline-exceeded":          RetryGRPCDeadlineExceeded,
	"internal":                   RetryGRPCInternal,
	"resource-exhausted":         RetryGRPCResourceExhausted,
	"unavailable":                RetryGRPCUnavailable,
}

// Default retry back-off, as Envoy's: base 25 ms, max 10 × base.
const (
	DefaultRetryBaseInterval = 25 * time.Millisecond
	DefaultRetryMaxInterval  = 250 * time.Millisecond
)

// RetryPolicy is a compiled retry_policy. The router (next issue) applies
// it; this package only parses and validates it. Immutable.
type RetryPolicy struct {
	// On is the set of conditions to retry on.
	On RetryOn
	// NumRetries is the maximum number of retries; 1 when unset, as Envoy.
	NumRetries uint32
	// PerTryTimeout bounds each attempt; 0 means the route timeout only.
	PerTryTimeout time.Duration
	// PerTryIdleTimeout bounds the idle time of each attempt; 0 = none.
	PerTryIdleTimeout time.Duration
	// RetriableStatusCodes are the HTTP statuses that retriable-status-codes
	// retries on.
	RetriableStatusCodes []uint32
	// BaseInterval and MaxInterval bound the jittered exponential back-off.
	BaseInterval, MaxInterval time.Duration
	// HostSelectionMaxAttempts is host_selection_retry_max_attempts (0 when
	// unset; Envoy then tries host selection once).
	HostSelectionMaxAttempts int64
}

// Has reports whether cond is one of the policy's retry_on conditions.
func (p *RetryPolicy) Has(cond RetryOn) bool { return p.On&cond != 0 }

func compileRetryPolicy(p string, rp *routev3.RetryPolicy) (*RetryPolicy, error) {
	out := &RetryPolicy{
		NumRetries:               1,
		BaseInterval:             DefaultRetryBaseInterval,
		MaxInterval:              DefaultRetryMaxInterval,
		HostSelectionMaxAttempts: rp.GetHostSelectionRetryMaxAttempts(),
		RetriableStatusCodes:     append([]uint32(nil), rp.GetRetriableStatusCodes()...),
	}
	for cond := range strings.SplitSeq(rp.GetRetryOn(), ",") {
		cond = strings.TrimSpace(cond)
		if cond == "" {
			continue
		}
		bit, ok := retryOnNames[cond]
		if !ok {
			return nil, fmt.Errorf("%s.retry_on: unknown condition %q", p, cond)
		}
		out.On |= bit
	}
	if n := rp.GetNumRetries(); n != nil {
		out.NumRetries = n.GetValue()
	}
	for i, code := range out.RetriableStatusCodes {
		if code < 100 || code > 599 {
			return nil, fmt.Errorf("%s.retriable_status_codes[%d]: %d is not an HTTP status", p, i, code)
		}
	}
	var err error
	if out.PerTryTimeout, err = duration(p+".per_try_timeout", rp.GetPerTryTimeout()); err != nil {
		return nil, err
	}
	if out.PerTryIdleTimeout, err = duration(p+".per_try_idle_timeout", rp.GetPerTryIdleTimeout()); err != nil {
		return nil, err
	}
	if bo := rp.GetRetryBackOff(); bo != nil {
		bp := p + ".retry_back_off"
		if out.BaseInterval, err = duration(bp+".base_interval", bo.GetBaseInterval()); err != nil {
			return nil, err
		}
		if out.BaseInterval <= 0 {
			return nil, fmt.Errorf("%s.base_interval: must be greater than 0", bp)
		}
		out.MaxInterval = 10 * out.BaseInterval
		if bo.GetMaxInterval() != nil {
			if out.MaxInterval, err = duration(bp+".max_interval", bo.GetMaxInterval()); err != nil {
				return nil, err
			}
			if out.MaxInterval < out.BaseInterval {
				return nil, fmt.Errorf("%s.max_interval: %v is less than base_interval %v", bp, out.MaxInterval, out.BaseInterval)
			}
		}
	}
	return out, nil
}
