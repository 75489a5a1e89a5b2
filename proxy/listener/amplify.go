package listener

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/ipv4"

	"meshd.dev/meshd/proxy/stats"
)

// amplificationFactor is RFC 9000 section 8.1's limit: before a client's
// address is validated, a server sends at most three times the bytes it
// received from it.
const amplificationFactor = 3

// maxUnvalidatedAddrs bounds the addresses an amplificationConn tracks at
// once (about 64 bytes each). Beyond it a new address is not tracked and
// only quic-go's own limit applies to it.
const maxUnvalidatedAddrs = 1 << 16

// maxServerCIDs bounds the server connection IDs remembered per
// unvalidated address (one per connection attempt from it, and a Retry's).
const maxServerCIDs = 4

// amplificationConn is the UDP socket of a QUIC listener, enforcing the
// anti-amplification limit exactly. quic-go checks its limit before it
// packs a datagram (bytes sent < 3 x bytes received), so its last
// datagram may take a connection up to one full packet past 3x (quic-go
// #2862, "an amplification factor of 3.x"): 3 840 bytes for a 1 200-byte
// Initial. This socket counts the bytes of every address that sent an
// Initial and has not been validated, and drops a datagram to it that
// would pass 3x; to quic-go that is a lost packet, which it sends again
// once the client's next datagram raises the budget.
//
// An address is validated, and forgotten, once it sends a Handshake or
// 1-RTT packet to a connection ID the server chose for it (the source
// connection ID of the server's long-header packets to it, read as they
// are sent): only a client that received the server's packets knows it,
// the proof RFC 9000 section 8.1 asks for. Entries of addresses that
// never validate go after ttl (the handshake timeout).
//
// It keeps quic-go's fast paths: ReadBatch (recvmmsg) for reads, and the
// embedded *net.UDPConn's SyscallConn for GSO, ECN and packet info; only
// ReadBatch, ReadFrom, WriteTo and WriteMsgUDP are accounted, the methods
// quic-go uses. With nothing tracked, traffic takes no lock.
type amplificationConn struct {
	*net.UDPConn
	batch   *ipv4.PacketConn
	ttl     time.Duration
	dropped *stats.Counter

	// tracked mirrors len(addrs), so traffic with nothing tracked skips
	// the lock.
	tracked atomic.Int64
	mu      sync.Mutex
	addrs   map[netip.AddrPort]*unvalidated
	swept   time.Time
}

// unvalidated is what an address without validation received and sent,
// and the connection IDs the server gave it.
type unvalidated struct {
	received, sent int64
	last           time.Time
	cids           [][]byte
}

func newAmplificationConn(c *net.UDPConn, ttl time.Duration, dropped *stats.Counter) *amplificationConn {
	return &amplificationConn{
		UDPConn: c,
		batch:   ipv4.NewPacketConn(c),
		ttl:     ttl,
		dropped: dropped,
		addrs:   make(map[netip.AddrPort]*unvalidated),
	}
}

// ReadBatch reads datagrams as quic-go's batched reader does and accounts
// each one.
func (c *amplificationConn) ReadBatch(ms []ipv4.Message, flags int) (int, error) {
	n, err := c.batch.ReadBatch(ms, flags)
	for i := range n {
		m := &ms[i]
		if len(m.Buffers) > 0 && m.N <= len(m.Buffers[0]) {
			c.received(m.Addr, m.Buffers[0][:m.N])
		}
	}
	return n, err
}

// ReadFrom reads and accounts one datagram (quic-go's reader where
// batches are not available).
func (c *amplificationConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, addr, err := c.UDPConn.ReadFrom(b)
	if n > 0 {
		c.received(addr, b[:n])
	}
	return n, addr, err
}

// WriteTo sends b unless it would pass the limit of an unvalidated addr.
func (c *amplificationConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	if !c.allow(addr, b) {
		return len(b), nil
	}
	return c.UDPConn.WriteTo(b, addr)
}

// WriteMsgUDP is WriteTo for quic-go's writer with control messages
// (a GSO batch counts as all its bytes).
func (c *amplificationConn) WriteMsgUDP(b, oob []byte, addr *net.UDPAddr) (int, int, error) {
	if !c.allow(addr, b) {
		return len(b), len(oob), nil
	}
	return c.UDPConn.WriteMsgUDP(b, oob, addr)
}

func addrPort(a net.Addr) (netip.AddrPort, bool) {
	ua, ok := a.(*net.UDPAddr)
	if !ok || ua == nil {
		return netip.AddrPort{}, false
	}
	ap := ua.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), true
}

