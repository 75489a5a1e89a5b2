package listener

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/ipv4"

	"meshd.dev/meshd/proxy/stats"
)

// longPacket is a QUIC v1 long-header packet of type typ (0 Initial,
// 1 0-RTT, 2 Handshake) with 8-byte connection IDs and n payload bytes.
func longPacket(typ byte, n int) []byte {
	b := []byte{0xc0 | typ<<4 | 3}
	b = binary.BigEndian.AppendUint32(b, 1)
	b = append(b, 8, 1, 2, 3, 4, 5, 6, 7, 8, 8, 8, 7, 6, 5, 4, 3, 2, 1)
	if typ == 0 {
		b = append(b, 0) // empty token
	}
	b = binary.BigEndian.AppendUint16(b, uint16(n)|0x4000)
	return append(b, make([]byte, n)...)
}

func TestValidates(t *testing.T) {
	initial := longPacket(0, 1100)
	cids := [][]byte{{1, 2, 3, 4, 5, 6, 7, 8}}
	other := [][]byte{{9, 9, 9, 9}}
	short := append([]byte{0x41, 1, 2, 3, 4, 5, 6, 7, 8}, make([]byte, 30)...)
	for _, tc := range []struct {
		name string
		d    []byte
		cids [][]byte
		want bool
	}{
		{"1-RTT to the server's ID", short, cids, true},
		{"1-RTT to another ID", short, other, false},
		{"1-RTT without the fixed bit", append([]byte{0x01}, short[1:]...), cids, false},
		{"Initial", initial, cids, false},
		{"0-RTT", longPacket(1, 200), cids, false},
		{"Handshake to the server's ID", longPacket(2, 100), cids, true},
		{"Handshake to another ID", longPacket(2, 100), other, false},
		{"Handshake before the server sent anything", longPacket(2, 100), nil, false},
		{"Initial coalesced with Handshake", append(longPacket(0, 50), longPacket(2, 100)...), cids, true},
		{"Initial coalesced with 1-RTT", append(longPacket(0, 50), short...), cids, true},
		{"Initial with zero padding after it", append(longPacket(0, 50), make([]byte, 100)...), cids, false},
		{"truncated Initial", initial[:12], cids, false},
		{"Length past the datagram", longPacket(0, 100)[:80], cids, false},
		{"huge token length", append([]byte{0xc0, 0, 0, 0, 1, 0, 0, 0xbf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, make([]byte, 20)...), cids, false},
		{"version 2", append([]byte{0xd0, 0x6b, 0x33, 0x43, 0xcf}, longPacket(2, 10)[5:]...), cids, false},
		{"Retry type", longPacket(3, 10), cids, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := validates(tc.d, tc.cids); got != tc.want {
				t.Fatalf("validates = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestAmplificationLimit drives an amplificationConn over real sockets:
// an address that sent one 1200-byte Initial gets at most 3 600 bytes
// (two 1280-byte datagrams, not a third, which is counted as dropped);
// its Handshake packet lifts the limit; addresses never seen are not
// limited; an entry idle past the TTL is forgotten.
func TestAmplificationLimit(t *testing.T) {
	srvUDP, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer srvUDP.Close()
	st := stats.NewStore()
	dropped := st.Root().Counter("amplification_dropped")
	c := newAmplificationConn(srvUDP, time.Minute, dropped)
	client, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
	_ = srvUDP.SetReadDeadline(time.Now().Add(5 * time.Second))

	initial := longPacket(0, 1200-len(longPacket(0, 0)))
	if _, err := client.WriteTo(initial, srvUDP.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	ms := []ipv4.Message{{Buffers: [][]byte{make([]byte, 2048)}}}
	n, err := c.ReadBatch(ms, 0)
	if err != nil || n != 1 || ms[0].N != 1200 {
		t.Fatalf("ReadBatch: %d messages, %d bytes, %v", n, ms[0].N, err)
	}
	from := ms[0].Addr
	// The server's datagrams: an Initial whose source connection ID is
	// the one the client's Handshake packet is sent to below.
	pkt := make([]byte, 1280)
	copy(pkt, longPacket(0, 0))
	copy(pkt[14:], []byte{8, 1, 2, 3, 4, 5, 6, 7, 8})
	for i := range 3 {
		if _, err := c.WriteTo(pkt, from); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	if got := dropped.Value(); got != 1 {
		t.Fatalf("amplification_dropped %d after 3 x 1280 bytes for 1200 received, want 1", got)
	}
	buf := make([]byte, 2048)
	for i := range 2 {
		if k, _, err := client.ReadFrom(buf); err != nil || k != 1280 {
			t.Fatalf("datagram %d at the client: %d bytes, %v", i, k, err)
		}
	}

	// A Handshake packet to an ID the server chose elsewhere does not
	// validate; one to the server's ID does, and lifts the limit.
	forged := longPacket(2, 40)
	forged[6] = 9
	if _, err := client.WriteTo(forged, srvUDP.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.ReadFrom(buf); err != nil {
		t.Fatal(err)
	}
	if c.tracked.Load() != 1 {
		t.Fatal("a Handshake packet to an unknown connection ID validated the address")
	}
	if _, err := client.WriteTo(longPacket(2, 40), srvUDP.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.ReadFrom(buf); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if _, _, err := c.WriteMsgUDP(pkt, nil, from.(*net.UDPAddr)); err != nil {
			t.Fatal(err)
		}
	}
	if got, tracked := dropped.Value(), c.tracked.Load(); got != 1 || tracked != 0 {
		t.Fatalf("after validation: amplification_dropped %d (want 1), %d addresses tracked (want 0)", got, tracked)
	}
	for i := range 5 {
		if k, _, err := client.ReadFrom(buf); err != nil || k != 1280 {
			t.Fatalf("datagram %d after validation: %d bytes, %v", i, k, err)
		}
	}

	// An address never seen is not limited (validated and forgotten, or
	// a stateless reset's target), nor are 1-RTT datagrams.
	if !c.allow(&net.UDPAddr{IP: net.IPv4(127, 0, 0, 9), Port: 9}, make([]byte, 1<<16)) {
		t.Fatal("a write to an address never seen was refused")
	}
	c.received(&net.UDPAddr{IP: net.IPv4(127, 0, 0, 4), Port: 4}, initial)
	if !c.allow(&net.UDPAddr{IP: net.IPv4(127, 0, 0, 4), Port: 4}, append([]byte{0x40}, make([]byte, 1<<15)...)) {
		t.Fatal("a 1-RTT datagram to a tracked address was refused")
	}

	// Entries go after the TTL, swept by the next read.
	c.ttl = time.Millisecond
	c.received(&net.UDPAddr{IP: net.IPv4(127, 0, 0, 2), Port: 2}, initial)
	time.Sleep(5 * time.Millisecond)
	c.swept = time.Time{}
	c.received(&net.UDPAddr{IP: net.IPv4(127, 0, 0, 3), Port: 3}, initial)
	c.mu.Lock()
	_, stale := c.addrs[netip.MustParseAddrPort("127.0.0.2:2")]
	c.mu.Unlock()
	if stale || c.tracked.Load() != 1 {
		t.Fatalf("after the TTL: stale entry kept %v, %d tracked (want only the new one)", stale, c.tracked.Load())
	}
}

// BenchmarkAmplificationAccounting is the per-datagram cost the socket
// adds: a 1-RTT datagram read and one written with no address tracked
// (every established connection), and with 1 000 addresses tracked
// during a flood.
func BenchmarkAmplificationAccounting(b *testing.B) {
	from := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 4433}
	oneRTT := append([]byte{0x41, 1, 2, 3, 4}, make([]byte, 1200)...)
	for _, tracked := range []int{0, 1000} {
		b.Run(map[int]string{0: "idle", 1000: "flood"}[tracked], func(b *testing.B) {
			udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				b.Fatal(err)
			}
			defer udp.Close()
			c := newAmplificationConn(udp, time.Minute, stats.NewStore().Root().Counter("d"))
			initial := longPacket(0, 1100)
			for i := range tracked {
				c.received(&net.UDPAddr{IP: net.IPv4(127, 0, byte(i>>8), byte(i)), Port: 1}, initial)
			}
			b.ReportAllocs()
			for b.Loop() {
				c.received(from, oneRTT)
				if !c.allow(from, oneRTT) {
					b.Fatal("refused")
				}
			}
		})
	}
}
