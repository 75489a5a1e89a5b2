package identity

import (
	"context"
	"fmt"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"meshd.dev/meshd/ca"
	caclient "meshd.dev/meshd/ca/client"
	"meshd.dev/meshd/mtls"
)

// startBuiltinCA runs ca/client against the control plane's CA at
// cluster c, with Options.CAToken or else the node's bootstrap token,
// feeding p's source.
func (m *Manager) startBuiltinCA(p *provider, c *clusterv3.Cluster) error {
	p.kind = "builtin_ca"
	var token string
	if m.opts.CAToken == nil {
		var ok bool
		if token, ok = ca.NodeToken(m.node()); !ok {
			return fmt.Errorf("node.metadata[%q]: a bootstrap token is required by the built-in CA (meshd bootstrap --ca-dir writes it)", ca.TokenMetadataKey)
		}
	}
	cc, err := dial(c)
	if err != nil {
		return err
	}
	cli, err := caclient.New(caclient.Options{
		Conn:        cc,
		Token:       token,
		TokenSource: m.opts.CAToken,
		Sink:        p.src,
		TTL:         m.opts.CATTL,
		Stats:       m.opts.Stats,
		Logger:      m.log,
	})
	if err != nil {
		_ = cc.Close()
		return err
	}
	p.close = func() { _ = cc.Close() }
	m.countUpdates(p)
	m.wg.Go(func() { _ = cli.Run(m.ctx) })
	return nil
}

// workloadAPIRetry bounds the wait between attempts to open the Workload
// API (the agent may start after the sidecar).
const workloadAPIRetry = 2 * time.Second

// startWorkloadAPI follows the SPIFFE Workload API on cluster c's pipe,
// copying each SVID and its trust domain's bundle into p's source.
func (m *Manager) startWorkloadAPI(p *provider, c *clusterv3.Cluster) error {
	p.kind = "workload_api"
	path, err := pipePath(c)
	if err != nil {
		return err
	}
	addr := "unix://" + path
	m.countUpdates(p)
	m.wg.Go(func() {
		var w *mtls.WorkloadAPISource
		for w == nil {
			ctx, cancel := context.WithTimeout(m.ctx, 30*time.Second)
			var err error
			w, err = mtls.NewWorkloadAPISource(ctx, addr, m.log)
			cancel()
			if err != nil {
				if m.ctx.Err() != nil {
					return
				}
				m.log.Warn("identity: Workload API not ready; retrying", "addr", addr, "err", err)
				select {
				case <-m.ctx.Done():
					return
				case <-time.After(workloadAPIRetry):
				}
			}
		}
		defer w.Close()
		for {
			_, changed := w.Watch()
			if err := copySource(p.src, w); err != nil {
				m.log.Warn("identity: Workload API update not applied", "addr", addr, "err", err)
			}
			select {
			case <-m.ctx.Done():
				return
			case <-changed:
			}
		}
	})
	return nil
}

// copySource publishes from's SVID and the bundle of its trust domain to
// to in one update.
func copySource(to *mtls.StaticSource, from mtls.Source) error {
	svid, err := from.GetX509SVID()
	if err != nil {
		return err
	}
	b, err := from.GetX509BundleForTrustDomain(svid.ID.TrustDomain())
	if err != nil {
		return err
	}
	return to.Update(svid, x509bundle.NewSet(b))
}

// ADSSecret is one Secret accepted on the ADS stream, already decoded: a
// TLS certificate (SVID) or a validation context (trusted CA PEM).
type ADSSecret struct {
	Name string
	// Parsed is the secret's content; see ParseSecret.
	Parsed *Parsed
}

// UpdateADS applies the secrets the control plane sent over ADS to the
// ADS provider (if any TLS context names `sds_config: {ads: {}}`). The
// certificate secret sets the SVID; the validation secret the bundle of
// the SVID's trust domain. A secret naming neither is ignored.
func (m *Manager) UpdateADS(secrets []ADSSecret) error {
	m.mu.Lock()
	p := m.providers[""]
	m.mu.Unlock()
	if p == nil {
		return nil
	}
	p.adsMu.Lock()
	defer p.adsMu.Unlock()
	return m.apply(p, &p.ads, secrets)
}

// apply folds the secrets of one response into st (those p does not
// serve are ignored) and publishes the result to p's source in one update,
// counting sds.<name>.update_success or update_rejected per secret. On
// error st and the source are unchanged.
func (m *Manager) apply(p *provider, st *secretState, secrets []ADSSecret) error {
	next := *st
	var used []string
	var err error
	for _, s := range secrets {
		switch {
		case s.Name == p.certName && s.Parsed.SVID != nil:
			next.svid = s.Parsed.SVID
		case s.Name == p.validName && s.Parsed.TrustedCA != nil:
			next.bundlePEM = s.Parsed.TrustedCA
		case s.Name == p.certName || s.Name == p.validName:
			err = fmt.Errorf("secret %q: not the expected kind (%q is the TLS certificate, %q the validation context)", s.Name, p.certName, p.validName)
		default:
			continue
		}
		used = append(used, s.Name)
	}
	if err == nil {
		err = next.publish(p.src)
	}
	for _, name := range used {
		ok, rejected := m.counters(name)
		if err != nil {
			rejected.Inc()
		} else {
			ok.Inc()
		}
	}
	if err != nil {
		return err
	}
	*st = next
	return nil
}

// secretState is what an SDS stream has delivered so far.
type secretState struct {
	svid      *x509svid.SVID
	bundlePEM []byte
}

// publish puts the state into src: the SVID, and the bundle once the
// SVID's trust domain is known (a bundle arriving first waits for it).
func (st *secretState) publish(src *mtls.StaticSource) error {
	if st.svid == nil {
		return nil
	}
	if st.bundlePEM == nil {
		return src.UpdateSVID(st.svid)
	}
	b, err := x509bundle.Parse(st.svid.ID.TrustDomain(), st.bundlePEM)
	if err != nil {
		return fmt.Errorf("trusted_ca: %w", err)
	}
	if err := verifyAgainst(st.svid, b); err != nil {
		return err
	}
	return src.Update(st.svid, x509bundle.NewSet(b))
}

// verifyAgainst refuses an SVID that does not chain to its own bundle, so
// a mismatched pair never reaches a handshake.
func verifyAgainst(svid *x509svid.SVID, b *x509bundle.Bundle) error {
	if _, _, err := mtls.VerifySVID(svid.Certificates, b, time.Time{}); err != nil {
		return fmt.Errorf("SVID %s does not verify against the trust bundle: %w", svid.ID, err)
	}
	return nil
}
