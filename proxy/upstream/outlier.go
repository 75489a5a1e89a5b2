package upstream

import (
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"meshd.dev/meshd/proxy/stats"
)

// OutlierSpec is a compiled outlier_detection with Envoy's defaults for
// unset fields. Only the consecutive-error detectors are implemented;
// success-rate and failure-percentage fields are rejected at compile time.
type OutlierSpec struct {
	// Consecutive5xx is consecutive_5xx (default 5; 0 disables).
	Consecutive5xx uint32
	// ConsecutiveGatewayFailure is consecutive_gateway_failure: 502, 503
	// and 504 (default 5; 0 disables).
	ConsecutiveGatewayFailure uint32
	// ConsecutiveLocalOriginFailure is consecutive_local_origin_failure
	// (default 5; 0 disables). It applies only with
	// SplitExternalLocalOriginErrors.
	ConsecutiveLocalOriginFailure uint32
	// Enforcing* are the enforcing_* percentages: the chance that a
	// detected outlier is actually ejected. Defaults: 5xx 100, gateway
	// failure 0, local origin 100.
	EnforcingConsecutive5xx                uint32
	EnforcingConsecutiveGatewayFailure     uint32
	EnforcingConsecutiveLocalOriginFailure uint32
	// SplitExternalLocalOriginErrors is split_external_local_origin_errors:
	// when false, a local-origin failure (connect failure, timeout, reset)
	// counts as a 503 from the host, as in Envoy.
	SplitExternalLocalOriginErrors bool
	// Interval is the ejection sweep interval (default 10 s).
	Interval time.Duration
	// BaseEjectionTime (default 30 s) times the host's ejection count,
	// capped by MaxEjectionTime (default 300 s, or BaseEjectionTime when
	// larger), plus up to MaxEjectionTimeJitter, is how long an ejection
	// lasts.
	BaseEjectionTime      time.Duration
	MaxEjectionTime       time.Duration
	MaxEjectionTimeJitter time.Duration
	// MaxEjectionPercent is max_ejection_percent (default 10).
	MaxEjectionPercent uint32
	// AlwaysEjectOneHost is always_eject_one_host: the first ejection is
	// allowed whatever MaxEjectionPercent says.
	AlwaysEjectOneHost bool
	// UnejectOnHealthCheck is successful_active_health_check_uneject_host
	// (default true).
	UnejectOnHealthCheck bool
}

