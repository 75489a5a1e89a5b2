// Command guest is meshd's rate-limiting proxy-wasm filter, written against
// the proxy-wasm Go SDK v0.24.0 and built with the standard Go toolchain by
// internal/wasmbuild (go generate ./internal/wasmbuild → wasm/build/ratelimit.wasm).
//
// Token buckets are keyed by a descriptor chosen in the plugin configuration
// (see config) and kept in the host's shared data, updated with
// compare-and-swap, so every VM instance of the sidecar draws from the same
// bucket and the limit holds per sidecar. Buckets refill continuously with
// elapsed time, a pure function of the time stored with the count, so
// whoever touches a bucket next (a request of any VM) refills it first and
// nobody needs to refill it on a timer.
//
// Bounded keys: with key header:NAME or path the client chooses the
// descriptors, so a VM keeps at most max_keys buckets in memory (10 000 by
// default; Envoy bounds local_ratelimit's dynamic descriptors the same way
// with max_dynamic_descriptors). Beyond it, the least recently used bucket
// is forgotten, and the tick (every second) forgets buckets no request used
// since the previous tick and that are full by now: a full, idle bucket
// carries no information. Forgetting drops only this VM's view; the bucket
// itself lives on in shared data, so a key seen again reads its state back
// and refills it from its timestamp, and a key being hammered (the most
// recently used) is never admitted beyond its limit. Descriptors longer
// than maxDescriptorLen bytes are keyed by their sha256, so a bucket costs
// the VM a bounded number of bytes however long the header value is. The
// tick writes shared data only to give back expired leases; it does no
// work per idle bucket beyond the check.
//
// Shared data has no delete in proxy-wasm, so the buckets of forgotten keys
// stay there; the host bounds each vm_id's shared data (meshd's wasm host:
// wasm.MaxSharedKeys keys) and refuses to create keys beyond it. A bucket
// the host refuses to create draws from one overflow bucket per
// configuration instead, created at plugin start: keys beyond the host's
// bound share a limit rather than going unlimited, so a new key being
// hammered still gets at most the limit (together with every other
// overflowed key), never more.
//
// A request over the limit gets 429 (gRPC requests, content-type
// application/grpc*, get grpc-status 8 RESOURCE_EXHAUSTED) with
// x-ratelimit-limit, x-ratelimit-remaining and x-ratelimit-reset (seconds
// until the bucket is full again), so a client knows when to come back.
// With enable_x_ratelimit_headers DRAFT_VERSION_03 (OFF by default, as in
// Envoy's local_ratelimit) admitted responses carry them too; unlike
// Envoy's filter, OFF keeps them on the 429, which this filter's callers
// rely on. In dry-run mode nothing is rejected and no header is added;
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
// (requests without the configured descriptor, never limited),
// keys_evicted (buckets forgotten because max_keys was reached),
// keys_overflowed (buckets the host refused to create, drawing from the
// overflow bucket). Admissions
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

// maxDescriptorLen is the longest descriptor kept as is; a longer one is
// replaced by "sha256=" and its hex digest (71 bytes).
const maxDescriptorLen = 128

// overflowDesc names the overflow bucket; no descriptor can equal it (they
// all contain '=').
const overflowDesc = "overflow"

// grpcResourceExhausted is gRPC's RESOURCE_EXHAUSTED status code.
const grpcResourceExhausted = 8

type vmContext struct {
	types.DefaultVMContext
	now func() int64 // the clock, Unix ns; tests replace it
}

// NewPluginContext implements types.VMContext.
func (v *vmContext) NewPluginContext(uint32) types.PluginContext {
	return newPluginContext(v.now)
}

// newPluginContext returns a plugin context with no bucket yet.
func newPluginContext(now func() int64) *pluginContext {
	p := &pluginContext{now: now, seen: map[string]*lease{}, setShared: proxywasm.SetSharedData}
	p.lru.next, p.lru.prev = &p.lru, &p.lru
	return p
}

// lease is a VM's share of one shared bucket, and its place in the VM's
// memory of buckets.
type lease struct {
	desc string // the descriptor, its key in seen
	// key is the shared-data key of the bucket: prefix+desc, or the
	// overflow bucket's key once the host refused to create that.
	key string
	// tokens were taken from the bucket and not used yet; whole numbers.
	tokens float64
	// until is when unused tokens go back (Unix ns).
	until int64
	// shared is what the bucket held after the last take: with tokens,
	// the x-ratelimit-remaining value.
	shared float64
	// fullAt is when the bucket as last read by this VM is full again
	// (Unix ns).
	fullAt int64
	// touched is set when a request used the lease since the last tick.
	touched bool
	// prev and next link seen's recency list, most recent first.
	prev, next *lease
}

