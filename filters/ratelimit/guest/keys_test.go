package main

import (
	"errors"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/proxytest"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"
)

// recordingVM is the guest's VM context keeping the plugin context it
// made, optionally altered by wrap before the plugin starts.
type recordingVM struct {
	vmContext
	wrap   func(*pluginContext)
	plugin *pluginContext
}

func (v *recordingVM) NewPluginContext(uint32) types.PluginContext {
	p := newPluginContext(v.now)
	if v.wrap != nil {
		v.wrap(p)
	}
	v.plugin = p
	return p
}

// startRecorded starts the plugin with config in the emulator and returns
// the host and the plugin context.
func startRecorded(t *testing.T, config string, clock *fakeClock, wrap func(*pluginContext)) (proxytest.HostEmulator, *pluginContext) {
	t.Helper()
	vm := &recordingVM{vmContext: vmContext{now: clock.now}, wrap: wrap}
	host, reset := proxytest.NewHostEmulator(proxytest.NewEmulatorOption().
		WithVMContext(vm).
		WithPluginConfiguration([]byte(config)))
	t.Cleanup(reset)
	if st := host.StartPlugin(); st != types.OnPluginStartStatusOK {
		t.Fatalf("StartPlugin = %v, logs: %v", st, host.GetCriticalLogs())
	}
	return host, vm.plugin
}

// checkRemembered checks that seen and the recency list agree and that
// the VM remembers at most max buckets.
func checkRemembered(t *testing.T, p *pluginContext, max int) {
	t.Helper()
	n := 0
	for l := p.lru.next; l != &p.lru; l = l.next {
		if p.seen[l.desc] != l {
			t.Fatalf("lease %q on the recency list is not in seen", l.desc)
		}
		n++
	}
	if n != len(p.seen) || n > max {
		t.Fatalf("%d leases listed, %d in seen, want equal and at most %d", n, len(p.seen), max)
	}
}

// retainedBytes is the heap the plugin's buckets hold: the live heap
// before and after the plugin forgets all of them. It leaves the plugin
// without buckets.
func retainedBytes(p *pluginContext) int64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for p.lru.next != &p.lru {
		p.forget(p.lru.next)
	}
	p.seen = map[string]*lease{}
	runtime.GC()
	runtime.ReadMemStats(&after)
	return int64(before.HeapAlloc) - int64(after.HeapAlloc)
}

// TestDistinctKeysBounded sends 100 000 distinct x-user values, as a client
// choosing its own descriptors would, interleaved with a hammered one. The
// VM never remembers more than max_keys buckets and the heap they hold
// stays within a per-key budget, while the hammered key stays limited:
// with few keys remembered it is forgotten between its requests and reads
// its count back from shared data.
func TestDistinctKeysBounded(t *testing.T) {
	const (
		distinct   = 100_000
		every      = 10                    // a hammered request after every 10 distinct ones
		step       = 20 * time.Microsecond // clock per distinct request: 2 s in all
		rate       = 10                    // per second
		burst      = 5
		perKeyHeap = 1024 // bytes a remembered bucket may hold
	)
	tests := []struct {
		name    string
		maxKeys int
	}{
		{name: "hammered key stays remembered", maxKeys: 1000},
		{name: "hammered key forgotten between its requests", maxKeys: 5},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
			config := `{"requests_per_unit":` + strconv.Itoa(rate) + `,"burst":` + strconv.Itoa(burst) +
				`,"key":"header:x-user","max_keys":` + strconv.Itoa(tc.maxKeys) + `}`
			host, p := startRecorded(t, config, clock, nil)
			hammered := [][2]string{{"x-user", "mallory"}}
			admitted, sent := 0, 0
			for i := range distinct {
				if _, local, _ := request(host, [][2]string{{"x-user", "u" + strconv.Itoa(i)}}); local != nil {
					t.Fatalf("first request of distinct key %d rejected", i)
				}
				clock.advance(step)
				if i%every == 0 {
					sent++
					if _, local, _ := request(host, hammered); local == nil {
						admitted++
					}
				}
				if i%10_000 == 0 {
					host.Tick()
					checkRemembered(t, p, tc.maxKeys)
				}
			}
			checkRemembered(t, p, tc.maxKeys)
			elapsed := time.Duration(distinct) * step
			maxAdmitted := burst + int(rate*elapsed.Seconds()) + 1
			if admitted > maxAdmitted || admitted < burst {
				t.Fatalf("hammered key: %d of %d admitted, want between %d and %d", admitted, sent, burst, maxAdmitted)
			}
			if got := counter(t, host, "wasm_ratelimit.keys_evicted"); got < distinct-uint64(tc.maxKeys) {
				t.Fatalf("keys_evicted = %d, want at least %d", got, distinct-tc.maxKeys)
			}
			got, budget := retainedBytes(p), int64(tc.maxKeys*perKeyHeap)
			t.Logf("hammered key: %d of %d admitted in %v; buckets hold %d heap bytes", admitted, sent, elapsed, got)
			if got > budget {
				t.Fatalf("buckets hold %d heap bytes, want at most %d (%d per key)", got, budget, perKeyHeap)
			}
		})
	}
}