// compileOutlier compiles od; nil in, nil out. Errors name the field
// relative to the cluster.
func compileOutlier(od *clusterv3.OutlierDetection) (*OutlierSpec, error) {
	if od == nil {
		return nil, nil
	}
	unsupported := []struct {
		name string
		set  bool
	}{
		{"enforcing_success_rate", od.GetEnforcingSuccessRate() != nil},
		{"success_rate_minimum_hosts", od.GetSuccessRateMinimumHosts() != nil},
		{"success_rate_request_volume", od.GetSuccessRateRequestVolume() != nil},
		{"success_rate_stdev_factor", od.GetSuccessRateStdevFactor() != nil},
		{"enforcing_local_origin_success_rate", od.GetEnforcingLocalOriginSuccessRate() != nil},
		{"failure_percentage_threshold", od.GetFailurePercentageThreshold() != nil},
		{"enforcing_failure_percentage", od.GetEnforcingFailurePercentage() != nil},
		{"enforcing_failure_percentage_local_origin", od.GetEnforcingFailurePercentageLocalOrigin() != nil},
		{"failure_percentage_minimum_hosts", od.GetFailurePercentageMinimumHosts() != nil},
		{"failure_percentage_request_volume", od.GetFailurePercentageRequestVolume() != nil},
		{"monitors", len(od.GetMonitors()) > 0},
		{"detect_degraded_hosts", od.GetDetectDegradedHosts().GetValue()},
	}
	for _, u := range unsupported {
		if u.set {
			return nil, fmt.Errorf("outlier_detection.%s: not supported (meshd implements the consecutive_* detectors only)", u.name)
		}
	}
	s := &OutlierSpec{
		Consecutive5xx:                         u32(od.GetConsecutive_5Xx(), 5),
		ConsecutiveGatewayFailure:              u32(od.GetConsecutiveGatewayFailure(), 5),
		ConsecutiveLocalOriginFailure:          u32(od.GetConsecutiveLocalOriginFailure(), 5),
		EnforcingConsecutive5xx:                u32(od.GetEnforcingConsecutive_5Xx(), 100),
		EnforcingConsecutiveGatewayFailure:     u32(od.GetEnforcingConsecutiveGatewayFailure(), 0),
		EnforcingConsecutiveLocalOriginFailure: u32(od.GetEnforcingConsecutiveLocalOriginFailure(), 100),
		SplitExternalLocalOriginErrors:         od.GetSplitExternalLocalOriginErrors(),
		MaxEjectionPercent:                     u32(od.GetMaxEjectionPercent(), 10),
		AlwaysEjectOneHost:                     od.GetAlwaysEjectOneHost().GetValue(),
		UnejectOnHealthCheck:                   od.GetSuccessfulActiveHealthCheckUnejectHost() == nil || od.GetSuccessfulActiveHealthCheckUnejectHost().GetValue(),
	}
	for _, p := range []struct {
		name string
		v    uint32
	}{
		{"enforcing_consecutive_5xx", s.EnforcingConsecutive5xx},
		{"enforcing_consecutive_gateway_failure", s.EnforcingConsecutiveGatewayFailure},
		{"enforcing_consecutive_local_origin_failure", s.EnforcingConsecutiveLocalOriginFailure},
		{"max_ejection_percent", s.MaxEjectionPercent},
	} {
		if p.v > 100 {
			return nil, fmt.Errorf("outlier_detection.%s: %d is above 100", p.name, p.v)
		}
	}
	var err error
	if s.Interval, err = positiveDuration("outlier_detection.interval", od.GetInterval(), 10*time.Second); err != nil {
		return nil, err
	}
	if s.BaseEjectionTime, err = positiveDuration("outlier_detection.base_ejection_time", od.GetBaseEjectionTime(), 30*time.Second); err != nil {
		return nil, err
	}
	if od.GetMaxEjectionTime() != nil {
		if s.MaxEjectionTime, err = positiveDuration("outlier_detection.max_ejection_time", od.GetMaxEjectionTime(), 0); err != nil {
			return nil, err
		}
		if s.MaxEjectionTime < s.BaseEjectionTime {
			return nil, fmt.Errorf("outlier_detection.max_ejection_time: %v is less than base_ejection_time %v", s.MaxEjectionTime, s.BaseEjectionTime)
		}
	} else {
		s.MaxEjectionTime = max(300*time.Second, s.BaseEjectionTime)
	}
	if j := od.GetMaxEjectionTimeJitter(); j != nil {
		s.MaxEjectionTimeJitter = j.AsDuration()
		if s.MaxEjectionTimeJitter < 0 {
			return nil, fmt.Errorf("outlier_detection.max_ejection_time_jitter: must not be negative")
		}
	}
	return s, nil
}

// u32 returns v's value, or def when v is unset.
func u32(v *wrapperspb.UInt32Value, def uint32) uint32 {
	if v == nil {
		return def
	}
	return v.GetValue()
}

// positiveDuration returns d, or def when d is unset; a set d must be
// positive.
func positiveDuration(field string, d *durationpb.Duration, def time.Duration) (time.Duration, error) {
	if d == nil {
		return def, nil
	}
	v := d.AsDuration()
	if v <= 0 {
		return 0, fmt.Errorf("%s: must be positive", field)
	}
	return v, nil
}

// ejectionKind is why a host was found to be an outlier.
type ejectionKind int

const (
	ejectConsecutive5xx ejectionKind = iota
	ejectConsecutiveGatewayFailure
	ejectConsecutiveLocalOrigin
	numEjectionKinds
)

// statSuffix is Envoy's name for the kind in ejections_{detected,enforced}_*.
var ejectionStatSuffix = [numEjectionKinds]string{
	ejectConsecutive5xx:            "consecutive_5xx",
	ejectConsecutiveGatewayFailure: "consecutive_gateway_failure",
	ejectConsecutiveLocalOrigin:    "consecutive_local_origin_failure",
}

// OutlierStats are a cluster's "cluster.<name>.outlier_detection.*" stats,
// named as Envoy names them.
type OutlierStats struct {
	EnforcedTotal *stats.Counter // ejections_enforced_total
	Active        *stats.Gauge   // ejections_active
	Overflow      *stats.Counter // ejections_overflow
	// Detected and Enforced are ejections_detected_<kind> and
	// ejections_enforced_<kind>, indexed by ejectionKind.
	Detected [numEjectionKinds]*stats.Counter
	Enforced [numEjectionKinds]*stats.Counter
}

func newOutlierStats(cluster *stats.Scope) *OutlierStats {
	sc := cluster.Scope("outlier_detection")
	st := &OutlierStats{
		EnforcedTotal: sc.Counter("ejections_enforced_total"),
		Active:        sc.Gauge("ejections_active"),
		Overflow:      sc.Counter("ejections_overflow"),
	}
	for k, name := range ejectionStatSuffix {
		st.Detected[k] = sc.Counter("ejections_detected_" + name)
		st.Enforced[k] = sc.Counter("ejections_enforced_" + name)
	}
	return st
}

