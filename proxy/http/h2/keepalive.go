package h2

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"time"
)

// keepalivePing is a connection's keepalive PING, the same on both ends:
// at most one is outstanding; its payload is a sequence number counting
// from 1 (so it is never the server's shutdownPingData); and when its ACK
// does not arrive within timeout the connection closes with
// errKeepaliveTimeout, counting http2.keepalive_timeout. Its fields are
// guarded by c.mu; c and timeout are set before first use.
type keepalivePing struct {
	c           *conn
	timeout     time.Duration
	outstanding bool
	seq         uint64
	data        [8]byte
	sentAt      time.Time     // when the outstanding PING was queued
	rtt         time.Duration // the last round trip; 0: none yet
	timer       *time.Timer   // fires expired; nil until the first PING
}

// sendLocked queues a PING and arms its timeout, unless one is already
// outstanding. Caller holds c.mu.
func (k *keepalivePing) sendLocked() {
	if k.outstanding {
		return
	}
	k.outstanding = true
	k.sentAt = time.Now()
	k.seq++
	binary.BigEndian.PutUint64(k.data[:], k.seq)
	k.c.queue(ctrlItem{kind: ctrlPing, ping: k.data})
	if k.timer == nil {
		k.timer = time.AfterFunc(k.timeout, k.expired)
	} else {
		k.timer.Reset(k.timeout)
	}
}

// ackLocked reports whether a PING ACK carrying data answers the
// outstanding PING; if it does, it records the round trip and disarms the
// timeout. Caller holds c.mu.
func (k *keepalivePing) ackLocked(data [8]byte) bool {
	if !k.outstanding || data != k.data {
		return false
	}
	k.outstanding = false
	k.rtt = time.Since(k.sentAt)
	k.timer.Stop()
	return true
}

// stopLocked disarms the timeout of a closing connection. Caller holds
// c.mu.
func (k *keepalivePing) stopLocked() {
	if k.timer != nil {
		k.timer.Stop()
	}
}

// expired closes the connection if its PING is still unanswered. Timer
// goroutine.
func (k *keepalivePing) expired() {
	c := k.c
	c.mu.Lock()
	expired := k.outstanding && !c.closed
	c.mu.Unlock()
	if !expired {
		return
	}
	c.st.KeepaliveTimeout.Inc()
	c.log.Debug("http2 keepalive timeout", "timeout", k.timeout)
	c.closeWith(errKeepaliveTimeout)
}

// jittered is interval plus a uniformly random jitter in
// [0, interval*percent/100), as Envoy's connection_keepalive.interval_jitter
// spreads the PINGs of connections opened together.
func jittered(interval time.Duration, percent float64) time.Duration {
	if j := time.Duration(float64(interval) * percent / 100); j > 0 {
		return interval + rand.N(j)
	}
	return interval
}

// errKeepaliveTimeout is the cause of a connection closed because a
// keepalive PING went unanswered.
var errKeepaliveTimeout = errors.New("http2: keepalive PING not acknowledged in time")

// ErrKeepaliveTimeout is the error OnClose reports (errors.Is) for a
// connection closed because a keepalive PING was not acknowledged within
// KeepaliveTimeout.
var ErrKeepaliveTimeout = errKeepaliveTimeout