// received accounts a datagram from a: its bytes add to the budget of a
// tracked address, an Initial starts tracking a new one, and a packet to
// a connection ID the server gave a validates it.
func (c *amplificationConn) received(a net.Addr, d []byte) {
	if len(d) == 0 {
		return
	}
	isInitial := d[0]&0xb0 == 0x80 // long header, type Initial (v1)
	if !isInitial && c.tracked.Load() == 0 {
		return
	}
	ap, ok := addrPort(a)
	if !ok {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	u := c.addrs[ap]
	if u == nil {
		if !isInitial {
			return
		}
		// Only new addresses grow the table: sweep it here, at most
		// once a second (time.Now is a system call on some VMs, so
		// packets of validated peers do not read the clock).
		now := time.Now()
		if now.Sub(c.swept) >= time.Second {
			c.sweep(now)
		}
		if len(c.addrs) >= maxUnvalidatedAddrs {
			return
		}
		u = &unvalidated{last: now}
		c.addrs[ap] = u
		c.tracked.Add(1)
	}
	if validates(d, u.cids) {
		delete(c.addrs, ap)
		c.tracked.Add(-1)
		return
	}
	u.received += int64(len(d))
	if isInitial {
		u.last = time.Now()
	}
}

// allow says whether datagram b may go to a, and counts it. Only
// datagrams starting with a long header (the handshake's) are limited:
// quic-go sends 1-RTT packets once the handshake is complete, which
// validated the address, so a 1-RTT datagram to a tracked address means a
// late Initial from a validated client started tracking it again.
func (c *amplificationConn) allow(a net.Addr, b []byte) bool {
	if len(b) == 0 || b[0]&0x80 == 0 || c.tracked.Load() == 0 {
		return true
	}
	ap, ok := addrPort(a)
	if !ok {
		return true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	u := c.addrs[ap]
	if u == nil {
		return true
	}
	if u.sent+int64(len(b)) > amplificationFactor*u.received {
		c.dropped.Inc()
		return false
	}
	u.sent += int64(len(b))
	if cid, ok := sourceCID(b); ok && len(u.cids) < maxServerCIDs && !slices.ContainsFunc(u.cids, func(k []byte) bool { return bytes.Equal(k, cid) }) {
		u.cids = append(u.cids, bytes.Clone(cid))
	}
	return true
}

// sweep forgets addresses idle for longer than ttl. Called with mu held.
func (c *amplificationConn) sweep(now time.Time) {
	c.swept = now
	for ap, u := range c.addrs {
		if now.Sub(u.last) > c.ttl {
			delete(c.addrs, ap)
			c.tracked.Add(-1)
		}
	}
}

// sourceCID is the source connection ID of a long-header packet at the
// start of d (the server's Initial, Handshake or Retry).
func sourceCID(d []byte) ([]byte, bool) {
	if len(d) < 6 || d[0]&0x80 == 0 {
		return nil, false
	}
	i := 6 + int(d[5])
	if i >= len(d) || i+1+int(d[i]) > len(d) || d[i] == 0 {
		return nil, false
	}
	return d[i+1 : i+1+int(d[i])], true
}

// validates reports whether datagram d holds a packet addressed to one of
// the server's connection IDs cids that only a client holding the
// server's packets can send: a v1 Handshake packet among coalesced
// long-header packets, or a 1-RTT packet (short header with the fixed
// bit, RFC 9000 sections 12.2 and 17.3.1).
func validates(d []byte, cids [][]byte) bool {
	to := func(dcid []byte) bool {
		return slices.ContainsFunc(cids, func(k []byte) bool { return bytes.HasPrefix(dcid, k) })
	}
	for len(d) > 0 {
		if d[0]&0x80 == 0 {
			return d[0]&0x40 != 0 && to(d[1:])
		}
		if len(d) < 7 || binary.BigEndian.Uint32(d[1:5]) != 1 {
			return false // too short, or not QUIC v1
		}
		typ := d[0] >> 4 & 3
		if typ == 3 { // Retry: never from a client
			return false
		}
		i := 5
		dcidLen := int(d[i])
		if i+1+dcidLen > len(d) {
			return false
		}
		if typ == 2 {
			return len(cids) > 0 && slices.ContainsFunc(cids, func(k []byte) bool { return bytes.Equal(d[i+1:i+1+dcidLen], k) })
		}
		i += 1 + dcidLen
		if i >= len(d) {
			return false
		}
		i += 1 + int(d[i]) // source connection ID
		if i >= len(d) {
			return false
		}
		if typ == 0 { // Initial: token
			tl, n := varint(d[i:])
			if n == 0 || tl > uint64(len(d)) {
				return false
			}
			i += n + int(tl)
		}
		if i >= len(d) {
			return false
		}
		length, n := varint(d[i:])
		if n == 0 || length > uint64(len(d)) {
			return false
		}
		i += n + int(length)
		if i > len(d) {
			return false
		}
		d = d[i:]
	}
	return false
}

// varint decodes a QUIC variable-length integer; n is 0 if b is too short.
func varint(b []byte) (v uint64, n int) {
	if len(b) == 0 {
		return 0, 0
	}
	n = 1 << (b[0] >> 6)
	if len(b) < n {
		return 0, 0
	}
	v = uint64(b[0] & 0x3f)
	for _, x := range b[1:n] {
		v = v<<8 | uint64(x)
	}
	return v, n
}
