package localmesh

import (
	"bufio"
	"cmp"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"meshd.dev/meshd/xds/translate"
)

// Latency histogram: bucket i holds latencies in
// [histMin·histGrowth^(i-1), histMin·histGrowth^i); bucket 0 everything
// below histMin, the last bucket everything above. A quantile is reported
// as its bucket's upper bound, so it is at most 10% above the true value.
const (
	histMin     = time.Microsecond
	histGrowth  = 1.1
	histBuckets = 200 // histMin·1.1^199 ≈ 170 s
)

// Histogram is a fixed-size log-scale latency histogram. The zero value is
// empty and ready to use; it is a value type (copying it copies the counts).
type Histogram struct {
	counts [histBuckets]uint64
	n      uint64
}

// Add records one latency.
func (h *Histogram) Add(d time.Duration) {
	h.counts[bucketOf(d)]++
	h.n++
}

// Count returns the number of latencies recorded.
func (h *Histogram) Count() uint64 { return h.n }

// Quantile returns the upper bound of the bucket holding the q-th quantile
// (0 < q <= 1) of the recorded latencies, or 0 when there are none.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = max(rank, 1)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return bucketUpper(i)
		}
	}
	return bucketUpper(histBuckets - 1)
}

func bucketOf(d time.Duration) int {
	if d < histMin {
		return 0
	}
	i := 1 + int(math.Log(float64(d)/float64(histMin))/math.Log(histGrowth))
	return min(i, histBuckets-1)
}

func bucketUpper(i int) time.Duration {
	return time.Duration(float64(histMin) * math.Pow(histGrowth, float64(i)))
}

// Recorder counts the sample clients' calls. It is safe for concurrent use.
type Recorder struct {
	mu       sync.Mutex
	calls    uint64    // successful calls
	errors   uint64    // failed calls after the first success
	warmup   uint64    // failed calls before the first success
	first    time.Time // when the first successful call ended
	byCode   map[codes.Code]uint64
	interval Histogram // latencies of successful calls since the last Take
}

// NewRecorder returns an empty Recorder.
func NewRecorder() *Recorder { return &Recorder{byCode: map[codes.Code]uint64{}} }

// Record counts one call that took d and ended with err. A failure before
// the first success is a warm-up error (the mesh was still coming up);
// the summary reports those apart.
func (r *Recorder) Record(d time.Duration, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err == nil {
		if r.calls == 0 {
			r.first = time.Now()
		}
		r.calls++
		r.interval.Add(d)
		return
	}
	if r.calls == 0 {
		r.warmup++
		return
	}
	r.errors++
	r.byCode[status.Code(err)]++
}

// Totals are a Recorder's counts since it was created.
type Totals struct {
	Calls, Errors, WarmupErrors uint64
	// ByCode counts the errors (not warm-up errors) by gRPC status code.
	ByCode map[codes.Code]uint64
	// FirstSuccess is when the first successful call ended (zero: none).
	FirstSuccess time.Time
}

// Take returns the totals and the latencies recorded since the previous
// Take, and starts a new interval.
func (r *Recorder) Take() (Totals, Histogram) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := Totals{Calls: r.calls, Errors: r.errors, WarmupErrors: r.warmup, FirstSuccess: r.first, ByCode: make(map[codes.Code]uint64, len(r.byCode))}
	for c, n := range r.byCode {
		t.ByCode[c] = n
	}
	h := r.interval
	r.interval = Histogram{}
	return t, h
}

// Rate returns the per-second rate of a counter that went from prev to cur
// in dt. A counter that went down was reset (its process restarted), so
// everything it counts now happened within dt.
func Rate(prev, cur uint64, dt time.Duration) float64 {
	if dt <= 0 {
		return 0
	}
	if cur < prev {
		prev = 0
	}
	return float64(cur-prev) / dt.Seconds()
}

// SidecarCounters are the figures the live block shows for one sidecar,
// summed over its clusters except the one to the control plane.
type SidecarCounters struct {
	// RequestsTotal is the sum of cluster.*.upstream_rq_total.
	RequestsTotal uint64
	// ConnectionsActive is the sum of cluster.*.upstream_cx_active.
	ConnectionsActive uint64
}

