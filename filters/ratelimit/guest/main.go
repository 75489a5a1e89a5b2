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
// A request over the limit gets 429; gRPC requests (content-type
// application/grpc*) get grpc-status 8 RESOURCE_EXHAUSTED. With
// enable_x_ratelimit_headers DRAFT_VERSION_03 (off by default, as in Envoy's
// local_ratelimit), the 429 and admitted responses carry x-ratelimit-limit,
// x-ratelimit-remaining and x-ratelimit-reset (seconds until the bucket is
// full again). In dry-run mode nothing is rejected and no header is added;
// over-limit requests are only counted.
//
// Leases: a VM takes up to lease tokens from a shared bucket in one
// compare-and-swap (the tokens the bucket earns in leaseWindow, at most 1/16
// of its capacity, at least 1) and admits requests from them without
// touching shared data or reading the clock until they run out; the first
// tick after leaseWindow returns what is left (a VM that runs out after
// leaseWindow returns nothing, and one that runs out earlier takes its next
// lease at once). At 100 requests per second a lease is one token, so every
// request still does its own round trip; at high rates most requests cost no
// host call. Tokens are conserved (a token on lease was taken from the
// bucket, so no request is admitted twice over); tokens on lease are
// invisible to other VMs for at most leaseWindow plus one tick period, which
// bounds the under-admission to VMs × lease tokens.
//
// Counters (Envoy's local_ratelimit names under wasm_ratelimit.): ok,
// rate_limited (over the limit, enforced or not), enforced (rejected),
// cas_exhausted (admitted because the bucket stayed contended), no_key
// (requests without the configured descriptor, never limited). Admissions
// from a lease are counted in ok in batches: when the VM next goes to
// shared data (a new lease), at the tick, or when the plugin ends, so ok
// lags by at most one lease's worth of requests and one tick period. The
// other counters move at once.
//
// The first request for a key creates its bucket with cas 0, which the host
// treats as an unconditional write: two VMs creating the same bucket at the
// same instant can each admit one request from a fresh bucket.
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"math"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"
)

// main is never called in a c-shared module; the VM context is set in init.
func main() {}

func init() { proxywasm.SetVMContext(&vmContext{now: hostNow}) }

// casAttempts bounds the compare-and-swap loop on one bucket.
const casAttempts = 16

// tickPeriod is how often a plugin context refills the buckets it has used
// and returns expired leases.
const tickPeriod = time.Second

// leaseWindow is how long a VM keeps the tokens it took from a shared
// bucket before the next tick gives back the unused ones (see the package
// comment).
const leaseWindow = 10 * time.Millisecond

// grpcResourceExhausted is gRPC's RESOURCE_EXHAUSTED status code.
const grpcResourceExhausted = 8

type vmContext struct {
	types.DefaultVMContext
	now func() int64 // the clock, Unix ns; tests replace it
}

// NewPluginContext implements types.VMContext.
func (v *vmContext) NewPluginContext(uint32) types.PluginContext {
	return &pluginContext{now: v.now, seen: map[string]*lease{}}
}

// lease is a VM's share of one shared bucket.
type lease struct {
	key string // shared-data key of the bucket
	// tokens were taken from the bucket and not used yet; whole numbers.
	tokens float64
	// until is when unused tokens go back (Unix ns).
	until int64
	// shared is what the bucket held after the last take: with tokens,
	// the x-ratelimit-remaining value.
	shared float64
}