type pluginContext struct {
	types.DefaultPluginContext
	now func() int64
	// setShared is proxywasm.SetSharedData; tests make it refuse.
	setShared func(key string, value []byte, cas uint32) error
	cfg       settings
	prefix    string            // shared-data key prefix: identifies the configuration
	seen      map[string]*lease // buckets this VM remembers, by descriptor
	// lru is the sentinel of the recency list of the leases in seen.
	lru      lease
	global   *lease // the one bucket of key global
	overflow string // the overflow bucket's shared-data key (not global)
	limit    string // the x-ratelimit-limit value
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
	keysEvicted, keysOverflowed                    proxywasm.MetricCounter
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
	p.keysEvicted = proxywasm.DefineCounterMetric("wasm_ratelimit.keys_evicted")
	p.keysOverflowed = proxywasm.DefineCounterMetric("wasm_ratelimit.keys_overflowed")
	// VMs start one after another, so creating the global or the overflow
	// bucket here, only when absent, leaves no creation race at all for it.
	start := "global"
	if p.cfg.kind == keyGlobal {
		p.global = &lease{desc: "global", key: p.prefix + "global"}
	} else {
		start, p.overflow = overflowDesc, p.prefix+overflowDesc
	}
	if _, _, err := proxywasm.GetSharedData(p.prefix + start); errors.Is(err, types.ErrorStatusNotFound) {
		if err := p.setShared(p.prefix+start, p.cfg.full(p.now()).encodeTo(p.state[:]), 0); err != nil {
			proxywasm.LogCriticalf("ratelimit: create the %s bucket: %v", start, err)
			return types.OnPluginStartStatusFailed
		}
	}
	if err := proxywasm.SetTickPeriodMilliSeconds(uint32(tickPeriod / time.Millisecond)); err != nil {
		proxywasm.LogCriticalf("ratelimit: set tick period: %v", err)
		return types.OnPluginStartStatusFailed
	}
	return types.OnPluginStartStatusOK
}

// leaseOfBytes returns the lease of the bucket for desc (a reused buffer)
// and makes it the most recently used. A known descriptor costs a map
// lookup, which converts desc without allocating, and a move in the
// recency list; a new one is copied, and when the VM already remembers
// max_keys buckets the least recently used is forgotten first.
func (p *pluginContext) leaseOfBytes(desc []byte) *lease {
	l := p.seen[string(desc)]
	if l == nil {
		if len(p.seen) >= p.cfg.maxKeys {
			// Its tokens on lease, if any, are dropped: the bucket
			// under-admits by at most one lease, never over-admits.
			p.forget(p.lru.prev)
			p.keysEvicted.Increment(1)
		}
		d := string(desc)
		l = &lease{desc: d, key: p.prefix + d}
		p.seen[d] = l
	} else {
		if l.prev == &p.lru {
			return l
		}
		l.prev.next, l.next.prev = l.next, l.prev // unlink
	}
	l.prev, l.next = &p.lru, p.lru.next
	p.lru.next.prev = l
	p.lru.next = l
	return l
}

