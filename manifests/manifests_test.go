// Package manifests_test checks the Kubernetes manifests offline: every
// document decodes strictly into its k8s.io/api type, the kustomization
// renders with kustomize's Go API, the objects reference each other
// consistently, and the CRDs' OpenAPI schemas are valid structural schemas
// (checked by the API server's own CRD validation) that accept the examples
// and reject bad fields.
package manifests_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	crdvalidation "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/validation"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/pruning"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"meshd.dev/meshd/xds/model"
)

// files are the manifests kustomization.yaml lists, in its order.
var files = []string{"namespace.yaml", "crds.yaml", "serviceaccount.yaml", "rbac.yaml", "deployment.yaml", "pdb.yaml", "service.yaml", "webhook.yaml"}

// newObject returns an empty object of the k8s.io/api type for kind.
func newObject(apiVersion, kind string) (any, error) {
	switch apiVersion + "/" + kind {
	case "v1/Namespace":
		return &corev1.Namespace{}, nil
	case "v1/ServiceAccount":
		return &corev1.ServiceAccount{}, nil
	case "v1/Service":
		return &corev1.Service{}, nil
	case "apps/v1/Deployment":
		return &appsv1.Deployment{}, nil
	case "policy/v1/PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, nil
	case "rbac.authorization.k8s.io/v1/ClusterRole":
		return &rbacv1.ClusterRole{}, nil
	case "rbac.authorization.k8s.io/v1/ClusterRoleBinding":
		return &rbacv1.ClusterRoleBinding{}, nil
	case "rbac.authorization.k8s.io/v1/Role":
		return &rbacv1.Role{}, nil
	case "rbac.authorization.k8s.io/v1/RoleBinding":
		return &rbacv1.RoleBinding{}, nil
	case "admissionregistration.k8s.io/v1/MutatingWebhookConfiguration":
		return &admissionregistrationv1.MutatingWebhookConfiguration{}, nil
	case "apiextensions.k8s.io/v1/CustomResourceDefinition":
		return &apiextensionsv1.CustomResourceDefinition{}, nil
	}
	return nil, fmt.Errorf("no k8s.io/api type for apiVersion %q kind %q", apiVersion, kind)
}

// splitYAML returns the non-empty documents of a multi-document YAML file.
func splitYAML(data []byte) [][]byte {
	var docs [][]byte
	for _, d := range bytes.Split(data, []byte("\n---")) {
		d = bytes.TrimPrefix(bytes.TrimSpace(d), []byte("---"))
		empty := true
		for _, line := range strings.Split(string(d), "\n") {
			if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "#") {
				empty = false
			}
		}
		if !empty {
			docs = append(docs, d)
		}
	}
	return docs
}

// decodeAll strictly decodes every document of the listed files.
func decodeAll(t *testing.T) map[string]any {
	t.Helper()
	objs := make(map[string]any) // "Kind/namespace/name"
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range splitYAML(data) {
			var tm struct{ APIVersion, Kind string }
			if err := yaml.Unmarshal(doc, &tm); err != nil {
				t.Fatalf("%s document %d: %v", f, i+1, err)
			}
			obj, err := newObject(tm.APIVersion, tm.Kind)
			if err != nil {
				t.Fatalf("%s document %d: %v", f, i+1, err)
			}
			if err := yaml.UnmarshalStrict(doc, obj); err != nil {
				t.Fatalf("%s document %d (%s): strict decode: %v", f, i+1, tm.Kind, err)
			}
			meta := reflect.ValueOf(obj).Elem().FieldByName("ObjectMeta")
			name := meta.FieldByName("Name").String()
			ns := meta.FieldByName("Namespace").String()
			if name == "" {
				t.Fatalf("%s document %d (%s): metadata.name is empty", f, i+1, tm.Kind)
			}
			key := tm.Kind + "/" + ns + "/" + name
			if _, dup := objs[key]; dup {
				t.Fatalf("%s document %d: duplicate %s", f, i+1, key)
			}
			objs[key] = obj
		}
	}
	return objs
}

