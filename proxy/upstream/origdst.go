package upstream

import (
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"meshd.dev/meshd/proxy/lb"
)

// Target is what a cluster's host choice may depend on: the downstream
// connection's local address, which the original_dst listener filter has
// restored to the original destination, and, for HTTP requests, the
// request headers. Only ORIGINAL_DST clusters look at it.
type Target struct {
	// LocalAddr is the downstream connection's (restored) local address.
	LocalAddr net.Addr
	// Header returns the first value of a request header (lower-case
	// name), "" when absent; nil for TCP connections.
	Header func(name string) string
}

// PickFor chooses a host for t. For an ORIGINAL_DST cluster this is the
// host of t's destination, created on first use and reused while it is in
// use; nil when the destination is not an IP address and port (or the
// override header's value is not one). Other clusters ignore t and pick
// with their load balancer, as Pick does.
func (c *Cluster) PickFor(t Target) *Host {
	if c.od == nil {
		return c.Pick()
	}
	dst, ok := c.od.destination(t)
	if !ok {
		return nil
	}
	return c.originalDstHost(dst)
}

// origDst holds the hosts of an ORIGINAL_DST cluster.
type origDst struct {
	spec *OriginalDstSpec

	mu    sync.Mutex // serialises changes of the host set
	hosts map[netip.AddrPort]*origHost
	// closed is set when the cluster is drained: no host is added after.
	closed bool
}

// origHost is a host of an ORIGINAL_DST cluster and whether it was picked
// since the last cleanup.
type origHost struct {
	host *Host
	used atomic.Bool
}

// destination returns the address t asks for: the override header when
// configured and present, else the connection's original destination,
// with upstream_port_override applied. A header that is present but not an
// IP:port selects nothing, as in Envoy.
func (o *origDst) destination(t Target) (netip.AddrPort, bool) {
	var dst netip.AddrPort
	if o.spec.HTTPHeader != "" && t.Header != nil {
		if v := t.Header(o.spec.HTTPHeader); v != "" {
			ap, err := netip.ParseAddrPort(v)
			if err != nil {
				return netip.AddrPort{}, false
			}
			dst = ap
		}
	}
	if !dst.IsValid() {
		ta, ok := t.LocalAddr.(*net.TCPAddr)
		if !ok || ta == nil {
			return netip.AddrPort{}, false
		}
		dst = ta.AddrPort()
	}
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	if o.spec.PortOverride != 0 {
		dst = netip.AddrPortFrom(dst.Addr(), o.spec.PortOverride)
	}
	if !dst.Addr().IsValid() || dst.Addr().IsUnspecified() || dst.Port() == 0 {
		return netip.AddrPort{}, false
	}
	return dst, true
}

// originalDstHost returns the host for dst, publishing a new one when the
// cluster has none yet.
func (c *Cluster) originalDstHost(dst netip.AddrPort) *Host {
	o := c.od
	o.mu.Lock()
	defer o.mu.Unlock()
	if oh := o.hosts[dst]; oh != nil {
		oh.used.Store(true)
		return oh.host
	}
	if o.closed {
		// The cluster was replaced or removed; its pools are drained.
		return nil
	}
	addr := net.JoinHostPort(dst.Addr().String(), strconv.Itoa(int(dst.Port())))
	h := &Host{LB: lb.NewHost(addr, 1, ""), Addr: addr, pool: c.newPool(addr)}
	c.attachHealth(h)
	oh := &origHost{host: h}
	oh.used.Store(true)
	o.hosts[dst] = oh
	c.publishOriginalDst()
	c.startHealth([]*Host{h})
	c.logger.Debug("original_dst: host added", "address", addr)
	return h
}

// publishOriginalDst publishes the current hosts as the cluster's host
// set (Hosts, admin /clusters). ORIGINAL_DST clusters have no balancer:
// Pick returns nil and PickFor chooses by destination. o.mu is held.
func (c *Cluster) publishOriginalDst() {
	hs := &hostSet{byLB: make(map[*lb.Host]*Host, len(c.od.hosts))}
	for _, oh := range c.od.hosts {
		hs.hosts = append(hs.hosts, oh.host)
		hs.byLB[oh.host.LB] = oh.host
	}
	c.set.Store(hs)
}

// cleanupOriginalDst removes the hosts that were not picked since the
// previous call and carry no request or connection, draining their pools;
// it clears the used mark of the others. It returns how many it removed.
func (c *Cluster) cleanupOriginalDst() int {
	o := c.od
	o.mu.Lock()
	var removed []*Host
	for dst, oh := range o.hosts {
		if oh.used.Swap(false) || oh.host.LB.ActiveRequests() > 0 {
			continue
		}
		delete(o.hosts, dst)
		removed = append(removed, oh.host)
	}
	if len(removed) > 0 {
		c.publishOriginalDst()
	}
	o.mu.Unlock()
	for _, h := range removed {
		c.detachHealth(h)
		h.pool.Drain()
		c.logger.Debug("original_dst: host removed after cleanup_interval unused", "address", h.Addr)
	}
	return len(removed)
}

// closeOriginalDst stops adding hosts; drain then drains the ones there are.
func (c *Cluster) closeOriginalDst() {
	c.od.mu.Lock()
	c.od.closed = true
	c.od.mu.Unlock()
}

// cleanupLoop runs cleanupOriginalDst every cleanup_interval until the
// cluster is drained.
func (c *Cluster) cleanupLoop() {
	defer c.stopWG.Done()
	t := time.NewTicker(c.od.spec.CleanupInterval)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
			c.cleanupOriginalDst()
		}
	}
}
