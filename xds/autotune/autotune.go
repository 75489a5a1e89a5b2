// Package autotune is the control plane's closed loop: it takes the
// observations sidecars report over Envoy's load reporting service
// (envoy.service.load_stats.v3, with meshd's fields in each
// UpstreamEndpointStats.metadata, see xds/observe), derives settings for
// every Service whose effective policy has autoTune, and publishes a new
// translation of the current mesh with the learned values laid over the
// policy (translate.Options.Tuning). The mesh file is never rewritten: the
// learned values are an input to translation, held in memory.
//
// Rules (docs/RATIONALE.md, "Why closed-loop tuning learns this way"):
//
//   - keepalive: a GOAWAY ENHANCE_YOUR_CALM too_many_pings at interval I
//     proves the peer's minimum is above I; the first interval not refused
//     is 2 × I (what the sidecar's own backoff moves to), and the pushed
//     interval keeps a factor-2 margin above it: 4 × the largest refused
//     interval, and at least 3 × timeout + 2 × the largest PING RTT of the
//     last RTTWindow, never below the policy's own interval, capped by
//     autoTune.maxKeepaliveInterval. It only grows.
//   - connectionPool: need = Σ over endpoints ceil(peak demand / peer
//     SETTINGS_MAX_CONCURRENT_STREAMS) (the largest over sidecars), doubled
//     at least when a report shows overflow (the demand seen was cut by
//     the pool); maxConnections = need + max(1, need/4), capped by
//     autoTune.maxConnections. It rises at once; it falls only when every
//     report of the last ShrinkAfter asks for less, and then to the
//     largest of them (hysteresis against flapping).
//   - windows: bandwidth × RTT of the busiest connection; while that
//     product reaches 2/3 of the stream window the window is the limit,
//     so it grows to 4 × the product (rounded up to a power of two), the
//     connection window to twice that, both capped by
//     autoTune.windowMemoryBudget. It only grows.
//
// Every change is logged with its reason and kept for /status.
package autotune

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/bits"
	"net"
	"strconv"
	"sync"
	"time"

	lrsv3 "github.com/envoyproxy/go-control-plane/envoy/service/load_stats/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	"meshd.dev/meshd/xds/model"
	"meshd.dev/meshd/xds/observe"
	"meshd.dev/meshd/xds/server"
	"meshd.dev/meshd/xds/translate"
)

// Defaults of Options and of the autoTune bounds.
const (
	DefaultReportInterval       = time.Second
	DefaultRTTWindow            = 30 * time.Second
	DefaultShrinkAfter          = 30 * time.Second
	DefaultMaxKeepaliveInterval = 5 * time.Minute
	DefaultMaxConnections       = 64
	DefaultWindowMemoryBudget   = 16 << 20
	// maxChanges is how many changes /status keeps.
	maxChanges = 100
)

// Sink receives the translations the tuner publishes: the xDS server
// (and the shape of source.Sink, so a Tuner stands between a mesh watcher
// and the server).
type Sink interface {
	Publish(res *translate.Result, warnings []model.Warning) error
	RecordError(err error)
}

// Options configure a Tuner.
type Options struct {
	// Sink is where translations go; required.
	Sink Sink
	// Logger receives every change with its reason; nil discards.
	Logger *slog.Logger
	// ReportInterval is the load_reporting_interval asked of sidecars
	// (default DefaultReportInterval).
	ReportInterval time.Duration
	// RTTWindow is how far back the RTT used by the keepalive rule looks
	// (default DefaultRTTWindow).
	RTTWindow time.Duration
	// ShrinkAfter is how long every report must ask for fewer connections
	// before maxConnections falls (default DefaultShrinkAfter).
	ShrinkAfter time.Duration
	// Now is the clock; nil is time.Now.
	Now func() time.Time
	// Translate is the translation options the mesh watcher uses; the
	// tuner adds its learned values (Tuning) when it re-translates.
	Translate translate.Options
}

