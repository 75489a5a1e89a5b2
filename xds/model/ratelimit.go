package model

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// KindRateLimitPolicy limits the rate of requests one Service's workloads
// accept on their inbound listeners.
const KindRateLimitPolicy = "RateLimitPolicy"

// Rate limit units (RateLimitPolicy.spec.unit).
const (
	UnitSecond = "second"
	UnitMinute = "minute"
)

// Rate limit engines (RateLimitPolicy.spec.engine).
const (
	// EngineNative is envoy.filters.http.local_ratelimit: one token bucket
	// per sidecar. The default.
	EngineNative = "native"
	// EngineWasm is the proxy-wasm rate-limit filter
	// (filters/ratelimit/guest) run by envoy.filters.http.wasm, with
	// buckets per key shared by all VM instances of a sidecar. The control
	// plane serves the module to sidecars (see xds/translate.Options).
	EngineWasm = "wasm"
)

// Rate limit keys (RateLimitPolicy.spec.key).
const (
	KeyGlobal         = "global"
	KeySourceIdentity = "source-identity"
	KeyPath           = "path"
	// KeyHeaderPrefix followed by a header name keys buckets by that
	// request header's value.
	KeyHeaderPrefix = "header:"
)

// minFillInterval is the shortest token bucket fill_interval Envoy accepts.
const minFillInterval = 50 * time.Millisecond

// RateLimitPolicy limits how many requests per unit of time each workload
// of one Service admits on its inbound listener; the others get 429 (gRPC
// RESOURCE_EXHAUSTED). The limit holds per sidecar: N workloads of the
// Service admit up to N times the rate together.
type RateLimitPolicy struct {
	Metadata Metadata
	Spec     RateLimitPolicySpec
	// Target is the Service named by Spec.TargetRef.
	Target *Service
	origin origin
}

// RateLimitPolicySpec is a RateLimitPolicy document's spec. After parsing,
// Unit, Key and Engine are set and Burst is non-nil.
type RateLimitPolicySpec struct {
	TargetRef TargetRef `json:"targetRef"`
	// RequestsPerUnit is the sustained rate, at least 1.
	RequestsPerUnit uint32 `json:"requestsPerUnit"`
	// Unit is "second" (the default) or "minute".
	Unit string `json:"unit,omitempty"`
	// Burst is the token bucket's size: the requests admitted at once
	// after an idle period. Default RequestsPerUnit; at least the tokens
	// added per fill (see TokenBucket).
	Burst *uint32 `json:"burst,omitempty"`
	// Key chooses the bucket: "global" (the default: one bucket),
	// "source-identity", "path" or "header:NAME". Only global is
	// supported with engine native.
	Key string `json:"key,omitempty"`
	// Engine is "native" (the default) or "wasm".
	Engine string `json:"engine,omitempty"`
	// DryRun counts requests over the limit without rejecting them.
	DryRun bool `json:"dryRun,omitempty"`
	// Module, with engine wasm, has sidecars fetch the rate-limit module
	// from this URL, checked against its sha256, instead of from the
	// control plane (which then needs none): for modules kept on an
	// artifact server, or to pin one build per policy.
	Module *ModuleRef `json:"module,omitempty"`
}

// ModuleRef locates a proxy-wasm module on an HTTP server.
type ModuleRef struct {
	// URL is http://HOST:PORT/PATH (an explicit port: it becomes an Envoy
	// cluster endpoint).
	URL string `json:"url"`
	// SHA256 is the module's hex SHA-256 digest; a sidecar that fetches
	// other bytes rejects the config.
	SHA256 string `json:"sha256"`
}

// TokenBucket is an Envoy token bucket (type.v3.TokenBucket).
type TokenBucket struct {
	MaxTokens     uint32
	TokensPerFill uint32
	FillInterval  time.Duration
}

// TokenBucket returns the bucket enforcing spec: MaxTokens is Burst, and
// TokensPerFill / FillInterval equals RequestsPerUnit / Unit (to the
// nanosecond) with the fewest tokens per fill that keep FillInterval at or
// above Envoy's 50 ms minimum, so the bucket refills as smoothly as Envoy
// allows. spec must come from a parsed mesh.
func (spec *RateLimitPolicySpec) TokenBucket() TokenBucket {
	perFill, interval := fill(spec.RequestsPerUnit, unitDuration(spec.Unit))
	return TokenBucket{MaxTokens: *spec.Burst, TokensPerFill: perFill, FillInterval: interval}
}

// fill returns the fewest tokens per fill, and their interval, that add
// rate tokens per unit with an interval of at least minFillInterval.
func fill(rate uint32, unit time.Duration) (uint32, time.Duration) {
	r := int64(rate)
	u, m := int64(unit), int64(minFillInterval)
	perFill := max((r*m+u-1)/u, 1) // ceil(rate × 50 ms / unit)
	return uint32(perFill), time.Duration(u * perFill / r)
}

