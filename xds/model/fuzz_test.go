package model

import (
	"errors"
	"reflect"
	"testing"

	"meshd.dev/meshd/examples"
)

// FuzzParse checks that Parse never panics, that a rejection is always a
// *Error whose problems name the file, and that an accepted file has every
// reference resolved.
func FuzzParse(f *testing.F) {
	f.Add(examples.Mesh)
	f.Add([]byte(greeter))
	f.Add([]byte(header + "kind: Workload\nmetadata: {name: w}\nspec: {serviceAccount: sa, outbound: [{service: x.y, port: 3}]}\n"))
	f.Add([]byte(header + "kind: Mesh\nmetadata: {name: m}\nspec: {defaults: {http2: {keepalive: {interval: 10s, timeout: 10s}}}}\n"))
	f.Add([]byte("---\n---\n"))
	f.Add([]byte(`{"apiVersion":"meshd.dev/v1alpha1","kind":"Service","metadata":{"name":"a"},"spec":{"protocol":"tcp","port":1}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Parse(data, "fuzz.yaml")
		if err != nil {
			var me *Error
			if !errors.As(err, &me) || len(me.Problems) == 0 {
				t.Fatalf("error %T %v is not a non-empty *model.Error", err, err)
			}
			for _, p := range me.Problems {
				if p.Source != "fuzz.yaml" || p.Reason == "" {
					t.Fatalf("problem %+v lacks source or reason", p)
				}
			}
			return
		}
		for _, w := range m.Workloads {
			if (w.Spec.Service != "") != (w.ServiceRef != nil) {
				t.Fatalf("workload %s: service %q resolved to %v", w.NodeID(), w.Spec.Service, w.ServiceRef)
			}
			for i, r := range w.OutboundRefs {
				if r == nil {
					t.Fatalf("workload %s: outbound[%d] unresolved", w.NodeID(), i)
				}
			}
		}
		for _, p := range m.TrafficPolicies {
			if p.Target == nil {
				t.Fatalf("policy %s: target unresolved", p.Metadata.Name)
			}
		}
		_ = m.Warnings()
	})
}

// TestCheckValueCoversTypes keeps checkValue's kinds in step with the mesh
// file types: a field of a kind it does not check would be reported as an
// internal error to users.
func TestCheckValueCoversTypes(t *testing.T) {
	seen := map[reflect.Type]bool{}
	var walk func(path string, ty reflect.Type)
	walk = func(path string, ty reflect.Type) {
		if seen[ty] {
			return
		}
		seen[ty] = true
		if ty == durationType || ty == rawJSONType {
			return
		}
		switch ty.Kind() {
		case reflect.Pointer, reflect.Slice, reflect.Map:
			walk(path, ty.Elem())
		case reflect.Struct:
			for name, ft := range jsonFields(ty) {
				walk(path+"."+name, ft)
			}
		case reflect.String, reflect.Bool, reflect.Uint32, reflect.Float64:
		default:
			t.Errorf("%s: kind %s has no checker in checkValue", path, ty.Kind())
		}
	}
	for _, ty := range []reflect.Type{reflect.TypeFor[envelope](), reflect.TypeFor[MeshSpec](), reflect.TypeFor[ServiceSpec](),
		reflect.TypeFor[WorkloadSpec](), reflect.TypeFor[TrafficPolicySpec](), reflect.TypeFor[AuthorizationPolicySpec]()} {
		walk(ty.Name(), ty)
	}
	if len(seen) < 20 {
		t.Errorf("walked only %d types; the walk is broken", len(seen))
	}
}
