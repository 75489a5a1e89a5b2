// Command guest is meshd's rate-limiting proxy-wasm filter, written against
// the proxy-wasm Go SDK v0.24.0 and built with the standard Go toolchain by
// internal/wasmbuild (go generate ./internal/wasmbuild → wasm/build/ratelimit.wasm).
//
// Token buckets are keyed by a descriptor chosen in the plugin configuration
// (see config) and kept in the host's shared data, updated with
// compare-and-swap, so every VM instance of the sidecar draws from the same
// bucket and the limit holds per sidecar. Buckets refill continuously with
// elapsed time; each request refills its bucket before taking a token, and a
// tick (every second) refills the buckets this VM has used, keeping their
// remaining counts current for all instances.
//
// A request over the limit gets 429 with x-ratelimit-limit, x-ratelimit-remaining
// and x-ratelimit-reset (seconds until the bucket is full again); gRPC requests
// (content-type application/grpc*) get grpc-status 8 RESOURCE_EXHAUSTED.
// Admitted responses carry the same three headers. In dry-run mode nothing is
// rejected and no header is added; over-limit requests are only counted.
//
// Counters (Envoy's local_ratelimit names under wasm_ratelimit.): ok,
// rate_limited (over the limit, enforced or not), enforced (rejected),
// cas_exhausted (admitted because the bucket stayed contended), no_key
// (requests without the configured descriptor, never limited).
//
// The first request for a key creates its bucket with cas 0, which the host
// treats as an unconditional write: two VMs creating the same bucket at the
// same instant can each admit one request from a fresh bucket.
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"
)

// main is never called in a c-shared module; the VM context is set in init.
func main() {}

func init() { proxywasm.SetVMContext(&vmContext{now: time.Now}) }

// casAttempts bounds the compare-and-swap loop on one bucket.
const casAttempts = 16

// tickPeriod is how often a plugin context refills the buckets it has used.
const tickPeriod = time.Second

// grpcResourceExhausted is gRPC's RESOURCE_EXHAUSTED status code.
const grpcResourceExhausted = 8

type vmContext struct {
	types.DefaultVMContext
	now func() time.Time // the clock; tests replace it
}

// NewPluginContext implements types.VMContext.
func (v *vmContext) NewPluginContext(uint32) types.PluginContext {
	return &pluginContext{now: v.now, seen: map[string]bool{}}
}

type pluginContext struct {
	types.DefaultPluginContext
	now    func() time.Time
	cfg    settings
	prefix string          // shared-data key prefix: identifies the configuration
	seen   map[string]bool // shared-data keys this VM has used, refilled on tick
	// globalKey is prefix+"global", built once; limit the
	// x-ratelimit-limit value.
	globalKey, limit string
	// state is the buffer bucket states are encoded into before a write
	// (the host copies it), so a request allocates none.
	state [bucketStateSize]byte

	ok, rateLimited, enforced, casExhausted, noKey proxywasm.MetricCounter
}

