// Package translate turns a validated mesh (meshd.dev/meshd/xds/model) into
// standard Envoy v3 resources: per sidecar node, and for proxyless gRPC
// clients. It is pure: the same *model.Mesh always yields byte-identical
// resources and the same Version, so control-plane replicas agree.
//
// Resource names (Istio-like, so operators recognise them):
//
//	inbound|<port>                       inbound listener of a workload (127.0.0.1:<port>, or spec.address:<port>)
//	inbound|<port>|<app>                 STATIC cluster to the local application
//	outbound|<port>                      outbound listener (127.0.0.1:<port>) and its RDS route configuration
//	virtualOutbound                      capture listener (127.0.0.1:<spec.capture.outboundPort>, use_original_dst)
//	outbound|<ip>:<port>                 listener on a Service's virtual address (bind_to_port false) and its RDS route configuration
//	PassthroughCluster                   ORIGINAL_DST cluster for captured connections to no Service (outboundTrafficPolicy allowAny)
//	BlackHoleCluster                     EDS cluster without endpoints for them under registryOnly
//	outbound|<svcport>||<name>.<ns>      EDS cluster (and its ClusterLoadAssignment) to a Service
//	<name>.<ns>:<port>                   proxyless API listener and its RDS route configuration
//	proxyless|<name>.<ns>:<port>         proxyless EDS cluster (and its ClusterLoadAssignment)
//
// Every policy setting lives in Envoy's own fields: HttpProtocolOptions
// (explicit HTTP/2 settings, keepalive, idle timeout, connection lifetimes),
// circuit_breakers, outlier_detection, lb_policy, connect_timeout, and the
// route's timeout and retry_policy.
package translate

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"meshd.dev/meshd/xds/model"
)

// Well-known names of the filters and extensions the translation emits.
const (
	HCMFilterName          = "envoy.filters.network.http_connection_manager"
	TCPProxyFilterName     = "envoy.filters.network.tcp_proxy"
	RouterFilterName       = "envoy.filters.http.router"
	HTTPProtocolOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
)

// LocalAddress is where file-mode sidecars bind their listeners and find
// each other: every workload of a mesh file runs on one host.
const LocalAddress = "127.0.0.1"

// defaultRetryOn applies when a policy sets retries.attempts but no
// retryOn: only requests the upstream never processed are retried.
const defaultRetryOn = "connect-failure,refused-stream"

// Resources is one node's xDS resources, each slice sorted by name.
type Resources struct {
	Listeners []types.Resource // *listenerv3.Listener
	Routes    []types.Resource // *routev3.RouteConfiguration
	Clusters  []types.Resource // *clusterv3.Cluster
	Endpoints []types.Resource // *endpointv3.ClusterLoadAssignment
	// Secrets stays empty: SVIDs and bundles reach sidecars from their own
	// CA client as local SDS secrets (SVIDSecretName, BundleSecretName).
	Secrets []types.Resource // *tlsv3.Secret
}

// Result is the translation of a whole mesh.
type Result struct {
	// Nodes holds each sidecar's resources by Workload node ID
	// ("<name>.<namespace>"); a sidecar gets only its own resources.
	Nodes map[string]*Resources
	// Proxyless holds, for every non-tcp Service, the API listener
	// "<name>.<namespace>:<port>" with its route configuration, EDS cluster
	// and endpoints: what a grpc-go client dialling
	// xds:///<name>.<namespace>:<port> asks for. It is served to nodes not in
	// Nodes.
	Proxyless *Resources
	// Version is a hex digest of every resource above (deterministic proto
	// encoding, in a fixed order): equal inputs give equal versions.
	Version string
}

// Translate builds the resources of every sidecar node and of proxyless
// clients from m, which must come from model.Parse or model.Load. An error
// names the document and field whose value cannot be expressed in Envoy's
// fields.
func Translate(m *model.Mesh) (*Result, error) { return TranslateWith(m, Options{}) }

