package tlscontext

import (
	"crypto/tls"
	"errors"
	"fmt"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	"meshd.dev/meshd/mtls"
)

// Well-known SDS secret names (Istio's convention, which SPIRE's agent also
// answers when configured with default_svid_name "default" and
// default_bundle_name "ROOTCA").
const (
	// SVIDSecretName is the SDS secret carrying the workload's SVID.
	SVIDSecretName = "default"
	// BundleSecretName is the SDS secret carrying the trust bundle.
	BundleSecretName = "ROOTCA"
)

// Secrets resolves the SDS secret configs of a TLS context to the
// [mtls.Source] that serves them. Implementations (the sidecar's identity
// manager) keep the sources alive across config snapshots, so a compiled
// tls.Config stays valid while secrets rotate underneath it.
type Secrets interface {
	// Source returns the source serving the TLS certificate secret cert
	// and the validation context secret validation, which come from the
	// same sds_config. An error names the secret or config source that
	// cannot be served.
	Source(cert, validation *tlsv3.SdsSecretConfig) (mtls.Source, error)
}

// UsesSDS reports whether ctx takes its certificate or its validation
// context from SDS.
func UsesSDS(ctx *tlsv3.CommonTlsContext) bool {
	return len(ctx.GetTlsCertificateSdsSecretConfigs()) > 0 ||
		ctx.GetValidationContextSdsSecretConfig() != nil ||
		ctx.GetCombinedValidationContext() != nil
}

// sdsParts is what an SDS-fed common_tls_context says.
type sdsParts struct {
	src   mtls.Source
	authz mtls.Authorizer // the SAN matchers, else the local SVID's trust domain
	alpn  []string        // alpn_protocols, else the caller's default
}

// sdsContext resolves the SDS secrets of ctx through secrets, compiles its
// SAN matchers (the local SVID's trust domain when there are none) and
// picks its ALPN (defaultALPN when alpn_protocols is empty). Errors name
// the field below common_tls_context.
func sdsContext(ctx *tlsv3.CommonTlsContext, defaultALPN []string, secrets Secrets) (*sdsParts, error) {
	const base = "common_tls_context."
	if secrets == nil {
		return nil, errors.New("common_tls_context: SDS secrets are not available in this configuration")
	}
	if len(ctx.GetTlsCertificates()) > 0 {
		return nil, errors.New(base + "tls_certificates: cannot be combined with SDS secrets")
	}
	if ctx.GetValidationContext() != nil {
		return nil, errors.New(base + "validation_context: cannot be combined with SDS secrets (use combined_validation_context)")
	}
	certs := ctx.GetTlsCertificateSdsSecretConfigs()
	if len(certs) != 1 {
		return nil, fmt.Errorf(base+"tls_certificate_sds_secret_configs: exactly one secret is required, got %d", len(certs))
	}
	vsecret := ctx.GetValidationContextSdsSecretConfig()
	var matchers []*matcherv3.StringMatcher
	var sanPath string
	if cvc := ctx.GetCombinedValidationContext(); cvc != nil {
		vsecret = cvc.GetValidationContextSdsSecretConfig()
		dvc := cvc.GetDefaultValidationContext()
		if dvc.GetTrustedCa() != nil {
			return nil, errors.New(base + "combined_validation_context.default_validation_context.trusted_ca: the trust bundle comes from the SDS secret")
		}
		sanPath = base + "combined_validation_context.default_validation_context.match_typed_subject_alt_names"
		for i, m := range dvc.GetMatchTypedSubjectAltNames() {
			if m.GetSanType() != tlsv3.SubjectAltNameMatcher_URI {
				return nil, fmt.Errorf("%s[%d].san_type: %s is not supported (URI: SPIFFE IDs)", sanPath, i, m.GetSanType())
			}
			matchers = append(matchers, m.GetMatcher())
		}
		if vsecret == nil {
			return nil, errors.New(base + "combined_validation_context.validation_context_sds_secret_config: required")
		}
	}
	if vsecret == nil {
		return nil, errors.New(base + "validation_context_sds_secret_config: required with tls_certificate_sds_secret_configs (the peer's SVID is verified against the SDS trust bundle)")
	}
	if !proto.Equal(certs[0].GetSdsConfig(), vsecret.GetSdsConfig()) {
		return nil, errors.New(base + "validation_context_sds_secret_config.sds_config: must equal the certificate secret's sds_config (both secrets come from one identity source)")
	}
	if certs[0].GetSdsConfig() == nil {
		return nil, fmt.Errorf(base+"tls_certificate_sds_secret_configs[0].sds_config: required (static secret %q: static_resources.secrets are resolved only in the bootstrap's static listeners and clusters)", certs[0].GetName())
	}
	src, err := secrets.Source(certs[0], vsecret)
	if err != nil {
		return nil, fmt.Errorf(base+"tls_certificate_sds_secret_configs[0]: %w", err)
	}
	out := &sdsParts{src: src, authz: sameTrustDomain(src), alpn: defaultALPN}
	if a := ctx.GetAlpnProtocols(); len(a) > 0 {
		out.alpn = a
	}
	if len(matchers) > 0 {
		authzs := make([]mtls.Authorizer, len(matchers))
		for i, m := range matchers {
			a, err := sanAuthorizer(m)
			if err != nil {
				return nil, fmt.Errorf("%s[%d].matcher: %w", sanPath, i, err)
			}
			authzs[i] = a
		}
		out.authz = mtls.AnyOf(authzs...)
	}
	return out, nil
}

