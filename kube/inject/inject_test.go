package inject

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/kube/probe"
	"meshd.dev/meshd/proxy/config"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

var testConfig = Config{Image: "meshd:test", XDSAddress: "meshd-control-plane.meshd-system.svc:15010", ExcludeOutboundPorts: []int32{53}}

func TestGolden(t *testing.T) {
	tests := []struct {
		name, input string
		cfg         Config
	}{
		{"pod", "pod.yaml", testConfig},
		{"pod.regular", "pod.yaml", func() Config { c := testConfig; c.RegularContainer = true; return c }()},
		{"deployment", "deployment.yaml", testConfig},
		{"statefulset", "statefulset.yaml", testConfig},
		{"daemonset", "daemonset.yaml", testConfig},
		{"replicaset", "replicaset.yaml", testConfig},
		{"job", "job.yaml", testConfig},
		{"cronjob", "cronjob.yaml", testConfig},
		{"list", "list.yaml", testConfig},
		{"multi", "multi.yaml", testConfig},
		{"probes", "probes.yaml", testConfig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in, err := os.ReadFile(filepath.Join("testdata", tt.input))
			if err != nil {
				t.Fatal(err)
			}
			got, err := tt.cfg.Manifest(in)
			if err != nil {
				t.Fatal(err)
			}
			golden := filepath.Join("testdata", tt.name+".golden.yaml")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("output differs from %s (run with -update after checking):\n%s", golden, got)
			}
			// Idempotent: injecting the output changes nothing.
			again, err := tt.cfg.Manifest(got)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(again, got) {
				t.Fatalf("injecting twice changed the output:\n%s", again)
			}
		})
	}
}

// TestGoldenContents checks what the golden files promise, so that a
// regenerated golden file cannot silently lose a piece.
func TestGoldenContents(t *testing.T) {
	in, err := os.ReadFile("testdata/pod.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, regular := range []bool{false, true} {
		cfg := testConfig
		cfg.RegularContainer = regular
		out, err := cfg.Manifest(in)
		if err != nil {
			t.Fatal(err)
		}
		var pod corev1.Pod
		if err := yaml.UnmarshalStrict(out, &pod); err != nil {
			t.Fatal(err)
		}
		if pod.Annotations[AnnotationStatus] != StatusVersion {
			t.Errorf("regular=%v: annotation %s = %q", regular, AnnotationStatus, pod.Annotations[AnnotationStatus])
		}
		init := pod.Spec.InitContainers[0]
		if init.Name != InitName {
			t.Fatalf("regular=%v: first init container %q, want %s", regular, init.Name, InitName)
		}
		args := strings.Join(init.Args, " ")
		for _, want := range []string{"capture", "--inbound-port 15006", "--outbound-port 15001", "--proxy-uid 1337",
			"--exclude-inbound-ports 15021", "--exclude-outbound-ports 53,5432"} {
			if !strings.Contains(args, want) {
				t.Errorf("regular=%v: capture args %q lack %q", regular, args, want)
			}
		}
		var sidecar corev1.Container
		if regular {
			sidecar = pod.Spec.Containers[0]
			if len(pod.Spec.InitContainers) != 1 || sidecar.RestartPolicy != nil {
				t.Errorf("regular container: init containers %d, restartPolicy %v", len(pod.Spec.InitContainers), sidecar.RestartPolicy)
			}
		} else {
			sidecar = pod.Spec.InitContainers[1]
			if sidecar.RestartPolicy == nil || *sidecar.RestartPolicy != corev1.ContainerRestartPolicyAlways || len(pod.Spec.Containers) != 1 {
				t.Errorf("native sidecar: restartPolicy %v, containers %d", sidecar.RestartPolicy, len(pod.Spec.Containers))
			}
		}
		if sidecar.Name != SidecarName || *sidecar.SecurityContext.RunAsUser != DefaultProxyUID {
			t.Errorf("sidecar %q runs as %d", sidecar.Name, *sidecar.SecurityContext.RunAsUser)
		}
		// The inline bootstrap is one the sidecar's own loader accepts.
		i := slices.Index(sidecar.Args, "--config-yaml")
		if i < 0 {
			t.Fatalf("sidecar args %q lack --config-yaml", sidecar.Args)
		}
		b, err := config.ParseBootstrap([]byte(sidecar.Args[i+1]), "inline")
		if err != nil {
			t.Fatalf("injected bootstrap: %v", err)
		}
		if b.GetAdmin().GetAddress().GetSocketAddress().GetPortValue() != DefaultAdminPort {
			t.Errorf("bootstrap admin = %v", b.GetAdmin())
		}
		v := pod.Spec.Volumes[len(pod.Spec.Volumes)-1]
		if v.Name != TokenVolumeName || v.Projected.Sources[0].ServiceAccountToken.Audience != TokenAudience {
			t.Errorf("token volume = %+v", v)
		}
	}
}

