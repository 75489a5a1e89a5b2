// Package lb holds meshd's load-balancing policies: pickers that choose an
// endpoint of a cluster for each request, registered by Envoy's lb_policy
// name ("ROUND_ROBIN", "LEAST_REQUEST", "RANDOM") the way grpc-go registers
// balancers.
//
// The model follows grpc-go's picker wrapper: a Picker is an immutable
// snapshot built from a list of hosts, and a Balancer keeps the current
// picker behind an atomic pointer and swaps it whole when the host list or a
// host's health changes. Per-host state that must outlive a picker (the
// active request count that LEAST_REQUEST reads, health) lives on *Host,
// which the cluster manager keeps across configuration swaps.
package lb

import (
	"fmt"
	"sync"
	"sync/atomic"
)

// Host is one endpoint of a cluster. The cluster manager keeps the same
// *Host across configuration swaps (keyed by Addr), so its counters and
// health survive them.
//
// Addr, Weight and Zone are read when a Picker is built; change them only
// between builds (a picker already built keeps the values it read). The
// request count and health are safe for concurrent use.
type Host struct {
	// Addr is the endpoint address, "ip:port".
	Addr string
	// Weight is the endpoint's load_balancing_weight; 0 is treated as 1.
	Weight uint32
	// Zone is the endpoint's locality zone; informational for now.
	Zone string

	active    atomic.Int64
	unhealthy atomic.Bool // zero value: healthy
}

// NewHost returns a healthy host with no active requests.
func NewHost(addr string, weight uint32, zone string) *Host {
	return &Host{Addr: addr, Weight: weight, Zone: zone}
}

// Acquire records the start of a request to h. Every Acquire must be paired
// with one Release.
func (h *Host) Acquire() { h.active.Add(1) }

// Release records the end of a request started with Acquire.
func (h *Host) Release() { h.active.Add(-1) }

// ActiveRequests is the number of requests between Acquire and Release.
func (h *Host) ActiveRequests() int64 { return h.active.Load() }

// SetHealthy records the host's health (from active health checks or
// outlier detection) and reports whether it changed. Pickers are snapshots:
// after a change, the owner calls Balancer.Refresh so new picks see it.
func (h *Host) SetHealthy(healthy bool) (changed bool) {
	return h.unhealthy.Swap(!healthy) == healthy
}

// Healthy reports the host's health; a new host is healthy.
func (h *Host) Healthy() bool { return !h.unhealthy.Load() }

// String returns the address, for logs.
func (h *Host) String() string { return h.Addr }

func (h *Host) weight() uint32 {
	if h.Weight == 0 {
		return 1
	}
	return h.Weight
}

// Picker chooses a host for one request. It is safe for concurrent use.
// Pick returns nil only when the picker was built from no hosts.
type Picker interface {
	Pick() *Host
}

// Builder builds a Picker over hosts, all of which are eligible: health
// filtering and the panic threshold are applied by the caller (Balancer)
// before building. The slice is owned by the picker after the call.
type Builder func(hosts []*Host) Picker

var registry = map[string]Builder{}

// Register makes a policy available under its Envoy lb_policy name. It must
// be called from init functions only (the registry is not locked); a later
// registration of the same name replaces the earlier one, as in grpc-go.
func Register(policy string, b Builder) {
	if policy == "" || b == nil {
		panic("lb: Register with empty policy name or nil builder")
	}
	registry[policy] = b
}

// Get returns the builder registered for policy.
func Get(policy string) (Builder, bool) {
	b, ok := registry[policy]
	return b, ok
}

// DefaultPanicThreshold is Envoy's default healthy_panic_threshold, in
// percent.
const DefaultPanicThreshold = 50.0

// Balancer is a cluster's load balancer: a policy applied to the cluster's
// current hosts, with Envoy's panic threshold. All methods are safe for
// concurrent use; Pick is lock-free (one atomic load, then the picker),
// Update and Refresh serialise on a mutex and swap the picker whole.
type Balancer struct {
	build          Builder // immutable
	panicThreshold float64 // immutable

	mu    sync.Mutex // serialises rebuilds; guards hosts
	hosts []*Host
	cur   atomic.Pointer[snapshot]
}

type snapshot struct {
	picker Picker
	panic  bool
}

// NewBalancer returns a balancer for policy over hosts. panicThreshold is
// the healthy_panic_threshold in percent (use DefaultPanicThreshold when the
// cluster does not set it): when the healthy share of hosts is below it, the
// balancer picks among all hosts, healthy or not, as Envoy does; 0 disables
// panic mode, so Pick returns nil when no host is healthy.
func NewBalancer(policy string, hosts []*Host, panicThreshold float64) (*Balancer, error) {
	b, ok := Get(policy)
	if !ok {
		return nil, fmt.Errorf("lb_policy %q: not supported", policy)
	}
	if panicThreshold < 0 || panicThreshold > 100 {
		return nil, fmt.Errorf("healthy_panic_threshold %v: must be within [0, 100]", panicThreshold)
	}
	bal := &Balancer{build: b, panicThreshold: panicThreshold}
	bal.Update(hosts)
	return bal, nil
}

// Update replaces the host list (the balancer keeps hosts) and rebuilds the
// picker.
func (b *Balancer) Update(hosts []*Host) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.hosts = hosts
	b.rebuild()
}

// Refresh rebuilds the picker from the current hosts' health. Call it after
// any Host.SetHealthy that reported a change.
func (b *Balancer) Refresh() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rebuild()
}

func (b *Balancer) rebuild() {
	eligible, panicMode := selectHosts(b.hosts, b.panicThreshold)
	b.cur.Store(&snapshot{picker: b.build(eligible), panic: panicMode})
}

// Pick chooses a host, or returns nil when none is eligible (no hosts, or
// none healthy with panic mode disabled).
func (b *Balancer) Pick() *Host { return b.cur.Load().picker.Pick() }

// Panic reports whether the current picker ignores health because the
// healthy share fell below the panic threshold (Envoy's lb_healthy_panic).
func (b *Balancer) Panic() bool { return b.cur.Load().panic }

// selectHosts returns the hosts to balance over: the healthy ones, or all of
// them when the healthy percentage is below threshold (Envoy's panic mode).
func selectHosts(hosts []*Host, threshold float64) (eligible []*Host, panicMode bool) {
	healthy := make([]*Host, 0, len(hosts))
	for _, h := range hosts {
		if h.Healthy() {
			healthy = append(healthy, h)
		}
	}
	if len(hosts) == 0 || len(healthy) == len(hosts) {
		return healthy, false
	}
	if threshold > 0 && 100*float64(len(healthy)) < threshold*float64(len(hosts)) {
		return append([]*Host(nil), hosts...), true
	}
	return healthy, false
}
