package source

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/kube/inject"
	"meshd.dev/meshd/kube/tokenreview"
	"meshd.dev/meshd/xds/model"
	"meshd.dev/meshd/xds/translate"
)

// sink records what the source publishes.
type sink struct {
	mu     sync.Mutex
	res    *translate.Result
	n      int
	errs   []error
	reject error // returned by Publish when set
}

func (s *sink) Publish(res *translate.Result, _ []model.Warning) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.reject != nil {
		return s.reject
	}
	s.res, s.n = res, s.n+1
	return nil
}

func (s *sink) RecordError(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.errs = append(s.errs, err)
}

func (s *sink) state() (*translate.Result, int, []error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.res, s.n, append([]error(nil), s.errs...)
}

// waitFor polls until cond holds for the latest published result.
func (s *sink) waitFor(t *testing.T, what string, cond func(*translate.Result) bool) *translate.Result {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		res, _, errs := s.state()
		if res != nil && cond(res) {
			return res
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; errors recorded: %v", what, errs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func find[T interface{ GetName() string }](list []types.Resource, name string) T {
	var zero T
	for _, r := range list {
		if v, ok := r.(T); ok && v.GetName() == name {
			return v
		}
	}
	return zero
}

// cla returns the ClusterLoadAssignment of cluster in list, nil if none.
func cla(list []types.Resource, cluster string) *endpointv3.ClusterLoadAssignment {
	for _, r := range list {
		if c, ok := r.(*endpointv3.ClusterLoadAssignment); ok && c.GetClusterName() == cluster {
			return c
		}
	}
	return nil
}

func endpointsOf(cla *endpointv3.ClusterLoadAssignment) []string {
	var out []string
	for _, l := range cla.GetEndpoints() {
		for _, e := range l.GetLbEndpoints() {
			a := e.GetEndpoint().GetAddress().GetSocketAddress()
			out = append(out, fmt.Sprintf("%s:%d", a.GetAddress(), a.GetPortValue()))
		}
	}
	return out
}

func ptr[T any](v T) *T { return &v }

// watchGate records which resources an informer has started watching.
// client-go's fake clientsets drop events that happen between an
// informer's List and its Watch, so a test that creates objects after the
// first publish waits for every watch first.
type watchGate struct {
	mu   sync.Mutex
	seen map[string]bool
}

// gateWatches makes every watch on client and dyn go through the tracker
// directly and records its resource.
func gateWatches(client *fake.Clientset, dyn *dynamicfake.FakeDynamicClient) *watchGate {
	g := &watchGate{seen: map[string]bool{}}
	client.PrependWatchReactor("*", func(action k8stesting.Action) (bool, watch.Interface, error) {
		w, err := client.Tracker().Watch(action.GetResource(), action.GetNamespace())
		g.record(action.GetResource().Resource)
		return true, w, err
	})
	dyn.PrependWatchReactor("*", func(action k8stesting.Action) (bool, watch.Interface, error) {
		w, err := dyn.Tracker().Watch(action.GetResource(), action.GetNamespace())
		g.record(action.GetResource().Resource)
		return true, w, err
	})
	return g
}

func (g *watchGate) record(resource string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.seen[resource] = true
}

// wait blocks until each of resources is watched, failing t after 10 s.
func (g *watchGate) wait(t *testing.T, resources ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		g.mu.Lock()
		var missing []string
		for _, r := range resources {
			if !g.seen[r] {
				missing = append(missing, r)
			}
		}
		g.mu.Unlock()
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("informers never watched %v", missing)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func injectedPod(name, ip, sa string, annotations map[string]string) *corev1.Pod {
	a := map[string]string{inject.AnnotationStatus: inject.StatusVersion}
	for k, v := range annotations {
		a[k] = v
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "demo", Annotations: a},
		Spec: corev1.PodSpec{
			ServiceAccountName: sa,
			InitContainers:     []corev1.Container{{Name: inject.InitName, Args: []string{"capture", "--inbound-port", "15006"}}},
			Containers:         []corev1.Container{{Name: "app"}},
		},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip},
	}
}

func crd(kind, name string, spec map[string]any) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": model.APIVersion,
		"kind":       kind,
		"metadata":   map[string]any{"name": name, "namespace": "demo"},
		"spec":       spec,
	}}
}

