package main

import (
	"encoding/binary"
	"fmt"
	"math"
	"time"
)

// bucketState is one token bucket as stored in shared data: 16 bytes, the
// token count (float64 bits) and the time it was last refilled (Unix ns).
// Refilling is a pure function of elapsed time, so any VM (a request's or a
// tick's) may apply it and the result does not depend on who did.
type bucketState struct {
	tokens float64
	last   int64
}

const bucketStateSize = 16

// encodeTo encodes b into buf (at least bucketStateSize bytes) and returns
// the encoded bytes.
func (b bucketState) encodeTo(buf []byte) []byte {
	buf = buf[:bucketStateSize]
	binary.LittleEndian.PutUint64(buf[0:], math.Float64bits(b.tokens))
	binary.LittleEndian.PutUint64(buf[8:], uint64(b.last))
	return buf
}

func decodeBucket(buf []byte) (bucketState, error) {
	if len(buf) != bucketStateSize {
		return bucketState{}, fmt.Errorf("bucket state: want %d bytes, got %d", bucketStateSize, len(buf))
	}
	return bucketState{
		tokens: math.Float64frombits(binary.LittleEndian.Uint64(buf[0:])),
		last:   int64(binary.LittleEndian.Uint64(buf[8:])),
	}, nil
}

// limits is the immutable shape of every bucket of one plugin configuration.
type limits struct {
	capacity float64 // tokens a full bucket holds (burst)
	perNano  float64 // tokens added per nanosecond
	lease    float64 // most tokens a VM takes at once (see leaseWindow)
}

// newLimits returns the limits of buckets holding capacity tokens and
// earning perUnit tokens per unit.
func newLimits(capacity, perUnit int64, unit time.Duration) limits {
	l := limits{capacity: float64(capacity), perNano: float64(perUnit) / float64(unit)}
	l.lease = math.Max(1, math.Min(math.Floor(l.perNano*float64(leaseWindow)), math.Floor(l.capacity/16)))
	return l
}

// refill adds the tokens earned between b.last and now (Unix ns), capped at
// capacity. A clock that went backwards earns nothing.
func (l limits) refill(b bucketState, now int64) bucketState {
	if now > b.last {
		b.tokens = math.Min(l.capacity, b.tokens+float64(now-b.last)*l.perNano)
		b.last = now
	}
	return b
}

// full is a bucket as first seen: full at now (Unix ns).
func (l limits) full(now int64) bucketState {
	return bucketState{tokens: l.capacity, last: now}
}

// untilFull is the time in ns until b is full, math.MaxInt64 when that
// does not fit (a large burst refilled slowly: 4e9 tokens at one a minute
// take 2.4e20 ns).
func (l limits) untilFull(b bucketState) int64 {
	missing := l.capacity - b.tokens
	if missing <= 0 {
		return 0
	}
	return ceilInt64(missing / l.perNano)
}

// resetSeconds is the whole number of seconds (rounded up) until b is full.
func (l limits) resetSeconds(b bucketState) int64 {
	missing := l.capacity - b.tokens
	if missing <= 0 {
		return 0
	}
	return ceilInt64(missing / l.perNano / float64(time.Second))
}

// ceilInt64 rounds x (x >= 0) up to an int64, saturating at
// math.MaxInt64 where a plain conversion is undefined.
func ceilInt64(x float64) int64 {
	if x = math.Ceil(x); x >= math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(x)
}
