package hardening

import (
	"bufio"
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"net"
	"slices"
	"strings"
	"sync"
)

// Hand-built QUIC v1 packets (RFC 9000 section 17, protected as RFC 9001
// section 5 says) for what a well-behaved quic-go peer never sends:
// Initials from addresses that never answer, and frames that break the
// limits the server granted. Only what the attacks need is implemented.

// initialSaltV1 is the QUIC v1 initial salt (RFC 9001 section 5.2).
var initialSaltV1 = []byte{0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17, 0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad, 0xcc, 0xbb, 0x7f, 0x0a}

// QUIC frame types (RFC 9000 section 19).
const (
	frameCrypto          = 0x06
	frameStreamOffLen    = 0x0e // STREAM with OFF and LEN bits
	frameNewConnectionID = 0x18
)

// Long-header packet types of QUIC v1 (RFC 9000 section 17.2), bits 4-5
// of the first byte (not covered by header protection).
const (
	longInitial   = 0
	long0RTT      = 1
	longHandshake = 2
	longRetry     = 3
)

// minInitialDatagram is the size a client pads its Initial datagrams to
// (RFC 9000 section 14.1).
const minInitialDatagram = 1200

// hkdfExpandLabel is TLS 1.3's HKDF-Expand-Label with an empty context.
func hkdfExpandLabel(h func() hash.Hash, secret []byte, label string, n int) ([]byte, error) {
	info := binary.BigEndian.AppendUint16(nil, uint16(n))
	info = append(info, byte(len("tls13 ")+len(label)))
	info = append(info, "tls13 "...)
	info = append(info, label...)
	info = append(info, 0)
	return hkdf.Expand(h, secret, string(info), n)
}

// packetKeys protect packets of one direction at one encryption level.
type packetKeys struct {
	aead cipher.AEAD
	iv   []byte
	hp   cipher.Block
}

// newPacketKeys derives the AEAD key, IV and header protection key from a
// traffic secret for an AES-GCM suite with key length keyLen.
func newPacketKeys(h func() hash.Hash, keyLen int, secret []byte) (*packetKeys, error) {
	key, err := hkdfExpandLabel(h, secret, "quic key", keyLen)
	if err != nil {
		return nil, err
	}
	iv, err := hkdfExpandLabel(h, secret, "quic iv", 12)
	if err != nil {
		return nil, err
	}
	hpKey, err := hkdfExpandLabel(h, secret, "quic hp", keyLen)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	hp, err := aes.NewCipher(hpKey)
	if err != nil {
		return nil, err
	}
	return &packetKeys{aead: aead, iv: iv, hp: hp}, nil
}

// clientInitialKeys are the keys of a client's Initial packets sent to the
// destination connection ID dcid (RFC 9001 section 5.2).
func clientInitialKeys(dcid []byte) (*packetKeys, error) {
	initial, err := hkdf.Extract(sha256.New, dcid, initialSaltV1)
	if err != nil {
		return nil, err
	}
	secret, err := hkdfExpandLabel(sha256.New, initial, "client in", 32)
	if err != nil {
		return nil, err
	}
	return newPacketKeys(sha256.New, 16, secret)
}

// oneRTTKeys are the 1-RTT keys for a TLS 1.3 traffic secret of suite.
func oneRTTKeys(suite uint16, secret []byte) (*packetKeys, error) {
	switch suite {
	case tls.TLS_AES_128_GCM_SHA256:
		return newPacketKeys(sha256.New, 16, secret)
	case tls.TLS_AES_256_GCM_SHA384:
		return newPacketKeys(sha512.New384, 32, secret)
	}
	return nil, fmt.Errorf("cipher suite %s: only the AES-GCM suites are implemented", tls.CipherSuiteName(suite))
}

// mask is the header protection mask for the sample taken 4 bytes after
// the packet number's offset (RFC 9001 section 5.4.2).
func (k *packetKeys) mask(pkt []byte, pnOff int) ([]byte, error) {
	if len(pkt) < pnOff+4+16 {
		return nil, fmt.Errorf("packet of %d bytes too short for a header protection sample", len(pkt))
	}
	m := make([]byte, 16)
	k.hp.Encrypt(m, pkt[pnOff+4:pnOff+4+16])
	return m, nil
}

// seal protects a packet: hdr is the plain header ending with the pnLen
// bytes of packet number pn, payload the frames.
func (k *packetKeys) seal(hdr []byte, pnLen int, pn uint64, payload []byte) ([]byte, error) {
	nonce := slices.Clone(k.iv)
	for i := range 8 {
		nonce[len(nonce)-1-i] ^= byte(pn >> (8 * i))
	}
	pkt := k.aead.Seal(slices.Clip(slices.Clone(hdr)), nonce, payload, hdr)
	pnOff := len(hdr) - pnLen
	m, err := k.mask(pkt, pnOff)
	if err != nil {
		return nil, err
	}
	if pkt[0]&0x80 != 0 {
		pkt[0] ^= m[0] & 0x0f
	} else {
		pkt[0] ^= m[0] & 0x1f
	}
	for i := range pnLen {
		pkt[pnOff+i] ^= m[1+i]
	}
	return pkt, nil
}

