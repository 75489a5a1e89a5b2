// Package source is the control plane's Kubernetes source (`meshd
// control-plane --kube`): informers on Services, EndpointSlices and Pods
// (client-go) and on the mesh's CRDs (the dynamic client) feed the same
// parsing, validation and translation as the mesh file. Its informer
// factory also runs the ServiceAccount informer of the CA's TokenReview
// authenticator (Options.Informers).
//
// The cluster's objects become mesh documents (docs/mesh.md):
//
//   - every Mesh, TrafficPolicy, AuthorizationPolicy and RateLimitPolicy
//     custom resource becomes the document of its kind with its spec as is;
//   - a Service with a port whose appProtocol is grpc, kubernetes.io/h2c,
//     http or tcp becomes a Service (protocol grpc, http2, http, tcp; port:
//     the first such port) with spec.upstreamProtocol and spec.serverLimits
//     from the annotations AnnotationUpstreamProtocol,
//     AnnotationMinPingInterval and AnnotationMaxConcurrentStreams, and its
//     ready EndpointSlice endpoints (with their zone) as spec.endpoints for
//     when no injected pod serves it;
//   - an injected pod (annotation inject.AnnotationStatus) with an IP
//     becomes a Workload named like the pod (node ID <pod>.<namespace>):
//     its service account, spec.address the pod IP, the first mesh Service
//     whose EndpointSlices list the pod as spec.service with inbound
//     {port: the capture inbound port, app: 127.0.0.1:<the slice's target
//     port>}, spec.outbound from AnnotationOutbound, and spec.capture
//     {outboundPort: the capture outbound port} when the pod has the
//     capture init container;
//   - a Service's cluster IPs (not a headless Service's) are its
//     spec.addresses, so captured connections to them reach it.
//
// A set of objects that does not validate is reported to the sink with the
// problems (each naming the object's kind, namespace and name) and the last
// good translation keeps being served. Every replica builds the same
// documents from the same objects, so replicas publish the same version.
package source

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"

	"meshd.dev/meshd/kube/inject"
	"meshd.dev/meshd/xds/model"
	meshsource "meshd.dev/meshd/xds/source"
	"meshd.dev/meshd/xds/translate"
)

// Annotations the source reads.
const (
	// AnnotationUpstreamProtocol on a Service is spec.upstreamProtocol
	// ("http2" or "http1").
	AnnotationUpstreamProtocol = "meshd.dev/upstream-protocol"
	// AnnotationMinPingInterval on a Service is
	// spec.serverLimits.minPingInterval (a duration such as "10s").
	AnnotationMinPingInterval = "meshd.dev/min-ping-interval"
	// AnnotationMaxConcurrentStreams on a Service is
	// spec.serverLimits.maxConcurrentStreams.
	AnnotationMaxConcurrentStreams = "meshd.dev/max-concurrent-streams"
	// AnnotationOutbound on a pod lists the Services its application
	// calls through the sidecar on local ports: "greeter.demo:15201,db:15202"
	// (a name without namespace is in the pod's namespace).
	AnnotationOutbound = "meshd.dev/outbound"
)

// SourceName names the Kubernetes source in problems and in Mesh.Source.
const SourceName = "kubernetes"

// DefaultDebounce is how long the source waits after a change for more
// changes before it translates and publishes.
const DefaultDebounce = 100 * time.Millisecond

// CRD resources of the mesh (group meshd.dev, version v1alpha1) by kind.
var (
	MeshesResource                = schema.GroupVersionResource{Group: "meshd.dev", Version: "v1alpha1", Resource: "meshes"}
	TrafficPoliciesResource       = schema.GroupVersionResource{Group: "meshd.dev", Version: "v1alpha1", Resource: "trafficpolicies"}
	AuthorizationPoliciesResource = schema.GroupVersionResource{Group: "meshd.dev", Version: "v1alpha1", Resource: "authorizationpolicies"}
	RateLimitPoliciesResource     = schema.GroupVersionResource{Group: "meshd.dev", Version: "v1alpha1", Resource: "ratelimitpolicies"}
)

