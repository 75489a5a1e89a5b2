package park

import (
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"meshd.dev/meshd/internal/testutil"
)

// served records which goroutine served which value.
type served struct {
	g, v int
}

// recorder collects served values from the goroutines of a test.
type recorder struct {
	mu   sync.Mutex
	seen []served
}

func (r *recorder) add(g, v int) {
	r.mu.Lock()
	r.seen = append(r.seen, served{g, v})
	r.mu.Unlock()
}

func (r *recorder) all() []served {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.seen)
}

// startParked starts n goroutines in s.Run, one after the other, each
// parked before the next starts, so goroutine n-1 is on top. Goroutine g
// serves its first value, -1-g, at once; a handed value v >= 0 blocks
// until gate is closed. Run must be inside a synctest bubble.
func startParked(t *testing.T, s *Stack[int], n int, rec *recorder, gate chan struct{}, wg *sync.WaitGroup) {
	t.Helper()
	for g := range n {
		wg.Go(func() {
			s.Run(-1-g, func(v int) {
				rec.add(g, v)
				if v >= 0 {
					<-gate
				}
			})
		})
		synctest.Wait()
		if got := s.Parked(); got != g+1 {
			t.Fatalf("%d goroutines parked after starting %d", got, g+1)
		}
	}
}

// TestHand checks that values handed over go to the goroutines parked,
// most recently parked first, each to exactly one, and that a hand-over
// with none parked is refused.
func TestHand(t *testing.T) {
	testutil.CheckGoroutines(t)
	for _, tc := range []struct {
		name    string
		parked  int
		hands   int
		want    []int // goroutine serving the i-th value handed over
		refused int
	}{
		{name: "none parked", parked: 0, hands: 2, refused: 2},
		{name: "one parked", parked: 1, hands: 1, want: []int{0}},
		{name: "most recent first", parked: 3, hands: 3, want: []int{2, 1, 0}},
		{name: "more values than parked", parked: 2, hands: 4, want: []int{1, 0}, refused: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				s := New[int](time.Second)
				var rec recorder
				var wg sync.WaitGroup
				gate := make(chan struct{})
				startParked(t, s, tc.parked, &rec, gate, &wg)
				refused := 0
				for v := range tc.hands {
					if !s.Hand(v) {
						refused++
					}
				}
				synctest.Wait()
				if refused != tc.refused {
					t.Errorf("%d hand-overs refused, want %d", refused, tc.refused)
				}
				handed := rec.all()[tc.parked:]
				slices.SortFunc(handed, func(a, b served) int { return a.v - b.v })
				var got []int
				for i, r := range handed {
					if r.v != i {
						t.Fatalf("values served %v, want 0 to %d once each", handed, len(tc.want)-1)
					}
					got = append(got, r.g)
				}
				if !slices.Equal(got, tc.want) {
					t.Errorf("values served by goroutines %v, want %v", got, tc.want)
				}
				// Served, they park again.
				close(gate)
				synctest.Wait()
				if got := s.Parked(); got != tc.parked {
					t.Errorf("%d goroutines parked after serving, want %d", got, tc.parked)
				}
				s.Close()
				wg.Wait()
			})
		})
	}
}

// TestHandReusesTop checks that a goroutine that served a handed value
// parks on top again and gets the next one: under light load one warm
// goroutine serves everything and the others idle out.
func TestHandReusesTop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := New[int](time.Second)
		var rec recorder
		var wg sync.WaitGroup
		gate := make(chan struct{})
		close(gate)
		startParked(t, s, 3, &rec, gate, &wg)
		for v := range 5 {
			if !s.Hand(v) {
				t.Fatalf("hand-over %d refused with 3 parked", v)
			}
			synctest.Wait()
		}
		for _, r := range rec.all()[3:] {
			if r.g != 2 {
				t.Errorf("value %d served by goroutine %d, want 2 (the top)", r.v, r.g)
			}
		}
		s.Close()
		wg.Wait()
	})
}

