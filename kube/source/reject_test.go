package source

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/proxy/stats"
	"meshd.dev/meshd/xds/model"
	"meshd.dev/meshd/xds/server"
	"meshd.dev/meshd/xds/translate"
)

// fixture is a meshed Service greeter (pods greeter-a and greeter-b
// behind it) and a client pod client-1 calling it on local port 15201,
// all valid. svcAnnotations go on the Service.
func fixture(svcAnnotations map[string]string) []runtime.Object {
	return []runtime.Object{
		&corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "greeter", Namespace: "demo", Annotations: svcAnnotations},
			Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10", Ports: []corev1.ServicePort{
				{Name: "grpc", Port: 50051, AppProtocol: ptr("grpc"), Protocol: corev1.ProtocolTCP},
			}},
		},
		&discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: "greeter-1", Namespace: "demo", Labels: map[string]string{discoveryv1.LabelServiceName: "greeter"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr("grpc"), Port: ptr(int32(8443))}},
			Endpoints: []discoveryv1.Endpoint{
				{Addresses: []string{"10.1.0.5"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)}, TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: "demo", Name: "greeter-a"}},
				{Addresses: []string{"10.1.0.6"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)}, TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: "demo", Name: "greeter-b"}},
			},
		},
		injectedPod("greeter-a", "10.1.0.5", "greeter", nil),
		injectedPod("greeter-b", "10.1.0.6", "greeter", nil),
		injectedPod("client-1", "10.1.0.9", "client", map[string]string{AnnotationOutbound: "greeter:15201"}),
	}
}

// replace returns objs with the object of the same type, namespace and
// name as each of with replaced by it, and the others appended.
func replace(objs []runtime.Object, with ...runtime.Object) []runtime.Object {
	out := append([]runtime.Object(nil), objs...)
	for _, w := range with {
		wm, _ := w.(metav1.Object)
		found := false
		for i, o := range out {
			if om, _ := o.(metav1.Object); om.GetName() == wm.GetName() && om.GetNamespace() == wm.GetNamespace() && sameType(o, w) {
				out[i], found = w, true
			}
		}
		if !found {
			out = append(out, w)
		}
	}
	return out
}

func sameType(a, b runtime.Object) bool {
	switch a.(type) {
	case *corev1.Pod:
		_, ok := b.(*corev1.Pod)
		return ok
	case *corev1.Service:
		_, ok := b.(*corev1.Service)
		return ok
	}
	return false
}

// running is a Source run against fake clients until the test ends.
type running struct {
	src    *Source
	sink   *sink
	client *fake.Clientset
	dyn    *dynamicfake.FakeDynamicClient
	store  *stats.Store
	logs   *logRecorder
	gate   *watchGate // every informer's watch, for objects changed mid-test

	mu     sync.Mutex
	meshes []*model.Mesh // every mesh Adjust saw, in order
}

func (r *running) lastMesh() (*model.Mesh, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.meshes) == 0 {
		return nil, 0
	}
	return r.meshes[len(r.meshes)-1], len(r.meshes)
}