// crdKinds pairs each CRD resource with its mesh kind, in document order.
var crdKinds = []struct {
	gvr  schema.GroupVersionResource
	kind string
}{
	{MeshesResource, model.KindMesh},
	{TrafficPoliciesResource, model.KindTrafficPolicy},
	{AuthorizationPoliciesResource, model.KindAuthorizationPolicy},
	{RateLimitPoliciesResource, model.KindRateLimitPolicy},
}

// appProtocols maps a Service port's appProtocol to the mesh protocol.
var appProtocols = map[string]string{
	"grpc":              model.ProtocolGRPC,
	"kubernetes.io/h2c": model.ProtocolHTTP2,
	"http":              model.ProtocolHTTP,
	"tcp":               model.ProtocolTCP,
}

// Options configure a Source.
type Options struct {
	// Client reads Services, EndpointSlices and Pods. Required.
	Client kubernetes.Interface
	// Dynamic reads the mesh's custom resources. Required.
	Dynamic dynamic.Interface
	// Resync is the informers' resync period; zero disables resyncs.
	Resync time.Duration
	// Informers, when set, is the shared informer factory of Client that
	// Run uses (and starts) instead of its own, so that other watchers of
	// the same cluster share its caches: the control plane's
	// TokenReview authenticator registers its ServiceAccount informer
	// there, and Run's start and cache sync cover it.
	Informers informers.SharedInformerFactory
	// Debounce is the quiet time after a change before publishing;
	// DefaultDebounce when zero.
	Debounce time.Duration
	// InboundPort is the sidecars' capture inbound port when a pod's
	// capture container does not say (inject.DefaultInboundPort when 0).
	InboundPort uint32
	// Logger receives the source's logs; nil discards them.
	Logger *slog.Logger
	// Adjust, when set, checks or adjusts every mesh before translation
	// (the control plane checks the trust domain against its CA's, and
	// records the mesh with its closed-loop tuner, xds/autotune); an error
	// rejects that version like a validation error.
	Adjust func(*model.Mesh) error
	// Translate holds the translation's inputs from outside the cluster
	// (the rate-limit module of engine wasm), as for the mesh file.
	Translate translate.Options
}

// Source watches the cluster and publishes its translation to a sink.
type Source struct {
	sink meshsource.Sink
	opts Options
	log  *slog.Logger

	// Filled by Run before the first build; read only by Run's goroutine
	// and by Mesh, which Run calls.
	services  corelisters.ServiceLister
	pods      corelisters.PodLister
	slices    discoverylisters.EndpointSliceLister
	crds      []cache.GenericLister
	changed   chan struct{}
	published string // last version published
}

// New returns a source publishing to sink. It watches nothing until Run.
func New(sink meshsource.Sink, opts Options) (*Source, error) {
	if opts.Client == nil || opts.Dynamic == nil {
		return nil, errors.New("kube source: Client and Dynamic are required")
	}
	if opts.Debounce <= 0 {
		opts.Debounce = DefaultDebounce
	}
	if opts.InboundPort == 0 {
		opts.InboundPort = inject.DefaultInboundPort
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Source{sink: sink, opts: opts, log: log, changed: make(chan struct{}, 1)}, nil
}

// Run starts the informers, waits for their caches, publishes the
// cluster's mesh, and then republishes it after every change (debounced)
// until ctx ends; it stops the informers before returning. It returns an
// error only when the caches cannot sync (ctx ended first, or the API
// server refused the watches). A mesh that does not validate is recorded
// in the sink, not returned.
func (s *Source) Run(ctx context.Context) error {
	f := s.opts.Informers
	if f == nil {
		f = informers.NewSharedInformerFactory(s.opts.Client, s.opts.Resync)
	}
	df := dynamicinformer.NewDynamicSharedInformerFactory(s.opts.Dynamic, s.opts.Resync)
	defer f.Shutdown()
	defer df.Shutdown()
	notify := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { s.notify() },
		UpdateFunc: func(any, any) { s.notify() },
		DeleteFunc: func(any) { s.notify() },
	}
	svc, pod, eps := f.Core().V1().Services(), f.Core().V1().Pods(), f.Discovery().V1().EndpointSlices()
	for _, inf := range []cache.SharedIndexInformer{svc.Informer(), pod.Informer(), eps.Informer()} {
		if _, err := inf.AddEventHandler(notify); err != nil {
			return fmt.Errorf("kube source: %w", err)
		}
	}
	s.services, s.pods, s.slices = svc.Lister(), pod.Lister(), eps.Lister()
	s.crds = nil
	for _, c := range crdKinds {
		g := df.ForResource(c.gvr)
		if _, err := g.Informer().AddEventHandler(notify); err != nil {
			return fmt.Errorf("kube source: %w", err)
		}
		s.crds = append(s.crds, g.Lister())
	}
	f.Start(ctx.Done())
	df.Start(ctx.Done())
	for typ, ok := range f.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("kube source: %v informer did not sync: %w", typ, context.Cause(ctx))
		}
	}
	for gvr, ok := range df.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("kube source: %s informer did not sync (are the CRDs installed?): %w", gvr.Resource, context.Cause(ctx))
		}
	}
	s.log.Info("kubernetes caches synced")
	// The initial list queued notifications; the first publish covers them.
	s.drain()
	s.publish()
	timer := time.NewTimer(0)
	if !timer.Stop() {
		<-timer.C
	}
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.changed:
			timer.Reset(s.opts.Debounce)
		case <-timer.C:
			s.publish()
		}
	}
}

