package model

import (
	"net"
	"strconv"
)

// DefaultSamplingPercent is Mesh.spec.tracing.samplingPercent when unset.
const DefaultSamplingPercent = 100.0

// Tracing is Mesh.spec.tracing: every sidecar traces its HTTP and gRPC
// requests and exports the spans over OTLP/gRPC to Collector.
type Tracing struct {
	// Collector is the OpenTelemetry collector's OTLP/gRPC address,
	// HOST:PORT (an IP is a STATIC cluster, a name a STRICT_DNS one).
	Collector string `json:"collector"`
	// SamplingPercent is the share of requests without a sampled or
	// unsampled trace context that start a trace, 0..100 (default 100).
	// Requests carrying a context follow its sampled flag.
	SamplingPercent *float64 `json:"samplingPercent,omitempty"`
}

// Sampling returns SamplingPercent with its default applied.
func (t *Tracing) Sampling() float64 {
	if t.SamplingPercent == nil {
		return DefaultSamplingPercent
	}
	return *t.SamplingPercent
}

// CollectorHostPort splits Collector; valid after parsing.
func (t *Tracing) CollectorHostPort() (string, uint32) {
	h, p, _ := net.SplitHostPort(t.Collector)
	n, _ := strconv.ParseUint(p, 10, 16)
	return h, uint32(n)
}

// validateTracing checks spec.tracing.
func validateTracing(ps *problems, m *Mesh) {
	t := m.Spec.Tracing
	if t == nil {
		return
	}
	if t.Collector == "" {
		ps.add(m.meshOrigin, "spec.tracing.collector", "required (the collector's OTLP/gRPC HOST:PORT)")
	} else if h, p, err := net.SplitHostPort(t.Collector); err != nil || h == "" {
		ps.add(m.meshOrigin, "spec.tracing.collector", "%q is not HOST:PORT", t.Collector)
	} else if n, err := strconv.ParseUint(p, 10, 16); err != nil || n == 0 {
		ps.add(m.meshOrigin, "spec.tracing.collector", "port %q is not 1..65535", p)
	}
	if s := t.SamplingPercent; s != nil && !(*s >= 0 && *s <= 100) {
		ps.add(m.meshOrigin, "spec.tracing.samplingPercent", "%v is outside [0, 100]", *s)
	}
}