// Tuner learns settings from load reports and publishes them. It is the
// mesh watcher's Sink (Publish) and Adjust hook, and the LRS server. All
// methods are safe for concurrent use.
type Tuner struct {
	lrsv3.UnimplementedLoadReportingServiceServer

	sink                             Sink
	log                              *slog.Logger
	interval, rttWindow, shrinkAfter time.Duration
	now                              func() time.Time
	topts                            translate.Options // immutable; Tuning unset

	mu       sync.Mutex
	pending  *model.Mesh // parsed, not yet published (Adjust)
	mesh     *model.Mesh // last published
	warnings []model.Warning
	clusters map[string]*model.Service // outbound cluster name -> Service
	services map[string]*svcState      // by Service key
	tuning   translate.Tuning
	changes  []server.TuningChange
}

// svcState is what was learned about one Service's endpoints.
type svcState struct {
	// last observation per reporting node and endpoint address.
	last map[string]map[string]observe.Endpoint
	// refusedPing is the largest keepalive interval that met
	// too_many_pings.
	refusedPing time.Duration
	rtts        []sample // PING RTTs, oldest first, within RTTWindow
	// lowSince is when reports began to ask for fewer connections than
	// pushed (zero: the last one did not); lowPeak the most they asked.
	lowSince time.Time
	lowPeak  uint32
}

type sample struct {
	at time.Time
	v  float64
}

// New returns a Tuner publishing to opts.Sink.
func New(opts Options) (*Tuner, error) {
	if opts.Sink == nil {
		return nil, errors.New("autotune: Options.Sink is required")
	}
	t := &Tuner{
		sink:        opts.Sink,
		log:         opts.Logger,
		interval:    opts.ReportInterval,
		rttWindow:   opts.RTTWindow,
		shrinkAfter: opts.ShrinkAfter,
		now:         opts.Now,
		topts:       opts.Translate,
		services:    map[string]*svcState{},
		tuning:      translate.Tuning{},
	}
	if t.log == nil {
		t.log = slog.New(slog.DiscardHandler)
	}
	if t.interval <= 0 {
		t.interval = DefaultReportInterval
	}
	if t.rttWindow <= 0 {
		t.rttWindow = DefaultRTTWindow
	}
	if t.shrinkAfter <= 0 {
		t.shrinkAfter = DefaultShrinkAfter
	}
	if t.now == nil {
		t.now = time.Now
	}
	return t, nil
}

// Register registers the load reporting service on g.
func (t *Tuner) Register(g grpc.ServiceRegistrar) {
	lrsv3.RegisterLoadReportingServiceServer(g, t)
}

// Adjust records m as the mesh about to be published (source.FileOptions.
// Adjust); it never fails.
func (t *Tuner) Adjust(m *model.Mesh) error {
	t.mu.Lock()
	t.pending = m
	t.mu.Unlock()
	return nil
}

// Publish is the watcher's Sink: it makes the mesh recorded by Adjust
// current and publishes its translation, re-translated with the learned
// values when any apply. Learned values of Services that left the mesh or
// lost autoTune are dropped.
func (t *Tuner) Publish(res *translate.Result, warnings []model.Warning) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.pending != nil {
		t.setMeshLocked(t.pending)
		t.pending = nil
	}
	t.warnings = warnings
	if len(t.tuning) == 0 || t.mesh == nil {
		return t.sink.Publish(res, warnings)
	}
	return t.publishLocked()
}

// RecordError forwards a rejected mesh to the sink; the mesh Adjust saw
// does not become current.
func (t *Tuner) RecordError(err error) {
	t.mu.Lock()
	t.pending = nil
	t.mu.Unlock()
	t.sink.RecordError(err)
}

// setMeshLocked indexes m's outbound clusters and forgets Services that
// no longer tune.
func (t *Tuner) setMeshLocked(m *model.Mesh) {
	t.mesh = m
	t.clusters = map[string]*model.Service{}
	keep := map[string]bool{}
	for _, s := range m.Services {
		if p := m.EffectivePolicy(s); p.AutoTune != nil {
			t.clusters[translate.OutboundClusterName(s)] = s
			keep[s.Key()] = true
		}
	}
	for k := range t.tuning {
		if !keep[k] {
			delete(t.tuning, k)
		}
	}
	for k := range t.services {
		if !keep[k] {
			delete(t.services, k)
		}
	}
}

func (t *Tuner) publishLocked() error {
	opts := t.topts
	opts.Tuning = t.tuning
	res, err := translate.TranslateWith(t.mesh, opts)
	if err != nil {
		return fmt.Errorf("autotune: translating with learned values: %w", err)
	}
	return t.sink.Publish(res, t.warnings)
}