func (s *Source) notify() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

func (s *Source) drain() {
	select {
	case <-s.changed:
	default:
	}
}

// publish builds, translates and publishes the cluster's mesh; problems
// go to the sink's RecordError and the last good config stays.
func (s *Source) publish() {
	m, err := s.Mesh()
	if err == nil && s.opts.Adjust != nil {
		err = s.opts.Adjust(m)
	}
	if err != nil {
		s.log.Error("cluster mesh rejected; serving the last good config", "err", err)
		s.sink.RecordError(err)
		return
	}
	res, err := translate.TranslateWith(m, s.opts.Translate)
	if err != nil {
		s.log.Error("cluster mesh not translated; serving the last good config", "err", err)
		s.sink.RecordError(fmt.Errorf("%s: translating: %w", SourceName, err))
		return
	}
	if res.Version == s.published {
		return
	}
	warnings := m.Warnings()
	for _, w := range warnings {
		s.log.Warn("risky mesh setting", "document", w.Document, "field", w.Field, "warning", w.Message)
	}
	if err := s.sink.Publish(res, warnings); err != nil {
		s.log.Error("cluster mesh not published; serving the last good config", "err", err)
		return
	}
	s.published = res.Version
	s.log.Info("cluster mesh published", "version", res.Version, "services", len(m.Services), "workloads", len(m.Workloads))
}