func TestManifestsDecodeStrictly(t *testing.T) {
	objs := decodeAll(t)
	if len(objs) != 14 {
		var keys []string
		for k := range objs {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		t.Fatalf("decoded %d objects, want 14: %v", len(objs), keys)
	}
	// A field misspelled in a manifest must fail the strict decode.
	bad := []byte("apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {selectr: {a: b}}\n")
	if err := yaml.UnmarshalStrict(bad, &corev1.Service{}); err == nil || !strings.Contains(err.Error(), "selectr") {
		t.Fatalf("strict decode of a misspelled field: err = %v, want one naming selectr", err)
	}
}

// TestManifestsConsistent checks the references between the objects, the
// way the API server and the kubelet would resolve them.
func TestManifestsConsistent(t *testing.T) {
	objs := decodeAll(t)
	get := func(key string) any {
		o, ok := objs[key]
		if !ok {
			t.Fatalf("missing %s", key)
		}
		return o
	}
	const ns = "meshd-system"
	dep := get("Deployment/" + ns + "/meshd-control-plane").(*appsv1.Deployment)
	svc := get("Service/" + ns + "/meshd-control-plane").(*corev1.Service)
	pdb := get("PodDisruptionBudget/" + ns + "/meshd-control-plane").(*policyv1.PodDisruptionBudget)
	hook := get("MutatingWebhookConfiguration//meshd-injector").(*admissionregistrationv1.MutatingWebhookConfiguration)
	role := get("ClusterRole//meshd-control-plane").(*rbacv1.ClusterRole)
	binding := get("ClusterRoleBinding//meshd-control-plane").(*rbacv1.ClusterRoleBinding)
	get("ServiceAccount/" + ns + "/meshd-control-plane")
	get("Namespace//" + ns)

	if dep.Spec.Replicas == nil || *dep.Spec.Replicas < 2 {
		t.Errorf("Deployment replicas = %v, want at least 2", dep.Spec.Replicas)
	}
	podLabels := dep.Spec.Template.Labels
	matches := func(sel map[string]string) bool {
		for k, v := range sel {
			if podLabels[k] != v {
				return false
			}
		}
		return len(sel) > 0
	}
	if !matches(dep.Spec.Selector.MatchLabels) || !matches(svc.Spec.Selector) || !matches(pdb.Spec.Selector.MatchLabels) {
		t.Errorf("the Deployment's selector, the Service's and the PDB's must all select the pod template labels %v", podLabels)
	}
	if dep.Spec.Template.Spec.ServiceAccountName != binding.Subjects[0].Name || binding.RoleRef.Name != role.Name {
		t.Errorf("the pods' service account %q must be bound to ClusterRole %q", dep.Spec.Template.Spec.ServiceAccountName, role.Name)
	}
	ports := map[string]int32{}
	for _, c := range dep.Spec.Template.Spec.Containers {
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
			t.Errorf("container %s: resource requests for cpu and memory are required", c.Name)
		}
		if c.ReadinessProbe == nil || c.LivenessProbe == nil {
			t.Errorf("container %s: readiness and liveness probes are required", c.Name)
		}
		for _, p := range c.Ports {
			ports[p.Name] = p.ContainerPort
		}
		for _, p := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe} {
			if p != nil && p.HTTPGet != nil && ports[p.HTTPGet.Port.StrVal] == 0 {
				t.Errorf("container %s: probe port %q is not a port of the container", c.Name, p.HTTPGet.Port.StrVal)
			}
		}
		volumes := map[string]bool{}
		for _, v := range dep.Spec.Template.Spec.Volumes {
			volumes[v.Name] = true
		}
		for _, m := range c.VolumeMounts {
			if !volumes[m.Name] {
				t.Errorf("container %s mounts undefined volume %q", c.Name, m.Name)
			}
		}
	}
	for _, p := range svc.Spec.Ports {
		if ports[p.TargetPort.StrVal] == 0 {
			t.Errorf("Service port %s: targetPort %q is no container port", p.Name, p.TargetPort.StrVal)
		}
	}
	w := hook.Webhooks[0]
	ref := w.ClientConfig.Service
	if ref == nil || ref.Name != svc.Name || ref.Namespace != svc.Namespace || !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return ref.Port != nil && p.Port == *ref.Port }) {
		t.Errorf("webhook clientConfig.service %+v is not a port of Service %s/%s", ref, svc.Namespace, svc.Name)
	}
	if w.NamespaceSelector == nil || w.NamespaceSelector.MatchLabels["meshd.dev/inject"] != "enabled" {
		t.Errorf("webhook namespaceSelector = %v, want meshd.dev/inject=enabled", w.NamespaceSelector)
	}

	// Least privilege: exactly these grants, nothing that writes but
	// TokenReview creation and the source's Events on rejected objects.
	want := map[string][]string{
		"/services": {"get", "list", "watch"}, "/pods": {"get", "list", "watch"}, "/serviceaccounts": {"get", "list", "watch"},
		"discovery.k8s.io/endpointslices": {"get", "list", "watch"},
		"meshd.dev/meshes":                {"get", "list", "watch"}, "meshd.dev/trafficpolicies": {"get", "list", "watch"},
		"meshd.dev/authorizationpolicies": {"get", "list", "watch"}, "meshd.dev/ratelimitpolicies": {"get", "list", "watch"},
		"authentication.k8s.io/tokenreviews": {"create"},
		"/events":                            {"create", "patch"},
	}
	got := map[string][]string{}
	for _, r := range role.Rules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				got[g+"/"+res] = append(got[g+"/"+res], r.Verbs...)
			}
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ClusterRole grants %v\nwant %v", got, want)
	}
}