// outlierDetector is a cluster's outlier detection: per-host monitors
// count consecutive errors on the request path (lock-free) and call into
// the detector when a threshold is reached; the detector ejects (marks the
// host unhealthy for the load balancer) within max_ejection_percent, and a
// sweep every Interval returns hosts whose ejection time has passed.
type outlierDetector struct {
	spec   *OutlierSpec      // immutable
	stats  *OutlierStats     // immutable
	logger *slog.Logger      // immutable
	hosts  func() []*Host    // the cluster's current hosts
	mark   func(*Host, bool) // sets the host's failed-outlier flag
	now    func() time.Time  // time.Now, or a fake clock in tests
	// chance reports true with probability pct/100 (enforcing_*).
	chance func(pct uint32) bool

	mu     sync.Mutex // guards the monitors' ejection state and active
	active int        // ejected hosts still in the cluster

	stop chan struct{}
	wg   sync.WaitGroup
}

func newOutlierDetector(spec *OutlierSpec, st *OutlierStats, logger *slog.Logger, hosts func() []*Host, mark func(*Host, bool)) *outlierDetector {
	return &outlierDetector{
		spec:   spec,
		stats:  st,
		logger: logger,
		hosts:  hosts,
		mark:   mark,
		now:    time.Now,
		chance: func(pct uint32) bool { return pct >= 100 || (pct > 0 && rand.Uint32N(100) < pct) },
		stop:   make(chan struct{}),
	}
}

// start runs the sweep every Interval until close.
func (d *outlierDetector) start() {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		t := time.NewTicker(d.spec.Interval)
		defer t.Stop()
		for {
			select {
			case <-d.stop:
				return
			case <-t.C:
				d.sweep()
			}
		}
	}()
}

// close stops the sweep and waits for it.
func (d *outlierDetector) close() {
	close(d.stop)
	d.wg.Wait()
}

// hostMonitor is one host's outlier state. The consecutive counters are
// updated on the request path without locks; the ejection state is
// guarded by the detector's mu.
type hostMonitor struct {
	d    *outlierDetector
	host *Host

	consec5xx     atomic.Uint32
	consecGateway atomic.Uint32
	consecLocal   atomic.Uint32

	// Guarded by d.mu.
	removed     bool
	ejected     bool
	ejectedAt   time.Time
	unejectedAt time.Time // zero until the first un-ejection
	backoff     int       // ejection time multiplier, as Envoy's eject_time_backoff
	jitter      time.Duration
}

var _ resultSink = (*hostMonitor)(nil)

// monitor returns a monitor for h; attach it as h's resultSink.
func (d *outlierDetector) monitor(h *Host) *hostMonitor {
	return &hostMonitor{d: d, host: h}
}

// status records an HTTP response status from the host. 5xx responses
// count towards consecutive_5xx, 502/503/504 also towards
// consecutive_gateway_failure; any other status resets both.
func (m *hostMonitor) status(code int) {
	if code < 500 || code > 599 {
		m.consec5xx.Store(0)
		m.consecGateway.Store(0)
		return
	}
	sp := m.d.spec
	if code >= 502 && code <= 504 {
		if n := m.consecGateway.Add(1); sp.ConsecutiveGatewayFailure > 0 && n == sp.ConsecutiveGatewayFailure {
			m.d.consecutive(m, ejectConsecutiveGatewayFailure)
		}
	} else {
		m.consecGateway.Store(0)
	}
	if n := m.consec5xx.Add(1); sp.Consecutive5xx > 0 && n == sp.Consecutive5xx {
		m.d.consecutive(m, ejectConsecutive5xx)
	}
}

// localOrigin records a locally observed outcome. Without
// split_external_local_origin_errors a failure counts as a 503 from the
// host and a success is not counted (the response status that follows is),
// as Envoy maps them for HTTP.
func (m *hostMonitor) localOrigin(success bool) {
	sp := m.d.spec
	if !sp.SplitExternalLocalOriginErrors {
		if !success {
			m.status(503)
		}
		return
	}
	if success {
		m.consecLocal.Store(0)
		return
	}
	if n := m.consecLocal.Add(1); sp.ConsecutiveLocalOriginFailure > 0 && n == sp.ConsecutiveLocalOriginFailure {
		m.d.consecutive(m, ejectConsecutiveLocalOrigin)
	}
}

func (m *hostMonitor) resetCounters() {
	m.consec5xx.Store(0)
	m.consecGateway.Store(0)
	m.consecLocal.Store(0)
}