// Mesh builds and validates the mesh of the objects in the informers'
// caches. Only Run's goroutine calls it once Run started.
func (s *Source) Mesh() (*model.Mesh, error) {
	var docs [][]byte
	add := func(kind, ns, name string, spec any) error {
		d, err := json.Marshal(map[string]any{
			"apiVersion": model.APIVersion,
			"kind":       kind,
			"metadata":   map[string]string{"name": name, "namespace": ns},
			"spec":       spec,
		})
		if err != nil {
			return fmt.Errorf("%s %s/%s: %w", kind, ns, name, err)
		}
		docs = append(docs, d)
		return nil
	}
	for i, c := range crdKinds {
		objs, err := s.crds[i].List(labels.Everything())
		if err != nil {
			return nil, fmt.Errorf("%s: listing %s: %w", SourceName, c.gvr.Resource, err)
		}
		sortByKey(objs, func(o runtime.Object) string { return key(o.(*unstructured.Unstructured)) })
		for _, o := range objs {
			u := o.(*unstructured.Unstructured)
			if err := add(c.kind, u.GetNamespace(), u.GetName(), u.Object["spec"]); err != nil {
				return nil, err
			}
		}
	}

	svcs, err := s.services.List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("%s: listing services: %w", SourceName, err)
	}
	sortByKey(svcs, func(s *corev1.Service) string { return s.Namespace + "/" + s.Name })
	allSlices, err := s.slices.List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("%s: listing endpointslices: %w", SourceName, err)
	}
	slicesOf := make(map[string][]*discoveryv1.EndpointSlice) // by service ns/name
	for _, es := range allSlices {
		if name := es.Labels[discoveryv1.LabelServiceName]; name != "" {
			slicesOf[es.Namespace+"/"+name] = append(slicesOf[es.Namespace+"/"+name], es)
		}
	}
	// meshed: Service ns/name -> its mesh port.
	meshed := make(map[string]corev1.ServicePort)
	// servedBy: pod ns/name -> (service name, target port), first Service
	// by name.
	type served struct {
		service string
		target  int32
	}
	servedBy := make(map[string]served)
	for _, svc := range svcs {
		port, protocol, ok := meshPort(svc)
		if !ok {
			continue
		}
		k := svc.Namespace + "/" + svc.Name
		meshed[k] = port
		spec := map[string]any{"protocol": protocol, "port": port.Port}
		if v := svc.Annotations[AnnotationUpstreamProtocol]; v != "" {
			spec["upstreamProtocol"] = v
		}
		limits := map[string]any{}
		if v := svc.Annotations[AnnotationMinPingInterval]; v != "" {
			limits["minPingInterval"] = v
		}
		if v := svc.Annotations[AnnotationMaxConcurrentStreams]; v != "" {
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil {
				return nil, fmt.Errorf("%s: Service %s: annotation %s: %q is not a count", SourceName, k, AnnotationMaxConcurrentStreams, v)
			}
			limits["maxConcurrentStreams"] = n
		}
		if len(limits) > 0 {
			spec["serverLimits"] = limits
		}
		if ips := clusterIPs(svc); len(ips) > 0 {
			spec["addresses"] = ips
		}
		var endpoints []map[string]any
		sl := slicesOf[k]
		sortByKey(sl, func(es *discoveryv1.EndpointSlice) string { return es.Name })
		for _, es := range sl {
			if es.AddressType != discoveryv1.AddressTypeIPv4 && es.AddressType != discoveryv1.AddressTypeIPv6 {
				continue
			}
			target, ok := slicePort(es, port)
			if !ok {
				continue
			}
			for _, ep := range es.Endpoints {
				if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
					continue
				}
				if ep.TargetRef != nil && ep.TargetRef.Kind == "Pod" {
					pk := es.Namespace + "/" + ep.TargetRef.Name
					if _, dup := servedBy[pk]; !dup {
						servedBy[pk] = served{svc.Name, target}
					}
				}
				for _, a := range ep.Addresses {
					e := map[string]any{"address": a, "port": target}
					if ep.Zone != nil && *ep.Zone != "" {
						e["zone"] = *ep.Zone
					}
					endpoints = append(endpoints, e)
				}
			}
		}
		sortByKey(endpoints, func(e map[string]any) string { return fmt.Sprint(e["address"], ":", e["port"]) })
		endpoints = slices.CompactFunc(endpoints, func(a, b map[string]any) bool {
			return a["address"] == b["address"] && a["port"] == b["port"]
		})
		if len(endpoints) > 0 {
			spec["endpoints"] = endpoints
		}
		if err := add(model.KindService, svc.Namespace, svc.Name, spec); err != nil {
			return nil, err
		}
	}

	pods, err := s.pods.List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("%s: listing pods: %w", SourceName, err)
	}
	sortByKey(pods, func(p *corev1.Pod) string { return p.Namespace + "/" + p.Name })
	for _, p := range pods {
		if p.Annotations[inject.AnnotationStatus] == "" || p.Status.PodIP == "" || p.DeletionTimestamp != nil ||
			p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		if _, err := netip.ParseAddr(p.Status.PodIP); err != nil {
			continue
		}
		sa := p.Spec.ServiceAccountName
		if sa == "" {
			sa = "default"
		}
		spec := map[string]any{"serviceAccount": sa, "address": p.Status.PodIP}
		if sv, ok := servedBy[p.Namespace+"/"+p.Name]; ok {
			spec["service"] = sv.service
			spec["inbound"] = map[string]any{
				"port": inboundPort(p, s.opts.InboundPort),
				"app":  "127.0.0.1:" + strconv.Itoa(int(sv.target)),
			}
		}
		if port, ok := captureArg(p, "--outbound-port"); ok {
			spec["capture"] = map[string]any{"outboundPort": port}
		}
		if v := p.Annotations[AnnotationOutbound]; v != "" {
			out, err := parseOutbound(v)
			if err != nil {
				return nil, fmt.Errorf("%s: Pod %s/%s: annotation %s: %w", SourceName, p.Namespace, p.Name, AnnotationOutbound, err)
			}
			spec["outbound"] = out
		}
		if err := add(model.KindWorkload, p.Namespace, p.Name, spec); err != nil {
			return nil, err
		}
	}
	return model.Parse(joinDocuments(docs), SourceName)
}