// TestIdleExit checks that a parked goroutine exits after one to two park
// times without a value, at the reaper tick that follows a whole tick
// parked, and that serving a value starts its wait again.
func TestIdleExit(t *testing.T) {
	const d = 100 * time.Millisecond
	for _, tc := range []struct {
		name  string
		parks []time.Duration // when each goroutine starts (and parks)
		hands []time.Duration // when a value is handed (to the top goroutine)
		exits []time.Duration // when each goroutine returns from Run
	}{
		// The first park arms the reaper: ticks at d, 2d, 3d...
		{name: "alone", parks: []time.Duration{0}, exits: []time.Duration{2 * d}},
		{name: "same tick", parks: []time.Duration{0, d / 2}, exits: []time.Duration{2 * d, 2 * d}},
		{name: "next tick", parks: []time.Duration{0, 3 * d / 2}, exits: []time.Duration{2 * d, 3 * d}},
		// The top goroutine (1) serves a value at 3d/2 and parks again:
		// parked after the tick at d, it outlives that at 2d.
		{name: "served again", parks: []time.Duration{0, d / 2}, hands: []time.Duration{3 * d / 2},
			exits: []time.Duration{2 * d, 3 * d}},
		// The reaper stopped once none was parked; a later park re-arms it.
		{name: "re-armed", parks: []time.Duration{0, 5 * d / 2}, exits: []time.Duration{2 * d, 9 * d / 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				s := New[int](d)
				start := time.Now()
				exits := make([]time.Duration, len(tc.parks))
				var wg sync.WaitGroup
				type event struct {
					at   time.Duration
					park int // index in tc.parks, or -1 for a hand-over
				}
				var events []event
				for i, at := range tc.parks {
					events = append(events, event{at, i})
				}
				for _, at := range tc.hands {
					events = append(events, event{at, -1})
				}
				slices.SortStableFunc(events, func(a, b event) int { return int(a.at - b.at) })
				for _, e := range events {
					time.Sleep(e.at - time.Since(start))
					if e.park < 0 {
						if !s.Hand(0) {
							t.Fatalf("hand-over at %v refused", e.at)
						}
						continue
					}
					wg.Go(func() {
						s.Run(0, func(int) {})
						exits[e.park] = time.Since(start)
					})
					synctest.Wait()
				}
				wg.Wait()
				if !slices.Equal(exits, tc.exits) {
					t.Errorf("goroutines exited at %v, want %v", exits, tc.exits)
				}
				for i, at := range tc.parks {
					if idle := exits[i] - at; idle < d {
						t.Errorf("goroutine %d exited %v after it parked, before the park time %v", i, idle, d)
					}
				}
				s.mu.Lock()
				reaping := s.reaping
				s.mu.Unlock()
				if reaping {
					t.Error("reaper still armed with no goroutine parked")
				}
				s.Close()
			})
		})
	}
}

// TestClose checks that Close releases every parked goroutine at once,
// that hand-overs are refused after it, and that a goroutine started with
// Run after it serves its first value and returns.
func TestClose(t *testing.T) {
	testutil.CheckGoroutines(t)
	synctest.Test(t, func(t *testing.T) {
		s := New[int](time.Second)
		var rec recorder
		var wg sync.WaitGroup
		gate := make(chan struct{})
		close(gate)
		startParked(t, s, 4, &rec, gate, &wg)
		start := time.Now()
		s.Close()
		wg.Wait()
		if waited := time.Since(start); waited != 0 {
			t.Errorf("parked goroutines returned %v after Close, want at once", waited)
		}
		if s.Parked() != 0 {
			t.Errorf("%d goroutines parked after Close", s.Parked())
		}
		if s.Hand(1) {
			t.Error("Hand accepted a value after Close")
		}
		wg.Go(func() { s.Run(7, func(v int) { rec.add(9, v) }) })
		wg.Wait()
		if got := rec.all(); !slices.Contains(got, served{9, 7}) {
			t.Errorf("Run after Close did not serve its value: %v", got)
		}
		s.Close() // idempotent
	})
}

// TestConcurrent hammers Hand, Run's parking and the reaper (a park time
// of a millisecond) from several goroutines, with Close arriving while
// values are still being handed: every value is served exactly once,
// either by a parked goroutine or by one started for it, and every
// goroutine returns.
func TestConcurrent(t *testing.T) {
	testutil.CheckGoroutines(t)
	const (
		producers = 4
		perProd   = 2000
		closeAt   = producers * perProd * 3 / 4
	)
	s := New[int](time.Millisecond)
	var count [producers * perProd]atomic.Int32
	var handed, started atomic.Int64
	serve := func(v int) {
		count[v].Add(1)
		if v%7 == 0 {
			runtime.Gosched()
		}
	}
	var runs, prods sync.WaitGroup
	var sent atomic.Int64
	for p := range producers {
		prods.Go(func() {
			for i := range perProd {
				v := p*perProd + i
				if sent.Add(1) == closeAt {
					s.Close()
				}
				if s.Hand(v) {
					handed.Add(1)
					continue
				}
				started.Add(1)
				runs.Go(func() { s.Run(v, serve) })
				if i%50 == 0 {
					time.Sleep(time.Millisecond) // let the reaper release some
				}
			}
		})
	}
	prods.Wait()
	runs.Wait()
	for v := range count {
		if n := count[v].Load(); n != 1 {
			t.Fatalf("value %d served %d times", v, n)
		}
	}
	if handed.Load() == 0 || started.Load() == 0 {
		t.Errorf("%d values handed over, %d goroutines started: want both", handed.Load(), started.Load())
	}
	t.Logf("%d values handed to parked goroutines, %d goroutines started", handed.Load(), started.Load())
}