type pluginContext struct {
	types.DefaultPluginContext
	now    func() int64
	cfg    settings
	prefix string            // shared-data key prefix: identifies the configuration
	seen   map[string]*lease // buckets this VM has used, by descriptor
	global *lease            // the one bucket of key global
	limit  string            // the x-ratelimit-limit value
	// state is the buffer bucket states are encoded into before a write
	// (the host copies it), so a request allocates none.
	state [bucketStateSize]byte
	// num holds a header value while the host copies it (see setHeader).
	num [20]byte
	// plain is the HTTP context of every stream when no header is added:
	// it holds no per-stream state, so streams share it.
	plain *httpContext
	// slab holds the next headersHttpContexts to hand out (see
	// NewHttpContext).
	slab []headersHttpContext
	// keyBuf is where a request's descriptor is built before it is looked
	// up in seen, so a known descriptor allocates no string.
	keyBuf []byte
	// pendingOK are admissions not yet added to the ok counter.
	pendingOK int64

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
	p.limit = strconv.FormatInt(p.cfg.rpu, 10)
	p.plain = &httpContext{plugin: p}
	p.ok = proxywasm.DefineCounterMetric("wasm_ratelimit.ok")
	p.rateLimited = proxywasm.DefineCounterMetric("wasm_ratelimit.rate_limited")
	p.enforced = proxywasm.DefineCounterMetric("wasm_ratelimit.enforced")
	p.casExhausted = proxywasm.DefineCounterMetric("wasm_ratelimit.cas_exhausted")
	p.noKey = proxywasm.DefineCounterMetric("wasm_ratelimit.no_key")
	if p.cfg.kind == keyGlobal {
		p.global = p.leaseOf("global")
		// VMs start one after another, so creating the one bucket here,
		// only when absent, leaves no creation race at all for it.
		if _, _, err := proxywasm.GetSharedData(p.global.key); errors.Is(err, types.ErrorStatusNotFound) {
			if err := proxywasm.SetSharedData(p.global.key, p.cfg.full(p.now()).encodeTo(p.state[:]), 0); err != nil {
				proxywasm.LogCriticalf("ratelimit: create the global bucket: %v", err)
				return types.OnPluginStartStatusFailed
			}
		}
	}
	if err := proxywasm.SetTickPeriodMilliSeconds(uint32(tickPeriod / time.Millisecond)); err != nil {
		proxywasm.LogCriticalf("ratelimit: set tick period: %v", err)
		return types.OnPluginStartStatusFailed
	}
	return types.OnPluginStartStatusOK
}

// leaseOf returns the lease of the bucket for desc, creating it empty.
func (p *pluginContext) leaseOf(desc string) *lease {
	l := p.seen[desc]
	if l == nil {
		l = &lease{key: p.prefix + desc}
		p.seen[desc] = l
	}
	return l
}

// leaseOfBytes is leaseOf for a descriptor in a reused buffer: the map
// lookup converts it without allocating; only a new bucket copies it.
func (p *pluginContext) leaseOfBytes(desc []byte) *lease {
	if l := p.seen[string(desc)]; l != nil {
		return l
	}
	return p.leaseOf(string(desc))
}

// flushOK adds the admissions counted since the last flush to ok.
func (p *pluginContext) flushOK() {
	if p.pendingOK > 0 {
		p.ok.Increment(uint64(p.pendingOK))
		p.pendingOK = 0
	}
}

// OnPluginDone counts the admissions still pending before the plugin ends.
func (p *pluginContext) OnPluginDone() bool {
	p.flushOK()
	return true
}

// OnTick refills the buckets this VM has used, returns expired leases and
// counts pending admissions.
func (p *pluginContext) OnTick() {
	p.flushOK()
	now := p.now()
	for _, l := range p.seen {
		back := 0.0
		if now >= l.until {
			back = l.tokens
		}
		if _, _, ok := p.update(l.key, now, func(b bucketState) (bucketState, bool) {
			b = p.cfg.refill(b, now)
			b.tokens = math.Min(p.cfg.capacity, b.tokens+back)
			return b, true
		}); ok {
			l.tokens -= back
		}
	}
}

// slabSize is how many headersHttpContexts one allocation makes.
const slabSize = 64

// NewHttpContext implements types.PluginContext. With headers, each stream
// needs its own context; they are carved out of slabs of slabSize, so
// streams pay one allocation per slabSize (an allocation costs hundreds of
// ns in a Go wasm guest) and a slab is freed once all its streams are gone.
func (p *pluginContext) NewHttpContext(uint32) types.HttpContext {
	if !p.cfg.headers || p.cfg.dryRun {
		return p.plain
	}
	if len(p.slab) == 0 {
		p.slab = make([]headersHttpContext, slabSize)
	}
	h := &p.slab[0]
	p.slab = p.slab[1:]
	h.plugin = p
	return h
}