// OnPluginStart validates the configuration, defines the counters and starts
// the tick. A bad configuration fails the plugin start, naming the field.
func (p *pluginContext) OnPluginStart(int) types.OnPluginStartStatus {
	data, err := proxywasm.GetPluginConfiguration()
	if err != nil && !errors.Is(err, types.ErrorStatusNotFound) {
		proxywasm.LogCriticalf("ratelimit: read plugin configuration: %v", err)
		return types.OnPluginStartStatusFailed
	}
	p.cfg, err = parseConfig(data)
	if err != nil {
		proxywasm.LogCriticalf("ratelimit: %v", err)
		return types.OnPluginStartStatusFailed
	}
	// Buckets of different configurations sharing a VM group never mix.
	sum := sha256.Sum256(data)
	p.prefix = "meshd.ratelimit/" + hex.EncodeToString(sum[:8]) + "/"
	p.globalKey = p.prefix + "global"
	p.limit = strconv.FormatInt(p.cfg.rpu, 10)
	p.ok = proxywasm.DefineCounterMetric("wasm_ratelimit.ok")
	p.rateLimited = proxywasm.DefineCounterMetric("wasm_ratelimit.rate_limited")
	p.enforced = proxywasm.DefineCounterMetric("wasm_ratelimit.enforced")
	p.casExhausted = proxywasm.DefineCounterMetric("wasm_ratelimit.cas_exhausted")
	p.noKey = proxywasm.DefineCounterMetric("wasm_ratelimit.no_key")
	if p.cfg.kind == keyGlobal {
		// VMs start one after another, so creating the one bucket here,
		// only when absent, leaves no creation race at all for it.
		key := p.globalKey
		if _, _, err := proxywasm.GetSharedData(key); errors.Is(err, types.ErrorStatusNotFound) {
			if err := proxywasm.SetSharedData(key, p.cfg.full(p.now()).encodeTo(p.state[:]), 0); err != nil {
				proxywasm.LogCriticalf("ratelimit: create the global bucket: %v", err)
				return types.OnPluginStartStatusFailed
			}
		}
		p.seen[key] = true
	}
	if err := proxywasm.SetTickPeriodMilliSeconds(uint32(tickPeriod / time.Millisecond)); err != nil {
		proxywasm.LogCriticalf("ratelimit: set tick period: %v", err)
		return types.OnPluginStartStatusFailed
	}
	return types.OnPluginStartStatusOK
}

// OnTick refills the buckets this VM has used.
func (p *pluginContext) OnTick() {
	now := p.now()
	for key := range p.seen {
		p.update(key, now, func(b bucketState) (bucketState, bool) { return p.cfg.refill(b, now), true })
	}
}

// NewHttpContext implements types.PluginContext.
func (p *pluginContext) NewHttpContext(uint32) types.HttpContext {
	return &httpContext{plugin: p}
}

// update applies f to the bucket stored under key (a full bucket if none is
// stored yet) and writes the result with compare-and-swap, retrying on a CAS
// mismatch up to casAttempts times. It reports the stored state and f's
// verdict, and whether the write succeeded.
func (p *pluginContext) update(key string, now time.Time, f func(bucketState) (bucketState, bool)) (bucketState, bool, bool) {
	for range casAttempts {
		raw, cas, err := proxywasm.GetSharedData(key)
		var b bucketState
		switch {
		case errors.Is(err, types.ErrorStatusNotFound):
			// The ABI has no create-if-absent: a write to a missing key
			// ignores the CAS. So create the bucket full, consuming
			// nothing, and take from it with CAS on the next round;
			// concurrent creators then all write the same full state.
			if err := proxywasm.SetSharedData(key, p.cfg.full(now).encodeTo(p.state[:]), 0); err != nil {
				proxywasm.LogErrorf("ratelimit: create shared data %q: %v", key, err)
				return bucketState{}, true, false
			}
			continue
		case err != nil:
			proxywasm.LogErrorf("ratelimit: get shared data %q: %v", key, err)
			return bucketState{}, true, false
		default:
			if b, err = decodeBucket(raw); err != nil {
				proxywasm.LogErrorf("ratelimit: shared data %q: %v; resetting the bucket", key, err)
				b = p.cfg.full(now)
			}
		}
		nb, verdict := f(b)
		err = proxywasm.SetSharedData(key, nb.encodeTo(p.state[:]), cas)
		if err == nil {
			return nb, verdict, true
		}
		if !errors.Is(err, types.ErrorStatusCasMismatch) {
			proxywasm.LogErrorf("ratelimit: set shared data %q: %v", key, err)
			return bucketState{}, true, false
		}
	}
	return bucketState{}, true, false
}

type httpContext struct {
	types.DefaultHttpContext
	plugin *pluginContext
	// addHeaders is set when an admitted response gets the x-ratelimit-*
	// headers (not in dry run, without a key or with the bucket
	// unavailable); remaining and reset are their values. Numbers, not the
	// header list: formatting waits for the response, so an admitted
	// request allocates nothing here.
	addHeaders       bool
	remaining, reset int64
}