// consecutive handles a host reaching a consecutive-error threshold: the
// detection is counted, the host ejected if max_ejection_percent and the
// enforcing percentage allow, and the kind's counter reset either way so a
// new run of errors can be detected.
func (d *outlierDetector) consecutive(m *hostMonitor, kind ejectionKind) {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch kind {
	case ejectConsecutive5xx:
		m.consec5xx.Store(0)
	case ejectConsecutiveGatewayFailure:
		m.consecGateway.Store(0)
	case ejectConsecutiveLocalOrigin:
		m.consecLocal.Store(0)
	}
	if m.removed || m.ejected {
		return
	}
	d.stats.Detected[kind].Inc()
	n := len(d.hosts())
	if n == 0 {
		return
	}
	withinLimit := 100*(d.active+1) <= int(d.spec.MaxEjectionPercent)*n
	if !withinLimit && !(d.spec.AlwaysEjectOneHost && d.active == 0) {
		d.stats.Overflow.Inc()
		return
	}
	var enforcing uint32
	switch kind {
	case ejectConsecutive5xx:
		enforcing = d.spec.EnforcingConsecutive5xx
	case ejectConsecutiveGatewayFailure:
		enforcing = d.spec.EnforcingConsecutiveGatewayFailure
	case ejectConsecutiveLocalOrigin:
		enforcing = d.spec.EnforcingConsecutiveLocalOriginFailure
	}
	if !d.chance(enforcing) {
		return
	}
	d.active++
	d.stats.Active.Set(int64(d.active))
	d.stats.EnforcedTotal.Inc()
	d.stats.Enforced[kind].Inc()
	m.ejected = true
	m.ejectedAt = d.now()
	if time.Duration(m.backoff)*d.spec.BaseEjectionTime < d.spec.MaxEjectionTime {
		m.backoff++
	}
	m.jitter = 0
	if j := d.spec.MaxEjectionTimeJitter; j > 0 {
		m.jitter = rand.N(j + 1)
	}
	d.logger.Info("outlier detection ejected host", "host", m.host.Addr, "reason", ejectionStatSuffix[kind],
		"ejection_time", m.ejectionTime())
	d.mark(m.host, true)
}

// ejectionTime is how long the current ejection lasts: base ×
// ejections, capped by max_ejection_time, plus the jitter drawn at
// ejection. Requires d.mu.
func (m *hostMonitor) ejectionTime() time.Duration {
	sp := m.d.spec
	return min(time.Duration(m.backoff)*sp.BaseEjectionTime, sp.MaxEjectionTime) + m.jitter
}

// sweep returns ejected hosts whose time has passed, and lowers the
// ejection multiplier of hosts that have stayed in service an Interval
// since their last un-ejection (Envoy's backoff decay).
func (d *outlierDetector) sweep() {
	now := d.now()
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, h := range d.hosts() {
		m, ok := h.outlier.(*hostMonitor)
		if !ok || m.d != d {
			continue
		}
		if !m.ejected {
			if !m.unejectedAt.IsZero() && now.Sub(m.unejectedAt) >= d.spec.Interval && m.backoff > 0 {
				m.backoff--
			}
			continue
		}
		if now.Sub(m.ejectedAt) >= m.ejectionTime() {
			d.unejectLocked(m, now, "ejection time elapsed")
		}
	}
}

// unejectLocked returns m's host to service and clears its counters.
// Requires d.mu.
func (d *outlierDetector) unejectLocked(m *hostMonitor, now time.Time, why string) {
	m.ejected = false
	m.unejectedAt = now
	m.resetCounters()
	d.active--
	d.stats.Active.Set(int64(d.active))
	d.logger.Info("outlier detection returned host", "host", m.host.Addr, "reason", why)
	d.mark(m.host, false)
}

// healthCheckPassed un-ejects h after a successful active health check,
// when successful_active_health_check_uneject_host allows it.
func (d *outlierDetector) healthCheckPassed(h *Host) {
	m, ok := h.outlier.(*hostMonitor)
	if !ok || !d.spec.UnejectOnHealthCheck {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if m.ejected && !m.removed {
		d.unejectLocked(m, d.now(), "active health check passed")
	}
}

// remove forgets h, which has left the cluster: an ejection it holds no
// longer counts against max_ejection_percent.
func (d *outlierDetector) remove(h *Host) {
	m, ok := h.outlier.(*hostMonitor)
	if !ok {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if m.removed {
		return
	}
	m.removed = true
	if m.ejected {
		m.ejected = false
		d.active--
		d.stats.Active.Set(int64(d.active))
	}
}
