package admin

import (
	"runtime"
	"runtime/metrics"
	"time"

	"meshd.dev/meshd/proxy/stats"
)

// serverStateCode is Envoy's server.state gauge value for a state name
// (envoy.admin.v3.ServerInfo.State: LIVE 0, DRAINING 1, PRE_INITIALIZING
// 2, INITIALIZING 3).
var serverStateCode = map[string]int64{"LIVE": 0, "DRAINING": 1, "PRE_INITIALIZING": 2, "INITIALIZING": 3}

// serverStats are Envoy's server.* gauges that meshd has an equivalent
// for, sampled whenever the store is read.
type serverStats struct {
	live, state, uptime, concurrency *stats.Gauge
	allocated, heapSize, physical    *stats.Gauge
	samples                          []metrics.Sample
}

// Runtime metrics behind server.memory_*: the same quantities /memory
// reports from runtime.MemStats (HeapAlloc, HeapSys, Sys), read without
// stopping the world.
var memoryMetrics = []string{
	"/memory/classes/heap/objects:bytes",  // allocated
	"/memory/classes/heap/unused:bytes",   // heap_size = objects+unused+free+released
	"/memory/classes/heap/free:bytes",     //
	"/memory/classes/heap/released:bytes", //
	"/memory/classes/total:bytes",         // physical_size
}

// registerServerStats creates the server.* gauges in the store and keeps
// them current on every read; the returned function stops the updates.
func (s *Server) registerServerStats() (remove func()) {
	sc := s.store.Root().Scope("server")
	ss := &serverStats{
		live:        sc.Gauge("live"),
		state:       sc.Gauge("state"),
		uptime:      sc.Gauge("uptime"),
		concurrency: sc.Gauge("concurrency"),
		allocated:   sc.Gauge("memory_allocated"),
		heapSize:    sc.Gauge("memory_heap_size"),
		physical:    sc.Gauge("memory_physical_size"),
		samples:     make([]metrics.Sample, len(memoryMetrics)),
	}
	for i, n := range memoryMetrics {
		ss.samples[i].Name = n
	}
	return s.store.Refresh(func() { s.sampleServerStats(ss) })
}

// sampleServerStats sets the server.* gauges. Concurrent reads of the
// store may sample at once, so the runtime samples are read into a copy.
func (s *Server) sampleServerStats(ss *serverStats) {
	st := s.state()
	ss.state.Set(serverStateCode[st])
	if st == "LIVE" {
		ss.live.Set(1)
	} else {
		ss.live.Set(0)
	}
	ss.uptime.Set(int64(time.Since(s.started) / time.Second))
	ss.concurrency.Set(int64(runtime.GOMAXPROCS(0)))
	samples := make([]metrics.Sample, len(ss.samples))
	copy(samples, ss.samples)
	metrics.Read(samples)
	v := make([]int64, len(samples))
	for i := range samples {
		if samples[i].Value.Kind() == metrics.KindUint64 {
			v[i] = int64(samples[i].Value.Uint64())
		}
	}
	ss.allocated.Set(v[0])
	ss.heapSize.Set(v[0] + v[1] + v[2] + v[3])
	ss.physical.Set(v[4])
}
