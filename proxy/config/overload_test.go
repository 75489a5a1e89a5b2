package config

import (
	"strings"
	"testing"
)

func TestBootstrapOverloadManager(t *testing.T) {
	const head = "node: { id: node1, cluster: c1 }\n"
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"valid", `overload_manager:
  refresh_interval: 0.25s
  resource_monitors:
  - name: envoy.resource_monitors.fixed_heap
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig
      max_heap_size_bytes: 1000000
  actions:
  - name: envoy.overload_actions.shrink_heap
    triggers: [{ name: envoy.resource_monitors.fixed_heap, threshold: { value: 0.9 } }]
    typed_config:
      "@type": type.googleapis.com/envoy.config.overload.v3.ShrinkHeapConfig
      timer_interval: 1s
  - name: envoy.overload_actions.stop_accepting_requests
    triggers: [{ name: envoy.resource_monitors.fixed_heap, scaled: { scaling_threshold: 0.8, saturation_threshold: 0.95 } }]
`, ""},
		{"unknown trigger monitor", `overload_manager:
  actions:
  - name: envoy.overload_actions.stop_accepting_requests
    triggers: [{ name: heap, threshold: { value: 0.9 } }]
`, `overload_manager.actions[0].triggers[0].name: unknown resource monitor "heap"`},
		{"monitor type at the wrong point", `overload_manager:
  resource_monitors:
  - name: envoy.resource_monitors.fixed_heap
    typed_config:
      "@type": type.googleapis.com/envoy.config.overload.v3.ShrinkHeapConfig
`, `overload_manager.resource_monitors[0].typed_config: unsupported typed_config type`},
		{"unsupported field", `overload_manager:
  buffer_factory_config: { minimum_account_to_track_power_of_two: 10 }
`, `overload_manager.buffer_factory_config: field not supported by meshd`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseBootstrap([]byte(head+tc.yaml), "test")
			if tc.want == "" {
				if err != nil {
					t.Fatalf("ParseBootstrap: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ParseBootstrap error = %v, want one containing %q", err, tc.want)
			}
		})
	}
}
