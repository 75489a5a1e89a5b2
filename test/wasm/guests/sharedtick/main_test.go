package main

import (
	"testing"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/proxytest"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"
)

func TestSharedTick(t *testing.T) {
	opt := proxytest.NewEmulatorOption().WithVMContext(&vmContext{})
	host, reset := proxytest.NewHostEmulator(opt)
	defer reset()
	if st := host.StartPlugin(); st != types.OnPluginStartStatusOK {
		t.Fatalf("StartPlugin = %v", st)
	}
	if host.GetTickPeriod() != tickMillis {
		t.Fatalf("tick period %d, want %d", host.GetTickPeriod(), tickMillis)
	}
	// count runs one request and returns its x-sharedtick-count.
	count := func() string {
		id := host.InitializeHttpContext()
		host.CallOnRequestHeaders(id, nil, true)
		host.CallOnResponseHeaders(id, nil, true)
		defer host.CompleteHttpContext(id)
		for _, kv := range host.GetCurrentResponseHeaders(id) {
			if kv[0] == "x-sharedtick-count" {
				return kv[1]
			}
		}
		return ""
	}
	steps := []struct {
		requests int
		tick     bool
		want     string // header on the last request
		gauge    uint64
	}{
		{requests: 3, want: "0", gauge: 0},
		{requests: 1, tick: true, want: "4", gauge: 4},
		{requests: 5, want: "4", gauge: 4},
		{requests: 1, tick: true, want: "10", gauge: 10},
	}
	for i, st := range steps {
		for range st.requests - 1 {
			count()
		}
		if st.tick {
			// Count the last request first, then tick, so its response sees it.
			id := host.InitializeHttpContext()
			host.CallOnRequestHeaders(id, nil, true)
			host.Tick()
			host.CallOnResponseHeaders(id, nil, true)
			var got string
			for _, kv := range host.GetCurrentResponseHeaders(id) {
				if kv[0] == "x-sharedtick-count" {
					got = kv[1]
				}
			}
			host.CompleteHttpContext(id)
			if got != st.want {
				t.Fatalf("step %d: header %q, want %q", i, got, st.want)
			}
		} else if got := count(); got != st.want {
			t.Fatalf("step %d: header %q, want %q", i, got, st.want)
		}
		if g, err := host.GetGaugeMetric("sharedtick.requests"); err != nil || g != st.gauge {
			t.Fatalf("step %d: gauge %d, %v; want %d", i, g, err, st.gauge)
		}
	}
}
