package localratelimit

import (
	"sync/atomic"
	"time"
)

// Bucket is a token bucket refilled in discrete steps, as Envoy's local
// rate limiter fills it: every fill interval adds tokensPerFill tokens, up to
// maxTokens, and the bucket starts full. Consume is lock-free (one CAS
// loop on a single word) and safe for concurrent use.
//
// The state word packs the fill epoch (the number of whole intervals since
// the bucket was created, modulo 2^32) in its high half and the token count
// in its low half, so tokens and the time they were counted at change
// together. With Envoy's minimum fill interval of 50 ms the epoch wraps
// after 6.8 years; epoch differences are computed modulo 2^32 and only
// forward steps are applied, so a goroutine that read the clock just
// before another one stored a later epoch never moves the bucket back.
type Bucket struct {
	maxTokens     uint32
	tokensPerFill uint32
	interval      time.Duration
	start         time.Time
	now           func() time.Time

	state atomic.Uint64 // epoch<<32 | tokens
}

// NewBucket returns a full bucket. now is the clock (time.Now when nil).
func NewBucket(maxTokens, tokensPerFill uint32, interval time.Duration, now func() time.Time) *Bucket {
	if now == nil {
		now = time.Now
	}
	b := &Bucket{maxTokens: maxTokens, tokensPerFill: tokensPerFill, interval: interval, start: now(), now: now}
	b.state.Store(uint64(maxTokens))
	return b
}

// epochAt returns the fill epoch of t.
func (b *Bucket) epochAt(t time.Time) uint32 {
	return uint32(t.Sub(b.start) / b.interval)
}

// refill returns the token count of the state word old at epoch e, and the
// epoch to store (the later of the two).
func (b *Bucket) refill(old uint64, e uint32) (epoch, tokens uint32) {
	oe, ot := uint32(old>>32), uint32(old)
	d := e - oe
	if int32(d) <= 0 {
		return oe, ot
	}
	t := uint64(ot) + uint64(d)*uint64(b.tokensPerFill)
	return e, uint32(min(t, uint64(b.maxTokens)))
}

// Consume takes one token. It reports whether there was one, the tokens
// left after it, and how long until the next fill.
func (b *Bucket) Consume() (ok bool, remaining uint32, reset time.Duration) {
	now := b.now()
	e := b.epochAt(now)
	for {
		old := b.state.Load()
		epoch, tokens := b.refill(old, e)
		if tokens == 0 {
			return false, 0, b.untilFill(now)
		}
		tokens--
		if b.state.CompareAndSwap(old, uint64(epoch)<<32|uint64(tokens)) {
			return true, tokens, b.untilFill(now)
		}
	}
}

// Remaining returns the tokens available now without taking one.
func (b *Bucket) Remaining() uint32 {
	_, tokens := b.refill(b.state.Load(), b.epochAt(b.now()))
	return tokens
}

// untilFill returns the time from now to the next fill.
func (b *Bucket) untilFill(now time.Time) time.Duration {
	elapsed := now.Sub(b.start)
	return (elapsed/b.interval+1)*b.interval - elapsed
}
