package lb

import (
	"fmt"
	"math"
	"sync"
	"testing"
)

func hosts(weights ...uint32) []*Host {
	hs := make([]*Host, len(weights))
	for i, w := range weights {
		hs[i] = NewHost(fmt.Sprintf("127.0.0.1:%d", 9000+i), w, "")
	}
	return hs
}

func count(p interface{ Pick() *Host }, n int) map[*Host]int {
	c := map[*Host]int{}
	for range n {
		c[p.Pick()]++
	}
	return c
}

func TestRegistry(t *testing.T) {
	for _, name := range []string{"ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"} {
		if _, ok := Get(name); !ok {
			t.Errorf("Get(%q): not registered", name)
		}
	}
	if _, ok := Get("MAGLEV"); ok {
		t.Error(`Get("MAGLEV"): registered, want unknown`)
	}
	if _, err := NewBalancer("RING_HASH", hosts(1), DefaultPanicThreshold); err == nil {
		t.Error("NewBalancer with unknown policy: want error")
	}
	if _, err := NewBalancer("RANDOM", hosts(1), 101); err == nil {
		t.Error("NewBalancer with threshold 101: want error")
	}
}

func TestEmptyAndSingle(t *testing.T) {
	for _, name := range []string{"ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"} {
		b, _ := Get(name)
		if h := b(nil).Pick(); h != nil {
			t.Errorf("%s over no hosts picked %v, want nil", name, h)
		}
		one := hosts(5)
		if h := b(one).Pick(); h != one[0] {
			t.Errorf("%s over one host picked %v", name, h)
		}
	}
}

// TestRoundRobinProportions checks that over whole cycles each host gets
// exactly its share, for equal and unequal weights.
func TestRoundRobinProportions(t *testing.T) {
	tests := []struct {
		name    string
		weights []uint32
	}{
		{"equal", []uint32{1, 1, 1, 1}},
		{"zero weight is one", []uint32{0, 1}},
		{"weighted", []uint32{1, 2, 3}},
		{"skewed", []uint32{1, 10, 100}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hs := hosts(tc.weights...)
			var total int
			for _, h := range hs {
				total += int(h.weight())
			}
			const cycles = 50
			got := count(newRoundRobin(hs), total*cycles)
			for _, h := range hs {
				want := int(h.weight()) * cycles
				if d := got[h] - want; d < -1 || d > 1 {
					t.Errorf("%s (weight %d): %d picks, want %d±1", h, h.Weight, got[h], want)
				}
			}
		})
	}
}

// TestRoundRobinSmooth checks the weighted schedule interleaves: with
// weights 1 and 4 the light host is never picked twice in a row.
func TestRoundRobinSmooth(t *testing.T) {
	hs := hosts(1, 4)
	p := newRoundRobin(hs)
	prev := p.Pick()
	for range 100 {
		h := p.Pick()
		if h == hs[0] && prev == hs[0] {
			t.Fatal("light host picked twice in a row")
		}
		prev = h
	}
}

func TestRandomDistribution(t *testing.T) {
	hs := hosts(1, 1, 1, 1)
	const n = 40000
	got := count(newRandom(hs), n)
	for _, h := range hs {
		// Expected n/4 = 10000, sd ≈ 87; 6 sd of slack keeps this stable.
		if math.Abs(float64(got[h])-n/4) > 520 {
			t.Errorf("%s: %d picks, want about %d", h, got[h], n/4)
		}
	}
}

func TestLeastRequestPrefersLessLoaded(t *testing.T) {
	t.Run("two hosts", func(t *testing.T) {
		hs := hosts(1, 1)
		hs[0].active.Store(3)
		p := newLeastRequest(hs)
		for range 1000 {
			if h := p.Pick(); h != hs[1] {
				t.Fatalf("picked loaded host %s", h)
			}
		}
	})
	t.Run("p2c never picks the most loaded of three", func(t *testing.T) {
		hs := hosts(1, 1, 1)
		hs[0].active.Store(100)
		hs[2].active.Store(1)
		got := count(newLeastRequest(hs), 3000)
		if got[hs[0]] != 0 {
			t.Errorf("most loaded host picked %d times", got[hs[0]])
		}
		// hs[1] wins every pair it is in (2 of 3 pairs); hs[2] only {0,2}.
		if got[hs[1]] < 1800 || got[hs[2]] > 1200 {
			t.Errorf("picks %d/%d, want about 2000/1000", got[hs[1]], got[hs[2]])
		}
	})
	t.Run("weighted divides weight by load", func(t *testing.T) {
		hs := hosts(2, 1)
		hs[0].active.Store(3) // effective weight 2/4 < 1/1
		got := count(newLeastRequest(hs), 3000)
		if got[hs[0]] >= got[hs[1]] {
			t.Errorf("loaded heavy host picked %d times, idle light host %d", got[hs[0]], got[hs[1]])
		}
	})
	t.Run("weighted honours weights when idle", func(t *testing.T) {
		hs := hosts(3, 1)
		got := count(newLeastRequest(hs), 4000)
		if d := got[hs[0]] - 3000; d < -2 || d > 2 {
			t.Errorf("weight 3 host: %d picks, want 3000", got[hs[0]])
		}
	})
}

