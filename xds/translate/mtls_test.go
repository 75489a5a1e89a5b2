package translate_test

import (
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacfv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"

	"meshd.dev/meshd/xds/model"
	"meshd.dev/meshd/xds/translate"
)

// modeMesh is a mesh with one service served by two workloads of different
// service accounts, an external service and a caller; mode and extra
// documents vary.
func modeMesh(t *testing.T, mode, extra string) *model.Mesh {
	t.Helper()
	const h = "---\napiVersion: meshd.dev/v1alpha1\n"
	file := "apiVersion: meshd.dev/v1alpha1\nkind: Mesh\nmetadata: {name: m}\nspec: {trustDomain: td.test, mtls: " + mode + "}\n" +
		h + "kind: Service\nmetadata: {name: api, namespace: prod}\nspec: {protocol: grpc, port: 9000}\n" +
		h + "kind: Service\nmetadata: {name: db, namespace: prod}\nspec: {protocol: tcp, port: 5432}\n" +
		h + "kind: Service\nmetadata: {name: ext, namespace: prod}\nspec: {protocol: http, port: 80, endpoints: [{address: 10.0.0.1, port: 80}]}\n" +
		h + "kind: Workload\nmetadata: {name: api-0, namespace: prod}\nspec: {serviceAccount: api, service: api, inbound: {port: 17001, app: \"127.0.0.1:9000\"}}\n" +
		h + "kind: Workload\nmetadata: {name: db-0, namespace: prod}\nspec: {serviceAccount: db, service: db, inbound: {port: 17003, app: \"127.0.0.1:5432\"}}\n" +
		h + "kind: Workload\nmetadata: {name: web, namespace: web}\nspec: {serviceAccount: web, outbound: [{service: api.prod, port: 17100}, {service: ext.prod, port: 17101}, {service: db.prod, port: 17102}]}\n" +
		extra
	m, err := model.Parse([]byte(file), "modes.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func findNamed[T interface{ GetName() string }](t *testing.T, list []types.Resource, name string) T {
	t.Helper()
	for _, r := range list {
		if v, ok := r.(T); ok && v.GetName() == name {
			return v
		}
	}
	var zero T
	t.Fatalf("no resource %q", name)
	return zero
}

func downstreamTLS(t *testing.T, fc *listenerv3.FilterChain) *tlsv3.DownstreamTlsContext {
	t.Helper()
	if fc.GetTransportSocket() == nil {
		return nil
	}
	var d tlsv3.DownstreamTlsContext
	if err := fc.GetTransportSocket().GetTypedConfig().UnmarshalTo(&d); err != nil {
		t.Fatal(err)
	}
	return &d
}

func upstreamTLS(t *testing.T, c *clusterv3.Cluster) *tlsv3.UpstreamTlsContext {
	t.Helper()
	if c.GetTransportSocket() == nil {
		return nil
	}
	var u tlsv3.UpstreamTlsContext
	if err := c.GetTransportSocket().GetTypedConfig().UnmarshalTo(&u); err != nil {
		t.Fatal(err)
	}
	return &u
}

// checkSDS checks that ctx presents SDS "default" and validates with
// "ROOTCA", both over meshd_identity.
func checkSDS(t *testing.T, what string, ctx *tlsv3.CommonTlsContext) {
	t.Helper()
	certs := ctx.GetTlsCertificateSdsSecretConfigs()
	combined := ctx.GetCombinedValidationContext()
	switch {
	case len(certs) != 1 || certs[0].GetName() != translate.SVIDSecretName:
		t.Errorf("%s: tls_certificate_sds_secret_configs = %v, want [%s]", what, certs, translate.SVIDSecretName)
	case certs[0].GetSdsConfig().GetApiConfigSource().GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName() != translate.IdentityClusterName:
		t.Errorf("%s: SVID not fetched over %s", what, translate.IdentityClusterName)
	case combined.GetValidationContextSdsSecretConfig().GetName() != translate.BundleSecretName:
		t.Errorf("%s: validation context secret = %q, want %s", what, combined.GetValidationContextSdsSecretConfig().GetName(), translate.BundleSecretName)
	case len(ctx.GetTlsCertificates()) != 0 || ctx.GetValidationContext() != nil:
		t.Errorf("%s: static certificates or validation context next to SDS", what)
	}
}

func TestMTLSModes(t *testing.T) {
	tests := []struct {
		mode string
		// transports are the inbound listener's chains: "mtls" or "plain",
		// with the transport_protocol match after a colon when set.
		transports    []string
		inspector     bool
		outboundMTLS  bool
		wantSANExacts []string
	}{
		{model.MTLSStrict, []string{"mtls"}, false, true, []string{"spiffe://td.test/ns/prod/sa/api"}},
		{"permissive", []string{"mtls:tls", "plain:raw_buffer"}, true, true, []string{"spiffe://td.test/ns/prod/sa/api"}},
		{model.MTLSDisable, []string{"plain"}, false, false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.mode, func(t *testing.T) {
			res := translateOK(t, modeMesh(t, tt.mode, ""))
			for _, in := range []struct{ node, listener string }{{"api-0.prod", "inbound|17001"}, {"db-0.prod", "inbound|17003"}} {
				l := findNamed[*listenerv3.Listener](t, res.Nodes[in.node].Listeners, in.listener)
				var got []string
				for _, fc := range l.GetFilterChains() {
					s := "plain"
					if d := downstreamTLS(t, fc); d != nil {
						s = "mtls"
						if !d.GetRequireClientCertificate().GetValue() {
							t.Errorf("%s: require_client_certificate is not set", in.listener)
						}
						checkSDS(t, in.listener, d.GetCommonTlsContext())
					}
					if p := fc.GetFilterChainMatch().GetTransportProtocol(); p != "" {
						s += ":" + p
					}
					got = append(got, s)
				}
				if len(got) != len(tt.transports) {
					t.Fatalf("%s chains = %v, want %v", in.listener, got, tt.transports)
				}
				for i := range got {
					if got[i] != tt.transports[i] {
						t.Errorf("%s chains = %v, want %v", in.listener, got, tt.transports)
					}
				}
				hasInspector := len(l.GetListenerFilters()) == 1 && l.GetListenerFilters()[0].GetName() == translate.TLSInspectorName
				if hasInspector != tt.inspector || (!tt.inspector && len(l.GetListenerFilters()) > 0) {
					t.Errorf("%s listener_filters = %v, want tls_inspector: %v", in.listener, l.GetListenerFilters(), tt.inspector)
				}
			}
			web := res.Nodes["web.web"]
			for _, c := range []struct {
				name string
				mtls bool
				alpn string
			}{
				{"outbound|9000||api.prod", tt.outboundMTLS, "h2"},
				{"outbound|5432||db.prod", tt.outboundMTLS, ""},
				{"outbound|80||ext.prod", false, ""},
			} {
				u := upstreamTLS(t, findNamed[*clusterv3.Cluster](t, web.Clusters, c.name))
				if (u != nil) != c.mtls {
					t.Errorf("%s: UpstreamTlsContext present %v, want %v", c.name, u != nil, c.mtls)
					continue
				}
				if u == nil {
					continue
				}
				checkSDS(t, c.name, u.GetCommonTlsContext())
				sans := u.GetCommonTlsContext().GetCombinedValidationContext().GetDefaultValidationContext().GetMatchTypedSubjectAltNames()
				if c.name == "outbound|9000||api.prod" {
					if len(sans) != len(tt.wantSANExacts) || sans[0].GetSanType() != tlsv3.SubjectAltNameMatcher_URI || sans[0].GetMatcher().GetExact() != tt.wantSANExacts[0] {
						t.Errorf("%s: match_typed_subject_alt_names = %v, want URI exact %v", c.name, sans, tt.wantSANExacts)
					}
				}
				if alpn := u.GetCommonTlsContext().GetAlpnProtocols(); (c.alpn == "" && len(alpn) != 0) || (c.alpn != "" && (len(alpn) != 1 || alpn[0] != c.alpn)) {
					t.Errorf("%s: alpn_protocols = %v, want %q", c.name, alpn, c.alpn)
				}
			}
		})
	}
}

// TestMTLSSANPrefix: several service accounts behind one service in one
// namespace are matched by the namespace's sa/ prefix.
func TestMTLSSANPrefix(t *testing.T) {
	m := modeMesh(t, "STRICT", "---\napiVersion: meshd.dev/v1alpha1\nkind: Workload\nmetadata: {name: api-1, namespace: prod}\n"+
		"spec: {serviceAccount: api-canary, service: api, inbound: {port: 17002, app: \"127.0.0.1:9001\"}}\n")
	res := translateOK(t, m)
	u := upstreamTLS(t, findNamed[*clusterv3.Cluster](t, res.Nodes["web.web"].Clusters, "outbound|9000||api.prod"))
	sans := u.GetCommonTlsContext().GetCombinedValidationContext().GetDefaultValidationContext().GetMatchTypedSubjectAltNames()
	if len(sans) != 1 || sans[0].GetMatcher().GetPrefix() != "spiffe://td.test/ns/prod/sa/" {
		t.Errorf("match_typed_subject_alt_names = %v, want one URI prefix spiffe://td.test/ns/prod/sa/", sans)
	}
}

func httpFilters(t *testing.T, l *listenerv3.Listener) [][]*hcmv3.HttpFilter {
	t.Helper()
	var out [][]*hcmv3.HttpFilter
	for _, fc := range l.GetFilterChains() {
		var h hcmv3.HttpConnectionManager
		if err := fc.GetFilters()[0].GetTypedConfig().UnmarshalTo(&h); err != nil {
			t.Fatal(err)
		}
		out = append(out, h.GetHttpFilters())
	}
	return out
}

func TestAuthorizationPolicyRBAC(t *testing.T) {
	const h = "---\napiVersion: meshd.dev/v1alpha1\nkind: AuthorizationPolicy\n"
	// Without a policy: no RBAC filter anywhere.
	res := translateOK(t, modeMesh(t, "PERMISSIVE", ""))
	for _, chain := range httpFilters(t, findNamed[*listenerv3.Listener](t, res.Nodes["api-0.prod"].Listeners, "inbound|17001")) {
		if len(chain) != 1 || chain[0].GetName() != translate.RouterFilterName {
			t.Errorf("without AuthorizationPolicy http_filters = %v, want only the router", chain)
		}
	}
	m := modeMesh(t, "PERMISSIVE",
		h+"metadata: {name: a, namespace: prod}\nspec: {targetRef: {kind: Service, name: api}, allow: [\"spiffe://td.test/ns/web/sa/web\"]}\n"+
			h+"metadata: {name: b, namespace: ops}\nspec: {targetRef: {kind: Service, name: api, namespace: prod}, allow: [\"spiffe://td.test/ns/ops/*\", \"spiffe://td.test/ns/*/sa/admin\"]}\n")
	res = translateOK(t, m)
	chains := httpFilters(t, findNamed[*listenerv3.Listener](t, res.Nodes["api-0.prod"].Listeners, "inbound|17001"))
	if len(chains) != 2 {
		t.Fatalf("PERMISSIVE inbound has %d chains, want 2", len(chains))
	}
	for _, chain := range chains {
		if len(chain) != 2 || chain[0].GetName() != translate.RBACFilterName || chain[1].GetName() != translate.RouterFilterName {
			t.Fatalf("http_filters = %v, want [rbac router]", chain)
		}
		var cfg rbacfv3.RBAC
		if err := chain[0].GetTypedConfig().UnmarshalTo(&cfg); err != nil {
			t.Fatal(err)
		}
		rules := cfg.GetRules()
		if rules.GetAction().String() != "ALLOW" || len(rules.GetPolicies()) != 2 {
			t.Fatalf("rules = %v, want ALLOW with policies prod/a and ops/b", rules)
		}
		a, b := rules.GetPolicies()["prod/a"], rules.GetPolicies()["ops/b"]
		if got := a.GetPrincipals()[0].GetAuthenticated().GetPrincipalName().GetExact(); got != "spiffe://td.test/ns/web/sa/web" {
			t.Errorf("prod/a principal = %q", got)
		}
		if got := b.GetPrincipals()[0].GetAuthenticated().GetPrincipalName().GetPrefix(); got != "spiffe://td.test/ns/ops/" {
			t.Errorf("ops/b principal[0] prefix = %q", got)
		}
		if got := b.GetPrincipals()[1].GetAuthenticated().GetPrincipalName().GetSafeRegex().GetRegex(); got != `^spiffe://td\.test/ns/[^/]+/sa/admin$` {
			t.Errorf("ops/b principal[1] regex = %q", got)
		}
		if !a.GetPermissions()[0].GetAny() {
			t.Errorf("permissions = %v, want any", a.GetPermissions())
		}
	}
	// The caller's outbound listener gets no RBAC.
	for _, chain := range httpFilters(t, findNamed[*listenerv3.Listener](t, res.Nodes["web.web"].Listeners, "outbound|17100")) {
		if len(chain) != 1 {
			t.Errorf("outbound http_filters = %v, want only the router", chain)
		}
	}
}
