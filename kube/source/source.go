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
// One bad object does not freeze the cluster's config. A Pod or Service
// whose annotation does not validate (a typo in AnnotationOutbound, a
// Service it names that does not exist, a local port the sidecar already
// uses, a bad duration or count) has that annotation ignored, and a Pod
// whose Workload does not validate for another reason (a name that is not
// a DNS label) is left out; everything else is published. Each such
// Rejection is logged as a warning and recorded as a Warning Event on the
// object once per new reason (not per resync), counted in
// control_plane.kube_rejections, and listed by Rejections (the control
// plane's /status "rejected"). Problems of the whole mesh (a custom
// resource that does not validate, a Mesh trust domain that is not the
// CA's, a failed translation) are reported to the sink with the problems
// (each naming the object's kind, namespace and name) and the last good
// translation keeps being served. Every replica builds the same documents
// from the same objects, so replicas publish the same version: the cut
// depends on the objects only, never on what a replica saw before.
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
	"sync"
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
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"meshd.dev/meshd/kube/inject"
	"meshd.dev/meshd/proxy/stats"
	"meshd.dev/meshd/xds/model"
	"meshd.dev/meshd/xds/server"
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
	// Stats is the store of the source's counters (the control plane's);
	// nil creates one. The counter "control_plane.kube_rejections" counts
	// every Pod or Service annotation ignored and every Pod left out, once
	// per new reason; the gauge "control_plane.kube_rejections_active" is
	// how many are rejected now.
	Stats *stats.Store
	// EventComponent is the reporting component of the Warning Events the
	// source records on rejected Pods and Services; DefaultEventComponent
	// when empty.
	EventComponent string
}

// DefaultEventComponent reports the source's Kubernetes Events.
const DefaultEventComponent = "meshd-control-plane"

// Reasons of the Warning Events recorded on a rejected object.
const (
	// EventReasonInvalidAnnotation: one of the object's meshd.dev
	// annotations is ignored.
	EventReasonInvalidAnnotation = "InvalidMeshAnnotation"
	// EventReasonLeftOut: the Pod is left out of the mesh.
	EventReasonLeftOut = "LeftOutOfMesh"
)

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
	published string               // last version published
	events    record.EventRecorder // set by Run; nil: no Events

	rejections      *stats.Counter
	rejectionsAlive *stats.Gauge

	mu sync.Mutex // guards rejected
	// rejected is what the source reported of the last mesh it built, by
	// Rejection.key; written by Run's goroutine, read by Rejections.
	rejected map[string]server.RejectedObject
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
	if opts.EventComponent == "" {
		opts.EventComponent = DefaultEventComponent
	}
	st := opts.Stats
	if st == nil {
		st = stats.NewStore()
	}
	sc := st.Root().Scope("control_plane")
	return &Source{sink: sink, opts: opts, log: log, changed: make(chan struct{}, 1),
		rejections: sc.Counter("kube_rejections"), rejectionsAlive: sc.Gauge("kube_rejections_active")}, nil
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
	// Rejected objects get a Warning Event, where `kubectl describe`
	// shows it to their owner.
	eb := record.NewBroadcaster(record.WithContext(ctx))
	defer eb.Shutdown()
	eb.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: s.opts.Client.CoreV1().Events("")})
	s.events = eb.NewRecorder(scheme.Scheme, corev1.EventSource{Component: s.opts.EventComponent})
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
	m, rejected, err := s.Mesh()
	if err == nil {
		s.report(rejected)
	}
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