// TestKustomizationRenders renders manifests/ offline with kustomize's Go
// API, as `kubectl apply -k manifests/` would, and checks it yields every
// object of the listed files.
func TestKustomizationRenders(t *testing.T) {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	dir, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	rm, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build: %v", err)
	}
	var got []string
	for _, r := range rm.Resources() {
		got = append(got, r.GetKind()+"/"+r.GetNamespace()+"/"+r.GetName())
	}
	var want []string
	for key := range decodeAll(t) {
		want = append(want, key)
	}
	sort.Strings(got)
	sort.Strings(want)
	if !slices.Equal(got, want) {
		t.Fatalf("kustomize rendered %v\nwant %v", got, want)
	}
	out, err := rm.AsYaml()
	if err != nil {
		t.Fatal(err)
	}
	// The rendered stream must still decode strictly.
	for i, doc := range splitYAML(out) {
		var tm struct{ APIVersion, Kind string }
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			t.Fatal(err)
		}
		obj, err := newObject(tm.APIVersion, tm.Kind)
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.UnmarshalStrict(doc, obj); err != nil {
			t.Fatalf("rendered document %d (%s): %v", i+1, tm.Kind, err)
		}
	}
}

// crdSchemas returns each CRD's kind with its structural schema and
// validator, after the API server's own CRD validation.
type crdSchema struct {
	structural *structuralschema.Structural
	validator  validation.SchemaValidator
	v1         *apiextensionsv1.JSONSchemaProps
}

func loadCRDs(t *testing.T) map[string]crdSchema {
	t.Helper()
	out := make(map[string]crdSchema)
	for key, obj := range decodeAll(t) {
		crd, ok := obj.(*apiextensionsv1.CustomResourceDefinition)
		if !ok {
			continue
		}
		apiextensionsv1.SetObjectDefaults_CustomResourceDefinition(crd)
		var internal apiextensions.CustomResourceDefinition
		if err := apiextensionsv1.Convert_v1_CustomResourceDefinition_To_apiextensions_CustomResourceDefinition(crd, &internal, nil); err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		if errs := crdvalidation.ValidateCustomResourceDefinition(context.Background(), &internal); len(errs) > 0 {
			t.Fatalf("%s: rejected by the API server's CRD validation: %v", key, errs.ToAggregate())
		}
		// The internal form hoists a schema shared by every version to
		// spec.validation.
		cv := internal.Spec.Validation
		if cv == nil {
			cv = internal.Spec.Versions[0].Schema
		}
		schema := cv.OpenAPIV3Schema
		s, err := structuralschema.NewStructural(schema)
		if err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		v, _, err := validation.NewSchemaValidator(schema)
		if err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		out[crd.Spec.Names.Kind] = crdSchema{structural: s, validator: v, v1: crd.Spec.Versions[0].Schema.OpenAPIV3Schema}
	}
	return out
}

// check validates one custom resource as the API server does on create with
// strict field validation: unknown fields are errors, then the schema.
func (c crdSchema) check(obj map[string]any) error {
	unknown := pruning.PruneWithOptions(obj, c.structural, true, structuralschema.UnknownFieldPathOptions{TrackUnknownFieldPaths: true})
	if len(unknown) > 0 {
		return fmt.Errorf("unknown fields %v", unknown)
	}
	if errs := validation.ValidateCustomResource(field.NewPath(""), obj, c.validator); len(errs) > 0 {
		return errs.ToAggregate()
	}
	return nil
}

func TestCRDSchemasAcceptExamples(t *testing.T) {
	crds := loadCRDs(t)
	if len(crds) != 4 {
		t.Fatalf("%d CRDs, want Mesh, TrafficPolicy, AuthorizationPolicy, RateLimitPolicy", len(crds))
	}
	seen := map[string]int{}
	for _, f := range []string{"../examples/mesh.yaml", "../examples/kubernetes/greeter.yaml"} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range splitYAML(data) {
			var obj map[string]any
			if err := yaml.Unmarshal(doc, &obj); err != nil {
				t.Fatal(err)
			}
			c, ok := crds[fmt.Sprint(obj["kind"])]
			if !ok || obj["apiVersion"] != model.APIVersion {
				continue
			}
			seen[fmt.Sprint(obj["kind"])]++
			if err := c.check(obj); err != nil {
				t.Errorf("%s document %d (%s): %v", f, i+1, obj["kind"], err)
			}
		}
	}
	for kind := range crds {
		if seen[kind] == 0 {
			t.Errorf("no example of %s was checked", kind)
		}
	}
}

