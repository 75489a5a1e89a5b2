// Package observe is the observation a meshd sidecar reports to the control
// plane for each upstream endpoint, and its encoding in Envoy's load
// reporting service (envoy.service.load_stats.v3): one
// UpstreamEndpointStats per endpoint whose metadata carries the
// observation as a google.protobuf.Struct under MetadataKey. A control
// plane that does not know the key still reads a valid LRS report.
//
// The package is a leaf: the sidecar (proxy/sidecar) encodes, the control
// plane (xds/autotune) decodes.
package observe

import (
	"fmt"
	"math"
	"time"

	"google.golang.org/protobuf/types/known/structpb"
)

// MetadataKey is the UpstreamEndpointStats.metadata field holding an
// Endpoint.
const MetadataKey = "meshd.observation"

// Endpoint is what one sidecar saw of one upstream endpoint over one
// report interval. "Peak" and "Max" figures cover the interval and are
// reset after each report; the others are the state at report time.
type Endpoint struct {
	// PeerMaxConcurrentStreams is the endpoint's last
	// SETTINGS_MAX_CONCURRENT_STREAMS (0: not known yet).
	PeerMaxConcurrentStreams uint32
	// KeepaliveInterval is the interval the pool uses for the endpoint
	// now, after its too_many_pings backoffs (0: keepalive off).
	KeepaliveInterval time.Duration
	// TooManyPings counts GOAWAY ENHANCE_YOUR_CALM too_many_pings received
	// from the endpoint in the interval.
	TooManyPings uint64
	// RTT is the largest round trip a connection to the endpoint measured
	// (PING or SETTINGS ACK), 0 when none was measured.
	RTT time.Duration
	// PeakStreams is the peak of streams open or waiting for a slot (the
	// demand on the endpoint).
	PeakStreams uint32
	// Overflow counts streams refused by max_pending_requests or
	// max_requests in the interval.
	Overflow uint64
	// MaxStreamWait is the longest a stream waited for a slot.
	MaxStreamWait time.Duration
	// Throughput is the highest receive rate of one connection to the
	// endpoint over the interval, in bytes per second.
	Throughput float64
	// StreamWindow and ConnectionWindow are the receive windows the
	// endpoint's connections advertise.
	StreamWindow, ConnectionWindow uint32
}

// fields, in one place so Struct and Parse agree.
const (
	fPeerMCS     = "peer_max_concurrent_streams"
	fKeepalive   = "keepalive_interval_ms"
	fPings       = "too_many_pings"
	fRTT         = "rtt_us"
	fPeak        = "peak_streams"
	fOverflow    = "overflow"
	fWait        = "max_stream_wait_us"
	fThroughput  = "throughput_bytes_per_second"
	fStreamWin   = "stream_window"
	fConnWin     = "connection_window"
	maxSafeFloat = 1 << 53
)

// Struct encodes e for UpstreamEndpointStats.metadata[MetadataKey].
func (e Endpoint) Struct() *structpb.Struct {
	return &structpb.Struct{Fields: map[string]*structpb.Value{
		fPeerMCS:    structpb.NewNumberValue(float64(e.PeerMaxConcurrentStreams)),
		fKeepalive:  structpb.NewNumberValue(float64(e.KeepaliveInterval.Milliseconds())),
		fPings:      structpb.NewNumberValue(float64(e.TooManyPings)),
		fRTT:        structpb.NewNumberValue(float64(e.RTT.Microseconds())),
		fPeak:       structpb.NewNumberValue(float64(e.PeakStreams)),
		fOverflow:   structpb.NewNumberValue(float64(e.Overflow)),
		fWait:       structpb.NewNumberValue(float64(e.MaxStreamWait.Microseconds())),
		fThroughput: structpb.NewNumberValue(e.Throughput),
		fStreamWin:  structpb.NewNumberValue(float64(e.StreamWindow)),
		fConnWin:    structpb.NewNumberValue(float64(e.ConnectionWindow)),
	}}
}

// Parse decodes an Endpoint from s. A missing field is zero; a field that
// is not a non-negative number is an error naming it.
func Parse(s *structpb.Struct) (Endpoint, error) {
	var e Endpoint
	num := func(name string) (float64, error) {
		v, ok := s.GetFields()[name]
		if !ok {
			return 0, nil
		}
		n, ok := v.GetKind().(*structpb.Value_NumberValue)
		if !ok || n.NumberValue < 0 || n.NumberValue > maxSafeFloat || n.NumberValue != n.NumberValue {
			return 0, fmt.Errorf("%s.%s: want a non-negative number, got %v", MetadataKey, name, v.AsInterface())
		}
		return n.NumberValue, nil
	}
	for _, f := range []struct {
		name string
		set  func(float64)
	}{
		{fPeerMCS, func(v float64) { e.PeerMaxConcurrentStreams = clampU32(v) }},
		{fKeepalive, func(v float64) { e.KeepaliveInterval = duration(v, time.Millisecond) }},
		{fPings, func(v float64) { e.TooManyPings = uint64(v) }},
		{fRTT, func(v float64) { e.RTT = duration(v, time.Microsecond) }},
		{fPeak, func(v float64) { e.PeakStreams = clampU32(v) }},
		{fOverflow, func(v float64) { e.Overflow = uint64(v) }},
		{fWait, func(v float64) { e.MaxStreamWait = duration(v, time.Microsecond) }},
		{fThroughput, func(v float64) { e.Throughput = v }},
		{fStreamWin, func(v float64) { e.StreamWindow = clampU32(v) }},
		{fConnWin, func(v float64) { e.ConnectionWindow = clampU32(v) }},
	} {
		v, err := num(f.name)
		if err != nil {
			return Endpoint{}, err
		}
		f.set(v)
	}
	return e, nil
}

// duration is v units (0 <= v <= 2^53, fractions dropped), saturated at
// the largest time.Duration: 2^53 ms does not fit in one.
func duration(v float64, unit time.Duration) time.Duration {
	if v >= float64(math.MaxInt64/unit) {
		return math.MaxInt64
	}
	return time.Duration(v) * unit
}

func clampU32(v float64) uint32 {
	if v > float64(^uint32(0)) {
		return ^uint32(0)
	}
	return uint32(v)
}