// TestKubernetesSource drives the source with client-go's fake clientset
// and dynamic client: a Service, its EndpointSlice and injected Pods become
// sidecar nodes with the expected listeners, clusters and endpoints;
// custom resources reach the clusters; an invalid custom resource is
// reported and the last good config stays; deleting the objects withdraws
// their resources.
func TestKubernetesSource(t *testing.T) {
	testutil.CheckGoroutines(t)
	ctx, cancel := context.WithCancel(context.Background())
	client := fake.NewClientset()
	scheme := runtime.NewScheme()
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(scheme, map[schema.GroupVersionResource]string{
		MeshesResource:                "MeshList",
		TrafficPoliciesResource:       "TrafficPolicyList",
		AuthorizationPoliciesResource: "AuthorizationPolicyList",
		RateLimitPoliciesResource:     "RateLimitPolicyList",
	})
	gate := gateWatches(client, dyn)
	sk := &sink{}
	// A shared factory with the CA authenticator's ServiceAccount
	// informer registered: Run starts and syncs it with its own.
	factory := informers.NewSharedInformerFactory(client, 0)
	sas := factory.Core().V1().ServiceAccounts()
	auth := tokenreview.New(client, spiffeid.RequireTrustDomainFromString(model.DefaultTrustDomain), tokenreview.Options{ServiceAccounts: sas})
	src, err := New(sk, Options{Client: client, Dynamic: dyn, Debounce: 20 * time.Millisecond, Informers: factory})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	sk.waitFor(t, "the empty cluster's mesh", func(r *translate.Result) bool { return len(r.Nodes) == 0 })
	gate.wait(t, "services", "endpointslices", "pods", "serviceaccounts",
		MeshesResource.Resource, TrafficPoliciesResource.Resource,
		AuthorizationPoliciesResource.Resource, RateLimitPoliciesResource.Resource)
	if !sas.Informer().HasSynced() {
		t.Fatal("the shared factory's ServiceAccount informer was not started with the source's")
	}
	// No ServiceAccount yet: the authenticator refuses before any review.
	client.PrependReactor("create", "tokenreviews", func(action k8stesting.Action) (bool, runtime.Object, error) {
		tr := action.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview).DeepCopy()
		tr.Status = authnv1.TokenReviewStatus{Authenticated: true, Audiences: []string{inject.TokenAudience},
			User: authnv1.UserInfo{Username: "system:serviceaccount:demo:greeter"}}
		return true, tr, nil
	})
	if _, err := auth.Authenticate(ctx, "token"); err == nil || !strings.Contains(err.Error(), "ServiceAccount demo/greeter does not exist") {
		t.Fatalf("Authenticate without the ServiceAccount: %v", err)
	}

	core, disc := client.CoreV1(), client.DiscoveryV1()
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(core.Services("demo").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "greeter", Namespace: "demo", Annotations: map[string]string{
			AnnotationMinPingInterval: "10s", AnnotationMaxConcurrentStreams: "100",
		}},
		Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10", Ports: []corev1.ServicePort{
			{Name: "metrics", Port: 9090},
			{Name: "grpc", Port: 50051, AppProtocol: ptr("grpc"), Protocol: corev1.ProtocolTCP},
		}},
	}, metav1.CreateOptions{}))
	must(core.Services("demo").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "legacy", Namespace: "demo"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
	}, metav1.CreateOptions{}))
	must(disc.EndpointSlices("demo").Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "greeter-x7k2p", Namespace: "demo", Labels: map[string]string{discoveryv1.LabelServiceName: "greeter"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("grpc"), Port: ptr(int32(8443)), Protocol: ptr(corev1.ProtocolTCP)}, {Name: ptr("metrics"), Port: ptr(int32(9090))}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.1.0.5"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)}, Zone: ptr("zone-a"), TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: "demo", Name: "greeter-a"}},
			{Addresses: []string{"10.1.0.6"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)}, Zone: ptr("zone-b"), TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: "demo", Name: "greeter-b"}},
			{Addresses: []string{"10.1.0.7"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(false)}, TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: "demo", Name: "greeter-c"}},
		},
	}, metav1.CreateOptions{}))

	// Without sidecars, the Service's endpoints are the ready pod IPs at
	// the target port, by zone.
	res := sk.waitFor(t, "greeter's endpoints", func(r *translate.Result) bool {
		return len(endpointsOf(cla(r.Proxyless.Endpoints, "proxyless|greeter.demo:50051"))) == 2
	})
	if got := endpointsOf(cla(res.Proxyless.Endpoints, "proxyless|greeter.demo:50051")); strings.Join(got, ",") != "10.1.0.5:8443,10.1.0.6:8443" {
		t.Fatalf("proxyless greeter endpoints = %v", got)
	}
	if find[*listenerv3.Listener](res.Proxyless.Listeners, "legacy.demo:80") != nil {
		t.Fatal("a Service without a mesh appProtocol was translated")
	}

	for _, p := range []*corev1.Pod{
		injectedPod("greeter-a", "10.1.0.5", "greeter", nil),
		injectedPod("greeter-b", "10.1.0.6", "greeter", nil),
		injectedPod("client-1", "10.1.0.9", "client", map[string]string{AnnotationOutbound: "greeter:15201"}),
		// Not injected: no node.
		{ObjectMeta: metav1.ObjectMeta{Name: "plain", Namespace: "demo"}, Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.1.0.8"}},
	} {
		must(core.Pods("demo").Create(ctx, p, metav1.CreateOptions{}))
	}
	res = sk.waitFor(t, "three sidecar nodes", func(r *translate.Result) bool { return len(r.Nodes) == 3 })
	for _, pod := range []struct{ node, ip string }{{"greeter-a.demo", "10.1.0.5"}, {"greeter-b.demo", "10.1.0.6"}} {
		n := res.Nodes[pod.node]
		if n == nil {
			t.Fatalf("no node %s: %v", pod.node, res.Nodes)
		}
		l := find[*listenerv3.Listener](n.Listeners, "inbound|15006")
		if a := l.GetAddress().GetSocketAddress(); a.GetAddress() != pod.ip || a.GetPortValue() != 15006 {
			t.Errorf("%s inbound listener address = %v, want %s:15006", pod.node, a, pod.ip)
		}
		if find[*clusterv3.Cluster](n.Clusters, "inbound|15006|127.0.0.1:8443") == nil {
			t.Errorf("%s: no inbound cluster to the app's target port 8443", pod.node)
		}
	}
	client1 := res.Nodes["client-1.demo"]
	if find[*listenerv3.Listener](client1.Listeners, "outbound|15201") == nil {
		t.Fatalf("client-1 has no outbound listener on 15201: %v", client1.Listeners)
	}
	if got := strings.Join(endpointsOf(cla(client1.Endpoints, "outbound|50051||greeter.demo")), ","); got != "10.1.0.5:15006,10.1.0.6:15006" {
		t.Fatalf("client-1's endpoints of greeter = %s, want the sidecars' inbound listeners at the pod IPs", got)
	}

	// Capture: every injected pod's sidecar gets the virtualOutbound
	// listener on the capture outbound port and, for the Service's
	// cluster IP, a filter chain on 10.96.0.10:50051 (bind_to_port false)
	// routing to greeter's cluster, also in pods that never named greeter.
	for _, node := range []string{"client-1.demo", "greeter-a.demo"} {
		n := res.Nodes[node]
		vo := find[*listenerv3.Listener](n.Listeners, translate.VirtualOutboundName)
		if a := vo.GetAddress().GetSocketAddress(); a.GetPortValue() != inject.DefaultOutboundPort || !vo.GetUseOriginalDst().GetValue() ||
			len(vo.GetListenerFilters()) != 1 || vo.GetListenerFilters()[0].GetName() != translate.OriginalDstFilterName {
			t.Fatalf("%s: virtualOutbound = %v", node, vo)
		}
		vl := find[*listenerv3.Listener](n.Listeners, translate.VirtualServiceName("10.96.0.10", 50051))
		if a := vl.GetAddress().GetSocketAddress(); a.GetAddress() != "10.96.0.10" || a.GetPortValue() != 50051 || vl.GetBindToPort() == nil || vl.GetBindToPort().GetValue() {
			t.Fatalf("%s: no bind_to_port false listener on greeter's cluster IP: %v", node, vl)
		}
		rc := find[*routev3.RouteConfiguration](n.Routes, vl.GetName())
		if c := rc.GetVirtualHosts()[0].GetRoutes()[0].GetRoute().GetCluster(); c != "outbound|50051||greeter.demo" {
			t.Fatalf("%s: the cluster IP routes to %q", node, c)
		}
		if find[*clusterv3.Cluster](n.Clusters, "outbound|50051||greeter.demo") == nil || find[*clusterv3.Cluster](n.Clusters, translate.BlackHoleClusterName) == nil {
			t.Fatalf("%s: clusters %v lack greeter's or the black hole", node, n.Clusters)
		}
	}

	// A TrafficPolicy custom resource reaches the client's cluster.
	tp := dyn.Resource(TrafficPoliciesResource).Namespace("demo")
	must(tp.Create(ctx, crd(model.KindTrafficPolicy, "greeter", map[string]any{
		"targetRef":      map[string]any{"kind": "Service", "name": "greeter"},
		"connectionPool": map[string]any{"maxConnections": int64(7)},
	}), metav1.CreateOptions{}))
	res = sk.waitFor(t, "the TrafficPolicy's circuit breaker", func(r *translate.Result) bool {
		c := find[*clusterv3.Cluster](r.Nodes["client-1.demo"].Clusters, "outbound|50051||greeter.demo")
		th := c.GetCircuitBreakers().GetThresholds()
		return len(th) > 0 && th[0].GetMaxConnections().GetValue() == 7
	})
	good := res.Version

	// An invalid AuthorizationPolicy is reported, naming it, and the last
	// good config stays.
	_, before, _ := sk.state()
	ap := dyn.Resource(AuthorizationPoliciesResource).Namespace("demo")
	must(ap.Create(ctx, crd(model.KindAuthorizationPolicy, "bad", map[string]any{
		"targetRef": map[string]any{"kind": "Service", "name": "greeter"},
		"allow":     []any{"spiffe://other.domain/ns/demo/sa/client"},
	}), metav1.CreateOptions{}))
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, n, errs := sk.state()
		if len(errs) > 0 {
			if msg := errs[len(errs)-1].Error(); !strings.Contains(msg, "AuthorizationPolicy demo/bad") || !strings.Contains(msg, "spec.allow[0]") {
				t.Fatalf("recorded error %q does not name the object and field", msg)
			}
			if n != before {
				t.Fatalf("an invalid mesh was published")
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the invalid AuthorizationPolicy was not reported")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := ap.Delete(ctx, "bad", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	must(ap.Create(ctx, crd(model.KindAuthorizationPolicy, "callers", map[string]any{
		"targetRef": map[string]any{"kind": "Service", "name": "greeter"},
		"allow":     []any{"spiffe://cluster.local/ns/demo/sa/client"},
	}), metav1.CreateOptions{}))
	sk.waitFor(t, "a version with the AuthorizationPolicy", func(r *translate.Result) bool { return r.Version != good })

	// Deleting withdraws: a pod's node goes, then the Service's resources.
	if err := core.Pods("demo").Delete(ctx, "greeter-b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	sk.waitFor(t, "greeter-b's node withdrawn", func(r *translate.Result) bool {
		return r.Nodes["greeter-b.demo"] == nil && strings.Join(endpointsOf(cla(r.Nodes["client-1.demo"].Endpoints, "outbound|50051||greeter.demo")), ",") == "10.1.0.5:15006"
	})
	for _, del := range []func() error{
		func() error { return tp.Delete(ctx, "greeter", metav1.DeleteOptions{}) },
		func() error { return ap.Delete(ctx, "callers", metav1.DeleteOptions{}) },
		func() error { return core.Pods("demo").Delete(ctx, "client-1", metav1.DeleteOptions{}) },
		func() error { return core.Pods("demo").Delete(ctx, "greeter-a", metav1.DeleteOptions{}) },
		func() error { return disc.EndpointSlices("demo").Delete(ctx, "greeter-x7k2p", metav1.DeleteOptions{}) },
		func() error { return core.Services("demo").Delete(ctx, "greeter", metav1.DeleteOptions{}) },
	} {
		if err := del(); err != nil {
			t.Fatal(err)
		}
	}
	sk.waitFor(t, "everything withdrawn", func(r *translate.Result) bool {
		return len(r.Nodes) == 0 && len(r.Proxyless.Listeners) == 0 && len(r.Proxyless.Clusters) == 0
	})
}

func TestParseOutbound(t *testing.T) {
	taken := map[uint64]string{15006: "the sidecar's inbound port", 15001: "the sidecar's capture outbound port"}
	tests := []struct {
		in, want, err string
	}{
		{"greeter.demo:15201, db:15202", "[map[port:15201 service:greeter.demo] map[port:15202 service:db]]", ""},
		{"", "[]", ""},
		{"greeter", "", "not SERVICE"},
		{"greeter:0", "", "not SERVICE"},
		{":15201", "", "not SERVICE"},
		{"greeter:70000", "", "not SERVICE"},
		{"greeter:15006", "", `"greeter:15006": local port 15006 is the sidecar's inbound port`},
		{"greeter:15001", "", "capture outbound port"},
		{"greeter:15201,db:15201", "", `"db:15201": local port 15201 is also given to "greeter:15201"`},
	}
	for _, tt := range tests {
		got, err := parseOutbound(tt.in, taken)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%q: err = %v, want it to contain %q", tt.in, err, tt.err)
			}
			continue
		}
		if s := fmt.Sprint(got); err != nil || (s != tt.want && !(tt.want == "[]" && len(got) == 0)) {
			t.Errorf("%q = %s, %v; want %s", tt.in, s, err, tt.want)
		}
	}
}
