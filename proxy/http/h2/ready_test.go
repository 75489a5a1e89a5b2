package h2

import "testing"

// TestReadyQueue: the writer's ready list stays FIFO while it is popped
// and pushed in turn, and reuses its array instead of growing.
func TestReadyQueue(t *testing.T) {
	c := &conn{}
	c.wcond.L = &c.mu
	streams := make([]*strm, 6)
	for i := range streams {
		s := &strm{id: uint32(2*i + 1), sendWin: 100}
		s.sendQ.append([]byte("x"))
		streams[i] = s
	}
	push := func(s *strm) { s.inReady = false; c.markReady(s) }
	pop := func() uint32 {
		s := c.ready[c.readyHead]
		c.popReady()
		return s.id
	}
	var got []uint32
	// Round robin as the writer does it: pop the head, push it back.
	for _, s := range streams[:3] {
		push(s)
	}
	capBefore := cap(c.ready)
	for range 50 {
		id := pop()
		got = append(got, id)
		push(streams[(id-1)/2])
	}
	for i, id := range got {
		if want := uint32(2*(i%3) + 1); id != want {
			t.Fatalf("pop %d = stream %d, want %d (order %v)", i, id, want, got[:i+1])
		}
	}
	if cap(c.ready) != capBefore {
		t.Fatalf("ready array grew from %d to %d with 3 streams", capBefore, cap(c.ready))
	}
	for range 3 {
		pop()
	}
	if c.readyHead != 0 || len(c.ready) != 0 {
		t.Fatalf("drained queue: head %d, len %d", c.readyHead, len(c.ready))
	}
	allocs := testing.AllocsPerRun(100, func() {
		for _, s := range streams {
			push(s)
		}
		for range streams {
			pop()
		}
	})
	if allocs != 0 {
		t.Fatalf("%.1f allocations per round of 6 streams, want 0", allocs)
	}
	for _, s := range streams {
		s.sendQ.reset()
	}
}