// update applies f to the bucket stored under key (a full bucket if none is
// stored yet) and writes the result with compare-and-swap, retrying on a CAS
// mismatch up to casAttempts times. It reports the stored state and f's
// verdict, and whether the write succeeded.
func (p *pluginContext) update(key string, now int64, f func(bucketState) (bucketState, bool)) (bucketState, bool, bool) {
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

// verdict is the outcome of one request.
type verdict int

const (
	admitted  verdict = iota // took a token
	unlimited                // not accounted (no descriptor, bucket unavailable)
	overLimit                // no token: rejected unless dry run
	rejected                 // no token, 429 sent
)

// take decides one request: a token from l's lease, else a new lease. It
// returns the verdict, the bucket as the x-ratelimit-* headers report it,
// and whether it went to shared data. A token from the lease costs no host
// call, not even the clock's: the tick expires leases.
func (p *pluginContext) take(l *lease) (verdict, bucketState, bool) {
	if l.tokens >= 1 {
		l.tokens--
		return admitted, bucketState{tokens: l.shared + l.tokens}, false
	}
	now := p.now()
	back := l.tokens // a fraction left by a tick's refill, if any
	var got float64
	b, ok, stored := p.update(l.key, now, func(b bucketState) (bucketState, bool) {
		b = p.cfg.refill(b, now)
		b.tokens = math.Min(p.cfg.capacity, b.tokens+back)
		if b.tokens < 1 {
			return b, false
		}
		got = math.Min(p.cfg.lease, math.Floor(b.tokens))
		b.tokens -= got
		return b, true
	})
	if !stored {
		// Contended or failing shared data: admit rather than reject
		// traffic the limiter cannot account for, and count it.
		p.casExhausted.Increment(1)
		return unlimited, bucketState{}, true
	}
	l.until, l.shared = now+int64(leaseWindow), b.tokens
	if !ok {
		l.tokens = 0
		return overLimit, b, true
	}
	l.tokens = got - 1
	return admitted, bucketState{tokens: b.tokens + l.tokens}, true
}

// decide runs the limiter for the request whose headers are current: it
// counts, sends the 429 when enforcing, and returns the verdict with the
// bucket the headers report.
func (p *pluginContext) decide() (verdict, bucketState) {
	l := p.global
	if l == nil {
		desc, ok := p.descriptor()
		if !ok {
			p.noKey.Increment(1)
			return unlimited, bucketState{}
		}
		l = p.leaseOfBytes(desc)
	}
	v, b, shared := p.take(l)
	switch v {
	case admitted, unlimited:
		// A request served from the lease makes no host call for its
		// count; one that went to shared data flushes the batch.
		if p.pendingOK++; shared {
			p.flushOK()
		}
		return v, b
	}
	p.rateLimited.Increment(1)
	if p.cfg.dryRun {
		return overLimit, b
	}
	p.enforced.Increment(1)
	grpcStatus := int32(-1)
	if ct, err := proxywasm.GetHttpRequestHeader("content-type"); err == nil && strings.HasPrefix(ct, "application/grpc") {
		grpcStatus = grpcResourceExhausted
	}
	var hdrs [][2]string
	if p.cfg.headers {
		hdrs = [][2]string{
			{"x-ratelimit-limit", p.limit},
			{"x-ratelimit-remaining", strconv.FormatInt(int64(b.tokens), 10)},
			{"x-ratelimit-reset", strconv.FormatInt(p.cfg.resetSeconds(b), 10)},
		}
	}
	if err := proxywasm.SendHttpResponse(429, hdrs, []byte("local_rate_limited"), grpcStatus); err != nil {
		proxywasm.LogErrorf("ratelimit: send 429: %v", err)
		return unlimited, b
	}
	return rejected, b
}

// setHeader sets a response header to the decimal v, formatted into p.num
// and passed without a copy (see hostString).
func (p *pluginContext) setHeader(name string, v int64) {
	num := strconv.AppendInt(p.num[:0], v, 10)
	if err := proxywasm.ReplaceHttpResponseHeader(name, hostString(num)); err != nil {
		proxywasm.LogErrorf("ratelimit: set %s: %v", name, err)
	}
}

// httpContext limits a stream and adds no header; one serves every stream.
type httpContext struct {
	types.DefaultHttpContext
	plugin *pluginContext
}

// OnHttpRequestHeaders takes a token from the request's bucket or rejects it.
func (h *httpContext) OnHttpRequestHeaders(int, bool) types.Action {
	if v, _ := h.plugin.decide(); v == rejected {
		return types.ActionPause
	}
	return types.ActionContinue
}

// headersHttpContext limits a stream and adds the x-ratelimit-* headers to
// its response when admitted (enable_x_ratelimit_headers DRAFT_VERSION_03).
type headersHttpContext struct {
	types.DefaultHttpContext
	plugin *pluginContext
	// add is set when the request took a token; remaining and reset are
	// the header values, formatted only when the response comes.
	add              bool
	remaining, reset int64
}

// OnHttpRequestHeaders takes a token from the request's bucket or rejects it.
func (h *headersHttpContext) OnHttpRequestHeaders(int, bool) types.Action {
	v, b := h.plugin.decide()
	switch v {
	case rejected:
		return types.ActionPause
	case admitted:
		h.add, h.remaining, h.reset = true, int64(b.tokens), h.plugin.cfg.resetSeconds(b)
	}
	return types.ActionContinue
}

// OnHttpResponseHeaders adds the x-ratelimit-* headers to admitted responses.
func (h *headersHttpContext) OnHttpResponseHeaders(int, bool) types.Action {
	if !h.add {
		return types.ActionContinue
	}
	p := h.plugin
	if err := proxywasm.ReplaceHttpResponseHeader("x-ratelimit-limit", p.limit); err != nil {
		proxywasm.LogErrorf("ratelimit: set x-ratelimit-limit: %v", err)
	}
	p.setHeader("x-ratelimit-remaining", h.remaining)
	p.setHeader("x-ratelimit-reset", h.reset)
	return types.ActionContinue
}

// descriptor returns the current request's bucket name, built in p.keyBuf
// (valid until the next call), or false when the request lacks the
// configured descriptor (no such header, no peer identity or address), in
// which case it is not limited.
func (p *pluginContext) descriptor() ([]byte, bool) {
	k := p.keyBuf[:0]
	switch cfg := &p.cfg; cfg.kind {
	case keyPath:
		path, err := proxywasm.GetHttpRequestHeader(":path")
		if err != nil {
			return nil, false
		}
		path, _, _ = strings.Cut(path, "?")
		k = append(append(k, "path="...), path...)
	case keyHeader:
		v, err := proxywasm.GetHttpRequestHeader(cfg.header)
		if err != nil {
			return nil, false
		}
		k = append(append(append(append(k, "header="...), cfg.header...), '='), v...)
	case keySourceIdentity:
		// The peer's SPIFFE ID under mTLS; without one, the peer's IP.
		if id, err := proxywasm.GetProperty(principalPath); err == nil && len(id) > 0 {
			k = append(append(k, "principal="...), id...)
			break
		}
		addr, err := proxywasm.GetProperty(addressPath)
		if err != nil || len(addr) == 0 {
			return nil, false
		}
		host, _, err := net.SplitHostPort(string(addr))
		if err != nil {
			host = string(addr)
		}
		k = append(append(k, "address="...), host...)
	default:
		k = append(k, "global"...)
	}
	p.keyBuf = k // keep the grown buffer
	return k, true
}

// The property paths descriptor reads, built once.
var (
	principalPath = []string{"source", "principal"}
	addressPath   = []string{"source", "address"}
)