// report logs, counts and records an Event for every rejection that is
// new or has a new reason, logs the ones that ended, and keeps the set
// for Rejections. A resync that finds the same problems reports nothing.
func (s *Source) report(rs []Rejection) {
	s.mu.Lock()
	prev := s.rejected
	s.mu.Unlock()
	now := time.Now()
	next := make(map[string]server.RejectedObject, len(rs))
	for _, r := range rs {
		k := r.key()
		if old, ok := prev[k]; ok && old.Reason == r.Reason {
			next[k] = old
			continue
		}
		next[k] = server.RejectedObject{Kind: r.Kind, Namespace: r.Namespace, Name: r.Name,
			Annotation: r.Annotation, Reason: r.Reason, Effect: r.Effect, Since: now}
		s.rejections.Inc()
		obj := slog.String(strings.ToLower(r.Kind), r.Namespace+"/"+r.Name)
		if r.Annotation == "" {
			s.log.Warn("pod left out of the mesh", obj, "reason", r.Reason, "effect", r.Effect)
		} else {
			s.log.Warn("invalid mesh annotation ignored", obj, "annotation", r.Annotation, "reason", r.Reason, "effect", r.Effect)
		}
		if s.events != nil && r.obj != nil {
			if r.Annotation == "" {
				s.events.Eventf(r.obj, corev1.EventTypeWarning, EventReasonLeftOut, "%s; %s", r.Reason, r.Effect)
			} else {
				s.events.Eventf(r.obj, corev1.EventTypeWarning, EventReasonInvalidAnnotation, "annotation %s: %s; %s", r.Annotation, r.Reason, r.Effect)
			}
		}
	}
	for k, old := range prev {
		if _, ok := next[k]; !ok {
			s.log.Info("mesh rejection cleared (fixed or deleted)", strings.ToLower(old.Kind), old.Namespace+"/"+old.Name, "annotation", old.Annotation)
		}
	}
	s.mu.Lock()
	s.rejected = next
	s.mu.Unlock()
	s.rejectionsAlive.Set(int64(len(next)))
}

// Rejections returns the Pods and Services whose contribution the last
// built mesh cut back, sorted by kind, namespace, name and annotation,
// each with the time its reason was first seen. It is safe for concurrent
// use (the control plane's /status calls it).
func (s *Source) Rejections() []server.RejectedObject {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]server.RejectedObject, 0, len(s.rejected))
	for _, r := range s.rejected {
		out = append(out, r)
	}
	sortByKey(out, func(r server.RejectedObject) string {
		return r.Kind + "/" + r.Namespace + "/" + r.Name + "/" + r.Annotation
	})
	return out
}

// Mesh builds and validates the mesh of the objects in the informers'
// caches. A Pod or Service that does not validate has its contribution cut
// back (see Rejection and docs/RATIONALE.md) and is returned among the
// rejections, sorted by kind, namespace, name and annotation, while the
// rest of the mesh builds; the error is a problem of the whole mesh (a
// custom resource, or a listing that failed), and no mesh comes with it.
// Only Run's goroutine calls it once Run started.
func (s *Source) Mesh() (*model.Mesh, []Rejection, error) {
	var base [][]byte // the custom resources' documents, first
	for i, c := range crdKinds {
		objs, err := s.crds[i].List(labels.Everything())
		if err != nil {
			return nil, nil, fmt.Errorf("%s: listing %s: %w", SourceName, c.gvr.Resource, err)
		}
		sortByKey(objs, func(o runtime.Object) string { return key(o.(*unstructured.Unstructured)) })
		for _, o := range objs {
			u := o.(*unstructured.Unstructured)
			d, err := document(c.kind, u.GetNamespace(), u.GetName(), u.Object["spec"])
			if err != nil {
				return nil, nil, err
			}
			base = append(base, d)
		}
	}
	contribs, rejected, err := s.contributions()
	if err != nil {
		return nil, nil, err
	}
	// Parse, and cut back the objects its problems blame, until the mesh
	// validates: every round drops at least one annotation or Pod, so
	// there are at most as many rounds as annotations and Pods.
	for {
		docs := slices.Clip(base)
		byIndex := make(map[int]*contribution, len(contribs))
		for _, c := range contribs {
			if c.excluded {
				continue
			}
			d, err := document(c.docKind, c.ns, c.name, c.spec)
			if err != nil {
				return nil, nil, err
			}
			docs = append(docs, d)
			byIndex[len(docs)] = c // Problem.Index counts from 1
		}
		m, err := model.Parse(joinDocuments(docs), SourceName)
		if err == nil {
			sortRejections(rejected)
			return m, rejected, nil
		}
		var me *model.Error
		if !errors.As(err, &me) {
			return nil, nil, err
		}
		progress, meshWide := false, false
		for _, p := range me.Problems {
			c := byIndex[p.Index]
			if c == nil {
				meshWide = true
				continue
			}
			reason := p.Reason
			if p.Field != "" {
				reason = p.Field + ": " + p.Reason
			}
			if a := c.annotationOf(p.Field); a != "" {
				if c.has(a) {
					c.drop(a)
					rejected = append(rejected, c.rejection(a, reason))
					progress = true
				}
				continue
			}
			if c.kind == kindPod && !c.excluded {
				c.excluded = true
				rejected = append(rejected, c.rejection("", reason))
				progress = true
				continue
			}
			if c.kind != kindPod {
				meshWide = true
			}
		}
		if meshWide || !progress {
			return nil, nil, err
		}
	}
}