// TranslateWith is Translate with the inputs the mesh file does not hold
// (the rate-limit module of engine wasm). Equal meshes and options give
// equal results.
func TranslateWith(m *model.Mesh, opts Options) (*Result, error) {
	t := &translator{m: m, opts: opts}
	t.checkRateLimitModules()
	res := &Result{Nodes: make(map[string]*Resources, len(m.Workloads))}
	for _, w := range m.Workloads {
		res.Nodes[w.NodeID()] = t.node(w)
	}
	res.Proxyless = t.proxyless()
	if t.err != nil {
		return nil, t.err
	}
	for _, r := range res.Nodes {
		r.sort()
	}
	res.Proxyless.sort()
	v, err := version(res)
	if err != nil {
		return nil, err
	}
	res.Version = v
	return res, nil
}

// translator carries the first error of a translation so that the builders
// stay expression-shaped.
type translator struct {
	m    *model.Mesh
	opts Options
	err  error
	// cur is the workload whose node is being built; nil otherwise.
	cur *model.Workload
	// moduleHost is set while building a node whose filters fetch a
	// module through ModuleClusterName: the module it names.
	moduleHost *WasmModule
}

func (t *translator) fail(err error) {
	if t.err == nil {
		t.err = err
	}
}

// typed wraps msg in an Any.
func (t *translator) typed(msg proto.Message) *anypb.Any {
	a, err := anypb.New(msg)
	if err != nil {
		t.fail(fmt.Errorf("translate: encoding %s: %w", msg.ProtoReflect().Descriptor().FullName(), err))
	}
	return a
}

// InboundListenerName returns the name of the inbound listener on port.
func InboundListenerName(port uint32) string { return "inbound|" + strconv.Itoa(int(port)) }

// InboundClusterName returns the name of the cluster from the inbound
// listener on port to the application at app.
func InboundClusterName(port uint32, app string) string {
	return InboundListenerName(port) + "|" + app
}

// OutboundName returns the name of the outbound listener, and of its route
// configuration, on local port.
func OutboundName(port uint32) string { return "outbound|" + strconv.Itoa(int(port)) }

// OutboundClusterName returns the name of sidecars' cluster to s.
func OutboundClusterName(s *model.Service) string {
	return "outbound|" + strconv.Itoa(int(s.Spec.Port)) + "||" + s.Key()
}

// ProxylessClusterName returns the name of proxyless clients' cluster to s.
func ProxylessClusterName(s *model.Service) string { return "proxyless|" + s.HostPort() }

func (t *translator) node(w *model.Workload) *Resources {
	r := &Resources{}
	t.cur = w
	defer func() { t.cur = nil }()
	if t.m.Spec.Tracing != nil {
		r.Clusters = append(r.Clusters, t.tracingCluster())
	}
	t.moduleHost = nil
	if in := w.Spec.Inbound; in != nil {
		t.inbound(r, w, in)
	}
	if t.moduleHost != nil {
		if c := t.moduleCluster(t.moduleHost); c != nil {
			r.Clusters = append(r.Clusters, c)
		}
	}
	clusters := make(map[string]bool)
	for i, out := range w.Spec.Outbound {
		svc := w.OutboundRefs[i]
		cname := OutboundClusterName(svc)
		name := OutboundName(out.Port)
		var l *listenerv3.Listener
		if svc.Spec.Protocol == model.ProtocolTCP {
			l = t.tcpListener(name, out.Port, cname)
		} else {
			l = t.httpListener(name, out.Port, t.rds(name), nil, nil)
			r.Routes = append(r.Routes, t.routeConfig(name, svc.Key(), t.route(cname, t.policy(svc), false)))
		}
		// POST /drain_listeners?inboundonly (a pod shutting down) leaves
		// OUTBOUND listeners serving the app's calls out.
		l.TrafficDirection = corev3.TrafficDirection_OUTBOUND
		r.Listeners = append(r.Listeners, l)
		if clusters[cname] {
			continue
		}
		clusters[cname] = true
		c := t.outboundCluster(cname, svc)
		t.secureOutbound(c, svc)
		r.Clusters = append(r.Clusters, c)
		r.Endpoints = append(r.Endpoints, t.assignment(cname, svc))
	}
	if c := w.Spec.Capture; c != nil {
		t.capture(r, c, clusters)
	}
	return r
}

