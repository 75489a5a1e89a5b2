package stats

import (
	"strconv"
	"sync/atomic"
)

// Envoy's label names for response code stats.
const (
	ResponseCodeTag      = "envoy_response_code"
	ResponseCodeClassTag = "envoy_response_code_class"
)

// CodeStats counts HTTP response codes under one prefix the way Envoy's
// CodeStats does, e.g. with prefix "upstream_rq" in a cluster scope:
//
//	upstream_rq_200      envoy_cluster_upstream_rq{envoy_cluster_name="x",envoy_response_code="200"}
//	upstream_rq_2xx      envoy_cluster_upstream_rq_xx{envoy_cluster_name="x",envoy_response_code_class="2"}
//	upstream_rq_unknown  envoy_cluster_upstream_rq_unknown{envoy_cluster_name="x"} (codes outside 100..599)
//
// Counters are created on first use, so unused codes do not show up, and
// cached: after the first response with a code, Record is two atomic loads
// and two atomic adds, without locks. Safe for concurrent use.
type CodeStats struct {
	scope   *Scope
	prefix  string
	classes [5]atomic.Pointer[Counter]   // 1xx..5xx
	codes   [500]atomic.Pointer[Counter] // 100..599
	unknown atomic.Pointer[Counter]
}

// CodeStats returns the response code stats with the given prefix in this
// scope; repeated calls with the same prefix return the same *CodeStats.
func (sc *Scope) CodeStats(prefix string) *CodeStats {
	if v, ok := sc.codes.Load(prefix); ok {
		return v.(*CodeStats)
	}
	v, _ := sc.codes.LoadOrStore(prefix, &CodeStats{scope: sc, prefix: prefix})
	return v.(*CodeStats)
}

// ResponseCode records one response with the HTTP status code under
// prefix: sc.CodeStats(prefix).Record(code). Hot paths should keep the
// *CodeStats and skip the prefix lookup.
func (sc *Scope) ResponseCode(prefix string, code int) {
	sc.CodeStats(prefix).Record(code)
}

// Record counts one response with the HTTP status code: in <prefix>_<code>
// and <prefix>_<N>xx for codes 100..599, in <prefix>_unknown otherwise.
func (c *CodeStats) Record(code int) {
	if code < 100 || code > 599 {
		cached(&c.unknown, func() *Counter {
			return c.scope.Counter(c.prefix + "_unknown")
		}).Inc()
		return
	}
	cached(&c.codes[code-100], func() *Counter {
		s := strconv.Itoa(code)
		return c.scope.TaggedCounter(c.prefix+"_"+s, c.prefix, Tag{ResponseCodeTag, s})
	}).Inc()
	cached(&c.classes[code/100-1], func() *Counter {
		s := strconv.Itoa(code / 100)
		return c.scope.TaggedCounter(c.prefix+"_"+s+"xx", c.prefix+"_xx", Tag{ResponseCodeClassTag, s})
	}).Inc()
}

// cached returns the counter in p, creating it with mk on first use. Two
// racing first uses both call mk, which returns the same store counter.
func cached(p *atomic.Pointer[Counter], mk func() *Counter) *Counter {
	if c := p.Load(); c != nil {
		return c
	}
	c := mk()
	p.Store(c)
	return c
}