// Tuning returns a copy of the learned values by Service key.
func (t *Tuner) Tuning() translate.Tuning {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(translate.Tuning, len(t.tuning))
	for k, v := range t.tuning {
		out[k] = v
	}
	return out
}

// Changes returns the automatic changes made, oldest first (the last 100).
func (t *Tuner) Changes() []server.TuningChange {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]server.TuningChange(nil), t.changes...)
}

// StreamLoadStats serves one sidecar's LRS stream: it asks for every
// cluster at ReportInterval and learns from each report.
func (t *Tuner) StreamLoadStats(s lrsv3.LoadReportingService_StreamLoadStatsServer) error {
	first, err := s.Recv()
	if err != nil {
		return err
	}
	node := first.GetNode().GetId()
	if node == "" {
		return errors.New("autotune: load report stream: the first request has no node.id")
	}
	if err := s.Send(&lrsv3.LoadStatsResponse{SendAllClusters: true, LoadReportingInterval: durationpb.New(t.interval)}); err != nil {
		return err
	}
	t.Report(node, first)
	for {
		req, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		t.Report(node, req)
	}
}

// Report learns from one load report of node and publishes when a learned
// value changed. Clusters of Services without autoTune and endpoints
// without a meshd observation are ignored; a malformed observation is
// logged and skipped.
func (t *Tuner) Report(node string, req *lrsv3.LoadStatsRequest) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.mesh == nil {
		return
	}
	now := t.now()
	touched := map[string]*model.Service{}
	for _, cs := range req.GetClusterStats() {
		svc := t.clusters[cs.GetClusterName()]
		if svc == nil {
			continue
		}
		st := t.services[svc.Key()]
		if st == nil {
			st = &svcState{last: map[string]map[string]observe.Endpoint{}}
			t.services[svc.Key()] = st
		}
		eps := map[string]observe.Endpoint{}
		for _, ls := range cs.GetUpstreamLocalityStats() {
			for _, es := range ls.GetUpstreamEndpointStats() {
				v := es.GetMetadata().GetFields()[observe.MetadataKey]
				if v == nil {
					continue
				}
				o, err := observe.Parse(v.GetStructValue())
				if err != nil {
					t.log.Warn("autotune: ignoring an observation", "node", node, "cluster", cs.GetClusterName(), "err", err)
					continue
				}
				sa := es.GetAddress().GetSocketAddress()
				eps[net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))] = o
			}
		}
		st.last[node] = eps
		touched[svc.Key()] = svc
	}
	changed := false
	for _, svc := range touched {
		if t.deriveLocked(svc, now) {
			changed = true
		}
	}
	if changed {
		if err := t.publishLocked(); err != nil {
			t.log.Error("autotune: publishing learned values failed; the last good config keeps serving", "err", err)
		}
	}
}

