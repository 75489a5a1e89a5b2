package translate

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbacfv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	tlsinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"meshd.dev/meshd/xds/model"
)

// Names of the mTLS pieces the translation emits. The sidecar's CA client
// serves the two secrets over SDS on the cluster IdentityClusterName, which
// Bootstrap defines.
const (
	// SVIDSecretName is the SDS secret of the workload's own SVID
	// (certificate chain and key), as Istio and SPIRE name it.
	SVIDSecretName = "default"
	// BundleSecretName is the SDS secret of the trust bundle (validation
	// context) of the mesh's trust domain.
	BundleSecretName = "ROOTCA"
	// IdentityClusterName is the bootstrap's static cluster the SDS
	// secrets are fetched over: the control plane's gRPC address, where
	// the built-in CA runs next to xDS.
	IdentityClusterName = "meshd_identity"
	// TLSTransportSocketName is Envoy's name of the TLS transport socket.
	TLSTransportSocketName = "envoy.transport_sockets.tls"
	// TLSInspectorName is the listener filter that tells TLS from plaintext
	// for filter_chain_match.transport_protocol.
	TLSInspectorName = "envoy.filters.listener.tls_inspector"
	// RBACFilterName is the HTTP filter AuthorizationPolicies become.
	RBACFilterName = "envoy.filters.http.rbac"
)

// sdsSecret is an SDS reference to the secret name over IdentityClusterName.
func sdsSecret(name string) *tlsv3.SdsSecretConfig {
	return &tlsv3.SdsSecretConfig{
		Name: name,
		SdsConfig: &corev3.ConfigSource{
			ConfigSourceSpecifier: &corev3.ConfigSource_ApiConfigSource{ApiConfigSource: &corev3.ApiConfigSource{
				ApiType:             corev3.ApiConfigSource_GRPC,
				TransportApiVersion: corev3.ApiVersion_V3,
				GrpcServices: []*corev3.GrpcService{{
					TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: IdentityClusterName}},
				}},
			}},
			ResourceApiVersion: corev3.ApiVersion_V3,
		},
	}
}

// commonTLS presents the workload's SVID and verifies the peer against the
// bundle, with sans (nil: any SPIFFE ID the bundle vouches for) required of
// the peer's URI SAN.
func commonTLS(sans []*matcherv3.StringMatcher, alpn []string) *tlsv3.CommonTlsContext {
	dvc := &tlsv3.CertificateValidationContext{}
	for _, m := range sans {
		dvc.MatchTypedSubjectAltNames = append(dvc.MatchTypedSubjectAltNames, &tlsv3.SubjectAltNameMatcher{
			SanType: tlsv3.SubjectAltNameMatcher_URI,
			Matcher: m,
		})
	}
	return &tlsv3.CommonTlsContext{
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sdsSecret(SVIDSecretName)},
		ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
			DefaultValidationContext:         dvc,
			ValidationContextSdsSecretConfig: sdsSecret(BundleSecretName),
		}},
		AlpnProtocols: alpn,
	}
}

// secureInbound applies the mesh's mTLS mode to an inbound listener with
// one plaintext filter chain: STRICT puts a DownstreamTlsContext requiring
// a client SVID on it; PERMISSIVE adds tls_inspector and splits it into a
// transport_protocol "tls" chain (as STRICT) and a "raw_buffer" chain
// (plaintext) with the same filters; DISABLE leaves it as it is.
func (t *translator) secureInbound(l *listenerv3.Listener) {
	mode := t.m.Spec.MTLS
	if mode == model.MTLSDisable {
		return
	}
	plain := l.FilterChains[0]
	secure := &listenerv3.FilterChain{
		Filters: plain.Filters,
		TransportSocket: &corev3.TransportSocket{
			Name: TLSTransportSocketName,
			ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: t.typed(&tlsv3.DownstreamTlsContext{
				CommonTlsContext:         commonTLS(nil, nil),
				RequireClientCertificate: wrapperspb.Bool(true),
			})},
		},
	}
	if mode == model.MTLSStrict {
		l.FilterChains = []*listenerv3.FilterChain{secure}
		return
	}
	secure.FilterChainMatch = &listenerv3.FilterChainMatch{TransportProtocol: "tls"}
	plain.FilterChainMatch = &listenerv3.FilterChainMatch{TransportProtocol: "raw_buffer"}
	l.ListenerFilters = []*listenerv3.ListenerFilter{{
		Name:       TLSInspectorName,
		ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: t.typed(&tlsinspectorv3.TlsInspector{})},
	}}
	l.FilterChains = []*listenerv3.FilterChain{secure, plain}
}