// inbound adds the listener on in.Port and the STATIC cluster to the app.
func (t *translator) inbound(r *Resources, w *model.Workload, in *model.Inbound) {
	svc := w.ServiceRef
	name := InboundListenerName(in.Port)
	cname := InboundClusterName(in.Port, in.App)
	if svc.Spec.Protocol == model.ProtocolTCP {
		r.Listeners = append(r.Listeners, t.tcpListener(name, in.Port, cname))
	} else {
		// The route is inline: it only ever points at the local app.
		rc := t.routeConfig(name, svc.Key(), t.route(cname, model.Policy{}, false))
		var h2 *corev3.Http2ProtocolOptions
		// The inbound side advertises the HTTP/2 settings the clients of
		// the service are configured with, so both ends of the
		// sidecar-to-sidecar connection agree.
		if p := t.policy(svc); p.HTTP2 != nil {
			h2 = &corev3.Http2ProtocolOptions{
				MaxConcurrentStreams:        u32(p.HTTP2.MaxConcurrentStreams),
				InitialStreamWindowSize:     u32(p.HTTP2.InitialStreamWindowSize),
				InitialConnectionWindowSize: u32(p.HTTP2.InitialConnectionWindowSize),
			}
			if proto.Equal(h2, &corev3.Http2ProtocolOptions{}) {
				h2 = nil
			}
		}
		// Authorization first, then the limiter, as Envoy orders them: a
		// denied caller spends no token.
		filters := append(t.rbacFilter(svc), t.rateLimitFilter(svc)...)
		r.Listeners = append(r.Listeners, t.httpListener(name, in.Port, &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: rc}, h2, filters))
	}
	l := r.Listeners[len(r.Listeners)-1].(*listenerv3.Listener)
	l.TrafficDirection = corev3.TrafficDirection_INBOUND
	if w.Spec.Address != "" {
		// Its own network namespace (a pod): bind the pod IP, where
		// other sidecars and captured inbound traffic arrive.
		l.Address = socketAddress(w.Spec.Address, in.Port)
	}
	t.secureInbound(l)
	if svc.SidecarProtocol() == model.UpstreamHTTP3 && t.m.Spec.MTLS != model.MTLSDisable {
		if q := t.inboundQUIC(in.Port, l); q != nil {
			r.Listeners = append(r.Listeners, q)
		}
	}
	host, portStr, err := net.SplitHostPort(in.App)
	if err != nil {
		t.fail(fmt.Errorf("translate: Workload %s/%s: spec.inbound.app %q: %w", w.Metadata.Namespace, w.Metadata.Name, in.App, err))
		return
	}
	port, _ := strconv.Atoi(portStr)
	c := &clusterv3.Cluster{
		Name:           cname,
		LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: cname, Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{lbEndpoint(host, uint32(port), 1)}}}},
	}
	if _, err := netip.ParseAddr(host); err == nil {
		c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}
	} else {
		c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS}
	}
	if protocol := svc.AppProtocol(); protocol != model.ProtocolTCP {
		c.TypedExtensionProtocolOptions = map[string]*anypb.Any{HTTPProtocolOptionsKey: t.typed(explicitHTTP(protocol, nil, nil))}
	}
	r.Clusters = append(r.Clusters, c)
}

func (t *translator) rds(name string) *hcmv3.HttpConnectionManager_Rds {
	return &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{ConfigSource: ads(), RouteConfigName: name}}
}

