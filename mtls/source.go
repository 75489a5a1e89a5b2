package mtls

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// A Source supplies the workload's current X.509-SVID and the trust
// bundles by trust domain; it satisfies go-spiffe's x509svid.Source and
// x509bundle.Source. Implementations are safe for concurrent use, and
// their getters are cheap enough to call on every handshake.
type Source interface {
	x509svid.Source
	x509bundle.Source

	// Watch returns the number of updates published so far and a channel
	// that is closed by the next update. The pair is consistent: an update
	// either is counted in version or closes changed, never neither.
	Watch() (version uint64, changed <-chan struct{})
}

// ErrNoSVID is returned by a source's GetX509SVID before it has an SVID.
var ErrNoSVID = errors.New("mtls: source has no SVID yet")

// material is one immutable published state of a source.
type material struct {
	svid    *x509svid.SVID  // nil before the first SVID
	bundles *x509bundle.Set // never nil
	version uint64          // updates published before this one, plus one
	changed chan struct{}   // closed when the next material is published
}

// publisher holds a source's current material behind an atomic pointer and
// publishes replacements in order.
type publisher struct {
	mu  sync.Mutex // serialises publish
	cur atomic.Pointer[material]
}

func (p *publisher) init() {
	p.cur.Store(&material{bundles: x509bundle.NewSet(), changed: make(chan struct{})})
}

// publish installs the material made by next from the current one.
func (p *publisher) publish(next func(old *material) (*x509svid.SVID, *x509bundle.Set)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	old := p.cur.Load()
	svid, bundles := next(old)
	p.cur.Store(&material{svid: svid, bundles: bundles, version: old.version + 1, changed: make(chan struct{})})
	close(old.changed)
}

func (p *publisher) GetX509SVID() (*x509svid.SVID, error) {
	m := p.cur.Load()
	if m.svid == nil {
		return nil, ErrNoSVID
	}
	return m.svid, nil
}

func (p *publisher) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	b, ok := p.cur.Load().bundles.Get(td)
	if !ok {
		return nil, fmt.Errorf("mtls: no X.509 bundle for trust domain %q", td.Name())
	}
	return b, nil
}

func (p *publisher) Watch() (uint64, <-chan struct{}) {
	m := p.cur.Load()
	return m.version, m.changed
}

// StaticSource is a [Source] set by code: the sidecar's SDS secrets and the
// built-in CA client feed it. The zero value is not usable; call
// [NewStaticSource].
type StaticSource struct {
	pub publisher
}

var _ Source = (*StaticSource)(nil)

// NewStaticSource returns a source with no SVID and no bundles; its first
// update makes it useful.
func NewStaticSource() *StaticSource {
	s := &StaticSource{}
	s.pub.init()
	return s
}

// Update replaces the SVID and the bundle set in one atomic swap: no
// handshake sees the new SVID with the old bundles. The source keeps
// svid and bundles; callers must not modify them afterwards. It refuses
// an SVID whose ID has an empty path or without certificates or key, and
// a nil bundle set.
func (s *StaticSource) Update(svid *x509svid.SVID, bundles *x509bundle.Set) error {
	if err := checkSVID(svid); err != nil {
		return err
	}
	if bundles == nil {
		return errors.New("mtls: static source update: bundle set is nil")
	}
	s.pub.publish(func(*material) (*x509svid.SVID, *x509bundle.Set) { return svid, bundles })
	return nil
}

// UpdateSVID replaces the SVID and keeps the bundles (an SDS certificate
// secret arriving alone).
func (s *StaticSource) UpdateSVID(svid *x509svid.SVID) error {
	if err := checkSVID(svid); err != nil {
		return err
	}
	s.pub.publish(func(old *material) (*x509svid.SVID, *x509bundle.Set) { return svid, old.bundles })
	return nil
}

// UpdateBundles replaces the bundle set and keeps the SVID (an SDS
// validation-context secret arriving alone).
func (s *StaticSource) UpdateBundles(bundles *x509bundle.Set) error {
	if bundles == nil {
		return errors.New("mtls: static source update: bundle set is nil")
	}
	s.pub.publish(func(old *material) (*x509svid.SVID, *x509bundle.Set) { return old.svid, bundles })
	return nil
}

// GetX509SVID returns the current SVID, or ErrNoSVID before the first.
func (s *StaticSource) GetX509SVID() (*x509svid.SVID, error) { return s.pub.GetX509SVID() }

// GetX509BundleForTrustDomain returns the current bundle of td, or an
// error naming td when there is none.
func (s *StaticSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s.pub.GetX509BundleForTrustDomain(td)
}

// Watch implements [Source]: version counts the updates so far.
func (s *StaticSource) Watch() (uint64, <-chan struct{}) { return s.pub.Watch() }

func checkSVID(svid *x509svid.SVID) error {
	switch {
	case svid == nil:
		return errors.New("mtls: SVID is nil")
	case len(svid.Certificates) == 0:
		return fmt.Errorf("mtls: SVID %s has no certificates", svid.ID)
	case svid.PrivateKey == nil:
		return fmt.Errorf("mtls: SVID %s has no private key", svid.ID)
	}
	return checkWorkloadID(svid.ID)
}