// TestProbeRewrite checks what probes.golden.yaml promises: every
// network probe of the first pod points at the status port and its
// original, with named ports resolved, is in the sidecar's environment;
// the pod that opts out keeps its probes and has their ports excluded
// from capture.
func TestProbeRewrite(t *testing.T) {
	in, err := os.ReadFile("testdata/probes.yaml")
	if err != nil {
		t.Fatal(err)
	}
	out, err := testConfig.Manifest(in)
	if err != nil {
		t.Fatal(err)
	}
	docs := splitDocuments(out)
	if len(docs) != 2 {
		t.Fatalf("%d documents, want 2", len(docs))
	}
	var pod, legacy corev1.Pod
	if err := yaml.UnmarshalStrict(docs[0], &pod); err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(docs[1], &legacy); err != nil {
		t.Fatal(err)
	}
	web, cart := pod.Spec.Containers[0], pod.Spec.Containers[1]
	for _, tt := range []struct {
		p    *corev1.Probe
		path string
	}{
		{web.StartupProbe, "/app-health/web/startupz"},
		{web.LivenessProbe, "/app-health/web/livez"},
		{cart.ReadinessProbe, "/app-health/cart/readyz"},
	} {
		if h := tt.p.HTTPGet; h == nil || h.Path != tt.path || h.Port.IntValue() != DefaultStatusPort || tt.p.TCPSocket != nil || tt.p.GRPC != nil {
			t.Errorf("probe %s not rewritten: %+v", tt.path, tt.p.ProbeHandler)
		}
	}
	if web.StartupProbe.TimeoutSeconds != 5 || web.StartupProbe.FailureThreshold != 30 || web.LivenessProbe.PeriodSeconds != 20 || cart.ReadinessProbe.InitialDelaySeconds != 3 {
		t.Error("the rewritten probes lost their timing fields")
	}
	if web.ReadinessProbe.Exec == nil {
		t.Errorf("exec probe changed: %+v", web.ReadinessProbe)
	}
	sidecar := pod.Spec.InitContainers[1]
	var env string
	for _, e := range sidecar.Env {
		if e.Name == probe.EnvAppProbes {
			env = e.Value
		}
	}
	probes, err := probe.Parse(env)
	if err != nil {
		t.Fatal(err)
	}
	if len(probes) != 3 {
		t.Fatalf("%d original probes in %s, want 3: %s", len(probes), probe.EnvAppProbes, env)
	}
	if p := probes["/app-health/web/startupz"].HTTPGet; p.Port != 9901 || p.Scheme != probe.SchemeHTTPS || p.Path != "/started" || len(p.HTTPHeaders) != 1 {
		t.Errorf("startup original = %+v", p)
	}
	if p := probes["/app-health/web/livez"].TCPSocket; p.Port != 8080 {
		t.Errorf("liveness original = %+v", p)
	}
	if p := probes["/app-health/cart/readyz"].GRPC; p.Port != 50051 || *p.Service != "cart" {
		t.Errorf("readiness original = %+v", p)
	}
	if !slices.Contains(sidecar.Args, "--status-address") || sidecar.ReadinessProbe.HTTPGet.Path != probe.ReadyPath {
		t.Errorf("sidecar args %q, readiness %+v", sidecar.Args, sidecar.ReadinessProbe)
	}
	if args := strings.Join(pod.Spec.InitContainers[0].Args, " "); !strings.Contains(args, "--exclude-inbound-ports 15021 ") {
		t.Errorf("capture args %q: only the status port should be excluded", args)
	}

	// A probe already on the status port at its own path stays as is and
	// has no original to pass on.
	pre := corev1.PodSpec{Containers: []corev1.Container{{Name: "a", LivenessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{
		HTTPGet: &corev1.HTTPGetAction{Path: probe.Path("a", probe.Liveness), Port: intstr.FromInt32(DefaultStatusPort)}}}}}}
	want := pre.Containers[0].LivenessProbe.DeepCopy()
	if _, err := testConfig.Pod(&metav1.ObjectMeta{}, &pre); err != nil {
		t.Fatal(err)
	}
	if !equalJSON(t, pre.Containers[0].LivenessProbe, want) || slices.ContainsFunc(pre.InitContainers[1].Env, func(e corev1.EnvVar) bool { return e.Name == probe.EnvAppProbes }) {
		t.Errorf("an already rewritten probe changed: %+v, env %+v", pre.Containers[0].LivenessProbe, pre.InitContainers[1].Env)
	}

	lw := legacy.Spec.Containers[0]
	if lw.LivenessProbe.HTTPGet.Port.StrVal != "http" || lw.ReadinessProbe.GRPC == nil {
		t.Errorf("opted-out probes changed: %+v %+v", lw.LivenessProbe, lw.ReadinessProbe)
	}
	if args := strings.Join(legacy.Spec.InitContainers[0].Args, " "); !strings.Contains(args, "--exclude-inbound-ports 8080,15021,50051 ") {
		t.Errorf("opted-out capture args %q lack the probe ports", args)
	}
	for _, e := range legacy.Spec.InitContainers[1].Env {
		if e.Name == probe.EnvAppProbes {
			t.Errorf("opted-out pod's sidecar has %s", e.Name)
		}
	}
}

