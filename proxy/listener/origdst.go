package listener

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"unsafe"
)

// soOriginalDst is SO_ORIGINAL_DST (linux/netfilter_ipv4.h) and
// IP6T_SO_ORIGINAL_DST (linux/netfilter_ipv6/ip6_tables.h): both 80, at
// SOL_IP and SOL_IPV6.
const soOriginalDst = 80

// errNoOriginalDst reports a connection that was not redirected by
// netfilter (or a platform without SO_ORIGINAL_DST).
var errNoOriginalDst = errors.New("no original destination")

// originalDst returns the destination c had before a netfilter REDIRECT or
// DNAT: what envoy.filters.listener.original_dst restores as the local
// address. A connection that was not redirected returns its own local
// address (the kernel answers with it).
func originalDst(c net.Conn) (netip.AddrPort, error) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return netip.AddrPort{}, errNoOriginalDst
	}
	local, ok := tc.LocalAddr().(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}, errNoOriginalDst
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	var (
		out  netip.AddrPort
		serr error
	)
	v4 := local.IP.To4() != nil
	err = rc.Control(func(fd uintptr) {
		// struct sockaddr_in / sockaddr_in6, read raw: family (host
		// order), port (network order), then the address.
		var buf [28]byte
		size := uint32(len(buf))
		level := syscall.SOL_IPV6
		if v4 {
			level = syscall.SOL_IP
		}
		_, _, errno := syscall.Syscall6(syscall.SYS_GETSOCKOPT, fd, uintptr(level), soOriginalDst,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
		if errno != 0 {
			serr = errno
			return
		}
		port := uint16(buf[2])<<8 | uint16(buf[3])
		switch {
		case v4 && size >= 8:
			out = netip.AddrPortFrom(netip.AddrFrom4([4]byte(buf[4:8])), port)
		case !v4 && size >= 24:
			out = netip.AddrPortFrom(netip.AddrFrom16([16]byte(buf[8:24])), port)
		default:
			serr = errNoOriginalDst
		}
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination (SO_ORIGINAL_DST): %w", err)
	}
	return out, nil
}

// restoredConn is a connection whose local address is the original
// destination original_dst recovered.
type restoredConn struct {
	net.Conn
	local net.Addr
}

func (c *restoredConn) LocalAddr() net.Addr { return c.local }

// CloseWrite half-closes the underlying TCP connection (tcp_proxy relays
// half-closes).
func (c *restoredConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// restore applies original_dst to an accepted connection and, with a
// Redirect hook, hands it to the listener of its original destination.
// It reports whether c was handed off.
func (l *Listener) restore(c net.Conn) (net.Conn, bool) {
	dst, err := originalDst(c)
	if err != nil {
		l.stat.origDstMissing.Inc()
		l.log.Debug("listener: original_dst", "error", err)
		return c, false
	}
	rc := &restoredConn{Conn: c, local: net.TCPAddrFromAddrPort(dst)}
	if l.cfg.Redirect != nil {
		if t := l.cfg.Redirect(dst); t != nil && t != l {
			if t.Handoff(rc) {
				return nil, true
			}
		}
	}
	return rc, false
}

// unbound is the net.Listener of a bind_to_port false listener: Accept
// blocks until Close, connections arrive by Handoff only.
type unbound struct {
	addr   net.Addr
	once   sync.Once
	closed chan struct{}
}

func (u *unbound) Accept() (net.Conn, error) {
	<-u.closed
	return nil, net.ErrClosed
}

func (u *unbound) Close() error {
	u.once.Do(func() { close(u.closed) })
	return nil
}

func (u *unbound) Addr() net.Addr { return u.addr }
