package identity

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"

	"meshd.dev/meshd/proxy/datasource"
)

// Parsed is the content of one SDS Secret meshd can use: exactly one of
// SVID (from tls_certificate) and TrustedCA (the PEM of
// validation_context.trusted_ca) is set.
type Parsed struct {
	SVID      *x509svid.SVID
	TrustedCA []byte
}

// ParseSecret decodes an SDS Secret: a tls_certificate (certificate_chain
// and private_key, inline or from files) becomes an X.509-SVID; a
// validation_context's trusted_ca becomes bundle PEM. Other secret kinds
// (session ticket keys, generic secrets) and validation contexts with
// anything but trusted_ca (for example SPIRE's custom_validator_config for
// federation) are refused with an error naming the field.
func ParseSecret(s *tlsv3.Secret) (*Parsed, error) {
	switch t := s.GetType().(type) {
	case *tlsv3.Secret_TlsCertificate:
		tc := t.TlsCertificate
		chain, err := datasource.Read(tc.GetCertificateChain())
		if err != nil {
			return nil, fmt.Errorf("secret %q: tls_certificate.certificate_chain: %w", s.GetName(), err)
		}
		key, err := datasource.Read(tc.GetPrivateKey())
		if err != nil {
			return nil, fmt.Errorf("secret %q: tls_certificate.private_key: %w", s.GetName(), err)
		}
		svid, err := x509svid.Parse(chain, key)
		if err != nil {
			return nil, fmt.Errorf("secret %q: tls_certificate: %w", s.GetName(), err)
		}
		return &Parsed{SVID: svid}, nil
	case *tlsv3.Secret_ValidationContext:
		vc := t.ValidationContext
		if vc.GetCustomValidatorConfig() != nil {
			return nil, fmt.Errorf("secret %q: validation_context.custom_validator_config (%s) is not supported; configure the SDS server to send trusted_ca", s.GetName(), vc.GetCustomValidatorConfig().GetName())
		}
		if vc.GetTrustedCa() == nil {
			return nil, fmt.Errorf("secret %q: validation_context.trusted_ca: required", s.GetName())
		}
		pem, err := datasource.Read(vc.GetTrustedCa())
		if err != nil {
			return nil, fmt.Errorf("secret %q: validation_context.trusted_ca: %w", s.GetName(), err)
		}
		return &Parsed{TrustedCA: pem}, nil
	default:
		return nil, fmt.Errorf("secret %q: %T is not supported (tls_certificate or validation_context)", s.GetName(), t)
	}
}

// SDS stream backoff bounds.
const (
	sdsMinBackoff = 200 * time.Millisecond
	sdsMaxBackoff = 10 * time.Second
)

// startSDS runs an SDS client (StreamSecrets, state of the world) against
// cluster c, subscribing to p's two secret names.
func (m *Manager) startSDS(p *provider, c *clusterv3.Cluster) error {
	p.kind = "sds"
	cc, err := dial(c)
	if err != nil {
		return err
	}
	p.close = func() { _ = cc.Close() }
	cli := secretv3.NewSecretDiscoveryServiceClient(cc)
	m.wg.Go(func() {
		st := &secretState{}
		backoff := sdsMinBackoff
		for {
			got, err := m.streamSecrets(cli, p, st)
			if m.ctx.Err() != nil {
				return
			}
			if got {
				backoff = sdsMinBackoff
			}
			wait := backoff/2 + rand.N(backoff/2+1)
			backoff = min(2*backoff, sdsMaxBackoff)
			m.log.Warn("identity: SDS stream ended; reconnecting", "cluster", p.key, "err", err, "retry_in", wait)
			select {
			case <-m.ctx.Done():
				return
			case <-time.After(wait):
			}
		}
	})
	return nil
}

// streamSecrets runs one StreamSecrets stream until it fails; got reports
// whether a response was accepted on it. Every response is ACKed, or
// NACKed with the reason in error_detail (the last good secrets keep
// serving).
func (m *Manager) streamSecrets(cli secretv3.SecretDiscoveryServiceClient, p *provider, st *secretState) (got bool, err error) {
	ctx, cancel := context.WithCancel(m.ctx)
	defer cancel()
	stream, err := cli.StreamSecrets(ctx)
	if err != nil {
		return false, err
	}
	names := []string{p.certName}
	if p.validName != p.certName {
		names = append(names, p.validName)
	}
	req := &discoveryv3.DiscoveryRequest{Node: m.node(), TypeUrl: resourcev3.SecretType, ResourceNames: names}
	var version string
	for {
		if err := stream.Send(req); err != nil {
			return got, err
		}
		resp, err := stream.Recv()
		if err != nil {
			return got, err
		}
		req = &discoveryv3.DiscoveryRequest{Node: m.node(), TypeUrl: resourcev3.SecretType, ResourceNames: names,
			ResponseNonce: resp.GetNonce(), VersionInfo: version}
		if err := m.applyResponse(p, st, resp); err != nil {
			m.log.Warn("identity: SDS response rejected", "cluster", p.key, "version", resp.GetVersionInfo(), "err", err)
			req.ErrorDetail = &status.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
			continue
		}
		got = true
		version = resp.GetVersionInfo()
		req.VersionInfo = version
	}
}

// applyResponse parses every secret of resp before applying any, so a bad
// response changes nothing.
func (m *Manager) applyResponse(p *provider, st *secretState, resp *discoveryv3.DiscoveryResponse) error {
	if resp.GetTypeUrl() != resourcev3.SecretType {
		return fmt.Errorf("type_url %q: want %s", resp.GetTypeUrl(), resourcev3.SecretType)
	}
	var items []ADSSecret
	var errs []error
	for i, a := range resp.GetResources() {
		var s tlsv3.Secret
		if err := a.UnmarshalTo(&s); err != nil {
			errs = append(errs, fmt.Errorf("resources[%d]: %w", i, err))
			continue
		}
		ps, err := ParseSecret(&s)
		if err != nil {
			_, rejected := m.counters(s.GetName())
			rejected.Inc()
			errs = append(errs, err)
			continue
		}
		items = append(items, ADSSecret{Name: s.GetName(), Parsed: ps})
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return m.apply(p, st, items)
}
