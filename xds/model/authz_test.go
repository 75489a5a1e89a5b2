package model

import (
	"errors"
	"strings"
	"testing"
)

const meshTD = header + "kind: Mesh\nmetadata: {name: m}\nspec: {trustDomain: td.test}\n---\n"

func authzDoc(spec string) string {
	return "---\n" + header + "kind: AuthorizationPolicy\nmetadata: {name: a, namespace: demo}\nspec: " + spec + "\n"
}

func TestMTLSMode(t *testing.T) {
	tests := []struct {
		name, spec, want string
	}{
		{"default", "{}", MTLSStrict},
		{"strict", "{mtls: STRICT}", MTLSStrict},
		{"permissive lower case", "{mtls: permissive}", MTLSPermissive},
		{"disable mixed case", "{mtls: Disable}", MTLSDisable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Parse([]byte(header+"kind: Mesh\nmetadata: {name: m}\nspec: "+tt.spec+"\n"), "f.yaml")
			if err != nil {
				t.Fatal(err)
			}
			if m.Spec.MTLS != tt.want {
				t.Errorf("spec.mtls = %q, want %q", m.Spec.MTLS, tt.want)
			}
		})
	}
	m, err := Parse([]byte(greeter), "f.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if m.Spec.MTLS != MTLSStrict {
		t.Errorf("without a Mesh document spec.mtls = %q, want STRICT", m.Spec.MTLS)
	}
}

