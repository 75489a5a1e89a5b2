package wasm

import (
	"log/slog"
	"sync"
)

// Bounds on one vm_id's shared data. proxy-wasm has no call to delete a key,
// so a guest keying entries by client-controlled values (a header, a path)
// would otherwise grow the host's memory without bound. A set that would
// create a key beyond either bound fails with StatusInternalFailure (the
// existing keys keep working, and overwriting one is always allowed as long
// as the bytes bound holds); the first refusal per vm_id is logged.
const (
	// MaxSharedKeys is the most keys one vm_id's shared data holds.
	MaxSharedKeys = 1 << 17
	// MaxSharedBytes is the most key plus value bytes one vm_id's shared
	// data holds.
	MaxSharedBytes = 64 << 20
)

// sharedStore holds the shared data and shared queues of every VM id in an
// Engine. Envoy scopes both by vm_id: all instances (and all plugins) with the
// same vm_id see the same keys and queues.
type sharedStore struct {
	mu        sync.Mutex
	data      map[string]*sharedMap   // vm_id → its keys; guarded by mu
	nextCAS   uint32                  // guarded by mu
	queueIDs  map[queueKey]uint32     // guarded by mu
	queues    map[uint32]*sharedQueue // guarded by mu
	nextQueue uint32                  // guarded by mu
}

// sharedMap is one vm_id's shared data and its size against the bounds.
type sharedMap struct {
	values  map[string]sharedValue
	bytes   int  // sum of len(key)+len(value)
	refused bool // a set was refused for the bounds (logged once)
}

type sharedValue struct {
	value []byte
	cas   uint32
}

type queueKey struct{ vmID, name string }

type sharedQueue struct {
	vmID  string
	items [][]byte
	// subscribers are the instances whose root context registered the queue;
	// an enqueue wakes one of them (round robin) with proxy_on_queue_ready.
	subscribers []*instance
	next        int
}

func (s *sharedStore) init() {
	s.data = make(map[string]*sharedMap)
	s.queueIDs = make(map[queueKey]uint32)
	s.queues = make(map[uint32]*sharedQueue)
}

// casLocked returns a fresh, never-zero CAS value.
func (s *sharedStore) casLocked() uint32 {
	s.nextCAS++
	if s.nextCAS == 0 {
		s.nextCAS = 1
	}
	return s.nextCAS
}

// get returns a copy of key's value and its CAS.
func (s *sharedStore) get(vmID, key string) ([]byte, uint32, Status) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.data[vmID]
	if m == nil {
		return nil, 0, StatusNotFound
	}
	v, ok := m.values[key]
	if !ok {
		return nil, 0, StatusNotFound
	}
	return v.value, v.cas, StatusOK
}

// set stores value under key. A non-zero cas must equal the key's current CAS
// (StatusCasMismatch otherwise, also for a missing key); cas 0 sets
// unconditionally. Every successful set gives the key a new CAS. A set that
// would take vmID's shared data beyond MaxSharedKeys or MaxSharedBytes is
// refused with StatusInternalFailure.
func (s *sharedStore) set(vmID, key string, value []byte, cas uint32) Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.data[vmID]
	if m == nil {
		m = &sharedMap{values: make(map[string]sharedValue)}
		s.data[vmID] = m
	}
	cur, ok := m.values[key]
	if cas != 0 && (!ok || cur.cas != cas) {
		return StatusCasMismatch
	}
	size := m.bytes + len(value) - len(cur.value)
	if !ok {
		size += len(key)
	}
	if (!ok && len(m.values) >= MaxSharedKeys) || size > MaxSharedBytes {
		if !m.refused {
			m.refused = true
			slog.Warn("wasm: shared data full: refusing a set (logged once per vm_id)",
				"vm_id", vmID, "keys", len(m.values), "bytes", m.bytes,
				"max_keys", MaxSharedKeys, "max_bytes", MaxSharedBytes)
		}
		return StatusInternalFailure
	}
	m.bytes = size
	m.values[key] = sharedValue{value: value, cas: s.casLocked()}
	return StatusOK
}

// register returns the id of queue name in vmID, creating it, and subscribes
// inst's root context to its readiness.
func (s *sharedStore) register(vmID, name string, inst *instance) uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := queueKey{vmID, name}
	id, ok := s.queueIDs[k]
	if !ok {
		s.nextQueue++
		id = s.nextQueue
		s.queueIDs[k] = id
		s.queues[id] = &sharedQueue{vmID: vmID}
	}
	q := s.queues[id]
	for _, sub := range q.subscribers {
		if sub == inst {
			return id
		}
	}
	q.subscribers = append(q.subscribers, inst)
	return id
}

// resolve returns the id of an existing queue.
func (s *sharedStore) resolve(vmID, name string) (uint32, Status) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id, ok := s.queueIDs[queueKey{vmID, name}]
	if !ok {
		return 0, StatusNotFound
	}
	return id, StatusOK
}

// enqueue appends value to queue id and returns the live subscriber to wake,
// or nil when none is registered.
func (s *sharedStore) enqueue(id uint32, value []byte) (*instance, Status) {
	s.mu.Lock()
	defer s.mu.Unlock()
	q, ok := s.queues[id]
	if !ok {
		return nil, StatusNotFound
	}
	q.items = append(q.items, value)
	// Drop subscribers whose instance is gone, then pick the next live one.
	live := q.subscribers[:0]
	for _, sub := range q.subscribers {
		if !sub.isClosed() {
			live = append(live, sub)
		}
	}
	clear(q.subscribers[len(live):])
	q.subscribers = live
	if len(live) == 0 {
		return nil, StatusOK
	}
	q.next = (q.next + 1) % len(live)
	return live[q.next], StatusOK
}

// dequeue pops the oldest value of queue id; StatusEmpty when there is none.
func (s *sharedStore) dequeue(id uint32) ([]byte, Status) {
	s.mu.Lock()
	defer s.mu.Unlock()
	q, ok := s.queues[id]
	if !ok {
		return nil, StatusNotFound
	}
	if len(q.items) == 0 {
		return nil, StatusEmpty
	}
	v := q.items[0]
	q.items[0] = nil
	q.items = q.items[1:]
	return v, StatusOK
}