// hcm is an HTTP connection manager whose http_filters are filters (nil:
// none) followed by the router.
func (t *translator) hcm(statPrefix string, routes any, h2 *corev3.Http2ProtocolOptions, filters []*hcmv3.HttpFilter) *hcmv3.HttpConnectionManager {
	h := &hcmv3.HttpConnectionManager{
		StatPrefix:           statPrefix,
		CodecType:            hcmv3.HttpConnectionManager_AUTO,
		Http2ProtocolOptions: h2,
		AccessLog:            t.accessLogs(),
		HttpFilters: append(slices.Clip(filters), &hcmv3.HttpFilter{
			Name:       RouterFilterName,
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: t.typed(&routerv3.Router{})},
		}),
	}
	switch r := routes.(type) {
	case *hcmv3.HttpConnectionManager_Rds:
		h.RouteSpecifier = r
	case *hcmv3.HttpConnectionManager_RouteConfig:
		h.RouteSpecifier = r
	}
	return h
}

// statPrefix turns a resource name into a stat prefix without the '|' and
// ':' that stat names reserve (and an IPv6 address's brackets).
func statPrefix(name string) string {
	return strings.NewReplacer("|", "_", ":", "_", ".", "_", "[", "", "]", "").Replace(name)
}

func (t *translator) httpListener(name string, port uint32, routes any, h2 *corev3.Http2ProtocolOptions, filters []*hcmv3.HttpFilter) *listenerv3.Listener {
	h := t.hcm(statPrefix(name), routes, h2, filters)
	if t.cur != nil {
		h.Tracing = t.tracing(t.cur)
	}
	return &listenerv3.Listener{
		Name:    name,
		Address: socketAddress(LocalAddress, port),
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name:       HCMFilterName,
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: t.typed(h)},
		}}}},
	}
}

func (t *translator) tcpListener(name string, port uint32, cluster string) *listenerv3.Listener {
	return &listenerv3.Listener{
		Name:    name,
		Address: socketAddress(LocalAddress, port),
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name: TCPProxyFilterName,
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: t.typed(&tcpproxyv3.TcpProxy{
				StatPrefix:       statPrefix(name),
				ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: cluster},
			})},
		}}}},
	}
}

func (t *translator) routeConfig(name, vhost string, route *routev3.Route) *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{
		Name: name,
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    vhost,
			Domains: []string{"*"},
			Routes:  []*routev3.Route{route},
		}},
	}
}

// route sends every request to cluster. The timeout is the policy's, or 0
// (none) when unset: Envoy's 15 s default would cut long-lived gRPC
// streams. A sidecar's route also enforces a gRPC request's grpc-timeout
// (max_stream_duration.grpc_timeout_header_max), capped at the policy's
// timeout, so a gRPC call ends at the earlier of its deadline and the
// policy's timeout, the time a call without grpc-timeout still gets.
// grpcOnly (proxyless grpc-go, which enforces its own deadlines) keeps
// only the retry conditions grpc-go honours and sets neither.
func (t *translator) route(cluster string, p model.Policy, grpcOnly bool) *routev3.Route {
	action := &routev3.RouteAction{
		ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster},
	}
	if !grpcOnly {
		var timeout time.Duration
		if p.Timeout != nil {
			timeout = p.Timeout.D()
		}
		action.Timeout = durationpb.New(timeout)
		action.MaxStreamDuration = &routev3.RouteAction_MaxStreamDuration{GrpcTimeoutHeaderMax: durationpb.New(timeout)}
	}
	if r := p.Retries; r != nil && r.Attempts != nil && *r.Attempts > 0 {
		on := r.RetryOn
		if grpcOnly {
			on = slices.DeleteFunc(slices.Clone(on), func(c string) bool { return !model.GRPCRetryOn(c) })
		}
		retryOn := strings.Join(on, ",")
		if len(r.RetryOn) == 0 && !grpcOnly {
			retryOn = defaultRetryOn
		}
		if retryOn != "" {
			action.RetryPolicy = &routev3.RetryPolicy{
				RetryOn:    retryOn,
				NumRetries: wrapperspb.UInt32(*r.Attempts),
			}
			if r.PerTryTimeout != nil && !grpcOnly {
				action.RetryPolicy.PerTryTimeout = durationpb.New(r.PerTryTimeout.D())
			}
		}
	}
	return &routev3.Route{
		Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		Action: &routev3.Route_Route{Route: action},
	}
}