func TestOutboundTrafficPolicy(t *testing.T) {
	tests := []struct {
		name, spec, want, wantErr string
	}{
		{name: "default", spec: "{}", want: OutboundAllowAny},
		{name: "registryOnly", spec: "{outboundTrafficPolicy: registryOnly}", want: OutboundRegistryOnly},
		{name: "Istio spelling", spec: "{outboundTrafficPolicy: REGISTRY_ONLY}", want: OutboundRegistryOnly},
		{name: "allow any upper case", spec: "{outboundTrafficPolicy: ALLOW_ANY}", want: OutboundAllowAny},
		{name: "unknown", spec: "{outboundTrafficPolicy: allowSome}",
			wantErr: `spec.outboundTrafficPolicy: unknown policy "allowSome" (allowAny or registryOnly)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Parse([]byte(header+"kind: Mesh\nmetadata: {name: m}\nspec: "+tt.spec+"\n"), "f.yaml")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Parse error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if m.Spec.OutboundTrafficPolicy != tt.want {
				t.Errorf("spec.outboundTrafficPolicy = %q, want %q", m.Spec.OutboundTrafficPolicy, tt.want)
			}
		})
	}
}

func TestAuthorizationPolicy(t *testing.T) {
	file := meshTD + greeter + "---\n" + header + "kind: Service\nmetadata: {name: other, namespace: demo}\nspec: {protocol: grpc, port: 2}\n" +
		authzDoc("{targetRef: {kind: Service, name: greeter}, allow: [\"spiffe://td.test/ns/demo/sa/client\"]}") +
		"---\n" + header + "kind: AuthorizationPolicy\nmetadata: {name: b, namespace: ops}\n" +
		"spec: {targetRef: {kind: Service, name: greeter, namespace: demo}, allow: [\"spiffe://td.test/ns/ops/*\", \"spiffe://td.test/ns/*/sa/admin\"]}\n"
	m, err := Parse([]byte(file), "f.yaml")
	if err != nil {
		t.Fatal(err)
	}
	svc := m.Service("greeter.demo")
	ps := m.AuthorizationPoliciesFor(svc)
	if len(ps) != 2 || ps[0].Metadata.Name != "a" || ps[1].Metadata.Name != "b" {
		t.Fatalf("AuthorizationPoliciesFor(greeter) = %v, want [a b]", ps)
	}
	for _, p := range ps {
		if p.Target != svc {
			t.Errorf("%s: Target = %v, want greeter.demo", p.Metadata.Name, p.Target)
		}
	}
	if got := m.AuthorizationPoliciesFor(m.Service("other.demo")); len(got) != 0 {
		t.Errorf("AuthorizationPoliciesFor(other) = %v, want none", got)
	}
}

func TestAuthorizationPolicyErrors(t *testing.T) {
	base := meshTD + greeter
	tests := []struct {
		name string
		file string
		want []string
	}{
		{"no allow", base + authzDoc("{targetRef: {kind: Service, name: greeter}}"),
			[]string{"document 3 (AuthorizationPolicy demo/a): spec.allow: at least one SPIFFE ID or pattern is required"}},
		{"dangling target", base + authzDoc("{targetRef: {kind: Service, name: nope}, allow: [\"spiffe://td.test/ns/a/sa/b\"]}"),
			[]string{"spec.targetRef: no Service nope.demo in the mesh file"}},
		{"wrong target kind", base + authzDoc("{targetRef: {kind: Workload, name: greeter}, allow: [\"spiffe://td.test/ns/a/sa/b\"]}"),
			[]string{"spec.targetRef.kind: unsupported kind \"Workload\" (Service)"}},
		{"not spiffe", base + authzDoc("{targetRef: {kind: Service, name: greeter}, allow: [\"https://td.test/ns/a\"]}"),
			[]string{"spec.allow[0]: pattern \"https://td.test/ns/a\" must start with spiffe://"}},
		{"bad segment", base + authzDoc("{targetRef: {kind: Service, name: greeter}, allow: [\"spiffe://td.test/ns/a/sa/b\", \"spiffe://td.test/ns//sa\"]}"),
			[]string{"spec.allow[1]: invalid SPIFFE ID"}},
		{"query", base + authzDoc("{targetRef: {kind: Service, name: greeter}, allow: [\"spiffe://td.test/ns/a?x=1\"]}"),
			[]string{"spec.allow[0]: invalid SPIFFE ID"}},
		{"other trust domain", base + authzDoc("{targetRef: {kind: Service, name: greeter}, allow: [\"spiffe://other.test/ns/a/sa/b\"]}"),
			[]string{"spec.allow[0]: \"spiffe://other.test/ns/a/sa/b\" is in trust domain \"other.test\", not the mesh's \"td.test\""}},
		{"bare trust domain", base + authzDoc("{targetRef: {kind: Service, name: greeter}, allow: [\"spiffe://td.test\"]}"),
			[]string{"spec.allow[0]: \"spiffe://td.test\" has no path"}},
		{"unknown field", base + authzDoc("{targetRef: {kind: Service, name: greeter}, allow: [\"spiffe://td.test/ns/a/sa/b\"], deny: []}"),
			[]string{"spec.deny: unknown field"}},
		{"tcp target", meshTD + header + "kind: Service\nmetadata: {name: db, namespace: demo}\nspec: {protocol: tcp, port: 5432}\n" +
			authzDoc("{targetRef: {kind: Service, name: db}, allow: [\"spiffe://td.test/ns/a/sa/b\"]}"),
			[]string{"spec.targetRef: Service db.demo is tcp"}},
		{"policy without mTLS", header + "kind: Mesh\nmetadata: {name: m}\nspec: {mtls: disable}\n---\n" + greeter +
			authzDoc("{targetRef: {kind: Service, name: greeter}, allow: [\"spiffe://cluster.local/ns/a/sa/b\"]}"),
			[]string{"document 3 (AuthorizationPolicy demo/a): needs mTLS to know its callers"}},
		{"bad mtls mode", header + "kind: Mesh\nmetadata: {name: m}\nspec: {mtls: optional}\n",
			[]string{"document 1 (Mesh default/m): spec.mtls: unknown mode \"optional\" (one of STRICT, PERMISSIVE, DISABLE)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.file), "f.yaml")
			var me *Error
			if !errors.As(err, &me) {
				t.Fatalf("Parse = %v, want a *model.Error", err)
			}
			if len(me.Problems) != len(tt.want) {
				t.Errorf("got %d problems, want %d:\n%v", len(me.Problems), len(tt.want), err)
			}
			for i, w := range tt.want {
				if i < len(me.Problems) && !strings.Contains(me.Problems[i].String(), w) {
					t.Errorf("problem %d = %q, want it to contain %q", i, me.Problems[i], w)
				}
			}
		})
	}
}