// deriveLocked applies the rules to svc's latest reports and reports
// whether a learned value changed.
func (t *Tuner) deriveLocked(svc *model.Service, now time.Time) bool {
	p := t.mesh.EffectivePolicy(svc)
	a := p.AutoTune
	st := t.services[svc.Key()]
	cur := t.tuning[svc.Key()]
	next := cur
	var changes []server.TuningChange
	name := svc.Metadata.Namespace + "/" + svc.Metadata.Name
	change := func(field, from, to, reason string, values map[string]float64) {
		changes = append(changes, server.TuningChange{At: now, Service: name, Field: field, From: from, To: to, Reason: reason, Values: values})
	}

	// Fold this round's reports.
	var maxRTT time.Duration
	need, overflow := 0, uint64(0)
	var bdp, throughput float64
	var bdpRTT time.Duration
	var streamWin uint32
	for _, eps := range st.last {
		nodeNeed := 0
		for addr, o := range eps {
			if o.TooManyPings > 0 && o.KeepaliveInterval > 0 {
				// The pool already doubled: the refused interval is half
				// of what it uses now.
				st.refusedPing = max(st.refusedPing, o.KeepaliveInterval/2)
			}
			maxRTT = max(maxRTT, o.RTT)
			if limit := streamLimit(o.PeerMaxConcurrentStreams, p); limit > 0 && o.PeakStreams > 0 {
				nodeNeed += int((o.PeakStreams + limit - 1) / limit)
			}
			overflow += o.Overflow
			if b := o.Throughput * o.RTT.Seconds(); b > bdp {
				bdp, throughput, bdpRTT, streamWin = b, o.Throughput, o.RTT, o.StreamWindow
			}
			// Counts are events: learn from them once, not again when
			// another node's report arrives.
			o.TooManyPings, o.Overflow, o.Throughput = 0, 0, 0
			eps[addr] = o
		}
		need = max(need, nodeNeed)
	}
	if maxRTT > 0 {
		st.rtts = append(st.rtts, sample{now, float64(maxRTT)})
	}
	st.rtts = trim(st.rtts, now.Add(-t.rttWindow))

	if on(a.Keepalive) && p.HTTP2 != nil && p.HTTP2.Keepalive != nil && p.HTTP2.Keepalive.Interval != nil && p.HTTP2.Keepalive.Timeout != nil {
		configured, timeout := p.HTTP2.Keepalive.Interval.D(), p.HTTP2.Keepalive.Timeout.D()
		var rtt time.Duration
		for _, s := range st.rtts {
			rtt = max(rtt, time.Duration(s.v))
		}
		rule := satAdd(satMul(3, timeout), satMul(2, rtt))
		want := max(configured, satMul(4, st.refusedPing), rule)
		bound := DefaultMaxKeepaliveInterval
		if a.MaxKeepaliveInterval != nil {
			bound = a.MaxKeepaliveInterval.D()
		}
		want = min(want, max(bound, configured))
		have := max(cur.KeepaliveInterval, configured)
		if want > have {
			next.KeepaliveInterval = want
			reason := fmt.Sprintf("interval %s ≥ 4 × %s (the largest interval answered with GOAWAY too_many_pings) and ≥ 3 × timeout %s + 2 × max RTT %s", want, st.refusedPing, timeout, rtt)
			if st.refusedPing == 0 {
				reason = fmt.Sprintf("interval %s = 3 × timeout %s + 2 × max RTT %s (rule of thumb)", want, timeout, rtt)
			}
			if want == bound && bound < max(satMul(4, st.refusedPing), rule) {
				reason += fmt.Sprintf("; capped by autoTune.maxKeepaliveInterval %s", bound)
			}
			change("http2.keepalive.interval", have.String(), want.String(), reason, map[string]float64{
				"interval_ms": ms(want), "refused_interval_ms": ms(st.refusedPing), "rtt_ms": ms(rtt), "timeout_ms": ms(timeout),
			})
		}
	}

	if on(a.ConnectionPool) {
		configured := uint32(0)
		if p.ConnectionPool != nil && p.ConnectionPool.MaxConnections != nil {
			configured = *p.ConnectionPool.MaxConnections
		}
		have := cur.MaxConnections
		if have == 0 {
			have = configured
		}
		// Overflow means the demand seen was cut by the pool, but only when
		// the pool was full (every allowed connection at the peer's
		// limit): overflow while connections were still being opened
		// (a new pool after a push) says nothing about the demand.
		if overflow > 0 && have > 0 && saturated(st, p, have) {
			need = max(need, 2*int(have))
		}
		bound := uint32(DefaultMaxConnections)
		if a.MaxConnections != nil {
			bound = *a.MaxConnections
		}
		want := uint32(0)
		if need > 0 {
			want = min(uint32(need+max(1, (need+3)/4)), max(bound, configured))
		}
		switch {
		case want > have && (have == 0 || uint32(need) > have):
			// The headroom is the hysteresis band: a peak that still fits
			// the connections pushed (a few streams counted twice while
			// their end is reported) changes nothing.
			st.lowSince, st.lowPeak = time.Time{}, 0
			next.MaxConnections = want
			change("connectionPool.maxConnections", strconv.Itoa(int(have)), strconv.Itoa(int(want)),
				fmt.Sprintf("%d connections carry the peak demand at the peer's stream limit (+ headroom), %d requests overflowed the pool", need, overflow),
				map[string]float64{"max_connections": float64(want), "needed": float64(need), "overflow": float64(overflow)})
		case want > 0 && want < have && uint32(need) < have:
			// Shrink only when every report for ShrinkAfter asked for
			// less, and then to the most any of them asked for.
			if st.lowSince.IsZero() {
				st.lowSince = now
			}
			st.lowPeak = max(st.lowPeak, want)
			if now.Sub(st.lowSince) >= t.shrinkAfter {
				if lower := max(st.lowPeak, configured); lower < have {
					next.MaxConnections = lower
					change("connectionPool.maxConnections", strconv.Itoa(int(have)), strconv.Itoa(int(lower)),
						fmt.Sprintf("no report of the last %s needed more than %d connections", now.Sub(st.lowSince).Round(time.Second), lower),
						map[string]float64{"max_connections": float64(lower)})
				}
				st.lowSince, st.lowPeak = time.Time{}, 0
			}
		default:
			st.lowSince, st.lowPeak = time.Time{}, 0
		}
	}

	if on(a.Windows) && streamWin > 0 && bdp >= float64(streamWin)*2/3 {
		budget := uint32(DefaultWindowMemoryBudget)
		if a.WindowMemoryBudget != nil {
			budget = *a.WindowMemoryBudget
		}
		sw := min(ceilPow2(4*bdp), budget)
		cw := min(2*uint64(sw), uint64(budget))
		if sw > max(cur.StreamWindow, streamWin) {
			next.StreamWindow, next.ConnectionWindow = sw, uint32(cw)
			change("http2.initialStreamWindowSize", strconv.Itoa(int(streamWin)), strconv.Itoa(int(sw)),
				fmt.Sprintf("bandwidth %.0f B/s × RTT %s = %.0f B fills ≥ 2/3 of the %d B window: the window is the limit (connection window %d, budget %d)", throughput, bdpRTT, bdp, streamWin, cw, budget),
				map[string]float64{"stream_window": float64(sw), "connection_window": float64(cw), "throughput_bytes_per_second": throughput, "rtt_ms": ms(bdpRTT), "bdp_bytes": bdp})
		}
	}

	if next == cur {
		return false
	}
	t.tuning[svc.Key()] = next
	for _, c := range changes {
		t.log.Info("autotune: changed "+c.Field, "service", c.Service, "from", c.From, "to", c.To, "reason", c.Reason)
	}
	t.changes = append(t.changes, changes...)
	if n := len(t.changes); n > maxChanges {
		t.changes = append([]server.TuningChange(nil), t.changes[n-maxChanges:]...)
	}
	return true
}

