package source

import (
	"context"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	lrsv3 "github.com/envoyproxy/go-control-plane/envoy/service/load_stats/v3"
	"google.golang.org/protobuf/types/known/structpb"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/xds/autotune"
	"meshd.dev/meshd/xds/model"
	"meshd.dev/meshd/xds/observe"
	"meshd.dev/meshd/xds/translate"
)

// keepaliveOf returns the HTTP/2 keepalive interval of the cluster named
// name in a node's resources, 0 when it has none.
func keepaliveOf(t *testing.T, n *translate.Resources, name string) time.Duration {
	t.Helper()
	c := find[*clusterv3.Cluster](n.Clusters, name)
	a := c.GetTypedExtensionProtocolOptions()[translate.HTTPProtocolOptionsKey]
	if a == nil {
		return 0
	}
	var o upstreamhttpv3.HttpProtocolOptions
	if err := a.UnmarshalTo(&o); err != nil {
		t.Fatal(err)
	}
	return o.GetExplicitHttpConfig().GetHttp2ProtocolOptions().GetConnectionKeepalive().GetInterval().AsDuration()
}

// TestKubeThroughAutotune runs the --kube wiring of the control plane: the
// Kubernetes source publishes through an xds/autotune Tuner (its Adjust
// hook and its Sink) to the server's place. A load report from a
// sidecar whose keepalive met too_many_pings changes the config pushed for
// the cluster's mesh, as it does for the mesh file.
func TestKubeThroughAutotune(t *testing.T) {
	testutil.CheckGoroutines(t)
	ctx, cancel := context.WithCancel(context.Background())
	client := fake.NewClientset()
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
		MeshesResource:                "MeshList",
		TrafficPoliciesResource:       "TrafficPolicyList",
		AuthorizationPoliciesResource: "AuthorizationPolicyList",
		RateLimitPoliciesResource:     "RateLimitPolicyList",
	}, crd(model.KindTrafficPolicy, "greeter", map[string]any{
		"targetRef": map[string]any{"kind": "Service", "name": "greeter"},
		"http2":     map[string]any{"keepalive": map[string]any{"interval": "1s", "timeout": "200ms"}},
		"autoTune":  map[string]any{"keepalive": true},
	}))
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(client.CoreV1().Services("demo").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "greeter", Namespace: "demo"},
		Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10", Ports: []corev1.ServicePort{
			{Name: "grpc", Port: 50051, AppProtocol: ptr("grpc"), Protocol: corev1.ProtocolTCP},
		}},
	}, metav1.CreateOptions{}))
	must(client.DiscoveryV1().EndpointSlices("demo").Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "greeter-1", Namespace: "demo", Labels: map[string]string{discoveryv1.LabelServiceName: "greeter"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("grpc"), Port: ptr(int32(8443))}},
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.1.0.5"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)}}},
	}, metav1.CreateOptions{}))
	must(client.CoreV1().Pods("demo").Create(ctx, injectedPod("client-1", "10.1.0.9", "client", map[string]string{AnnotationOutbound: "greeter:15201"}), metav1.CreateOptions{}))

	// The fake clientset drops events between an informer's List and its
	// Watch: the pod created mid-test waits for the pod watch.
	podWatch := make(chan struct{})
	var once sync.Once
	client.PrependWatchReactor("pods", func(action k8stesting.Action) (bool, watch.Interface, error) {
		w, err := client.Tracker().Watch(action.GetResource(), action.GetNamespace())
		once.Do(func() { close(podWatch) })
		return true, w, err
	})

	sk := &sink{}
	tuner, err := autotune.New(autotune.Options{Sink: sk})
	if err != nil {
		t.Fatal(err)
	}
	src, err := New(tuner, Options{Client: client, Dynamic: dyn, Debounce: 20 * time.Millisecond, Adjust: tuner.Adjust})
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

	const cluster = "outbound|50051||greeter.demo"
	before := sk.waitFor(t, "the client's node", func(r *translate.Result) bool { return r.Nodes["client-1.demo"] != nil })
	if got := keepaliveOf(t, before.Nodes["client-1.demo"], cluster); got != time.Second {
		t.Fatalf("keepalive before any report = %v, want the policy's 1s", got)
	}

	// The client's sidecar reports that its 2 s pings met too_many_pings.
	o := observe.Endpoint{KeepaliveInterval: 2 * time.Second, TooManyPings: 1}
	tuner.Report("client-1.demo", &lrsv3.LoadStatsRequest{ClusterStats: []*endpointv3.ClusterStats{{
		ClusterName: cluster,
		UpstreamLocalityStats: []*endpointv3.UpstreamLocalityStats{{UpstreamEndpointStats: []*endpointv3.UpstreamEndpointStats{{
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Address: "10.1.0.5", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 8443}}}},
			Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{observe.MetadataKey: structpb.NewStructValue(o.Struct())}},
		}}}},
	}}})
	after := sk.waitFor(t, "the tuned config", func(r *translate.Result) bool { return r.Version != before.Version })
	if got := keepaliveOf(t, after.Nodes["client-1.demo"], cluster); got != 4*time.Second {
		t.Fatalf("keepalive after the report = %v, want 4s (twice the refused 2s)", got)
	}
	if ch := tuner.Changes(); len(ch) == 0 {
		t.Fatal("the tuner recorded no change")
	}

	// A cluster change is published with what was learned.
	select {
	case <-podWatch:
	case <-time.After(10 * time.Second):
		t.Fatal("the pod informer never watched")
	}
	must(client.CoreV1().Pods("demo").Create(ctx, injectedPod("client-2", "10.1.0.10", "client", map[string]string{AnnotationOutbound: "greeter:15201"}), metav1.CreateOptions{}))
	res := sk.waitFor(t, "the second client", func(r *translate.Result) bool { return r.Nodes["client-2.demo"] != nil })
	if got := keepaliveOf(t, res.Nodes["client-2.demo"], cluster); got != 4*time.Second {
		t.Fatalf("a new pod's keepalive = %v, want the learned 4s", got)
	}
}
