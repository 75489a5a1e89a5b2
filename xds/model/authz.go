package model

import (
	"fmt"
	"strings"

	"meshd.dev/meshd/mtls"
)

var mtlsModes = []string{MTLSStrict, MTLSPermissive, MTLSDisable}

// validateMTLS defaults spec.mtls to STRICT and normalises its case.
func validateMTLS(ps *problems, m *Mesh) {
	mode := strings.ToUpper(m.Spec.MTLS)
	switch {
	case m.Spec.MTLS == "":
		m.Spec.MTLS = MTLSStrict
	case mode == MTLSStrict, mode == MTLSPermissive, mode == MTLSDisable:
		m.Spec.MTLS = mode
	default:
		ps.add(m.meshOrigin, "spec.mtls", "unknown mode %q (one of %s)", m.Spec.MTLS, strings.Join(mtlsModes, ", "))
	}
}

// validateOutboundTrafficPolicy defaults spec.outboundTrafficPolicy to
// allowAny and normalises Istio's spellings (ALLOW_ANY, REGISTRY_ONLY).
func validateOutboundTrafficPolicy(ps *problems, m *Mesh) {
	switch strings.ToLower(strings.ReplaceAll(m.Spec.OutboundTrafficPolicy, "_", "")) {
	case "", "allowany":
		m.Spec.OutboundTrafficPolicy = OutboundAllowAny
	case "registryonly":
		m.Spec.OutboundTrafficPolicy = OutboundRegistryOnly
	default:
		ps.add(m.meshOrigin, "spec.outboundTrafficPolicy", "unknown policy %q (allowAny or registryOnly)", m.Spec.OutboundTrafficPolicy)
	}
}

// validateAuthorizationPolicy resolves the target and checks every allow
// entry as a SPIFFE ID pattern in the mesh's trust domain.
func validateAuthorizationPolicy(ps *problems, m *Mesh, p *AuthorizationPolicy) {
	o := p.origin
	p.Target = resolveTarget(ps, m, o, &p.Spec.TargetRef, p.Metadata.Namespace)
	if p.Target != nil {
		if p.Target.Spec.Protocol == ProtocolTCP {
			ps.add(o, "spec.targetRef", "Service %s is tcp: authorization applies to HTTP services only (envoy.filters.http.rbac)", p.Target.Key())
		}
		key := p.Target.Key()
		m.authz[key] = append(m.authz[key], p)
	}
	if m.Spec.MTLS == MTLSDisable {
		ps.add(o, "", "needs mTLS to know its callers, but the Mesh's spec.mtls is DISABLE (every call would be denied)")
	}
	if len(p.Spec.Allow) == 0 {
		ps.add(o, "spec.allow", "at least one SPIFFE ID or pattern is required")
	}
	for i, entry := range p.Spec.Allow {
		field := fmt.Sprintf("spec.allow[%d]", i)
		if err := checkAllowEntry(entry, m.Spec.TrustDomain); err != "" {
			ps.add(o, field, "%s", err)
		}
	}
}

// checkAllowEntry returns why entry is not an allow entry in trust domain
// td, or "".
func checkAllowEntry(entry, td string) string {
	if _, err := mtls.AuthorizePattern("", entry); err != nil {
		// AuthorizePattern's errors start with the (empty) field name.
		return strings.TrimPrefix(err.Error(), ": ")
	}
	host, _, _ := strings.Cut(strings.TrimPrefix(entry, "spiffe://"), "/")
	if host != td {
		return fmt.Sprintf("%q is in trust domain %q, not the mesh's %q (the sidecars trust only the mesh's own bundle)", entry, host, td)
	}
	if !strings.Contains(strings.TrimPrefix(entry, "spiffe://"), "/") {
		return fmt.Sprintf("%q has no path: a workload's SPIFFE ID always has one (use %q for the whole trust domain)", entry, entry+"/*")
	}
	return ""
}
