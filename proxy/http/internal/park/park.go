// Package park keeps a connection's idle handler goroutines so that its
// next request streams reuse them instead of starting new ones.
//
// A handler goroutine runs [Stack.Run]: it serves the stream it was
// started for, then parks on the connection's [Stack] and serves every
// stream the accept path hands it with [Stack.Hand], until it is
// released. A reused goroutine keeps the stack that routing, filters and
// the upstream call grew; a fresh one starts small and copies its stack
// as they deepen it, again for every request.
//
// Guarantees:
//   - A value Hand accepted (returned true for) is served by exactly one
//     goroutine: the one parked most recently (LIFO, so the warmest stacks
//     stay busy and the coldest are the first to go). A value Hand refused
//     is the caller's: it starts a goroutine with Run, or drops the work.
//   - An idle goroutine exits after one to two park times: one timer per
//     Stack, armed only while goroutines are parked, ticks every park time
//     and releases those that stayed parked through a whole tick. Parking
//     and handing over read no clock; only a goroutine parking on an empty
//     Stack arms the timer.
//   - [Stack.Close] releases every parked goroutine at once; afterwards Hand
//     refuses every value and Run returns as soon as its first value is
//     served. With Close called, no goroutine stays in Run past its serve
//     call, and the timer is stopped: nothing leaks.
package park

import (
	"sync"
	"time"
)

// Stack holds the goroutines parked in [Stack.Run] waiting for values of
// type T (request streams), the most recently parked on top. Its methods
// are safe for concurrent use. Create it with [New].
type Stack[T any] struct {
	d time.Duration // park time; immutable

	mu      sync.Mutex
	parked  []*waiter[T] // bottom (parked longest) first; gen never decreases upwards
	gen     uint64       // reaper ticks so far
	reaper  *time.Timer  // armed while reaping
	reaping bool         // parked is not empty and the reaper is armed
	closed  bool
}

// waiter is one goroutine parked in Run.
type waiter[T any] struct {
	// ch receives the goroutine's next value; it has room for one, so
	// Hand never waits. It is closed to release the goroutine. Only the
	// holder of the waiter, popped from the stack under mu, sends on it or
	// closes it, so each value is received once.
	ch  chan T
	gen uint64 // Stack.gen when it parked
}

// New returns an empty Stack whose parked goroutines exit after one to two
// parkTimes without a value. It panics if parkTime is not positive.
func New[T any](parkTime time.Duration) *Stack[T] {
	if parkTime <= 0 {
		panic("park: parkTime must be positive")
	}
	return &Stack[T]{d: parkTime}
}

// Run calls serve(v) on the calling goroutine, then parks it and calls
// serve with each value [Stack.Hand] gives it, until the reaper or
// [Stack.Close] releases it; it returns then. serve must not call Run.
func (s *Stack[T]) Run(v T, serve func(T)) {
	var w *waiter[T]
	for {
		serve(v)
		if w == nil {
			w = &waiter[T]{ch: make(chan T, 1)}
		}
		if !s.park(w) {
			return
		}
		var ok bool
		if v, ok = <-w.ch; !ok {
			return
		}
	}
}

// park pushes w on the stack and arms the reaper if it is not; false when
// the Stack is closed.
func (s *Stack[T]) park(w *waiter[T]) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	w.gen = s.gen
	s.parked = append(s.parked, w)
	if !s.reaping {
		s.reaping = true
		if s.reaper == nil {
			s.reaper = time.AfterFunc(s.d, s.reap)
		} else {
			s.reaper.Reset(s.d)
		}
	}
	return true
}

// Hand gives v to the goroutine parked most recently and reports whether
// there was one. It never blocks. On false (no goroutine parked, or the
// Stack closed) v is still the caller's to serve or drop.
func (s *Stack[T]) Hand(v T) bool {
	s.mu.Lock()
	n := len(s.parked)
	if n == 0 {
		s.mu.Unlock()
		return false
	}
	w := s.parked[n-1]
	s.parked[n-1] = nil
	s.parked = s.parked[:n-1]
	s.mu.Unlock()
	w.ch <- v
	return true
}

// Parked returns how many goroutines are parked now.
func (s *Stack[T]) Parked() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.parked)
}

// Close releases every parked goroutine and stops the reaper; later Hand
// calls return false and goroutines finishing a value in Run return
// instead of parking. It is idempotent.
func (s *Stack[T]) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	for _, w := range s.parked {
		close(w.ch)
	}
	s.parked = nil
	if s.reaper != nil {
		s.reaper.Stop()
	}
	s.reaping = false
}

// reap runs every park time while goroutines are parked and releases
// those that stayed parked through a whole tick (parked before the
// previous tick), so an idle goroutine exits after one to two park times.
func (s *Stack[T]) reap() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || !s.reaping {
		return
	}
	s.gen++
	n := 0
	for n < len(s.parked) && s.parked[n].gen+2 <= s.gen {
		close(s.parked[n].ch)
		n++
	}
	rest := copy(s.parked, s.parked[n:])
	clear(s.parked[rest:])
	s.parked = s.parked[:rest]
	if len(s.parked) > 0 {
		s.reaper.Reset(s.d)
	} else {
		s.reaping = false
	}
}