// outboundCluster is a sidecar's EDS cluster to svc carrying the effective
// policy. It speaks the sidecar protocol when workloads serve svc (their
// inbound listeners are the endpoints) and the service's own protocol
// otherwise.
func (t *translator) outboundCluster(name string, svc *model.Service) *clusterv3.Cluster {
	p := t.policy(svc)
	c := t.edsCluster(name, p)
	c.LbPolicy = lbPolicy(p.LoadBalancer, false)
	protocol := svc.AppProtocol()
	if len(t.m.WorkloadsOf(svc)) > 0 {
		protocol = svc.SidecarProtocol()
	}
	switch protocol {
	case model.ProtocolTCP:
	case model.UpstreamHTTP3:
		c.TypedExtensionProtocolOptions = map[string]*anypb.Any{HTTPProtocolOptionsKey: t.typed(autoHTTP3(p.HTTP2, p.ConnectionPool))}
	default:
		c.TypedExtensionProtocolOptions = map[string]*anypb.Any{HTTPProtocolOptionsKey: t.typed(explicitHTTP(protocol, p.HTTP2, p.ConnectionPool))}
	}
	if cp := p.ConnectionPool; cp != nil || (p.Retries != nil && p.Retries.BudgetPercent != nil) {
		th := &clusterv3.CircuitBreakers_Thresholds{Priority: corev3.RoutingPriority_DEFAULT}
		if cp != nil {
			th.MaxConnections = u32(cp.MaxConnections)
			th.MaxPendingRequests = u32(cp.MaxPendingRequests)
			th.MaxRequests = u32(cp.MaxRequests)
		}
		if p.Retries != nil && p.Retries.BudgetPercent != nil {
			th.RetryBudget = &clusterv3.CircuitBreakers_Thresholds_RetryBudget{BudgetPercent: &typev3.Percent{Value: *p.Retries.BudgetPercent}}
		}
		if !proto.Equal(th, &clusterv3.CircuitBreakers_Thresholds{}) {
			c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{th}}
		}
	}
	return c
}

// edsCluster is an EDS cluster fed over ADS with the policy's connect
// timeout and outlier detection.
func (t *translator) edsCluster(name string, p model.Policy) *clusterv3.Cluster {
	c := &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: ads(), ServiceName: name},
	}
	if cp := p.ConnectionPool; cp != nil && cp.ConnectTimeout != nil {
		c.ConnectTimeout = durationpb.New(cp.ConnectTimeout.D())
	}
	if od := p.OutlierDetection; od != nil {
		c.OutlierDetection = &clusterv3.OutlierDetection{
			Consecutive_5Xx:  u32(od.Consecutive5xx),
			Interval:         dur(od.Interval),
			BaseEjectionTime: dur(od.BaseEjectionTime),
			// Envoy's max_ejection_percent (10 %) alone never allows
			// the first ejection in a cluster of fewer than 10 hosts,
			// the usual size of a mesh Service: eject one regardless,
			// as grpc-go's xDS outlier detection does.
			AlwaysEjectOneHost: wrapperspb.Bool(true),
		}
	}
	return c
}

