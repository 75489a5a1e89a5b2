package model

import (
	"fmt"
	"reflect"
	"strings"
	"time"
)

// EffectivePolicy returns the policy clients use to reach s: the Mesh's
// spec.defaults with the TrafficPolicy targeting s (if any) laid over it
// field by field. A field unset in both is unset in the result (Envoy's
// default applies). The result shares no struct with m and may be modified.
func (m *Mesh) EffectivePolicy(s *Service) Policy {
	var p Policy
	if m.Spec.Defaults != nil {
		overlay(reflect.ValueOf(&p).Elem(), reflect.ValueOf(m.Spec.Defaults).Elem())
	}
	if tp := m.policies[s.Key()]; tp != nil {
		overlay(reflect.ValueOf(&p).Elem(), reflect.ValueOf(&tp.Spec.Policy).Elem())
	}
	return p
}

// overlay sets every field of dst that src sets, recursing into nested
// option structs so that e.g. src's http2.keepalive.interval does not erase
// dst's http2.maxConcurrentStreams. Nested structs are copied, never shared
// or modified in place. Leaf pointers are shared: they are never written
// through.
func overlay(dst, src reflect.Value) {
	for i := range src.NumField() {
		sf, df := src.Field(i), dst.Field(i)
		if sf.IsZero() {
			continue
		}
		switch {
		case sf.Kind() == reflect.Pointer && sf.Elem().Kind() == reflect.Struct:
			n := reflect.New(sf.Elem().Type())
			if !df.IsNil() {
				n.Elem().Set(df.Elem())
			}
			overlay(n.Elem(), sf.Elem())
			df.Set(n)
		default:
			df.Set(sf)
		}
	}
}

// Warning is risky but legal tuning: a setting that works but is likely to
// hurt in production (docs/scenarios.md, "Rules of thumb"). Warnings never stop a
// mesh file from being served.
type Warning struct {
	// Source is the file name.
	Source string
	// Document is "document N (Kind ns/name)" of the document that sets the
	// risky value: the TrafficPolicy, or the Mesh when it comes from
	// spec.defaults.
	Document string
	// Field is the path of the risky field in that document.
	Field string
	// Message says what is risky, with the numbers.
	Message string
}

// String returns "FILE: document N (Kind ns/name): field: message".
func (w Warning) String() string {
	return Problem{Source: w.Source, Document: w.Document, Field: w.Field, Reason: w.Message}.String()
}

// Warnings returns the risky tuning in m, checked on each Service's
// effective policy, in Service order:
//   - a keepalive interval below the Service's serverLimits.minPingInterval
//     (its servers answer GOAWAY ENHANCE_YOUR_CALM too_many_pings);
//   - a keepalive interval below 3 × the keepalive timeout (a PING lost to a
//     slow path closes a healthy connection; the rule adds 2 × p99 RTT);
//   - maxConnections × serverLimits.maxConcurrentStreams below maxRequests
//     (the pool cannot carry the requests it admits; they queue);
//   - perTryTimeout × (attempts + 1) beyond the route timeout (the last
//     retries can never run).
func (m *Mesh) Warnings() []Warning {
	var ws []Warning
	for _, s := range m.Services {
		p := m.EffectivePolicy(s)
		warn := func(set func(*Policy) bool, field, format string, args ...any) {
			o, prefix := m.meshOrigin, "spec.defaults"
			if tp := m.policies[s.Key()]; tp != nil && set(&tp.Spec.Policy) {
				o, prefix = tp.origin, "spec"
			}
			ws = append(ws, Warning{Source: m.Source, Document: o.label(), Field: prefix + "." + field,
				Message: fmt.Sprintf("Service %s/%s: ", s.Metadata.Namespace, s.Metadata.Name) + fmt.Sprintf(format, args...)})
		}
		limits := s.Spec.ServerLimits
		if limits == nil {
			limits = &ServerLimits{}
		}
		if k := keepalive(&p); k != nil {
			interval, timeout := k.Interval.D(), k.Timeout.D()
			intervalSet := func(q *Policy) bool { k := keepalive(q); return k != nil && k.Interval != nil }
			if mp := limits.MinPingInterval; mp != nil && interval < mp.D() {
				warn(intervalSet, "http2.keepalive.interval",
					"keepalive interval %s is below the servers' serverLimits.minPingInterval %s: they will answer GOAWAY ENHANCE_YOUR_CALM (too_many_pings)", interval, mp)
			}
			if interval < 3*timeout {
				warn(intervalSet, "http2.keepalive.interval",
					"keepalive interval %s is below 3 × timeout %s = %s (rule of thumb: interval ≥ 3 × timeout + 2 × p99 RTT)", interval, timeout, 3*timeout)
			}
		}
		if c := p.ConnectionPool; c != nil && c.MaxConnections != nil && c.MaxRequests != nil && limits.MaxConcurrentStreams != nil {
			conns, streams, reqs := uint64(*c.MaxConnections), uint64(*limits.MaxConcurrentStreams), uint64(*c.MaxRequests)
			if conns*streams < reqs {
				warn(func(q *Policy) bool { return q.ConnectionPool != nil && q.ConnectionPool.MaxConnections != nil }, "connectionPool.maxConnections",
					"maxConnections %d × serverLimits.maxConcurrentStreams %d = %d is below maxRequests %d: requests beyond %d wait in the pending queue",
					conns, streams, conns*streams, reqs, conns*streams)
			}
		}
		if r := p.Retries; r != nil && r.PerTryTimeout != nil && r.Attempts != nil && p.Timeout != nil && *p.Timeout > 0 {
			total := time.Duration(*r.Attempts+1) * r.PerTryTimeout.D()
			if total > p.Timeout.D() {
				warn(func(q *Policy) bool { return q.Retries != nil && q.Retries.PerTryTimeout != nil }, "retries.perTryTimeout",
					"perTryTimeout %s × (attempts %d + 1) = %s exceeds timeout %s: the last attempts can never run", r.PerTryTimeout, *r.Attempts, total, p.Timeout)
			}
		}
	}
	return ws
}

func keepalive(p *Policy) *Keepalive {
	if p.HTTP2 == nil || p.HTTP2.Keepalive == nil || p.HTTP2.Keepalive.Interval == nil || p.HTTP2.Keepalive.Timeout == nil {
		return nil
	}
	return p.HTTP2.Keepalive
}

// FormatWarnings returns the warnings one per line, for logs and doctor.
func FormatWarnings(ws []Warning) string {
	lines := make([]string, len(ws))
	for i, w := range ws {
		lines[i] = w.String()
	}
	return strings.Join(lines, "\n")
}
