package model

import (
	"strings"
	"testing"
)

func TestTracingSpec(t *testing.T) {
	for _, tc := range []struct {
		name, spec string
		err        string
		sampling   float64
	}{
		{"defaults", `{collector: "otel.example:4317"}`, "", 100},
		{"sampling", `{collector: "127.0.0.1:4317", samplingPercent: 10}`, "", 10},
		{"zero sampling", `{collector: "127.0.0.1:4317", samplingPercent: 0}`, "", 0},
		{"no collector", `{samplingPercent: 10}`, "spec.tracing.collector: required", 0},
		{"no port", `{collector: "otel"}`, `spec.tracing.collector: "otel" is not HOST:PORT`, 0},
		{"bad port", `{collector: "otel:0"}`, `spec.tracing.collector: port "0" is not 1..65535`, 0},
		{"sampling over 100", `{collector: "otel:4317", samplingPercent: 101}`, "spec.tracing.samplingPercent: 101 is outside [0, 100]", 0},
		{"unknown field", `{collector: "otel:4317", rate: 1}`, "rate", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc := "apiVersion: meshd.dev/v1alpha1\nkind: Mesh\nmetadata: {name: m}\nspec:\n  tracing: " + tc.spec + "\n"
			m, err := Parse([]byte(doc), "f.yaml")
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := m.Spec.Tracing.Sampling(); got != tc.sampling {
				t.Errorf("sampling %v, want %v", got, tc.sampling)
			}
		})
	}
}
