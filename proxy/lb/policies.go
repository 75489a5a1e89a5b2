package lb

import (
	"container/heap"
	"math/rand/v2"
	"sync"
	"sync/atomic"
)

// The policies Envoy's lb_policy names; each registers itself here.
func init() {
	Register("ROUND_ROBIN", newRoundRobin)
	Register("LEAST_REQUEST", newLeastRequest)
	Register("RANDOM", newRandom)
}

// emptyPicker has no hosts.
type emptyPicker struct{}

func (emptyPicker) Pick() *Host { return nil }

// singlePicker always returns its one host.
type singlePicker struct{ h *Host }

func (p singlePicker) Pick() *Host { return p.h }

func trivial(hosts []*Host) (Picker, bool) {
	switch len(hosts) {
	case 0:
		return emptyPicker{}, true
	case 1:
		return singlePicker{hosts[0]}, true
	}
	return nil, false
}

func equalWeights(hosts []*Host) bool {
	for _, h := range hosts[1:] {
		if h.weight() != hosts[0].weight() {
			return false
		}
	}
	return true
}

// newRoundRobin is Envoy's ROUND_ROBIN: plain rotation when all weights are
// equal, otherwise an earliest-deadline-first schedule in which each host is
// picked in proportion to its weight, interleaved smoothly. Like Envoy, the
// rotation starts at a random position so that many proxies with the same
// host list do not all hit the same host first.
func newRoundRobin(hosts []*Host) Picker {
	if p, ok := trivial(hosts); ok {
		return p
	}
	if equalWeights(hosts) {
		p := &rrPicker{hosts: hosts}
		p.next.Store(rand.Uint64())
		return p
	}
	return newEDF(hosts, func(h *Host) float64 { return float64(h.weight()) })
}

type rrPicker struct {
	hosts []*Host // immutable
	next  atomic.Uint64
}

func (p *rrPicker) Pick() *Host {
	return p.hosts[(p.next.Add(1)-1)%uint64(len(p.hosts))]
}

// newLeastRequest is Envoy's LEAST_REQUEST. With equal weights it is the
// power of two choices: two distinct hosts drawn at random, the one with
// fewer active requests wins. With unequal weights it is Envoy's weighted
// variant: an EDF schedule in which a host's weight, when it is re-scheduled
// after a pick, is weight / (active_requests + 1) (active_request_bias 1.0).
func newLeastRequest(hosts []*Host) Picker {
	if p, ok := trivial(hosts); ok {
		return p
	}
	if equalWeights(hosts) {
		return p2cPicker(hosts)
	}
	return newEDF(hosts, func(h *Host) float64 {
		return float64(h.weight()) / float64(max(h.ActiveRequests(), 0)+1)
	})
}

type p2cPicker []*Host

func (p p2cPicker) Pick() *Host {
	n := len(p)
	i := rand.IntN(n)
	j := (i + 1 + rand.IntN(n-1)) % n
	a, b := p[i], p[j]
	if b.ActiveRequests() < a.ActiveRequests() {
		return b
	}
	return a
}

// newRandom is Envoy's RANDOM: a uniformly random host; like Envoy's random
// balancer it ignores weights.
func newRandom(hosts []*Host) Picker {
	if p, ok := trivial(hosts); ok {
		return p
	}
	return randomPicker(hosts)
}

type randomPicker []*Host

func (p randomPicker) Pick() *Host { return p[rand.IntN(len(p))] }

// edfPicker is an earliest-deadline-first scheduler (as Envoy's
// EdfScheduler): every host has a deadline; a pick takes the host with the
// earliest one, advances the clock to it and re-schedules the host at
// clock + 1/weight. Over time each host is picked in proportion to its
// weight, and consecutive picks of one host are spread out. Ties go to the
// host scheduled first, which keeps the order deterministic.
type edfPicker struct {
	weight func(*Host) float64 // read when a host is (re)scheduled

	mu    sync.Mutex // guards everything below
	clock float64
	seq   uint64
	queue edfQueue
}

type edfEntry struct {
	deadline float64
	seq      uint64
	host     *Host
}

type edfQueue []edfEntry

func (q edfQueue) Len() int { return len(q) }
func (q edfQueue) Less(i, j int) bool {
	if q[i].deadline != q[j].deadline {
		return q[i].deadline < q[j].deadline
	}
	return q[i].seq < q[j].seq
}
func (q edfQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *edfQueue) Push(x any)   { *q = append(*q, x.(edfEntry)) }
func (q *edfQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

func newEDF(hosts []*Host, weight func(*Host) float64) *edfPicker {
	p := &edfPicker{weight: weight, queue: make(edfQueue, 0, len(hosts))}
	for _, h := range hosts {
		p.queue = append(p.queue, p.entry(h))
	}
	heap.Init(&p.queue)
	// Start at a random point of the schedule, as Envoy does, so proxies
	// sharing a host list spread their first requests.
	for range rand.IntN(len(hosts)) {
		p.Pick()
	}
	return p
}

// entry schedules h one period after the clock. Callers hold mu (or own p
// exclusively during construction).
func (p *edfPicker) entry(h *Host) edfEntry {
	p.seq++
	w := p.weight(h)
	if w <= 0 {
		w = 1e-9 // a zero weight still gets picked, rarely, never starved forever
	}
	return edfEntry{deadline: p.clock + 1/w, seq: p.seq, host: h}
}

func (p *edfPicker) Pick() *Host {
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.queue[0]
	p.clock = e.deadline
	p.queue[0] = p.entry(e.host)
	heap.Fix(&p.queue, 0)
	return e.host
}