// explicitHTTP is HttpProtocolOptions with an explicit protocol ("http2" or
// "http1") and, for HTTP/2, the policy's settings.
func explicitHTTP(protocol string, h2 *model.HTTP2, cp *model.ConnectionPool) *upstreamhttpv3.HttpProtocolOptions {
	o := &upstreamhttpv3.HttpProtocolOptions{}
	explicit := &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig{}
	if protocol == "http1" {
		explicit.ProtocolConfig = &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{HttpProtocolOptions: &corev3.Http1ProtocolOptions{}}
	} else {
		opts := &corev3.Http2ProtocolOptions{}
		if h2 != nil {
			opts.MaxConcurrentStreams = u32(h2.MaxConcurrentStreams)
			opts.InitialStreamWindowSize = u32(h2.InitialStreamWindowSize)
			opts.InitialConnectionWindowSize = u32(h2.InitialConnectionWindowSize)
			if k := h2.Keepalive; k != nil && k.Interval != nil && k.Timeout != nil {
				opts.ConnectionKeepalive = &corev3.KeepaliveSettings{Interval: dur(k.Interval), Timeout: dur(k.Timeout)}
			}
		}
		explicit.ProtocolConfig = &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: opts}
	}
	o.UpstreamProtocolOptions = &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: explicit}
	if cp != nil {
		common := &corev3.HttpProtocolOptions{
			IdleTimeout:              dur(cp.IdleTimeout),
			MaxConnectionDuration:    dur(cp.MaxConnectionDuration),
			MaxRequestsPerConnection: u32(cp.MaxRequestsPerConnection),
		}
		if !proto.Equal(common, &corev3.HttpProtocolOptions{}) {
			o.CommonHttpProtocolOptions = common
		}
	}
	return o
}

// lbPolicy maps the policy's load balancer to Envoy's; proxyless maps what
// grpc-go does not accept (random) to ROUND_ROBIN.
func lbPolicy(lb string, proxyless bool) clusterv3.Cluster_LbPolicy {
	switch lb {
	case model.LBLeastRequest:
		return clusterv3.Cluster_LEAST_REQUEST
	case model.LBRandom:
		if !proxyless {
			return clusterv3.Cluster_RANDOM
		}
	}
	return clusterv3.Cluster_ROUND_ROBIN
}

// assignment is svc's endpoints for cluster: its workloads' inbound
// listeners when workloads serve it (sidecar to sidecar), else its own
// spec.endpoints. Endpoints are grouped into one locality per zone, each
// with a load_balancing_weight (grpc-go ignores a locality without one).
func (t *translator) assignment(cluster string, svc *model.Service) *endpointv3.ClusterLoadAssignment {
	type ep struct {
		addr   string
		port   uint32
		weight uint32
	}
	zones := make(map[string][]ep)
	if ws := t.m.WorkloadsOf(svc); len(ws) > 0 {
		for _, w := range ws {
			addr := LocalAddress
			if w.Spec.Address != "" {
				addr = w.Spec.Address
			}
			zones[""] = append(zones[""], ep{addr, w.Spec.Inbound.Port, 1})
		}
	} else {
		for _, e := range svc.Spec.Endpoints {
			weight := uint32(1)
			if e.Weight != nil {
				weight = *e.Weight
			}
			zones[e.Zone] = append(zones[e.Zone], ep{e.Address, e.Port, weight})
		}
	}
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: cluster}
	for _, zone := range slices.Sorted(maps.Keys(zones)) {
		// Every locality carries a Locality, even with an empty zone:
		// grpc-go NACKs an assignment whose locality has no ID.
		l := &endpointv3.LocalityLbEndpoints{Locality: &corev3.Locality{Zone: zone}}
		var total uint64
		for _, e := range zones[zone] {
			l.LbEndpoints = append(l.LbEndpoints, lbEndpoint(e.addr, e.port, e.weight))
			total += uint64(e.weight)
		}
		// The locality's weight is its endpoints' total, so that traffic
		// splits across zones as the endpoint weights say.
		l.LoadBalancingWeight = wrapperspb.UInt32(uint32(min(total, 1<<32-1)))
		cla.Endpoints = append(cla.Endpoints, l)
	}
	return cla
}

