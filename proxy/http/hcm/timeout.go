package hcm

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// Causes with which the watchdog cancels an exchange's or an attempt's
// context; the router turns each into Envoy's local reply and stat.
var (
	// errRouteTimeout: the route's timeout (or grpc-timeout) elapsed.
	errRouteTimeout = errors.New("upstream request timeout")
	// errPerTryTimeout: the retry policy's per_try_timeout elapsed.
	errPerTryTimeout = errors.New("upstream per-try timeout")
	// errPerTryIdleTimeout: the attempt saw no activity for the retry
	// policy's per_try_idle_timeout.
	errPerTryIdleTimeout = errors.New("upstream per-try idle timeout")
	// errStreamIdle: no activity in either direction for the stream idle
	// timeout (route idle_timeout, else HCM stream_idle_timeout).
	errStreamIdle = errors.New("stream timeout")
	// errRequestTimeout: the request was not received whole within the
	// HCM's request_timeout.
	errRequestTimeout = errors.New("request timeout")
	// errMaxStreamDuration: the downstream stream outlived its
	// max_stream_duration (route, else HCM).
	errMaxStreamDuration = errors.New("downstream duration timeout")
	// errUpstreamMaxDuration: the upstream stream outlived the cluster's
	// common_http_protocol_options.max_stream_duration.
	errUpstreamMaxDuration = errors.New("upstream max stream duration reached")
)

// watchdog enforces every timeout of one exchange with a single timer. All
// deadlines are offsets from start on the monotonic clock (0 = none). The
// timer is armed for the earliest deadline; activity only stores a
// timestamp (no timer reset per frame), and an idle deadline found not yet
// due when the timer fires is re-armed from the last activity.
type watchdog struct {
	start time.Time
	// last is the offset of the latest activity on the stream, either
	// direction.
	last atomic.Int64

	mu sync.Mutex
	t  *time.Timer
	// armed is the offset the timer fires at; 0 when it is not armed.
	armed time.Duration
	done  bool
	// Exchange deadlines; firing one cancels cancelEx.
	route, request, maxStream, idle time.Duration
	// Attempt deadlines; firing one cancels cancelTry.
	try, tryMax time.Duration
	// tryIdle is the attempt's idle limit (a duration: its deadline moves
	// with last); 0 = none.
	tryIdle   time.Duration
	cancelEx  context.CancelCauseFunc
	cancelTry context.CancelCauseFunc
}

// newWatchdog returns a watchdog for an exchange that started at start and
// whose context cancelEx cancels. Durations of 0 disable that limit.
func newWatchdog(start time.Time, cancelEx context.CancelCauseFunc, route, request, maxStream, idle time.Duration) *watchdog {
	w := &watchdog{start: start, cancelEx: cancelEx, route: route, request: request, maxStream: maxStream, idle: idle}
	w.mu.Lock()
	w.t = time.AfterFunc(time.Hour, w.fire)
	w.t.Stop()
	w.rearmLocked(w.now())
	w.mu.Unlock()
	return w
}

func (w *watchdog) now() time.Duration { return time.Since(w.start) }

// touch records activity on the stream. It is cheap enough to call for
// every chunk.
func (w *watchdog) touch() { w.last.Store(int64(w.now())) }

// requestComplete disarms request_timeout: the request has been received
// whole, or the response has started.
func (w *watchdog) requestComplete() {
	w.mu.Lock()
	w.request = 0
	w.mu.Unlock()
}

// startAttempt arms the limits of one attempt, relative to now, that
// cancel the attempt's context with their cause. Starting an attempt counts
// as activity.
func (w *watchdog) startAttempt(cancel context.CancelCauseFunc, perTry, perTryIdle, maxDuration time.Duration) {
	w.touch()
	w.mu.Lock()
	defer w.mu.Unlock()
	now := w.now()
	w.cancelTry = cancel
	w.try, w.tryMax, w.tryIdle = 0, 0, perTryIdle
	if perTry > 0 {
		w.try = now + perTry
	}
	if maxDuration > 0 {
		w.tryMax = now + maxDuration
	}
	w.rearmLocked(now)
}

// stopPerTry disarms the per-try timeout: the response has started
// downstream, so only the route timeout applies from now on (as Envoy).
func (w *watchdog) stopPerTry() {
	w.mu.Lock()
	w.try = 0
	w.mu.Unlock()
}

// endAttempt disarms the attempt's deadlines.
func (w *watchdog) endAttempt() {
	w.mu.Lock()
	w.cancelTry, w.try, w.tryMax, w.tryIdle = nil, 0, 0, 0
	w.mu.Unlock()
}

// stop disarms the watchdog for good.
func (w *watchdog) stop() {
	w.mu.Lock()
	w.done = true
	w.t.Stop()
	w.mu.Unlock()
}

// earliest returns the smallest non-zero deadline.
func (w *watchdog) earliestLocked() time.Duration {
	var min time.Duration
	for _, d := range [...]time.Duration{w.route, w.request, w.maxStream, w.try, w.tryMax} {
		if d > 0 && (min == 0 || d < min) {
			min = d
		}
	}
	for _, idle := range [...]time.Duration{w.idle, w.tryIdle} {
		if idle > 0 {
			if d := time.Duration(w.last.Load()) + idle; min == 0 || d < min {
				min = d
			}
		}
	}
	return min
}

// rearmLocked makes the timer fire at the earliest deadline, unless it
// already fires sooner.
func (w *watchdog) rearmLocked(now time.Duration) {
	if w.done {
		return
	}
	next := w.earliestLocked()
	if next == 0 || (w.armed > 0 && w.armed <= next) {
		return
	}
	w.armed = next
	w.t.Reset(max(next-now, 0))
}

// fire runs on the timer's goroutine: it cancels with the cause of every
// deadline that is due and re-arms for the rest.
func (w *watchdog) fire() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return
	}
	now := w.now()
	w.armed = 0
	due := func(d time.Duration) bool { return d > 0 && d <= now }
	var exCause error
	switch {
	case due(w.maxStream):
		exCause = errMaxStreamDuration
	case due(w.route):
		exCause = errRouteTimeout
	case due(w.request):
		exCause = errRequestTimeout
	case w.idle > 0 && time.Duration(w.last.Load())+w.idle <= now:
		exCause = errStreamIdle
	}
	if exCause != nil {
		w.done = true
		w.cancelEx(exCause)
		return
	}
	var tryCause error
	switch {
	case due(w.tryMax):
		tryCause = errUpstreamMaxDuration
	case due(w.try):
		tryCause = errPerTryTimeout
	case w.tryIdle > 0 && time.Duration(w.last.Load())+w.tryIdle <= now:
		tryCause = errPerTryIdleTimeout
	}
	if tryCause != nil {
		if w.cancelTry != nil {
			w.cancelTry(tryCause)
		}
		w.cancelTry, w.try, w.tryMax, w.tryIdle = nil, 0, 0, 0
	}
	w.rearmLocked(now)
}
