package translate

import (
	"time"

	"meshd.dev/meshd/xds/model"
)

// Tuned is what the control plane learned for one Service's clients
// (xds/autotune). A zero field leaves the mesh file's value.
type Tuned struct {
	// KeepaliveInterval replaces http2.keepalive.interval when the
	// effective policy sets a keepalive and autoTune.keepalive.
	KeepaliveInterval time.Duration
	// MaxConnections replaces connectionPool.maxConnections when
	// autoTune.connectionPool.
	MaxConnections uint32
	// StreamWindow and ConnectionWindow replace
	// http2.initialStreamWindowSize and initialConnectionWindowSize when
	// autoTune.windows.
	StreamWindow, ConnectionWindow uint32
}

// Tuning is the learned values by Service key ("<name>.<namespace>"),
// given to translation in Options.Tuning.
type Tuning map[string]Tuned

// policy is svc's effective policy with the learned values applied.
func (t *translator) policy(svc *model.Service) model.Policy {
	p := t.m.EffectivePolicy(svc)
	tu, ok := t.opts.Tuning[svc.Key()]
	if !ok || p.AutoTune == nil {
		return p
	}
	return ApplyTuning(p, tu)
}

// ApplyTuning returns p with tu laid over the fields p.AutoTune enables.
// p's nested structs are copied before they are changed, so a policy that
// shares them with a mesh is never modified.
func ApplyTuning(p model.Policy, tu Tuned) model.Policy {
	a := p.AutoTune
	if a == nil {
		return p
	}
	h2 := func() *model.HTTP2 {
		h := model.HTTP2{}
		if p.HTTP2 != nil {
			h = *p.HTTP2
		}
		p.HTTP2 = &h
		return p.HTTP2
	}
	if on(a.Keepalive) && tu.KeepaliveInterval > 0 && p.HTTP2 != nil && p.HTTP2.Keepalive != nil &&
		p.HTTP2.Keepalive.Interval != nil && p.HTTP2.Keepalive.Timeout != nil {
		k := *p.HTTP2.Keepalive
		d := model.Duration(tu.KeepaliveInterval)
		k.Interval = &d
		h2().Keepalive = &k
	}
	if on(a.ConnectionPool) && tu.MaxConnections > 0 {
		c := model.ConnectionPool{}
		if p.ConnectionPool != nil {
			c = *p.ConnectionPool
		}
		n := tu.MaxConnections
		c.MaxConnections = &n
		p.ConnectionPool = &c
	}
	if on(a.Windows) && tu.StreamWindow > 0 && tu.ConnectionWindow > 0 {
		h := h2()
		sw, cw := tu.StreamWindow, tu.ConnectionWindow
		h.InitialStreamWindowSize, h.InitialConnectionWindowSize = &sw, &cw
	}
	return p
}

func on(b *bool) bool { return b != nil && *b }
