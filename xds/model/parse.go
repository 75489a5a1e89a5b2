package model

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"reflect"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"
)

// Load reads the mesh file at path and parses it with Parse, naming the file
// by path in every problem.
func Load(path string) (*Mesh, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("mesh file: %w", err)
	}
	return Parse(data, path)
}

// Parse decodes and validates a mesh file: a stream of YAML (or JSON)
// documents separated by "---" lines. source names the file in problems.
//
// Decoding is strict: an unknown field, a value of the wrong type, an
// unknown kind or apiVersion, a duplicate name, a dangling reference or an
// impossible tuning value is a problem; Parse reports every problem it finds
// as one *Error. Risky but legal tuning is not an error: see Mesh.Warnings.
func Parse(data []byte, source string) (*Mesh, error) {
	ps := &problems{}
	m := &Mesh{
		Source:     source,
		Metadata:   Metadata{Name: "default", Namespace: DefaultNamespace},
		services:   make(map[string]*Service),
		workloads:  make(map[string]*Workload),
		policies:   make(map[string]*TrafficPolicy),
		authz:      make(map[string][]*AuthorizationPolicy),
		rateLimits: make(map[string]*RateLimitPolicy),
	}
	docs := splitDocuments(data)
	seen := make(map[string]origin) // kind/ns/name -> first document
	meshDocs := 0
	for i, doc := range docs {
		if doc == nil {
			continue
		}
		o := origin{source: source, index: i + 1}
		env, spec, ok := decodeEnvelope(ps, &o, doc)
		if !ok {
			continue
		}
		id := o.kind + "/" + o.ns + "/" + o.name
		if first, dup := seen[id]; dup {
			ps.add(o, "metadata.name", "duplicate %s %s/%s (first defined in %s)", o.kind, o.ns, o.name, first.label())
			continue
		}
		seen[id] = o
		switch env.Kind {
		case KindMesh:
			meshDocs++
			if meshDocs > 1 {
				ps.add(o, "", "a mesh file has at most one Mesh document (first in %s)", m.meshOrigin.label())
				continue
			}
			m.meshOrigin = o
			m.Metadata = env.Metadata
			decodeSpec(ps, o, spec, &m.Spec)
		case KindService:
			s := &Service{Metadata: env.Metadata, origin: o}
			decodeSpec(ps, o, spec, &s.Spec)
			m.Services = append(m.Services, s)
		case KindWorkload:
			w := &Workload{Metadata: env.Metadata, origin: o}
			decodeSpec(ps, o, spec, &w.Spec)
			m.Workloads = append(m.Workloads, w)
		case KindTrafficPolicy:
			p := &TrafficPolicy{Metadata: env.Metadata, origin: o}
			decodeSpec(ps, o, spec, &p.Spec)
			m.TrafficPolicies = append(m.TrafficPolicies, p)
		case KindAuthorizationPolicy:
			p := &AuthorizationPolicy{Metadata: env.Metadata, origin: o}
			decodeSpec(ps, o, spec, &p.Spec)
			m.AuthorizationPolicies = append(m.AuthorizationPolicies, p)
		case KindRateLimitPolicy:
			p := &RateLimitPolicy{Metadata: env.Metadata, origin: o}
			decodeSpec(ps, o, spec, &p.Spec)
			m.RateLimitPolicies = append(m.RateLimitPolicies, p)
		}
	}
	if len(ps.list) > 0 {
		// Cross-reference checks on half-decoded documents only add noise.
		return nil, ps.err()
	}
	sortByName(m.Services, func(s *Service) Metadata { return s.Metadata })
	sortByName(m.Workloads, func(w *Workload) Metadata { return w.Metadata })
	sortByName(m.TrafficPolicies, func(p *TrafficPolicy) Metadata { return p.Metadata })
	sortByName(m.AuthorizationPolicies, func(p *AuthorizationPolicy) Metadata { return p.Metadata })
	sortByName(m.RateLimitPolicies, func(p *RateLimitPolicy) Metadata { return p.Metadata })
	validate(ps, m)
	if err := ps.err(); err != nil {
		return nil, err
	}
	return m, nil
}

// envelope is the part every document shares.
type envelope struct {
	APIVersion string          `json:"apiVersion"`
	Kind       string          `json:"kind"`
	Metadata   Metadata        `json:"metadata"`
	Spec       json.RawMessage `json:"spec"`
}

var supportedKinds = []string{KindMesh, KindService, KindWorkload, KindTrafficPolicy, KindAuthorizationPolicy, KindRateLimitPolicy}