// shortHeaderPN removes the header protection of a short-header packet
// whose destination connection ID is dcidLen bytes long and returns its
// truncated packet number, the number's length and the key phase bit.
func (k *packetKeys) shortHeaderPN(pkt []byte, dcidLen int) (pn uint64, pnLen int, keyPhase bool, err error) {
	pnOff := 1 + dcidLen
	m, err := k.mask(pkt, pnOff)
	if err != nil {
		return 0, 0, false, err
	}
	b0 := pkt[0] ^ (m[0] & 0x1f)
	pnLen = int(b0&3) + 1
	for i := range pnLen {
		pn = pn<<8 | uint64(pkt[pnOff+i]^m[1+i])
	}
	return pn, pnLen, b0&0x04 != 0, nil
}

// decodePN expands a truncated packet number of pnLen bytes given the
// largest packet number seen so far (RFC 9000 appendix A.3).
func decodePN(largest, truncated uint64, pnLen int) uint64 {
	expected := largest + 1
	win := uint64(1) << (8 * pnLen)
	hwin, mask := win/2, win-1
	candidate := expected&^mask | truncated
	switch {
	case candidate+hwin <= expected && candidate < 1<<62-win:
		return candidate + win
	case candidate > expected+hwin && candidate >= win:
		return candidate - win
	}
	return candidate
}

// appendVarint appends v as a QUIC variable-length integer.
func appendVarint(b []byte, v uint64) []byte {
	switch {
	case v < 1<<6:
		return append(b, byte(v))
	case v < 1<<14:
		return binary.BigEndian.AppendUint16(b, uint16(v)|0x4000)
	case v < 1<<30:
		return binary.BigEndian.AppendUint32(b, uint32(v)|0x80000000)
	}
	return binary.BigEndian.AppendUint64(b, v|0xc0<<56)
}

// clientHello returns the TLS ClientHello a QUIC client would send in its
// Initial CRYPTO frames, made by crypto/tls's QUIC API with transport
// parameters naming scid as the initial source connection ID (a server
// checks it). X25519 only keeps it inside one Initial packet.
func clientHello(scid []byte) ([]byte, error) {
	q := tls.QUICClient(&tls.QUICConfig{TLSConfig: &tls.Config{
		ServerName:         "localhost",
		NextProtos:         []string{"h3"},
		MinVersion:         tls.VersionTLS13,
		CurvePreferences:   []tls.CurveID{tls.X25519},
		InsecureSkipVerify: true, // the handshake never gets past the ClientHello
	}})
	defer q.Close()
	// initial_source_connection_id (0x0f) and a max_udp_payload_size
	// (0x03) of 1452, as quic-go sends.
	tp := appendVarint(nil, 0x0f)
	tp = appendVarint(tp, uint64(len(scid)))
	tp = append(tp, scid...)
	tp = appendVarint(tp, 0x03)
	tp = appendVarint(tp, 2)
	tp = appendVarint(tp, 1452)
	q.SetTransportParameters(tp)
	if err := q.Start(context.Background()); err != nil {
		return nil, fmt.Errorf("tls QUIC client start: %w", err)
	}
	var hello []byte
	for ev := q.NextEvent(); ev.Kind != tls.QUICNoEvent; ev = q.NextEvent() {
		if ev.Kind == tls.QUICWriteData && ev.Level == tls.QUICEncryptionLevelInitial {
			hello = append(hello, ev.Data...)
		}
	}
	if len(hello) == 0 {
		return nil, errors.New("tls QUIC client wrote no ClientHello")
	}
	return hello, nil
}

// initialPacket builds a client's first Initial datagram, padded to
// 1200 bytes: a fresh 8-byte destination and source connection ID and a
// CRYPTO frame with a ClientHello.
func initialPacket() ([]byte, error) {
	dcid, scid := make([]byte, 8), make([]byte, 8)
	_, _ = rand.Read(dcid)
	_, _ = rand.Read(scid)
	hello, err := clientHello(scid)
	if err != nil {
		return nil, err
	}
	keys, err := clientInitialKeys(dcid)
	if err != nil {
		return nil, err
	}
	const pnLen = 4
	hdr := []byte{0xc0 | longInitial<<4 | (pnLen - 1)}
	hdr = binary.BigEndian.AppendUint32(hdr, 1) // version 1
	hdr = append(hdr, byte(len(dcid)))
	hdr = append(hdr, dcid...)
	hdr = append(hdr, byte(len(scid)))
	hdr = append(hdr, scid...)
	hdr = appendVarint(hdr, 0) // no token
	payload := []byte{frameCrypto}
	payload = appendVarint(payload, 0)
	payload = appendVarint(payload, uint64(len(hello)))
	payload = append(payload, hello...)
	// Length (a 2-byte varint) covers the packet number, payload and tag.
	pad := minInitialDatagram - (len(hdr) + 2 + pnLen + len(payload) + 16)
	if pad < 0 {
		return nil, fmt.Errorf("ClientHello of %d bytes does not fit one Initial", len(hello))
	}
	payload = append(payload, make([]byte, pad)...) // PADDING frames
	hdr = binary.BigEndian.AppendUint16(hdr, uint16(pnLen+len(payload)+16)|0x4000)
	hdr = binary.BigEndian.AppendUint32(hdr, 0) // packet number 0
	return keys.seal(hdr, pnLen, 0, payload)
}