// OnHttpRequestHeaders takes a token from the request's bucket or rejects it.
func (h *httpContext) OnHttpRequestHeaders(int, bool) types.Action {
	p := h.plugin
	desc, ok := h.descriptor()
	if !ok {
		p.noKey.Increment(1)
		return types.ActionContinue
	}
	key := p.globalKey
	if desc != "global" {
		key = p.prefix + desc
	}
	if !p.seen[key] {
		p.seen[key] = true
	}
	now := p.now()
	b, allowed, stored := p.update(key, now, func(b bucketState) (bucketState, bool) {
		return p.cfg.take(b, now)
	})
	if !stored {
		// Contended or failing shared data: admit rather than reject traffic
		// the limiter cannot account for, and count it.
		p.casExhausted.Increment(1)
		p.ok.Increment(1)
		return types.ActionContinue
	}
	remaining, reset := int64(b.tokens), p.cfg.resetSeconds(b)
	if allowed {
		p.ok.Increment(1)
		if !p.cfg.dryRun {
			h.addHeaders, h.remaining, h.reset = true, remaining, reset
		}
		return types.ActionContinue
	}
	p.rateLimited.Increment(1)
	if p.cfg.dryRun {
		return types.ActionContinue
	}
	p.enforced.Increment(1)
	grpcStatus := int32(-1)
	if ct, err := proxywasm.GetHttpRequestHeader("content-type"); err == nil && strings.HasPrefix(ct, "application/grpc") {
		grpcStatus = grpcResourceExhausted
	}
	hdrs := [][2]string{
		{"x-ratelimit-limit", p.limit},
		{"x-ratelimit-remaining", strconv.FormatInt(remaining, 10)},
		{"x-ratelimit-reset", strconv.FormatInt(reset, 10)},
	}
	if err := proxywasm.SendHttpResponse(429, hdrs, []byte("local_rate_limited"), grpcStatus); err != nil {
		proxywasm.LogErrorf("ratelimit: send 429: %v", err)
		return types.ActionContinue
	}
	return types.ActionPause
}

// OnHttpResponseHeaders adds the x-ratelimit-* headers to admitted responses.
func (h *httpContext) OnHttpResponseHeaders(int, bool) types.Action {
	if !h.addHeaders {
		return types.ActionContinue
	}
	for _, kv := range [...][2]string{
		{"x-ratelimit-limit", h.plugin.limit},
		{"x-ratelimit-remaining", strconv.FormatInt(h.remaining, 10)},
		{"x-ratelimit-reset", strconv.FormatInt(h.reset, 10)},
	} {
		if err := proxywasm.ReplaceHttpResponseHeader(kv[0], kv[1]); err != nil {
			proxywasm.LogErrorf("ratelimit: set %s: %v", kv[0], err)
		}
	}
	return types.ActionContinue
}

// descriptor returns the request's bucket name, or false when the request
// lacks the configured descriptor (no such header, no peer identity or
// address), in which case it is not limited.
func (h *httpContext) descriptor() (string, bool) {
	switch cfg := h.plugin.cfg; cfg.kind {
	case keyPath:
		path, err := proxywasm.GetHttpRequestHeader(":path")
		if err != nil {
			return "", false
		}
		path, _, _ = strings.Cut(path, "?")
		return "path=" + path, true
	case keyHeader:
		v, err := proxywasm.GetHttpRequestHeader(cfg.header)
		if err != nil {
			return "", false
		}
		return "header=" + cfg.header + "=" + v, true
	case keySourceIdentity:
		// The peer's SPIFFE ID under mTLS; without one, the peer's IP.
		if id, err := proxywasm.GetProperty([]string{"source", "principal"}); err == nil && len(id) > 0 {
			return "principal=" + string(id), true
		}
		addr, err := proxywasm.GetProperty([]string{"source", "address"})
		if err != nil || len(addr) == 0 {
			return "", false
		}
		host, _, err := net.SplitHostPort(string(addr))
		if err != nil {
			host = string(addr)
		}
		return "address=" + host, true
	default:
		return "global", true
	}
}
