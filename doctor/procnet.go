package doctor

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// tcpTimeWait is the TIME_WAIT state in /proc/net/tcp's "st" column.
const tcpTimeWait = "06"

// CountTimeWait counts the sockets in TIME_WAIT in dir/tcp and dir/tcp6
// (Linux's /proc/net format) with either end at one of endpoints
// ("ip:port"): the sidecar's side when it closed first, the server's when
// the server did (both are on this host only when they share it). An
// IPv4-mapped IPv6 socket counts for its IPv4 endpoint. A missing tcp6 file
// is not an error.
func CountTimeWait(dir string, endpoints []string) (map[string]int, error) {
	want := map[netip.AddrPort]string{}
	for _, ep := range endpoints {
		ap, err := netip.ParseAddrPort(ep)
		if err != nil {
			continue // not an IP endpoint (a pipe, a DNS name)
		}
		want[netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())] = ep
	}
	out := map[string]int{}
	for _, ep := range endpoints {
		if _, err := netip.ParseAddrPort(ep); err == nil {
			out[ep] = 0
		}
	}
	for _, name := range []string{"tcp", "tcp6"} {
		err := scanProcNet(filepath.Join(dir, name), func(local, remote netip.AddrPort, state string) {
			if state != tcpTimeWait {
				return
			}
			if ep, ok := want[remote]; ok {
				out[ep]++
			} else if ep, ok := want[local]; ok {
				out[ep]++
			}
		})
		if err != nil && !(name == "tcp6" && os.IsNotExist(err)) {
			return nil, err
		}
	}
	return out, nil
}

// scanProcNet calls fn for every socket line of a /proc/net/tcp{,6} file.
func scanProcNet(file string, fn func(local, remote netip.AddrPort, state string)) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	first := true
	for sc.Scan() {
		if first { // header
			first = false
			continue
		}
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 {
			continue
		}
		local, err1 := parseProcAddr(fields[1])
		remote, err2 := parseProcAddr(fields[2])
		if err1 != nil || err2 != nil {
			return fmt.Errorf("%s: line %q: bad address", file, sc.Text())
		}
		fn(local, remote, fields[3])
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	return nil
}

// parseProcAddr reads "0100007F:1F90" (IPv4) or 32 hex digits and a port
// (IPv6): the address as 32-bit words in host byte order (little-endian on
// every platform meshd runs on), the port in hex. IPv4-mapped addresses are
// unmapped.
func parseProcAddr(s string) (netip.AddrPort, error) {
	h, p, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("no port in %q", s)
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("port in %q: %w", s, err)
	}
	raw, err := hex.DecodeString(h)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.AddrPort{}, fmt.Errorf("address in %q", s)
	}
	for i := 0; i < len(raw); i += 4 { // each 32-bit word is little-endian
		raw[i], raw[i+1], raw[i+2], raw[i+3] = raw[i+3], raw[i+2], raw[i+1], raw[i]
	}
	addr, _ := netip.AddrFromSlice(net.IP(raw))
	return netip.AddrPortFrom(addr.Unmap(), uint16(port)), nil
}