// Kinds of the objects whose contribution the source may cut back.
const (
	kindPod     = "Pod"
	kindService = "Service"
)

// contribution is the mesh document of one Pod (a Workload) or one
// Service, with the annotations it was built from, so that a problem the
// model finds in the document can be traced back to its annotation.
type contribution struct {
	obj      runtime.Object // *corev1.Pod or *corev1.Service, for Events
	kind     string         // kindPod or kindService
	ns, name string
	docKind  string // model.KindWorkload or model.KindService
	spec     map[string]any
	// fields maps each honoured annotation to the spec paths it set.
	fields map[string][][]string
	// excluded: the Pod is left out of the mesh.
	excluded bool
}

// set stores v at path in the spec, on behalf of annotation.
func (c *contribution) set(annotation string, v any, path ...string) {
	m := c.spec
	for _, k := range path[:len(path)-1] {
		sub, ok := m[k].(map[string]any)
		if !ok {
			sub = map[string]any{}
			m[k] = sub
		}
		m = sub
	}
	m[path[len(path)-1]] = v
	if c.fields == nil {
		c.fields = map[string][][]string{}
	}
	c.fields[annotation] = append(c.fields[annotation], path)
}

func (c *contribution) has(annotation string) bool { _, ok := c.fields[annotation]; return ok }

// drop removes what annotation set from the spec, and parent objects it
// leaves empty.
func (c *contribution) drop(annotation string) {
	for _, path := range c.fields[annotation] {
		dropPath(c.spec, path)
	}
	delete(c.fields, annotation)
}

func dropPath(m map[string]any, path []string) {
	if len(path) == 1 {
		delete(m, path[0])
		return
	}
	sub, ok := m[path[0]].(map[string]any)
	if !ok {
		return
	}
	dropPath(sub, path[1:])
	if len(sub) == 0 {
		delete(m, path[0])
	}
}

// annotationOf returns the annotation that set the document field a
// problem names ("spec.outbound[1].port"), "" when none did.
func (c *contribution) annotationOf(field string) string {
	for a, paths := range c.fields {
		for _, path := range paths {
			p := "spec." + strings.Join(path, ".")
			if rest, ok := strings.CutPrefix(field, p); ok && (rest == "" || rest[0] == '.' || rest[0] == '[') {
				return a
			}
		}
	}
	return ""
}

// rejection describes c's annotation (or, with "", c itself) as rejected
// for reason.
func (c *contribution) rejection(annotation, reason string) Rejection {
	r := Rejection{Kind: c.kind, Namespace: c.ns, Name: c.name, Annotation: annotation, Reason: reason, obj: c.obj}
	switch {
	case annotation == "":
		r.Effect = "the pod is left out of the mesh: its sidecar gets no Workload config (it is served the empty config of a node the mesh does not know: no listeners, no clusters) and meshed clients do not route to it"
	case annotation == AnnotationOutbound:
		r.Effect = "annotation ignored: the pod's sidecar gets no outbound listeners on local ports (inbound traffic and captured outbound traffic are unaffected)"
	default:
		r.Effect = "annotation ignored: the Service is configured as if it were absent"
	}
	return r
}

// Rejection is a Pod or Service whose contribution to the mesh the source
// cut back because it does not validate: one of its annotations is
// ignored (Annotation set) or, for a Pod whose problem is not in an
// annotation, the Pod is left out. The rest of the cluster keeps being
// configured.
type Rejection struct {
	// Kind is "Pod" or "Service".
	Kind      string
	Namespace string
	Name      string
	// Annotation is the ignored annotation; "" when the Pod is left out.
	Annotation string
	// Reason says what is wrong: the value, or the mesh field and problem.
	Reason string
	// Effect says what the mesh does instead.
	Effect string

	obj runtime.Object // the object, for its Event
}

// key identifies the rejected thing, whatever the reason.
func (r Rejection) key() string {
	return r.Kind + "/" + r.Namespace + "/" + r.Name + "/" + r.Annotation
}

// sortRejections sorts rs by kind, namespace, name and annotation. Each
// key occurs once: an annotation is rejected once (then dropped), a Pod
// left out once.
func sortRejections(rs []Rejection) { sortByKey(rs, Rejection.key) }