// secureOutbound makes a sidecar's cluster to svc mTLS, unless the mode is
// DISABLE or no Workload serves svc (its endpoints are then plain external
// servers). The server must present the SPIFFE ID of one of svc's
// workloads: exactly that ID when they share one, the prefix
// "spiffe://<td>/ns/<ns>/sa/" when they have several in one namespace, and
// each ID exactly otherwise.
func (t *translator) secureOutbound(c *clusterv3.Cluster, svc *model.Service) {
	ws := t.m.WorkloadsOf(svc)
	if t.m.Spec.MTLS == model.MTLSDisable || len(ws) == 0 {
		return
	}
	var ids []string
	namespaces := map[string]bool{}
	for _, w := range ws {
		ids = append(ids, t.m.SPIFFEID(w))
		namespaces[w.Metadata.Namespace] = true
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	var sans []*matcherv3.StringMatcher
	switch {
	case len(ids) > 1 && len(namespaces) == 1:
		prefix := "spiffe://" + t.m.Spec.TrustDomain + "/ns/" + ws[0].Metadata.Namespace + "/sa/"
		sans = []*matcherv3.StringMatcher{{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: prefix}}}
	default:
		for _, id := range ids {
			sans = append(sans, &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: id}})
		}
	}
	var alpn []string
	switch svc.SidecarProtocol() {
	case "http2":
		alpn = []string{"h2"}
	case "http1":
		alpn = []string{"http/1.1"}
	case model.UpstreamHTTP3:
		c.TransportSocket = t.quicUpstream(&tlsv3.UpstreamTlsContext{CommonTlsContext: commonTLS(sans, nil)})
		return
	}
	c.TransportSocket = &corev3.TransportSocket{
		Name: TLSTransportSocketName,
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: t.typed(&tlsv3.UpstreamTlsContext{
			CommonTlsContext: commonTLS(sans, alpn),
		})},
	}
}

// rbacFilter is the RBAC filter of svc's inbound listeners: one ALLOW
// policy per AuthorizationPolicy targeting svc ("<namespace>/<name>"),
// each allowing any request from its authenticated principals, so that a
// caller matching none is denied. It returns nil when no
// AuthorizationPolicy targets svc: every caller is allowed.
func (t *translator) rbacFilter(svc *model.Service) []*hcmv3.HttpFilter {
	aps := t.m.AuthorizationPoliciesFor(svc)
	if len(aps) == 0 {
		return nil
	}
	rules := &rbacv3.RBAC{Action: rbacv3.RBAC_ALLOW, Policies: map[string]*rbacv3.Policy{}}
	for _, ap := range aps {
		p := &rbacv3.Policy{Permissions: []*rbacv3.Permission{{Rule: &rbacv3.Permission_Any{Any: true}}}}
		for i, entry := range ap.Spec.Allow {
			m, err := principalMatcher(entry)
			if err != nil {
				t.fail(fmt.Errorf("translate: AuthorizationPolicy %s/%s: spec.allow[%d]: %w", ap.Metadata.Namespace, ap.Metadata.Name, i, err))
				return nil
			}
			p.Principals = append(p.Principals, &rbacv3.Principal{Identifier: &rbacv3.Principal_Authenticated_{
				Authenticated: &rbacv3.Principal_Authenticated{PrincipalName: m},
			}})
		}
		rules.Policies[ap.Metadata.Namespace+"/"+ap.Metadata.Name] = p
	}
	return []*hcmv3.HttpFilter{{
		Name:       RBACFilterName,
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: t.typed(&rbacfv3.RBAC{Rules: rules})},
	}}
}

// principalMatcher turns an allow entry (a SPIFFE ID whose path segments
// may be "*", as mtls.AuthorizePattern reads it) into a matcher on the
// peer's SPIFFE ID: exact without "*"; a prefix ending in "/" when only
// the last segment is "*" (it matches one or more segments); otherwise an
// anchored RE2 regex in which an inner "*" is one segment and a last "*"
// one or more.
func principalMatcher(entry string) (*matcherv3.StringMatcher, error) {
	td, path, _ := strings.Cut(strings.TrimPrefix(entry, "spiffe://"), "/")
	segs := strings.Split(path, "/")
	stars := 0
	for _, s := range segs {
		if s == "*" {
			stars++
		}
	}
	last := len(segs) - 1
	switch {
	case stars == 0:
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: entry}}, nil
	case stars == 1 && segs[last] == "*":
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: strings.TrimSuffix(entry, "*")}}, nil
	}
	var b strings.Builder
	b.WriteString("^" + regexp.QuoteMeta("spiffe://"+td))
	for i, s := range segs {
		b.WriteString("/")
		switch {
		case s == "*" && i == last:
			b.WriteString(".+")
		case s == "*":
			b.WriteString("[^/]+")
		default:
			b.WriteString(regexp.QuoteMeta(s))
		}
	}
	b.WriteString("$")
	if _, err := regexp.Compile(b.String()); err != nil {
		return nil, fmt.Errorf("pattern %q: %w", entry, err)
	}
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: b.String()}}}, nil
}