// decodeEnvelope converts one YAML document to JSON and checks apiVersion,
// kind and metadata, filling o's kind, namespace and name. It returns the
// envelope and the spec as generic JSON, or false after reporting why the
// document cannot be decoded further.
func decodeEnvelope(ps *problems, o *origin, doc []byte) (envelope, any, bool) {
	var env envelope
	js, err := yaml.YAMLToJSON(doc)
	if err != nil {
		ps.add(*o, "", "invalid YAML: %v", err)
		return env, nil, false
	}
	var generic any
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	if err := dec.Decode(&generic); err != nil {
		ps.add(*o, "", "invalid document: %v", err)
		return env, nil, false
	}
	top, isObj := generic.(map[string]any)
	if !isObj {
		ps.add(*o, "", "a document must be an object with apiVersion, kind, metadata and spec, got %s", jsonKind(generic))
		return env, nil, false
	}
	// Kind and name first, so that every later problem is labelled.
	if k, ok := top["kind"].(string); ok {
		o.kind = k
	}
	if md, ok := top["metadata"].(map[string]any); ok {
		if n, ok := md["name"].(string); ok {
			o.name = n
		}
		o.ns = DefaultNamespace
		if n, ok := md["namespace"].(string); ok && n != "" {
			o.ns = n
		}
	}
	before := len(ps.list)
	spec, hasSpec := top["spec"]
	delete(top, "spec") // checked against the kind's type by decodeSpec
	checkValue(ps, *o, "", top, reflect.TypeFor[envelope]())
	if len(ps.list) > before {
		return env, nil, false
	}
	b, _ := json.Marshal(top)
	if err := json.Unmarshal(b, &env); err != nil {
		ps.add(*o, "", "invalid document: %v", err)
		return env, nil, false
	}
	ok := true
	switch {
	case env.APIVersion == "":
		ps.add(*o, "apiVersion", "required (%s)", APIVersion)
		ok = false
	case env.APIVersion != APIVersion:
		ps.add(*o, "apiVersion", "unsupported %q (want %s)", env.APIVersion, APIVersion)
		ok = false
	}
	switch {
	case env.Kind == "":
		ps.add(*o, "kind", "required (one of %s)", strings.Join(supportedKinds, ", "))
		ok = false
	case !slices.Contains(supportedKinds, env.Kind):
		ps.add(*o, "kind", "unknown kind %q (one of %s)", env.Kind, strings.Join(supportedKinds, ", "))
		ok = false
	}
	if env.Metadata.Namespace == "" {
		env.Metadata.Namespace = DefaultNamespace
	}
	checkName(ps, *o, "metadata.name", env.Metadata.Name, true)
	checkName(ps, *o, "metadata.namespace", env.Metadata.Namespace, true)
	if !hasSpec && ok && env.Kind != KindMesh {
		ps.add(*o, "spec", "required")
	}
	if !hasSpec {
		spec = map[string]any{}
	}
	return env, spec, ok && len(ps.list) == before
}

// decodeSpec checks the document's spec against the kind's type (every
// problem with its path), then decodes it strictly into out.
func decodeSpec(ps *problems, o origin, spec any, out any) {
	before := len(ps.list)
	checkValue(ps, o, "spec", spec, reflect.TypeOf(out).Elem())
	if len(ps.list) > before {
		return
	}
	b, err := json.Marshal(spec)
	if err == nil {
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		err = dec.Decode(out)
	}
	if err != nil {
		// checkValue accepts exactly what the decoder does; this is a
		// backstop so that a gap in it can never let a field through.
		ps.add(o, "spec", "%v", err)
	}
}

// checkName reports a name that is not a DNS-1123 label.
func checkName(ps *problems, o origin, field, name string, required bool) {
	if name == "" {
		if required {
			ps.add(o, field, "required")
		}
		return
	}
	if reason := dnsLabel(name); reason != "" {
		ps.add(o, field, "%q %s", name, reason)
	}
}

// dnsLabel returns why name is not a DNS-1123 label, or "".
func dnsLabel(name string) string {
	if len(name) > 63 {
		return "is longer than 63 characters"
	}
	for i, c := range name {
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-' && i > 0 && i < len(name)-1:
		default:
			return "must consist of lower-case letters, digits and '-', and start and end with a letter or digit"
		}
	}
	return ""
}

func sortByName[T any](s []T, md func(T) Metadata) {
	slices.SortFunc(s, func(a, b T) int {
		ma, mb := md(a), md(b)
		if c := strings.Compare(ma.Namespace, mb.Namespace); c != 0 {
			return c
		}
		return strings.Compare(ma.Name, mb.Name)
	})
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