// keyLog collects the TLS key log a quic-go client writes (NSS key log
// format) when its tls.Config has KeyLogWriter set.
type keyLog struct {
	mu      sync.Mutex
	secrets map[string][]byte // label -> secret
}

func (k *keyLog) Write(p []byte) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.secrets == nil {
		k.secrets = map[string][]byte{}
	}
	sc := bufio.NewScanner(bytes.NewReader(p))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 3 {
			continue
		}
		if s, err := hex.DecodeString(f[2]); err == nil {
			k.secrets[f[0]] = s
		}
	}
	return len(p), nil
}

func (k *keyLog) secret(label string) []byte {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.secrets[label]
}

// injectConn is the net.PacketConn of a quic-go client through which a
// test adds its own 1-RTT packets to the client's connection: it keeps
// the short-header packets the client sends, so the client's packet
// numbers can be read back with its 1-RTT key, and after inject it drops
// the client's own packets, so none reuses the injected packet number.
type injectConn struct {
	net.PacketConn
	server net.Addr

	mu      sync.Mutex
	sent    [][]byte // the client's short-header packets (first 64 bytes)
	blocked bool
}

// SetReadBuffer and SetWriteBuffer reach the UDP socket, as quic-go asks.
func (c *injectConn) SetReadBuffer(n int) error {
	return c.PacketConn.(*net.UDPConn).SetReadBuffer(n)
}

func (c *injectConn) SetWriteBuffer(n int) error {
	return c.PacketConn.(*net.UDPConn).SetWriteBuffer(n)
}

func (c *injectConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.blocked {
		return len(p), nil
	}
	if len(p) > 0 && p[0]&0x80 == 0 {
		c.sent = append(c.sent, slices.Clone(p[:min(len(p), 64)]))
		if len(c.sent) > 256 {
			c.sent = slices.Delete(c.sent, 0, 128)
		}
	}
	return c.PacketConn.WriteTo(p, addr)
}

// inject sends one 1-RTT packet with payload to the server as if the
// client had sent it: to the server's connection ID dcid (the first
// dcidLen bytes after the client's short headers' first byte), with the
// next packet number after the client's largest, under the client's
// 1-RTT key. The client's own packets are dropped from then on.
func (c *injectConn) inject(keys *packetKeys, dcidLen int, payload []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.blocked = true
	if len(c.sent) == 0 {
		return errors.New("the client has sent no 1-RTT packet yet")
	}
	var largest uint64
	var dcid []byte
	for _, p := range c.sent {
		tpn, n, phase, err := keys.shortHeaderPN(p, dcidLen)
		if err != nil {
			continue
		}
		if phase {
			return errors.New("the client updated its 1-RTT key (key phase 1); only phase 0 is implemented")
		}
		largest = max(largest, decodePN(largest, tpn, n))
		dcid = p[1 : 1+dcidLen]
	}
	if dcid == nil {
		return errors.New("no short-header packet long enough to read")
	}
	pn := largest + 1
	const pnLen = 4
	hdr := []byte{0x40 | (pnLen - 1)} // short header, key phase 0
	hdr = append(hdr, dcid...)
	hdr = binary.BigEndian.AppendUint32(hdr, uint32(pn))
	pkt, err := keys.seal(hdr, pnLen, pn, payload)
	if err != nil {
		return err
	}
	_, err = c.PacketConn.WriteTo(pkt, c.server)
	return err
}

// streamFrame is a STREAM frame (OFF and LEN set, no FIN).
func streamFrame(id uint64, data []byte) []byte {
	b := appendVarint(nil, frameStreamOffLen)
	b = appendVarint(b, id)
	b = appendVarint(b, 0)
	b = appendVarint(b, uint64(len(data)))
	return append(b, data...)
}

// newConnectionIDFrame is a NEW_CONNECTION_ID frame with a random 8-byte
// connection ID and reset token.
func newConnectionIDFrame(seq uint64) []byte {
	b := appendVarint(nil, frameNewConnectionID)
	b = appendVarint(b, seq)
	b = appendVarint(b, 0) // retire_prior_to
	id := make([]byte, 8+16)
	_, _ = rand.Read(id)
	b = append(b, 8)
	return append(b, id...)
}
