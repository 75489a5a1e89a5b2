package admin

import (
	"fmt"
	"net/http"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
)

// memoryReport is GET /memory: Envoy's field names where Go has the same
// quantity (as decimal strings, as Envoy prints them), plus meshd's own.
type memoryReport struct {
	// Allocated is the heap bytes in live and not yet swept objects
	// (Envoy's "allocated").
	Allocated string `json:"allocated"`
	// HeapSize is the heap the runtime holds from the OS (Envoy's
	// "heap_size").
	HeapSize string `json:"heap_size"`
	// PageheapUnmapped is heap returned to the OS (Envoy's
	// "pageheap_unmapped").
	PageheapUnmapped string `json:"pageheap_unmapped"`
	// TotalPhysicalBytes is everything the Go runtime mapped (Envoy's
	// "total_physical_bytes").
	TotalPhysicalBytes string `json:"total_physical_bytes"`
	// LiveHeapBytes is runtime/metrics /gc/heap/live:bytes: the heap
	// marked live by the last GC (meshd).
	LiveHeapBytes uint64 `json:"live_heap_bytes"`
	// Goroutines is the number of goroutines (meshd).
	Goroutines int `json:"goroutines"`
}

func readMemory() memoryReport {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(sample)
	var live uint64
	if sample[0].Value.Kind() == metrics.KindUint64 {
		live = sample[0].Value.Uint64()
	}
	return memoryReport{
		Allocated:          fmt.Sprint(ms.HeapAlloc),
		HeapSize:           fmt.Sprint(ms.HeapSys),
		PageheapUnmapped:   fmt.Sprint(ms.HeapReleased),
		TotalPhysicalBytes: fmt.Sprint(ms.Sys),
		LiveHeapBytes:      live,
		Goroutines:         runtime.NumGoroutine(),
	}
}

// handleMemory is GET /memory (Envoy's path), as JSON.
func (s *Server) handleMemory(w http.ResponseWriter, _ *http.Request) {
	s.writeMemory(w)
}

// handleGC is POST /debug/gc (meshd): two full collections, so buffers
// parked in sync.Pools (kept one cycle as victims) are freed too, and the
// heap returned to the OS; then the /memory report. Leak tests compare
// live heap before and after load with it.
func (s *Server) handleGC(w http.ResponseWriter, _ *http.Request) {
	runtime.GC()
	runtime.GC()
	debug.FreeOSMemory()
	s.writeMemory(w)
}

func (s *Server) writeMemory(w http.ResponseWriter) {
	s.writeJSON(w, "memory", readMemory())
}