// sanAuthorizer turns a URI SAN matcher into an authorizer of SPIFFE IDs:
// exact and prefix, compared case-sensitively as Envoy does unless
// ignore_case is set.
func sanAuthorizer(m *matcherv3.StringMatcher) (mtls.Authorizer, error) {
	fold := m.GetIgnoreCase()
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		want := p.Exact
		return func(id spiffeid.ID) error {
			if got := id.String(); got != want && !(fold && strings.EqualFold(got, want)) {
				return fmt.Errorf("%s does not equal %s", got, want)
			}
			return nil
		}, nil
	case *matcherv3.StringMatcher_Prefix:
		want := p.Prefix
		if fold {
			want = strings.ToLower(want)
		}
		return func(id spiffeid.ID) error {
			got := id.String()
			if fold {
				got = strings.ToLower(got)
			}
			if !strings.HasPrefix(got, want) {
				return fmt.Errorf("%s does not start with %s", id, p.Prefix)
			}
			return nil
		}, nil
	default:
		return nil, fmt.Errorf("only exact and prefix are supported for URI SANs, got %T", p)
	}
}

// sameTrustDomain allows peers in the trust domain of src's current SVID,
// read per handshake so it follows the SVID.
func sameTrustDomain(src mtls.Source) mtls.Authorizer {
	return func(id spiffeid.ID) error {
		svid, err := src.GetX509SVID()
		if err != nil {
			return err
		}
		return mtls.AuthorizeTrustDomain(svid.ID.TrustDomain())(id)
	}
}

// SDSServerConfig builds the server tls.Config of a DownstreamTlsContext
// whose common_tls_context takes its SVID and trust bundle from SDS: every
// handshake presents the source's current SVID and verifies the client's
// SVID against its current bundle ([mtls.ServerConfig]). Client
// certificates must be required (require_client_certificate: true): meshd
// does not serve SDS identities to anonymous clients. Peers are authorized
// by match_typed_subject_alt_names when given, else by membership of the
// local SVID's trust domain. ALPN is alpn_protocols when set, else
// defaultALPN. It also returns the source, for the listener's local
// principal and the admin's /certs.
func SDSServerConfig(dtc *tlsv3.DownstreamTlsContext, defaultALPN []string, secrets Secrets) (*tls.Config, mtls.Source, error) {
	if secrets == nil {
		return nil, nil, errors.New("common_tls_context: SDS secrets are not available in this configuration")
	}
	if !dtc.GetRequireClientCertificate().GetValue() {
		return nil, nil, errors.New("require_client_certificate: must be true with SDS secrets (mutual TLS between SPIFFE identities)")
	}
	p, err := sdsContext(dtc.GetCommonTlsContext(), defaultALPN, secrets)
	if err != nil {
		return nil, nil, err
	}
	return mtls.ServerConfig(p.src, p.authz, p.alpn), p.src, nil
}

// SDSClientConfig builds the client tls.Config of an UpstreamTlsContext
// whose common_tls_context takes its SVID and trust bundle from SDS: it
// presents the source's current SVID and accepts the server only if its
// SVID verifies against the current bundle and matches
// match_typed_subject_alt_names (else: any ID of the local SVID's trust
// domain). SNI is sni; ALPN alpn_protocols or defaultALPN.
func SDSClientConfig(utc *tlsv3.UpstreamTlsContext, defaultALPN []string, secrets Secrets) (*tls.Config, mtls.Source, error) {
	p, err := sdsContext(utc.GetCommonTlsContext(), defaultALPN, secrets)
	if err != nil {
		return nil, nil, err
	}
	return mtls.ClientConfig(p.src, p.authz, p.alpn, utc.GetSni()), p.src, nil
}

// SDSClusterName returns the cluster an SDS secret config names
// (api_config_source.grpc_services[0].envoy_grpc.cluster_name), or "" with
// ads true when it is `ads: {}`. Any other form is an error naming the
// field.
func SDSClusterName(cs *corev3.ConfigSource) (cluster string, ads bool, err error) {
	if cs.GetAds() != nil {
		return "", true, nil
	}
	api := cs.GetApiConfigSource()
	if api == nil {
		return "", false, errors.New("sds_config: api_config_source (gRPC) or ads is required")
	}
	if api.GetApiType() != corev3.ApiConfigSource_GRPC {
		return "", false, fmt.Errorf("sds_config.api_config_source.api_type: %s is not supported (GRPC)", api.GetApiType())
	}
	gs := api.GetGrpcServices()
	if len(gs) != 1 || gs[0].GetEnvoyGrpc().GetClusterName() == "" {
		return "", false, errors.New("sds_config.api_config_source.grpc_services: exactly one envoy_grpc service with a cluster_name is required")
	}
	return gs[0].GetEnvoyGrpc().GetClusterName(), false, nil
}