func TestPanicThreshold(t *testing.T) {
	tests := []struct {
		name      string
		unhealthy []int
		threshold float64
		wantPanic bool
		want      []int // indexes that may be picked; nil means Pick is nil
	}{
		{"all healthy", nil, 50, false, []int{0, 1, 2, 3}},
		{"half healthy is not panic", []int{0, 1}, 50, false, []int{2, 3}},
		{"below threshold picks all", []int{0, 1, 2}, 50, true, []int{0, 1, 2, 3}},
		{"all unhealthy picks all", []int{0, 1, 2, 3}, 50, true, []int{0, 1, 2, 3}},
		{"panic disabled, some healthy", []int{0, 1, 2}, 0, false, []int{3}},
		{"panic disabled, none healthy", []int{0, 1, 2, 3}, 0, false, nil},
		{"threshold 100, one unhealthy", []int{0}, 100, true, []int{0, 1, 2, 3}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hs := hosts(1, 1, 1, 1)
			for _, i := range tc.unhealthy {
				if !hs[i].SetHealthy(false) {
					t.Fatalf("SetHealthy(false) on healthy host reported no change")
				}
			}
			b, err := NewBalancer("ROUND_ROBIN", hs, tc.threshold)
			if err != nil {
				t.Fatal(err)
			}
			if b.Panic() != tc.wantPanic {
				t.Errorf("Panic() = %v, want %v", b.Panic(), tc.wantPanic)
			}
			got := count(b, 400)
			if tc.want == nil {
				if got[nil] != 400 {
					t.Errorf("picked hosts %v, want nil", got)
				}
				return
			}
			allowed := map[*Host]bool{}
			for _, i := range tc.want {
				allowed[hs[i]] = true
				if got[hs[i]] == 0 {
					t.Errorf("%s never picked", hs[i])
				}
			}
			for h := range got {
				if !allowed[h] {
					t.Errorf("%v picked, not eligible", h)
				}
			}
		})
	}
}

func TestRefreshSeesHealthChange(t *testing.T) {
	hs := hosts(1, 1, 1)
	b, err := NewBalancer("RANDOM", hs, DefaultPanicThreshold)
	if err != nil {
		t.Fatal(err)
	}
	if hs[1].SetHealthy(true) {
		t.Error("SetHealthy(true) on healthy host reported a change")
	}
	hs[1].SetHealthy(false)
	b.Refresh()
	if got := count(b, 300); got[hs[1]] != 0 {
		t.Errorf("unhealthy host picked %d times after Refresh", got[hs[1]])
	}
	hs[1].SetHealthy(true)
	b.Refresh()
	if got := count(b, 300); got[hs[1]] == 0 {
		t.Error("healthy-again host never picked after Refresh")
	}
}

// TestConcurrentHammer exercises every policy from many goroutines while
// hosts change load and health and the picker is rebuilt; run with -race.
func TestConcurrentHammer(t *testing.T) {
	for _, policy := range []string{"ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"} {
		for _, weights := range [][]uint32{{1, 1, 1, 1}, {1, 2, 3, 4}} {
			t.Run(fmt.Sprint(policy, weights), func(t *testing.T) {
				hs := hosts(weights...)
				b, err := NewBalancer(policy, hs, DefaultPanicThreshold)
				if err != nil {
					t.Fatal(err)
				}
				var wg sync.WaitGroup
				for range 8 {
					wg.Go(func() {
						for range 2000 {
							h := b.Pick()
							if h == nil {
								t.Error("Pick returned nil with hosts available")
								return
							}
							h.Acquire()
							h.Release()
						}
					})
				}
				for w := range 2 {
					wg.Go(func() {
						for i := range 200 {
							hs[(i+w)%len(hs)].SetHealthy(i%3 != 0)
							if i%50 == 0 {
								b.Update(hs)
							} else {
								b.Refresh()
							}
						}
					})
				}
				wg.Wait()
				for _, h := range hs {
					if n := h.ActiveRequests(); n != 0 {
						t.Errorf("%s: %d active requests after all released", h, n)
					}
				}
			})
		}
	}
}

func BenchmarkPick(b *testing.B) {
	for _, policy := range []string{"ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"} {
		for _, weighted := range []bool{false, true} {
			ws := make([]uint32, 16)
			for i := range ws {
				ws[i] = 1
				if weighted {
					ws[i] = uint32(i + 1)
				}
			}
			b.Run(fmt.Sprintf("%s/weighted=%v", policy, weighted), func(b *testing.B) {
				bal, err := NewBalancer(policy, hosts(ws...), DefaultPanicThreshold)
				if err != nil {
					b.Fatal(err)
				}
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						bal.Pick()
					}
				})
			})
		}
	}
}