// saturated reports whether some node's last report shows its pool full:
// peak demand at least have connections × the peer's stream limit.
func saturated(st *svcState, p model.Policy, have uint32) bool {
	for _, eps := range st.last {
		limit, peak := uint32(0), uint32(0)
		for _, o := range eps {
			if l := streamLimit(o.PeerMaxConcurrentStreams, p); l > 0 && (limit == 0 || l < limit) {
				limit = l
			}
			peak += o.PeakStreams
		}
		// max_connections holds for the whole cluster.
		if limit > 0 && peak >= have*limit {
			return true
		}
	}
	return false
}

// streamLimit is the streams one connection carries: the peer's limit,
// capped by the policy's http2.maxConcurrentStreams (0: unknown).
func streamLimit(peer uint32, p model.Policy) uint32 {
	if p.HTTP2 != nil && p.HTTP2.MaxConcurrentStreams != nil && (peer == 0 || *p.HTTP2.MaxConcurrentStreams < peer) {
		return *p.HTTP2.MaxConcurrentStreams
	}
	return peer
}

// trim drops samples before from.
func trim(s []sample, from time.Time) []sample {
	i := 0
	for i < len(s) && s[i].at.Before(from) {
		i++
	}
	return s[i:]
}

// ceilPow2 is the smallest power of two ≥ v, within uint32.
func ceilPow2(v float64) uint32 {
	if v >= 1<<31 {
		return 1 << 31
	}
	n := uint32(math.Ceil(v))
	if n <= 1 {
		return 1
	}
	return 1 << (32 - bits.LeadingZeros32(n-1))
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func on(b *bool) bool { return b != nil && *b }

// satMul returns k×d for a non-negative d, the largest Duration where
// that would overflow: reported figures saturate there (observe.Parse)
// and must not wrap negative here.
func satMul(k int64, d time.Duration) time.Duration {
	if d > time.Duration(math.MaxInt64/k) {
		return math.MaxInt64
	}
	return time.Duration(k) * d
}

// satAdd returns a+b for non-negative a and b, the largest Duration where
// that would overflow.
func satAdd(a, b time.Duration) time.Duration {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}
