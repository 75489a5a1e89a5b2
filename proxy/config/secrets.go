package config

import (
	"fmt"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	quicv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/quic/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Static secrets (static_resources.secrets) are what Envoy serves to an
// SdsSecretConfig that has a name and no sds_config. meshd resolves such a
// reference before validating and compiling: the secret's tls_certificate
// is appended to the context's tls_certificates, its validation_context
// becomes the context's validation_context (merged over the
// default_validation_context of a combined_validation_context, as Envoy
// merges a dynamic validation context into the default one). The result is
// the same TLS context written inline, so it follows the static-file rules
// (not SDS's SPIFFE-only ones). Only the bootstrap's own listeners and
// clusters can name static secrets; resources from xDS take secrets over
// SDS (docs/RATIONALE.md).

// staticSecretRefs reports whether ctx names a static secret: an
// SdsSecretConfig without sds_config.
func staticSecretRefs(ctx *tlsv3.CommonTlsContext) bool {
	for _, sc := range ctx.GetTlsCertificateSdsSecretConfigs() {
		if sc.GetSdsConfig() == nil {
			return true
		}
	}
	if sc := ctx.GetValidationContextSdsSecretConfig(); sc != nil && sc.GetSdsConfig() == nil {
		return true
	}
	if sc := ctx.GetCombinedValidationContext().GetValidationContextSdsSecretConfig(); sc != nil && sc.GetSdsConfig() == nil {
		return true
	}
	return false
}

// inlineStaticSecrets returns b with every static listener's and cluster's
// references to static_resources.secrets replaced by the secrets' contents,
// and the problems found resolving them (paths from the bootstrap's root).
// b itself is returned, unchanged, when nothing names a static secret; b
// is never modified. Unresolvable references are left in place and
// reported.
func inlineStaticSecrets(b *bootstrapv3.Bootstrap) (*bootstrapv3.Bootstrap, []*FieldError) {
	secrets := map[string]*tlsv3.Secret{}
	for _, s := range b.GetStaticResources().GetSecrets() {
		if _, dup := secrets[s.GetName()]; !dup {
			secrets[s.GetName()] = s
		}
	}
	var out *bootstrapv3.Bootstrap // a clone, made at the first reference
	var probs []*FieldError
	sr := b.GetStaticResources()
	for i, l := range sr.GetListeners() {
		for j, fc := range l.GetFilterChains() {
			path := fmt.Sprintf("static_resources.listeners[%d].filter_chains[%d].transport_socket", i, j)
			ts, p := inlineTransportSocket(path, fc.GetTransportSocket(), secrets)
			probs = append(probs, p...)
			if ts != nil {
				if out == nil {
					out = proto.Clone(b).(*bootstrapv3.Bootstrap)
				}
				out.GetStaticResources().GetListeners()[i].GetFilterChains()[j].TransportSocket = ts
			}
		}
	}
	for i, c := range sr.GetClusters() {
		path := fmt.Sprintf("static_resources.clusters[%d].transport_socket", i)
		ts, p := inlineTransportSocket(path, c.GetTransportSocket(), secrets)
		probs = append(probs, p...)
		if ts != nil {
			if out == nil {
				out = proto.Clone(b).(*bootstrapv3.Bootstrap)
			}
			out.GetStaticResources().GetClusters()[i].TransportSocket = ts
		}
	}
	if out == nil {
		return b, probs
	}
	return out, probs
}

// inlineTransportSocket returns a copy of ts with its TLS context's static
// secret references resolved, or nil when ts names no static secret. It
// reads DownstreamTlsContext, UpstreamTlsContext and the QUIC transports
// wrapping them; any other typed_config is left to the validator.
func inlineTransportSocket(path string, ts *corev3.TransportSocket, secrets map[string]*tlsv3.Secret) (*corev3.TransportSocket, []*FieldError) {
	a := ts.GetTypedConfig()
	if a == nil {
		return nil, nil
	}
	msg, err := a.UnmarshalNew()
	if err != nil {
		return nil, nil // reported by the validator's walk
	}
	var ctx *tlsv3.CommonTlsContext
	cpath := path + ".typed_config"
	switch m := msg.(type) {
	case *tlsv3.DownstreamTlsContext:
		ctx = m.GetCommonTlsContext()
	case *tlsv3.UpstreamTlsContext:
		ctx = m.GetCommonTlsContext()
	case *quicv3.QuicDownstreamTransport:
		ctx, cpath = m.GetDownstreamTlsContext().GetCommonTlsContext(), cpath+".downstream_tls_context"
	case *quicv3.QuicUpstreamTransport:
		ctx, cpath = m.GetUpstreamTlsContext().GetCommonTlsContext(), cpath+".upstream_tls_context"
	}
	if ctx == nil || !staticSecretRefs(ctx) {
		return nil, nil
	}
	// ctx points into msg, a fresh message: resolving in place leaves the
	// bootstrap's own Any untouched.
	probs := inlineContext(cpath+".common_tls_context", ctx, secrets)
	packed, err := anypb.New(msg)
	if err != nil {
		return nil, append(probs, &FieldError{Path: path + ".typed_config", Reason: fmt.Sprintf("re-encoding with static secrets resolved: %v", err)})
	}
	out := proto.Clone(ts).(*corev3.TransportSocket)
	out.ConfigType = &corev3.TransportSocket_TypedConfig{TypedConfig: packed}
	return out, probs
}

// inlineContext resolves ctx's static secret references in place. path
// names ctx (…common_tls_context).
func inlineContext(path string, ctx *tlsv3.CommonTlsContext, secrets map[string]*tlsv3.Secret) []*FieldError {
	var probs []*FieldError
	lookup := func(p string, sc *tlsv3.SdsSecretConfig, kind string, has func(*tlsv3.Secret) bool) *tlsv3.Secret {
		s, ok := secrets[sc.GetName()]
		switch {
		case sc.GetName() == "":
			probs = append(probs, &FieldError{Path: p + ".name", Reason: "required (the name of a static_resources.secrets entry, or set sds_config)"})
		case !ok:
			probs = append(probs, &FieldError{Path: p + ".name", Reason: fmt.Sprintf("no static_resources.secrets entry is named %q (without sds_config the secret is a static one)", sc.GetName())})
		case !has(s):
			probs = append(probs, &FieldError{Path: p + ".name", Reason: fmt.Sprintf("static secret %q has no %s", sc.GetName(), kind)})
		default:
			return s
		}
		return nil
	}
	var keep []*tlsv3.SdsSecretConfig
	for i, sc := range ctx.GetTlsCertificateSdsSecretConfigs() {
		if sc.GetSdsConfig() != nil {
			keep = append(keep, sc)
			continue
		}
		p := fmt.Sprintf("%s.tls_certificate_sds_secret_configs[%d]", path, i)
		if s := lookup(p, sc, "tls_certificate", func(s *tlsv3.Secret) bool { return s.GetTlsCertificate() != nil }); s != nil {
			ctx.TlsCertificates = append(ctx.TlsCertificates, proto.Clone(s.GetTlsCertificate()).(*tlsv3.TlsCertificate))
		} else {
			keep = append(keep, sc)
		}
	}
	ctx.TlsCertificateSdsSecretConfigs = keep
	hasVC := func(s *tlsv3.Secret) bool { return s.GetValidationContext() != nil }
	switch vt := ctx.GetValidationContextType().(type) {
	case *tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig:
		if vt.ValidationContextSdsSecretConfig.GetSdsConfig() != nil {
			break
		}
		if s := lookup(path+".validation_context_sds_secret_config", vt.ValidationContextSdsSecretConfig, "validation_context", hasVC); s != nil {
			ctx.ValidationContextType = &tlsv3.CommonTlsContext_ValidationContext{
				ValidationContext: proto.Clone(s.GetValidationContext()).(*tlsv3.CertificateValidationContext),
			}
		}
	case *tlsv3.CommonTlsContext_CombinedValidationContext:
		sc := vt.CombinedValidationContext.GetValidationContextSdsSecretConfig()
		if sc == nil || sc.GetSdsConfig() != nil {
			break
		}
		p := path + ".combined_validation_context.validation_context_sds_secret_config"
		if s := lookup(p, sc, "validation_context", hasVC); s != nil {
			vc := &tlsv3.CertificateValidationContext{}
			if d := vt.CombinedValidationContext.GetDefaultValidationContext(); d != nil {
				vc = proto.Clone(d).(*tlsv3.CertificateValidationContext)
			}
			proto.Merge(vc, s.GetValidationContext())
			ctx.ValidationContextType = &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: vc}
		}
	}
	return probs
}

// staticSecrets checks static_resources.secrets themselves: each has a
// unique name and a tls_certificate (with a chain and a key) or a
// validation_context. Which fields they may set is the walk's business.
func (v *validator) staticSecrets(secrets []*tlsv3.Secret) {
	seen := map[string]string{}
	for i, s := range secrets {
		p := fmt.Sprintf("static_resources.secrets[%d]", i)
		if s.GetName() == "" {
			v.addf(p+".name", "required (TLS contexts name the secret in an SdsSecretConfig without sds_config)")
		}
		v.unique(seen, "secret", p, s.GetName())
		switch {
		case s.GetTlsCertificate() != nil:
			if s.GetTlsCertificate().GetCertificateChain() == nil {
				v.addf(p+".tls_certificate.certificate_chain", "required")
			}
			if s.GetTlsCertificate().GetPrivateKey() == nil {
				v.addf(p+".tls_certificate.private_key", "required")
			}
		case s.GetValidationContext() != nil:
		default:
			v.addf(p, "one of tls_certificate or validation_context is required")
		}
	}
}