func unitDuration(unit string) time.Duration {
	if unit == UnitMinute {
		return time.Minute
	}
	return time.Second
}

// RateLimitPolicyFor returns the RateLimitPolicy targeting s, or nil.
func (m *Mesh) RateLimitPolicyFor(s *Service) *RateLimitPolicy { return m.rateLimits[s.Key()] }

// validateRateLimitPolicy resolves the target (one policy per Service, not
// tcp), fills the defaults and rejects values the engine cannot enforce.
func validateRateLimitPolicy(ps *problems, m *Mesh, p *RateLimitPolicy) {
	o, sp := p.origin, &p.Spec
	p.Target = resolveTarget(ps, m, o, &sp.TargetRef, p.Metadata.Namespace)
	if p.Target != nil {
		key := p.Target.Key()
		switch prev := m.rateLimits[key]; {
		case prev != nil:
			ps.add(o, "spec.targetRef", "Service %s is already the target of %s", key, prev.origin.label())
		case p.Target.Spec.Protocol == ProtocolTCP:
			ps.add(o, "spec.targetRef", "Service %s is tcp: rate limits apply to HTTP services only", key)
		default:
			m.rateLimits[key] = p
		}
	}
	if sp.RequestsPerUnit == 0 {
		ps.add(o, "spec.requestsPerUnit", "required, at least 1")
	}
	switch sp.Unit {
	case "":
		sp.Unit = UnitSecond
	case UnitSecond, UnitMinute:
	default:
		ps.add(o, "spec.unit", "unknown unit %q (second or minute)", sp.Unit)
	}
	if sp.Key == "" {
		sp.Key = KeyGlobal
	} else if reason := checkRateLimitKey(sp.Key); reason != "" {
		ps.add(o, "spec.key", "%s", reason)
	}
	switch sp.Engine {
	case "":
		sp.Engine = EngineNative
	case EngineNative, EngineWasm:
	default:
		ps.add(o, "spec.engine", "unknown engine %q (native or wasm)", sp.Engine)
	}
	if sp.Engine == EngineNative && sp.Key != KeyGlobal && checkRateLimitKey(sp.Key) == "" {
		ps.add(o, "spec.key", "engine native supports only key global (one bucket per sidecar); key %q needs per-key buckets, which only engine wasm has", sp.Key)
	}
	if sp.Module != nil {
		if sp.Engine != EngineWasm {
			ps.add(o, "spec.module", "only engine wasm runs a module (engine is %s)", sp.Engine)
		}
		if reason := checkModuleURL(sp.Module.URL); reason != "" {
			ps.add(o, "spec.module.url", "%s", reason)
		}
		if b, err := hex.DecodeString(sp.Module.SHA256); err != nil || len(b) != sha256.Size {
			ps.add(o, "spec.module.sha256", "%q is not a hex SHA-256 digest (64 hex digits)", sp.Module.SHA256)
		}
	}
	if sp.RequestsPerUnit == 0 || (sp.Unit != UnitSecond && sp.Unit != UnitMinute) {
		return
	}
	if sp.Burst == nil {
		b := sp.RequestsPerUnit
		sp.Burst = &b
	}
	perFill, interval := fill(sp.RequestsPerUnit, unitDuration(sp.Unit))
	if *sp.Burst < perFill {
		ps.add(o, "spec.burst", "%d is below the %d tokens added every %v (%d per %s refilled no more often than every %v); use at least %d",
			*sp.Burst, perFill, interval, sp.RequestsPerUnit, sp.Unit, minFillInterval, perFill)
	}
}

// checkRateLimitKey returns why key is not a rate limit key, or "".
func checkRateLimitKey(key string) string {
	switch key {
	case KeyGlobal, KeySourceIdentity, KeyPath:
		return ""
	}
	name, ok := strings.CutPrefix(key, KeyHeaderPrefix)
	if !ok {
		return fmt.Sprintf("unknown key %q (global, source-identity, path or header:NAME)", key)
	}
	if name == "" {
		return fmt.Sprintf("%q names no header (header:NAME)", key)
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || strings.ContainsRune("!#$%&'*+-.^_`|~", c)) {
			return fmt.Sprintf("%q: header name %q must be a lower-case HTTP token (no pseudo-headers)", key, name)
		}
	}
	return ""
}

// checkModuleURL returns why u is not an http://HOST:PORT/PATH URL, or "".
func checkModuleURL(u string) string {
	pu, err := url.Parse(u)
	if err != nil {
		return err.Error()
	}
	if pu.Scheme != "http" || pu.Host == "" || pu.User != nil {
		return fmt.Sprintf("%q: want http://HOST:PORT/PATH", u)
	}
	if _, p, err := net.SplitHostPort(pu.Host); err != nil || p == "" {
		return fmt.Sprintf("%q: the host needs an explicit port", u)
	} else if n, err := strconv.ParseUint(p, 10, 16); err != nil || n == 0 {
		return fmt.Sprintf("%q: port %q is not in 1..65535", u, p)
	}
	return ""
}