func TestCRDSchemasRejectBadFields(t *testing.T) {
	crds := loadCRDs(t)
	tests := []struct {
		name, kind, spec, want string
	}{
		{"unknown field", "TrafficPolicy", `{targetRef: {kind: Service, name: a}, loadBalancr: random}`, "spec.loadBalancr"},
		{"unknown nested field", "TrafficPolicy", `{targetRef: {kind: Service, name: a}, http2: {keepalive: {intervl: 1s}}}`, "spec.http2.keepalive.intervl"},
		{"bad enum", "TrafficPolicy", `{targetRef: {kind: Service, name: a}, loadBalancer: fastest}`, "spec.loadBalancer"},
		{"wrong type", "TrafficPolicy", `{targetRef: {kind: Service, name: a}, connectionPool: {maxConnections: ten}}`, "spec.connectionPool.maxConnections"},
		{"bad duration", "Mesh", `{defaults: {timeout: soon}}`, "spec.defaults.timeout"},
		{"missing target", "RateLimitPolicy", `{requestsPerUnit: 10}`, "spec.targetRef"},
		{"zero rate", "RateLimitPolicy", `{targetRef: {kind: Service, name: a}, requestsPerUnit: 0}`, "spec.requestsPerUnit"},
		{"target kind", "AuthorizationPolicy", `{targetRef: {kind: Pod, name: a}, allow: ["spiffe://td/ns/a/sa/b"]}`, "spec.targetRef.kind"},
		{"empty allow", "AuthorizationPolicy", `{targetRef: {kind: Service, name: a}, allow: []}`, "spec.allow"},
		{"bad mtls", "Mesh", `{mtls: sometimes}`, "spec.mtls"},
		{"bad outbound traffic policy", "Mesh", `{outboundTrafficPolicy: allowSome}`, "spec.outboundTrafficPolicy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var obj map[string]any
			doc := fmt.Sprintf("apiVersion: %s\nkind: %s\nmetadata: {name: x, namespace: y}\nspec: %s\n", model.APIVersion, tt.kind, tt.spec)
			if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
				t.Fatal(err)
			}
			err := crds[tt.kind].check(obj)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one naming %s", err, tt.want)
			}
		})
	}
}

// TestCRDSchemasMatchModel keeps the CRD schemas and the mesh file's Go
// types in step: every field of the model is in the schema and every
// schema property is a field of the model.
func TestCRDSchemasMatchModel(t *testing.T) {
	crds := loadCRDs(t)
	specs := map[string]reflect.Type{
		"Mesh":                reflect.TypeFor[model.MeshSpec](),
		"TrafficPolicy":       reflect.TypeFor[model.TrafficPolicySpec](),
		"AuthorizationPolicy": reflect.TypeFor[model.AuthorizationPolicySpec](),
		"RateLimitPolicy":     reflect.TypeFor[model.RateLimitPolicySpec](),
	}
	for kind, typ := range specs {
		spec := crds[kind].v1.Properties["spec"]
		compare(t, kind+".spec", &spec, typ)
	}
}

func compare(t *testing.T, path string, s *apiextensionsv1.JSONSchemaProps, typ reflect.Type) {
	t.Helper()
	for typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	if typ.Kind() != reflect.Struct || typ == reflect.TypeFor[model.Duration]() {
		return
	}
	fields := map[string]reflect.Type{}
	var collect func(reflect.Type)
	collect = func(typ reflect.Type) {
		for f := range typ.Fields() {
			if f.Anonymous {
				collect(f.Type)
				continue
			}
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name != "" && name != "-" {
				fields[name] = f.Type
			}
		}
	}
	collect(typ)
	for name, ft := range fields {
		p, ok := s.Properties[name]
		if !ok {
			t.Errorf("%s.%s: in the model, missing from the CRD schema", path, name)
			continue
		}
		if ft.Kind() == reflect.Slice {
			if p.Items != nil && p.Items.Schema != nil {
				compare(t, path+"."+name+"[]", p.Items.Schema, ft.Elem())
			}
			continue
		}
		compare(t, path+"."+name, &p, ft)
	}
	for name := range s.Properties {
		if _, ok := fields[name]; !ok {
			t.Errorf("%s.%s: in the CRD schema, not a field of the model", path, name)
		}
	}
}