// ParseSidecarStats sums SidecarCounters from the plain-text /stats of a
// sidecar ("name: value" lines); lines that are not integer stats are
// skipped.
func ParseSidecarStats(text string) SidecarCounters {
	var c SidecarCounters
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), ": ")
		if !ok || !strings.HasPrefix(name, "cluster.") || strings.HasPrefix(name, "cluster."+translate.XDSClusterName+".") {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(value), 10, 64)
		if err != nil {
			continue
		}
		switch {
		case strings.HasSuffix(name, ".upstream_rq_total"):
			c.RequestsTotal += n
		case strings.HasSuffix(name, ".upstream_cx_active"):
			c.ConnectionsActive += n
		}
	}
	return c
}

// SidecarView is one sidecar's line of the live block.
type SidecarView struct {
	NodeID string
	// Ready is the last /ready answer; Err the last failure to ask.
	Ready bool
	Err   string
	// RequestRate is upstream_rq_total per second over the last interval.
	RequestRate       float64
	ConnectionsActive uint64
}

// View is what one redraw of the live block shows.
type View struct {
	Elapsed time.Duration
	// CallRate is successful calls per second over the last interval.
	CallRate float64
	Totals   Totals
	// P50 and P99 are over the last interval's calls (0: none).
	P50, P99 time.Duration
	Sidecars []SidecarView
	Samples  bool
}

// Lines renders v as the live block, one string per line.
func (v View) Lines() []string {
	var lines []string
	head := fmt.Sprintf("meshd up  %s", v.Elapsed.Truncate(time.Second))
	if v.Samples {
		head += fmt.Sprintf("  calls %.0f/s  total %d  errors %d", v.CallRate, v.Totals.Calls, v.Totals.Errors)
		if codes := formatCodes(v.Totals.ByCode); codes != "" {
			head += " (" + codes + ")"
		}
		head += fmt.Sprintf("  p50 %s  p99 %s", formatLatency(v.P50), formatLatency(v.P99))
	}
	lines = append(lines, head)
	for _, s := range v.Sidecars {
		state := "ready"
		switch {
		case s.Err != "":
			state = "down (" + s.Err + ")"
		case !s.Ready:
			state = "not ready"
		}
		lines = append(lines, fmt.Sprintf("  %-28s %-10s upstream rq %6.0f/s  cx active %d", s.NodeID, state, s.RequestRate, s.ConnectionsActive))
	}
	return lines
}

// formatCodes lists error counts by code, most frequent first.
func formatCodes(by map[codes.Code]uint64) string {
	type kv struct {
		c codes.Code
		n uint64
	}
	var kvs []kv
	for c, n := range by {
		kvs = append(kvs, kv{c, n})
	}
	slices.SortFunc(kvs, func(a, b kv) int {
		if c := cmp.Compare(b.n, a.n); c != 0 {
			return c
		}
		return cmp.Compare(a.c, b.c)
	})
	parts := make([]string, len(kvs))
	for i, e := range kvs {
		parts[i] = fmt.Sprintf("%s %d", e.c, e.n)
	}
	return strings.Join(parts, ", ")
}

func formatLatency(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	if d < time.Millisecond {
		return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond))
	}
	return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
}

// Summary is the final line meshd up prints on exit: "meshd up: N calls,
// M errors", the errors by code, how long after start the first call
// succeeded, and the warm-up errors if any.
func (t Totals) Summary(start time.Time) string {
	s := fmt.Sprintf("meshd up: %d calls, %d errors", t.Calls, t.Errors)
	if codes := formatCodes(t.ByCode); codes != "" {
		s += " (" + codes + ")"
	}
	if !t.FirstSuccess.IsZero() {
		s += fmt.Sprintf(", first success %.1fs after start", t.FirstSuccess.Sub(start).Seconds())
	}
	if t.WarmupErrors > 0 {
		s += fmt.Sprintf(", %d failed before the first success (warm-up)", t.WarmupErrors)
	}
	return s
}