// TestForgetting walks one bucket through the tick's rules: a bucket used
// since the last tick or not full yet is remembered; a full, idle one is
// forgotten; one evicted by max_keys keeps its count in shared data.
func TestForgetting(t *testing.T) {
	alice := [][2]string{{"x-user", "alice"}}
	bob := [][2]string{{"x-user", "bob"}}
	type step struct {
		name       string
		do         func(host proxytest.HostEmulator, clock *fakeClock) (limited bool)
		wantLimit  bool
		remembered []string // descriptors the VM remembers after the step
	}
	req := func(h [][2]string) func(proxytest.HostEmulator, *fakeClock) bool {
		return func(host proxytest.HostEmulator, _ *fakeClock) bool {
			_, local, _ := request(host, h)
			return local != nil
		}
	}
	tick := func(d time.Duration) func(proxytest.HostEmulator, *fakeClock) bool {
		return func(host proxytest.HostEmulator, clock *fakeClock) bool {
			clock.advance(d)
			host.Tick()
			return false
		}
	}
	tests := []struct {
		name    string
		maxKeys int
		steps   []step
	}{
		{name: "tick", maxKeys: 10, steps: []step{
			{name: "alice takes a token", do: req(alice), remembered: []string{"header=x-user=alice"}},
			{name: "tick after use", do: tick(0), remembered: []string{"header=x-user=alice"}},
			{name: "tick, idle but not full", do: tick(500 * time.Millisecond), remembered: []string{"header=x-user=alice"}},
			{name: "tick, idle and full", do: tick(500 * time.Millisecond), remembered: nil},
			{name: "alice again", do: req(alice), remembered: []string{"header=x-user=alice"}},
		}},
		{name: "eviction keeps the count", maxKeys: 1, steps: []step{
			{name: "alice takes the only token", do: req(alice), remembered: []string{"header=x-user=alice"}},
			{name: "bob evicts alice", do: req(bob), remembered: []string{"header=x-user=bob"}},
			{name: "alice is still limited", do: req(alice), wantLimit: true, remembered: []string{"header=x-user=alice"}},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
			host, p := startRecorded(t, `{"requests_per_unit":1,"burst":1,"key":"header:x-user","max_keys":`+strconv.Itoa(tc.maxKeys)+`}`, clock, nil)
			for _, s := range tc.steps {
				if limited := s.do(host, clock); limited != s.wantLimit {
					t.Fatalf("%s: limited %v, want %v", s.name, limited, s.wantLimit)
				}
				checkRemembered(t, p, tc.maxKeys)
				var got []string
				for l := p.lru.next; l != &p.lru; l = l.next {
					got = append(got, l.desc)
				}
				if strings.Join(got, ",") != strings.Join(s.remembered, ",") {
					t.Fatalf("%s: remembered %q, want %q", s.name, got, s.remembered)
				}
			}
		})
	}
}

// TestOverflowBucket makes the host refuse to create buckets for some
// descriptors, as meshd's host does when a vm_id's shared data is full:
// those keys share the overflow bucket, so together they get the limit of
// one key, never more, and other keys keep their own buckets.
func TestOverflowBucket(t *testing.T) {
	errFull := errors.New("error status returned by host: internal failure")
	refuse := func(p *pluginContext) {
		set := p.setShared
		p.setShared = func(key string, value []byte, cas uint32) error {
			if cas == 0 && strings.Contains(key, "=refused-") {
				return errFull
			}
			return set(key, value, cas)
		}
	}
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	host, _ := startRecorded(t, `{"requests_per_unit":2,"unit":"minute","burst":2,"key":"header:x-user"}`, clock, refuse)
	steps := []struct {
		user        string
		wantLimited bool
	}{
		{"refused-1", false},
		{"refused-2", false},
		{"refused-1", true}, // the overflow bucket is empty
		{"refused-3", true},
		{"own", false}, // a bucket of its own
		{"own", false},
		{"own", true},
	}
	for i, s := range steps {
		_, local, _ := request(host, [][2]string{{"x-user", s.user}})
		if limited := local != nil; limited != s.wantLimited {
			t.Fatalf("request %d (%s): limited %v, want %v", i, s.user, limited, s.wantLimited)
		}
	}
	if got := counter(t, host, "wasm_ratelimit.keys_overflowed"); got != 3 {
		t.Fatalf("keys_overflowed = %d, want 3", got)
	}
	if got := counter(t, host, "wasm_ratelimit.cas_exhausted"); got != 0 {
		t.Fatalf("cas_exhausted = %d, want 0 (no request admitted unaccounted)", got)
	}
}