func TestOptOutAndSkip(t *testing.T) {
	tests := []struct {
		name string
		meta metav1.ObjectMeta
		spec corev1.PodSpec
		why  string
	}{
		{"opt-out", metav1.ObjectMeta{Annotations: map[string]string{AnnotationInject: "false"}}, corev1.PodSpec{}, "opted out"},
		{"opt-out any case", metav1.ObjectMeta{Annotations: map[string]string{AnnotationInject: "False"}}, corev1.PodSpec{}, "opted out"},
		{"injected", metav1.ObjectMeta{Annotations: map[string]string{AnnotationStatus: "v1"}}, corev1.PodSpec{}, "already injected"},
		{"host network", metav1.ObjectMeta{}, corev1.PodSpec{HostNetwork: true}, "hostNetwork"},
		{"injected (true is not an opt-out)", metav1.ObjectMeta{Annotations: map[string]string{AnnotationInject: "true"}}, corev1.PodSpec{}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if why := Skip(&tt.meta, &tt.spec); !strings.Contains(why, tt.why) || (tt.why == "") != (why == "") {
				t.Fatalf("Skip = %q, want %q", why, tt.why)
			}
			before := tt.spec.DeepCopy()
			changed, err := testConfig.Pod(&tt.meta, &tt.spec)
			if err != nil {
				t.Fatal(err)
			}
			if changed != (tt.why == "") {
				t.Fatalf("Pod changed = %v", changed)
			}
			if !changed && !equalJSON(t, before, &tt.spec) {
				t.Fatal("a skipped pod was modified")
			}
		})
	}
}

func TestErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		doc  string
		want string
	}{
		{"no image", Config{XDSAddress: "cp:15010"}, "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: a}]}\n", "image: required"},
		{"bad xds", Config{Image: "m", XDSAddress: "cp"}, "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: a}]}\n", "xds address"},
		{"port clash", Config{Image: "m", XDSAddress: "cp:1", InboundPort: 15000}, "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: a}]}\n", "must differ"},
		{"unknown field", testConfig, "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: a}\nspec: {replicaz: 2}\n", "document 1: Deployment"},
		{"bad annotation", testConfig, "apiVersion: v1\nkind: Pod\nmetadata: {name: a, annotations: {meshd.dev/exclude-inbound-ports: \"80,http\"}}\nspec: {containers: [{name: a}]}\n", "meshd.dev/exclude-inbound-ports: \"http\""},
		{"probe port unknown", testConfig, "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: a, livenessProbe: {tcpSocket: {port: web}}}]}\n", "container \"a\" livenessProbe: port \"web\" names none"},
		{"status port clash", Config{Image: "m", XDSAddress: "cp:1", StatusPort: 15001}, "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: a}]}\n", "outbound port and status port must differ"},
		{"name taken", testConfig, "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: meshd-sidecar}]}\n", "already has a container named \"meshd-sidecar\""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.cfg.Manifest([]byte(tt.doc))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func equalJSON(t *testing.T, a, b any) bool {
	t.Helper()
	ja, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	jb, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Equal(ja, jb)
}

// TestWebhookSamePatch sends real AdmissionReview requests over HTTPS to
// the webhook and checks that its JSON patch, applied to the pod, gives
// exactly the pod `meshd inject` produces, for the pod template of every
// workload kind, and no patch for an opted-out pod.
func TestWebhookSamePatch(t *testing.T) {
	testutil.CheckGoroutines(t)
	// httptest binds 127.0.0.1:0.
	srv := httptest.NewTLSServer(&Webhook{Config: testConfig})
	defer srv.Close()
	client := srv.Client()
	defer client.CloseIdleConnections()
	if tr, ok := client.Transport.(*http.Transport); !ok || tr.TLSClientConfig == nil {
		t.Fatal("test server client without TLS")
	}

	for _, file := range []string{"pod.yaml", "probes.yaml", "deployment.yaml", "statefulset.yaml", "daemonset.yaml", "replicaset.yaml", "job.yaml", "cronjob.yaml", "multi.yaml"} {
		data, err := os.ReadFile(filepath.Join("testdata", file))
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range splitDocuments(data) {
			var tm metav1.TypeMeta
			if err := yaml.Unmarshal(doc, &tm); err != nil {
				t.Fatal(err)
			}
			h := holderFor(tm.APIVersion, tm.Kind)
			if h == nil {
				continue
			}
			if err := yaml.UnmarshalStrict(doc, h); err != nil {
				t.Fatal(err)
			}
			meta, spec := h.pod()
			pod := &corev1.Pod{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"}, ObjectMeta: *meta.DeepCopy(), Spec: *spec.DeepCopy()}
			pod.GenerateName, pod.Namespace = "web-", "demo"
			raw, err := json.Marshal(pod)
			if err != nil {
				t.Fatal(err)
			}

			want := pod.DeepCopy()
			changed, err := testConfig.Pod(&want.ObjectMeta, &want.Spec)
			if err != nil {
				t.Fatal(err)
			}
			resp := review(t, client, srv.URL+"/inject", raw)
			if !resp.Allowed {
				t.Fatalf("%s document %d: denied: %v", file, i+1, resp.Result)
			}
			if !changed {
				if resp.Patch != nil {
					t.Fatalf("%s document %d: a pod left alone got a patch %s", file, i+1, resp.Patch)
				}
				continue
			}
			if resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch {
				t.Fatalf("%s document %d: patchType %v", file, i+1, resp.PatchType)
			}
			p, err := jsonpatch.DecodePatch(resp.Patch)
			if err != nil {
				t.Fatalf("%s document %d: patch: %v", file, i+1, err)
			}
			patched, err := p.Apply(raw)
			if err != nil {
				t.Fatalf("%s document %d: applying the patch: %v", file, i+1, err)
			}
			var got corev1.Pod
			if err := json.Unmarshal(patched, &got); err != nil {
				t.Fatal(err)
			}
			if !equalJSON(t, &got, want) {
				g, _ := json.Marshal(&got)
				w, _ := json.Marshal(want)
				t.Fatalf("%s document %d: webhook result differs from meshd inject:\n got %s\nwant %s", file, i+1, g, w)
			}
		}
	}
}

func review(t *testing.T, client *http.Client, url string, pod []byte) *admissionv1.AdmissionResponse {
	t.Helper()
	req := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID:       types.UID("7d1f9b52-0000-4000-8000-000000000001"),
			Kind:      metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			Namespace: "demo",
			Operation: admissionv1.Create,
			Object:    runtime.RawExtension{Raw: pod},
		},
	}
	body, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	res, err := client.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.TLS == nil || res.TLS.Version < tls.VersionTLS12 {
		t.Fatal("the webhook answered without TLS")
	}
	data, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", res.StatusCode, data)
	}
	var out admissionv1.AdmissionReview
	if err := json.Unmarshal(data, &out); err != nil {
		t.Fatal(err)
	}
	if out.Response == nil || out.Response.UID != req.Request.UID || out.Kind != "AdmissionReview" {
		t.Fatalf("response %s does not answer the request", data)
	}
	return out.Response
}

func TestWebhookBadRequests(t *testing.T) {
	testutil.CheckGoroutines(t)
	wh := &Webhook{Config: testConfig}
	tests := []struct {
		name, method, ct, body string
		code                   int
	}{
		{"GET", http.MethodGet, "application/json", "", http.StatusMethodNotAllowed},
		{"content type", http.MethodPost, "text/plain", "{}", http.StatusUnsupportedMediaType},
		{"not JSON", http.MethodPost, "application/json", "{", http.StatusBadRequest},
		{"no request", http.MethodPost, "application/json", `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`, http.StatusBadRequest},
		{"v1beta1", http.MethodPost, "application/json", `{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}`, http.StatusBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(tt.method, "/inject", strings.NewReader(tt.body))
			req.Header.Set("Content-Type", tt.ct)
			rec := httptest.NewRecorder()
			wh.ServeHTTP(rec, req)
			if rec.Code != tt.code {
				t.Fatalf("status %d, want %d (%s)", rec.Code, tt.code, rec.Body)
			}
		})
	}
	// A pod the injector cannot inject is denied with the reason.
	pod := `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a","annotations":{"meshd.dev/exclude-inbound-ports":"x"}},"spec":{"containers":[{"name":"a"}]}}`
	body := `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u1","kind":{"group":"","version":"v1","kind":"Pod"},"operation":"CREATE","object":` + pod + `}}`
	req := httptest.NewRequest(http.MethodPost, "/inject", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	wh.ServeHTTP(rec, req)
	var out admissionv1.AdmissionReview
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatal(err)
	}
	if out.Response.Allowed || !strings.Contains(out.Response.Result.Message, "exclude-inbound-ports") {
		t.Fatalf("bad annotation: response %+v", out.Response)
	}
}