// meshPort returns the first port of svc with a mesh appProtocol and its
// protocol.
func meshPort(svc *corev1.Service) (corev1.ServicePort, string, bool) {
	for _, p := range svc.Spec.Ports {
		if p.AppProtocol == nil || (p.Protocol != "" && p.Protocol != corev1.ProtocolTCP) {
			continue
		}
		if proto, ok := appProtocols[*p.AppProtocol]; ok {
			return p, proto, true
		}
	}
	return corev1.ServicePort{}, "", false
}

// slicePort returns the target port es lists for the Service port sp
// (EndpointSlice ports carry the Service port's name).
func slicePort(es *discoveryv1.EndpointSlice, sp corev1.ServicePort) (int32, bool) {
	for _, p := range es.Ports {
		name := ""
		if p.Name != nil {
			name = *p.Name
		}
		if name == sp.Name && p.Port != nil && (p.Protocol == nil || *p.Protocol == corev1.ProtocolTCP) {
			return *p.Port, true
		}
	}
	return 0, false
}

// inboundPort reads --inbound-port from the pod's capture init container,
// def when absent.
func inboundPort(p *corev1.Pod, def uint32) uint32 {
	if n, ok := captureArg(p, "--inbound-port"); ok && n > 0 {
		return n
	}
	return def
}

// captureArg reads the port flag of the pod's capture init container
// (`meshd capture`): false when the pod has no such container; the
// capture command's default when the flag is absent or not a port.
func captureArg(p *corev1.Pod, flag string) (uint32, bool) {
	defaults := map[string]uint32{"--inbound-port": inject.DefaultInboundPort, "--outbound-port": inject.DefaultOutboundPort}
	for _, c := range p.Spec.InitContainers {
		if c.Name != inject.InitName {
			continue
		}
		for i, a := range c.Args {
			v, ok := strings.CutPrefix(a, flag+"=")
			if !ok && a == flag && i+1 < len(c.Args) {
				v, ok = c.Args[i+1], true
			}
			if !ok {
				continue
			}
			if n, err := strconv.ParseUint(v, 10, 16); err == nil && n > 0 {
				return uint32(n), true
			}
		}
		return defaults[flag], true
	}
	return 0, false
}

// clusterIPs returns svc's cluster IPs (none for a headless Service).
func clusterIPs(svc *corev1.Service) []string {
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	var out []string
	for _, ip := range ips {
		if _, err := netip.ParseAddr(ip); err == nil {
			out = append(out, ip) // "None" (headless) does not parse
		}
	}
	return out
}

// parseOutbound parses "greeter.demo:15201,db:15202".
func parseOutbound(v string) ([]map[string]any, error) {
	var out []map[string]any
	for _, f := range strings.Split(v, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		svc, port, ok := strings.Cut(f, ":")
		n, err := strconv.ParseUint(port, 10, 16)
		if !ok || svc == "" || err != nil || n == 0 {
			return nil, fmt.Errorf("%q is not SERVICE[.NAMESPACE]:LOCALPORT", f)
		}
		out = append(out, map[string]any{"service": svc, "port": n})
	}
	return out, nil
}

func key(u *unstructured.Unstructured) string { return u.GetNamespace() + "/" + u.GetName() }

func sortByKey[T any](s []T, k func(T) string) {
	slices.SortStableFunc(s, func(a, b T) int { return strings.Compare(k(a), k(b)) })
}

func joinDocuments(docs [][]byte) []byte {
	var b []byte
	for i, d := range docs {
		if i > 0 {
			b = append(b, "\n---\n"...)
		}
		b = append(b, d...)
	}
	return b
}