// contributions builds the Service and Pod documents, with the
// rejections of annotations the source itself cannot parse.
func (s *Source) contributions() ([]*contribution, []Rejection, error) {
	svcs, err := s.services.List(labels.Everything())
	if err != nil {
		return nil, nil, fmt.Errorf("%s: listing services: %w", SourceName, err)
	}
	sortByKey(svcs, func(s *corev1.Service) string { return s.Namespace + "/" + s.Name })
	allSlices, err := s.slices.List(labels.Everything())
	if err != nil {
		return nil, nil, fmt.Errorf("%s: listing endpointslices: %w", SourceName, err)
	}
	slicesOf := make(map[string][]*discoveryv1.EndpointSlice) // by service ns/name
	for _, es := range allSlices {
		if name := es.Labels[discoveryv1.LabelServiceName]; name != "" {
			slicesOf[es.Namespace+"/"+name] = append(slicesOf[es.Namespace+"/"+name], es)
		}
	}
	var (
		contribs []*contribution
		rejected []Rejection
	)
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
		c := &contribution{obj: svc, kind: kindService, ns: svc.Namespace, name: svc.Name, docKind: model.KindService,
			spec: map[string]any{"protocol": protocol, "port": port.Port}}
		if v := svc.Annotations[AnnotationUpstreamProtocol]; v != "" {
			c.set(AnnotationUpstreamProtocol, v, "upstreamProtocol")
		}
		if v := svc.Annotations[AnnotationMinPingInterval]; v != "" {
			c.set(AnnotationMinPingInterval, v, "serverLimits", "minPingInterval")
		}
		if v := svc.Annotations[AnnotationMaxConcurrentStreams]; v != "" {
			if n, err := strconv.ParseUint(v, 10, 32); err != nil {
				rejected = append(rejected, c.rejection(AnnotationMaxConcurrentStreams, fmt.Sprintf("%q is not a count", v)))
			} else {
				c.set(AnnotationMaxConcurrentStreams, n, "serverLimits", "maxConcurrentStreams")
			}
		}
		if ips := clusterIPs(svc); len(ips) > 0 {
			c.spec["addresses"] = ips
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
			c.spec["endpoints"] = endpoints
		}
		contribs = append(contribs, c)
	}

	pods, err := s.pods.List(labels.Everything())
	if err != nil {
		return nil, nil, fmt.Errorf("%s: listing pods: %w", SourceName, err)
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
		c := &contribution{obj: p, kind: kindPod, ns: p.Namespace, name: p.Name, docKind: model.KindWorkload,
			spec: map[string]any{"serviceAccount": sa, "address": p.Status.PodIP}}
		// The sidecar's own ports, which an outbound local port must not
		// take.
		taken := map[uint64]string{}
		if sv, ok := servedBy[p.Namespace+"/"+p.Name]; ok {
			in := inboundPort(p, s.opts.InboundPort)
			c.spec["service"] = sv.service
			c.spec["inbound"] = map[string]any{"port": in, "app": "127.0.0.1:" + strconv.Itoa(int(sv.target))}
			taken[uint64(in)] = "the sidecar's inbound port"
		}
		if port, ok := captureArg(p, "--outbound-port"); ok {
			c.spec["capture"] = map[string]any{"outboundPort": port}
			taken[uint64(port)] = "the sidecar's capture outbound port"
		}
		if v := p.Annotations[AnnotationOutbound]; v != "" {
			if out, err := parseOutbound(v, taken); err != nil {
				rejected = append(rejected, c.rejection(AnnotationOutbound, err.Error()))
			} else {
				c.set(AnnotationOutbound, out, "outbound")
			}
		}
		contribs = append(contribs, c)
	}
	return contribs, rejected, nil
}

// document marshals one mesh document.
func document(kind, ns, name string, spec any) ([]byte, error) {
	d, err := json.Marshal(map[string]any{
		"apiVersion": model.APIVersion,
		"kind":       kind,
		"metadata":   map[string]string{"name": name, "namespace": ns},
		"spec":       spec,
	})
	if err != nil {
		return nil, fmt.Errorf("%s %s/%s: %w", kind, ns, name, err)
	}
	return d, nil
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

// parseOutbound parses "greeter.demo:15201,db:15202". A local port in
// taken (the sidecar's own listeners, with what they are) or given twice
// is an error.
func parseOutbound(v string, taken map[uint64]string) ([]map[string]any, error) {
	var out []map[string]any
	seen := map[uint64]string{}
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
		if what, clash := taken[n]; clash {
			return nil, fmt.Errorf("%q: local port %d is %s", f, n, what)
		}
		if prev, dup := seen[n]; dup {
			return nil, fmt.Errorf("%q: local port %d is also given to %q", f, n, prev)
		}
		seen[n] = f
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