// waitBuilds waits until Adjust has seen more than n meshes.
func (r *running) waitBuilds(t *testing.T, n int) *model.Mesh {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if m, got := r.lastMesh(); got > n {
			return m
		}
		if time.Now().After(deadline) {
			_, _, errs := r.sink.state()
			t.Fatalf("no mesh built after build %d; errors recorded: %v", n, errs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startSource runs a Source over objs (and the custom resources crs) with
// its sink, stats and logs recorded; it stops at the end of the test.
func startSource(t *testing.T, objs []runtime.Object, crs ...runtime.Object) *running {
	t.Helper()
	testutil.CheckGoroutines(t)
	r := &running{
		sink:   &sink{},
		client: fake.NewClientset(objs...),
		dyn: dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
			MeshesResource:                "MeshList",
			TrafficPoliciesResource:       "TrafficPolicyList",
			AuthorizationPoliciesResource: "AuthorizationPolicyList",
			RateLimitPoliciesResource:     "RateLimitPolicyList",
		}, crs...),
		store: stats.NewStore(),
		logs:  &logRecorder{},
	}
	r.gate = gateWatches(r.client, r.dyn)
	src, err := New(r.sink, Options{
		Client: r.client, Dynamic: r.dyn, Debounce: 20 * time.Millisecond, Stats: r.store,
		Logger: slog.New(r.logs),
		Adjust: func(m *model.Mesh) error {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.meshes = append(r.meshes, m)
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	r.src = src
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return r
}

// warningEvents polls the Warning Events on objects of namespace demo
// until there are at least n (or 10 s passed) and returns them as
// "Kind/name reason: message".
func (r *running) warningEvents(t *testing.T, n int) []string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		list, err := r.client.CoreV1().Events("demo").List(context.Background(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range list.Items {
			if e.Type == corev1.EventTypeWarning {
				out = append(out, e.InvolvedObject.Kind+"/"+e.InvolvedObject.Name+" "+e.Reason+": "+e.Message)
			}
		}
		if len(out) >= n || time.Now().After(deadline) {
			return out
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// logRecorder is a slog.Handler keeping every record's message and
// attributes as "msg k=v k=v".
type logRecorder struct {
	mu    sync.Mutex
	lines []string
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logRecorder) WithGroup(string) slog.Handler            { return l }
func (l *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	var b strings.Builder
	b.WriteString(rec.Level.String() + " " + rec.Message)
	rec.Attrs(func(a slog.Attr) bool {
		b.WriteString(" " + a.Key + "=" + a.Value.String())
		return true
	})
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, b.String())
	return nil
}

// count returns how many records contain every one of parts.
func (l *logRecorder) count(parts ...string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
next:
	for _, line := range l.lines {
		for _, p := range parts {
			if !strings.Contains(line, p) {
				continue next
			}
		}
		n++
	}
	return n
}

func hasListener(r *translate.Result, node, name string) bool {
	n := r.Nodes[node]
	return n != nil && find[*listenerv3.Listener](n.Listeners, name) != nil
}

// TestRejectedObjects: one Pod or Service whose annotation does not
// validate loses that annotation (or, for a Pod whose Workload is wrong
// elsewhere, its place in the mesh) and every other object is configured;
// the rejection names the object, annotation and reason, is logged, and
// gets a Warning Event on the object. A bad custom resource still rejects
// the whole mesh.
func TestRejectedObjects(t *testing.T) {
	d10s := model.Duration(10 * time.Second)
	tests := []struct {
		name    string
		objects []runtime.Object
		crs     []runtime.Object
		// rejected: "Kind/name annotation" -> a part of the reason.
		rejected map[string]string
		check    func(t *testing.T, m *model.Mesh, res *translate.Result)
		// meshWide: a part of the error recorded instead of publishing.
		meshWide string
	}{{
		name:     "outbound syntax",
		objects:  replace(fixture(nil), injectedPod("client-2", "10.1.0.10", "client", map[string]string{AnnotationOutbound: "greeter"})),
		rejected: map[string]string{"Pod/client-2 " + AnnotationOutbound: `"greeter" is not SERVICE[.NAMESPACE]:LOCALPORT`},
		check: func(t *testing.T, _ *model.Mesh, res *translate.Result) {
			if !hasListener(res, "client-1.demo", "outbound|15201") {
				t.Error("the good pod lost its outbound listener")
			}
			if res.Nodes["client-2.demo"] == nil || !hasListener(res, "client-2.demo", translate.VirtualOutboundName) {
				t.Error("the bad pod's sidecar is not configured (it should only lose its outbound listeners)")
			}
		},
	}, {
		name: "outbound names a Service that does not exist",
		objects: replace(fixture(nil), injectedPod("client-2", "10.1.0.10", "client",
			map[string]string{AnnotationOutbound: "greeter:15201,gretter:15202"})),
		rejected: map[string]string{"Pod/client-2 " + AnnotationOutbound: "spec.outbound[1].service: no Service gretter.demo"},
		check: func(t *testing.T, _ *model.Mesh, res *translate.Result) {
			if !hasListener(res, "client-1.demo", "outbound|15201") {
				t.Error("the good pod lost its outbound listener")
			}
			// The annotation is taken or left whole.
			if hasListener(res, "client-2.demo", "outbound|15201") || res.Nodes["client-2.demo"] == nil {
				t.Error("the bad pod's annotation was applied in part, or the pod was left out")
			}
		},
	}, {
		name: "bad pod of a Service whose other pods are good",
		objects: replace(fixture(nil), injectedPod("greeter-b", "10.1.0.6", "greeter",
			map[string]string{AnnotationOutbound: "greeter:15006"})),
		rejected: map[string]string{"Pod/greeter-b " + AnnotationOutbound: "local port 15006 is the sidecar's inbound port"},
		check: func(t *testing.T, _ *model.Mesh, res *translate.Result) {
			if got := strings.Join(endpointsOf(cla(res.Nodes["client-1.demo"].Endpoints, "outbound|50051||greeter.demo")), ","); got != "10.1.0.5:15006,10.1.0.6:15006" {
				t.Errorf("greeter's endpoints = %s, want both pods' sidecars", got)
			}
			if !hasListener(res, "greeter-b.demo", "inbound|15006") {
				t.Error("the bad pod lost its inbound listener")
			}
		},
	}, {
		name:     "pod whose name is not a DNS label is left out",
		objects:  replace(fixture(nil), injectedPod("client.v2", "10.1.0.10", "client", nil)),
		rejected: map[string]string{"Pod/client.v2 ": `metadata.name: "client.v2" must consist of lower-case letters`},
		check: func(t *testing.T, _ *model.Mesh, res *translate.Result) {
			if res.Nodes["client.v2.demo"] != nil {
				t.Error("the invalid pod got a node")
			}
			if !hasListener(res, "client-1.demo", "outbound|15201") {
				t.Error("the good pod lost its outbound listener")
			}
		},
	}, {
		name:     "Service count that does not parse; its other annotation stays",
		objects:  fixture(map[string]string{AnnotationMaxConcurrentStreams: "lots", AnnotationMinPingInterval: "10s"}),
		rejected: map[string]string{"Service/greeter " + AnnotationMaxConcurrentStreams: `"lots" is not a count`},
		check: func(t *testing.T, m *model.Mesh, _ *translate.Result) {
			l := m.Service("greeter.demo").Spec.ServerLimits
			if l == nil || l.MinPingInterval == nil || *l.MinPingInterval != d10s || l.MaxConcurrentStreams != nil {
				t.Errorf("serverLimits = %+v, want minPingInterval 10s only", l)
			}
		},
	}, {
		name:     "Service duration the model refuses",
		objects:  fixture(map[string]string{AnnotationMinPingInterval: "10x", AnnotationMaxConcurrentStreams: "100"}),
		rejected: map[string]string{"Service/greeter " + AnnotationMinPingInterval: "spec.serverLimits.minPingInterval: "},
		check: func(t *testing.T, m *model.Mesh, _ *translate.Result) {
			l := m.Service("greeter.demo").Spec.ServerLimits
			if l == nil || l.MinPingInterval != nil || l.MaxConcurrentStreams == nil || *l.MaxConcurrentStreams != 100 {
				t.Errorf("serverLimits = %+v, want maxConcurrentStreams 100 only", l)
			}
		},
	}, {
		name:     "Service upstream protocol that cannot carry it",
		objects:  fixture(map[string]string{AnnotationUpstreamProtocol: "http1"}),
		rejected: map[string]string{"Service/greeter " + AnnotationUpstreamProtocol: "spec.upstreamProtocol: http1 cannot carry protocol grpc"},
		check: func(t *testing.T, m *model.Mesh, res *translate.Result) {
			if s := m.Service("greeter.demo"); s == nil || s.Spec.UpstreamProtocol != "" {
				t.Errorf("greeter = %+v, want it with the default upstream protocol", s)
			}
			if !hasListener(res, "client-1.demo", "outbound|15201") {
				t.Error("the client lost its outbound listener")
			}
		},
	}, {
		name: "a bad Pod and a bad Service at once",
		objects: replace(fixture(map[string]string{AnnotationMaxConcurrentStreams: "-1"}),
			injectedPod("client-2", "10.1.0.10", "client", map[string]string{AnnotationOutbound: "greeter:15201,db:15202"})),
		rejected: map[string]string{
			"Service/greeter " + AnnotationMaxConcurrentStreams: `"-1" is not a count`,
			"Pod/client-2 " + AnnotationOutbound:                "no Service db.demo",
		},
		check: func(t *testing.T, _ *model.Mesh, res *translate.Result) {
			if !hasListener(res, "client-1.demo", "outbound|15201") {
				t.Error("the good pod lost its outbound listener")
			}
		},
	}, {
		name:    "a bad custom resource rejects the whole mesh",
		objects: replace(fixture(nil), injectedPod("client-2", "10.1.0.10", "client", map[string]string{AnnotationOutbound: "greeter"})),
		crs: []runtime.Object{crd(model.KindAuthorizationPolicy, "bad", map[string]any{
			"targetRef": map[string]any{"kind": "Service", "name": "greeter"},
			"allow":     []any{"spiffe://other.domain/ns/demo/sa/client"},
		})},
		meshWide: "AuthorizationPolicy demo/bad",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := startSource(t, tt.objects, tt.crs...)
			if tt.meshWide != "" {
				deadline := time.Now().Add(10 * time.Second)
				for {
					res, _, errs := r.sink.state()
					if res != nil {
						t.Fatal("a mesh with an invalid custom resource was published")
					}
					if len(errs) > 0 {
						if !strings.Contains(errs[0].Error(), tt.meshWide) {
							t.Fatalf("recorded error %q, want it to name %q", errs[0], tt.meshWide)
						}
						break
					}
					if time.Now().After(deadline) {
						t.Fatal("the invalid custom resource was not reported")
					}
					time.Sleep(10 * time.Millisecond)
				}
				if got := r.src.Rejections(); len(got) != 0 {
					t.Errorf("Rejections = %+v, want none while the mesh as a whole is rejected", got)
				}
				return
			}
			res := r.sink.waitFor(t, "the first mesh", func(*translate.Result) bool { return true })
			m, _ := r.lastMesh()
			got := r.src.Rejections()
			if len(got) != len(tt.rejected) {
				t.Fatalf("Rejections = %+v, want %d", got, len(tt.rejected))
			}
			for _, rj := range got {
				k := rj.Kind + "/" + rj.Name + " " + rj.Annotation
				want, ok := tt.rejected[k]
				if !ok || !strings.Contains(rj.Reason, want) || rj.Namespace != "demo" || rj.Effect == "" || rj.Since.IsZero() {
					t.Errorf("rejection %q = %+v, want a reason containing %q", k, rj, want)
				}
				if n := r.logs.count("WARN", strings.ToLower(rj.Kind)+"=demo/"+rj.Name, rj.Reason); n != 1 {
					t.Errorf("%s: %d warnings logged, want 1 naming the object and the reason", k, n)
				}
			}
			events := r.warningEvents(t, len(tt.rejected))
			if len(events) != len(tt.rejected) {
				t.Errorf("Warning Events = %q, want %d", events, len(tt.rejected))
			}
			for k, reason := range tt.rejected {
				obj, annotation, _ := strings.Cut(k, " ")
				found := false
				for _, e := range events {
					found = found || (strings.HasPrefix(e, obj+" ") && strings.Contains(e, annotation) && strings.Contains(e, reason))
				}
				if !found {
					t.Errorf("no Warning Event on %s naming %q and %q in %q", obj, annotation, reason, events)
				}
			}
			if got := r.store.Root().Scope("control_plane").Gauge("kube_rejections_active").Value(); got != int64(len(tt.rejected)) {
				t.Errorf("kube_rejections_active = %d, want %d", got, len(tt.rejected))
			}
			tt.check(t, m, res)
		})
	}
}

// TestRejectionLifecycle: a rejection is reported once per reason, not at
// every rebuild; a new reason is reported again; fixing the annotation
// brings the pod's outbound listener back and clears the rejection.
func TestRejectionLifecycle(t *testing.T) {
	objs := replace(fixture(nil), injectedPod("client-2", "10.1.0.10", "client", map[string]string{AnnotationOutbound: "greeter"}))
	r := startSource(t, objs)
	res := r.sink.waitFor(t, "the first mesh", func(*translate.Result) bool { return true })
	if hasListener(res, "client-2.demo", "outbound|15201") {
		t.Fatal("the bad annotation was applied")
	}
	r.gate.wait(t, "pods")
	sc := r.store.Root().Scope("control_plane")
	counter, active := sc.Counter("kube_rejections"), sc.Gauge("kube_rejections_active")
	check := func(what string, logged, events int, count uint64, act int64) {
		t.Helper()
		if n := r.logs.count("WARN invalid mesh annotation ignored", "pod=demo/client-2", "annotation="+AnnotationOutbound); n != logged {
			t.Errorf("%s: %d warnings logged, want %d", what, n, logged)
		}
		if got := r.warningEvents(t, events); len(got) != events {
			t.Errorf("%s: Warning Events %q, want %d", what, got, events)
		}
		if counter.Value() != count || active.Value() != act {
			t.Errorf("%s: kube_rejections = %d, kube_rejections_active = %d; want %d, %d", what, counter.Value(), active.Value(), count, act)
		}
	}
	check("first build", 1, 1, 1, 1)

	pods := r.client.CoreV1().Pods("demo")
	update := func(name string, annotations map[string]string) {
		t.Helper()
		p, err := pods.Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range annotations {
			p.Annotations[k] = v
		}
		if _, err := pods.Update(context.Background(), p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// Another object changes (as a resync would rebuild): the same
	// rejection is not reported again.
	_, builds := r.lastMesh()
	update("client-1", map[string]string{"example.com/touched": "1"})
	r.waitBuilds(t, builds)
	check("rebuild with the same problem", 1, 1, 1, 1)

	// Another bad value: a new reason, reported again.
	update("client-2", map[string]string{AnnotationOutbound: "gretter:15201"})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if rs := r.src.Rejections(); len(rs) == 1 && strings.Contains(rs[0].Reason, "no Service gretter.demo") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Rejections = %+v, want the new reason", r.src.Rejections())
		}
		time.Sleep(10 * time.Millisecond)
	}
	check("a new reason", 2, 2, 2, 1)

	// Fixed: the outbound listener comes back and nothing is rejected.
	update("client-2", map[string]string{AnnotationOutbound: "greeter:15201"})
	r.sink.waitFor(t, "client-2's outbound listener", func(res *translate.Result) bool {
		return hasListener(res, "client-2.demo", "outbound|15201")
	})
	if rs := r.src.Rejections(); len(rs) != 0 {
		t.Errorf("Rejections after the fix = %+v", rs)
	}
	check("fixed", 2, 2, 2, 0)
	if n := r.logs.count("mesh rejection cleared", "pod=demo/client-2"); n != 1 {
		t.Errorf("%d clearance logs, want 1", n)
	}
}

// TestRejectionsOnStatus wires the source's rejections into the xDS
// server as `control-plane --kube` does: /status lists them and /metrics
// counts them under the control plane's names.
func TestRejectionsOnStatus(t *testing.T) {
	objs := replace(fixture(nil), injectedPod("client-2", "10.1.0.10", "client", map[string]string{AnnotationOutbound: "greeter"}))
	r := startSource(t, objs)
	srv := server.New(server.Options{Stats: r.store, Rejected: r.src.Rejections})
	r.sink.waitFor(t, "the first mesh", func(*translate.Result) bool { return true })

	get := func(path string) string {
		t.Helper()
		rec := httptest.NewRecorder()
		srv.AdminHandler().ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		b, err := io.ReadAll(rec.Result().Body)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	var st server.Status
	if err := json.Unmarshal([]byte(get("/status")), &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Rejected) != 1 || st.Rejected[0].Kind != "Pod" || st.Rejected[0].Name != "client-2" ||
		st.Rejected[0].Annotation != AnnotationOutbound || !strings.Contains(st.Rejected[0].Reason, "not SERVICE") {
		t.Fatalf("/status rejected = %+v", st.Rejected)
	}
	metrics := get("/metrics")
	for _, want := range []string{"envoy_control_plane_kube_rejections 1", "envoy_control_plane_kube_rejections_active 1"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