// proxyless builds the API listeners, routes, clusters and endpoints for
// grpc-go xDS clients.
func (t *translator) proxyless() *Resources {
	r := &Resources{}
	for _, svc := range t.m.Services {
		if svc.Spec.Protocol == model.ProtocolTCP {
			continue
		}
		name, cname := svc.HostPort(), ProxylessClusterName(svc)
		p := t.m.EffectivePolicy(svc)
		r.Listeners = append(r.Listeners, &listenerv3.Listener{
			Name:        name,
			ApiListener: &listenerv3.ApiListener{ApiListener: t.typed(t.hcm(statPrefix(name), t.rds(name), nil, nil))},
		})
		r.Routes = append(r.Routes, t.routeConfig(name, svc.Key(), t.route(cname, p, true)))
		c := t.edsCluster(cname, p)
		c.LbPolicy = lbPolicy(p.LoadBalancer, true)
		if cp := p.ConnectionPool; cp != nil && cp.MaxRequests != nil {
			// grpc-go honours max_requests only among the circuit breakers.
			c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
				Priority: corev3.RoutingPriority_DEFAULT, MaxRequests: u32(cp.MaxRequests),
			}}}
		}
		r.Clusters = append(r.Clusters, c)
		r.Endpoints = append(r.Endpoints, t.assignment(cname, svc))
	}
	return r
}

func ads() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		ResourceApiVersion:    corev3.ApiVersion_V3,
	}
}

func socketAddress(host string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       host,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

func lbEndpoint(host string, port, weight uint32) *endpointv3.LbEndpoint {
	return &endpointv3.LbEndpoint{
		HostIdentifier:      &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: socketAddress(host, port)}},
		LoadBalancingWeight: wrapperspb.UInt32(weight),
	}
}

func u32(v *uint32) *wrapperspb.UInt32Value {
	if v == nil {
		return nil
	}
	return wrapperspb.UInt32(*v)
}

func dur(d *model.Duration) *durationpb.Duration {
	if d == nil {
		return nil
	}
	return durationpb.New(d.D())
}

func (r *Resources) sort() {
	for _, s := range r.all() {
		slices.SortFunc(*s, func(a, b types.Resource) int { return strings.Compare(name(a), name(b)) })
	}
}

func (r *Resources) all() []*[]types.Resource {
	return []*[]types.Resource{&r.Listeners, &r.Routes, &r.Clusters, &r.Endpoints, &r.Secrets}
}

// name returns a resource's xDS name.
func name(r types.Resource) string {
	switch r := r.(type) {
	case *endpointv3.ClusterLoadAssignment:
		return r.GetClusterName()
	case interface{ GetName() string }:
		return r.GetName()
	}
	return ""
}

// version hashes every resource in a fixed order: nodes by ID, then the
// proxyless set, each type in Resources field order, each resource by name.
func version(res *Result) (string, error) {
	h := sha256.New()
	opts := proto.MarshalOptions{Deterministic: true}
	write := func(label string, r *Resources) error {
		fmt.Fprintf(h, "%s\x00", label)
		for i, s := range r.all() {
			fmt.Fprintf(h, "%d\x00%d\x00", i, len(*s))
			for _, msg := range *s {
				b, err := opts.Marshal(msg)
				if err != nil {
					return fmt.Errorf("translate: version of %s %q: %w", msg.ProtoReflect().Descriptor().Name(), name(msg), err)
				}
				fmt.Fprintf(h, "%d\x00", len(b))
				h.Write(b)
			}
		}
		return nil
	}
	for _, id := range slices.Sorted(maps.Keys(res.Nodes)) {
		if err := write("node "+id, res.Nodes[id]); err != nil {
			return "", err
		}
	}
	if err := write("proxyless", res.Proxyless); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)[:8]), nil
}