// forget drops l from the VM's memory; its bucket stays in shared data.
func (p *pluginContext) forget(l *lease) {
	l.prev.next, l.next.prev = l.next, l.prev
	l.prev, l.next = nil, nil
	delete(p.seen, l.desc)
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

// OnTick counts pending admissions, returns expired leases and forgets the
// buckets that no request used since the last tick and that are full by
// now. It writes shared data only for the leases it returns.
func (p *pluginContext) OnTick() {
	p.flushOK()
	now := p.now()
	if p.global != nil {
		p.giveBack(p.global, now)
	}
	for l := p.lru.next; l != &p.lru; {
		next := l.next
		p.giveBack(l, now)
		if l.tokens == 0 && !l.touched && now >= l.fullAt {
			p.forget(l)
		}
		l.touched = false
		l = next
	}
}

// giveBack returns the unused tokens of l's lease to its bucket once the
// lease has expired; on failure they stay on lease until the next tick.
func (p *pluginContext) giveBack(l *lease, now int64) {
	if l.tokens == 0 || now < l.until {
		return
	}
	back := l.tokens
	if _, _, res := p.update(l.key, now, func(b bucketState) (bucketState, bool) {
		b = p.cfg.refill(b, now)
		b.tokens = math.Min(p.cfg.capacity, b.tokens+back)
		return b, true
	}); res == stored {
		l.tokens = 0
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

// updateResult is how an update ended.
type updateResult int

const (
	stored  updateResult = iota // f's state was written
	failed                      // contended or failing shared data
	refused                     // the host refused to create the bucket
)

// update applies f to the bucket stored under key (a full bucket if none is
// stored yet) and writes the result with compare-and-swap, retrying on a CAS
// mismatch up to casAttempts times. It reports the stored state, f's
// verdict and how the write went.
func (p *pluginContext) update(key string, now int64, f func(bucketState) (bucketState, bool)) (bucketState, bool, updateResult) {
	for range casAttempts {
		raw, cas, err := proxywasm.GetSharedData(key)
		var b bucketState
		switch {
		case errors.Is(err, types.ErrorStatusNotFound):
			// The ABI has no create-if-absent: a write to a missing key
			// ignores the CAS. So create the bucket full, consuming
			// nothing, and take from it with CAS on the next round;
			// concurrent creators then all write the same full state.
			if err := p.setShared(key, p.cfg.full(now).encodeTo(p.state[:]), 0); err != nil {
				// Counted by the caller (keys_overflowed); an error log
				// per new key would flood while the host stays full.
				proxywasm.LogDebugf("ratelimit: create shared data %q: %v", key, err)
				return bucketState{}, true, refused
			}
			continue
		case err != nil:
			proxywasm.LogErrorf("ratelimit: get shared data %q: %v", key, err)
			return bucketState{}, true, failed
		default:
			if b, err = decodeBucket(raw); err != nil {
				proxywasm.LogErrorf("ratelimit: shared data %q: %v; resetting the bucket", key, err)
				b = p.cfg.full(now)
			}
		}
		nb, verdict := f(b)
		err = p.setShared(key, nb.encodeTo(p.state[:]), cas)
		if err == nil {
			return nb, verdict, stored
		}
		if !errors.Is(err, types.ErrorStatusCasMismatch) {
			proxywasm.LogErrorf("ratelimit: set shared data %q: %v", key, err)
			return bucketState{}, true, failed
		}
	}
	return bucketState{}, true, failed
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
	l.touched = true
	if l.tokens >= 1 {
		l.tokens--
		return admitted, bucketState{tokens: l.shared + l.tokens}, false
	}
	now := p.now()
	back := l.tokens // a fraction left by a tick's refill, if any
	var got float64
	f := func(b bucketState) (bucketState, bool) {
		b = p.cfg.refill(b, now)
		b.tokens = math.Min(p.cfg.capacity, b.tokens+back)
		if b.tokens < 1 {
			return b, false
		}
		got = math.Min(p.cfg.lease, math.Floor(b.tokens))
		b.tokens -= got
		return b, true
	}
	b, ok, res := p.update(l.key, now, f)
	if res == refused && p.overflow != "" && l.key != p.overflow {
		// The host's shared data is full: this key shares the overflow
		// bucket for as long as the VM remembers it.
		l.key = p.overflow
		p.keysOverflowed.Increment(1)
		b, ok, res = p.update(l.key, now, f)
	}
	if res != stored {
		// Contended or failing shared data: admit rather than reject
		// traffic the limiter cannot account for, and count it.
		p.casExhausted.Increment(1)
		return unlimited, bucketState{}, true
	}
	l.until, l.shared = now+int64(leaseWindow), b.tokens
	l.fullAt = now + min(p.cfg.untilFull(b), math.MaxInt64-now) // saturates: untilFull may be math.MaxInt64
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
	hdrs := [][2]string{
		{"x-ratelimit-limit", p.limit},
		{"x-ratelimit-remaining", strconv.FormatInt(int64(b.tokens), 10)},
		{"x-ratelimit-reset", strconv.FormatInt(p.cfg.resetSeconds(b), 10)},
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
	if len(k) > maxDescriptorLen {
		sum := sha256.Sum256(k)
		k = hex.AppendEncode(append(k[:0], "sha256="...), sum[:])
	}
	p.keyBuf = k // keep the grown buffer
	return k, true
}

// The property paths descriptor reads, built once.
var (
	principalPath = []string{"source", "principal"}
	addressPath   = []string{"source", "address"}
)
