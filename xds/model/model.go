// Package model is meshd's mesh file: the Kubernetes-style documents
// (apiVersion meshd.dev/v1alpha1) that describe a mesh to the control plane,
// their strict parsing, their validation and the tuning warnings derived from
// them.
//
// Parse and Load accept a file only when every document decodes without an
// unknown field or a mistyped value, every value is in range and every
// reference resolves; otherwise they return an *Error listing every problem as
// "FILE: document N (Kind ns/name): field.path: reason". A *Mesh returned by
// them is complete and consistent: references are resolved, defaults are
// filled in, and it is never modified afterwards, so it may be shared.
package model

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// APIVersion is the only apiVersion the mesh file accepts.
const APIVersion = "meshd.dev/v1alpha1"

// DefaultNamespace is the namespace of a document whose metadata has none.
const DefaultNamespace = "default"

// DefaultTrustDomain is the trust domain when the file has no Mesh document
// or the Mesh document leaves spec.trustDomain empty.
const DefaultTrustDomain = "cluster.local"

// Kinds of documents.
const (
	KindMesh          = "Mesh"
	KindService       = "Service"
	KindWorkload      = "Workload"
	KindTrafficPolicy = "TrafficPolicy"
	// KindAuthorizationPolicy lists the SPIFFE IDs allowed to call a Service.
	KindAuthorizationPolicy = "AuthorizationPolicy"
)

// mTLS modes between sidecars (Mesh.spec.mtls). Parse accepts them in any
// case and stores the upper-case form.
const (
	// MTLSStrict: inbound listeners accept only mTLS with a client SVID of
	// the mesh's trust domain; outbound clusters to sidecars use mTLS and
	// verify the server's SPIFFE ID. The default.
	MTLSStrict = "STRICT"
	// MTLSPermissive: inbound listeners accept mTLS and plaintext (told
	// apart by tls_inspector); outbound clusters to sidecars use mTLS.
	MTLSPermissive = "PERMISSIVE"
	// MTLSDisable: plaintext between sidecars.
	MTLSDisable = "DISABLE"
)

// Service protocols (Service.spec.protocol).
const (
	ProtocolGRPC  = "grpc"
	ProtocolHTTP  = "http"
	ProtocolHTTP2 = "http2"
	ProtocolTCP   = "tcp"
)

// Load balancers (spec.loadBalancer).
const (
	LBRoundRobin   = "round_robin"
	LBLeastRequest = "least_request"
	LBRandom       = "random"
)

// Mesh is a parsed and validated mesh file. Slices are sorted by namespace
// then name; the value is immutable once returned by Parse.
type Mesh struct {
	// Metadata is the Mesh document's metadata ("default"/"default" when the
	// file has no Mesh document).
	Metadata Metadata
	// Spec is the Mesh document's spec with defaults applied.
	Spec            MeshSpec
	Services        []*Service
	Workloads       []*Workload
	TrafficPolicies []*TrafficPolicy
	// AuthorizationPolicies are sorted like the other kinds; a Service may
	// be the target of several, which then allow the union of their IDs.
	AuthorizationPolicies []*AuthorizationPolicy
	// RateLimitPolicies are sorted like the other kinds; a Service is the
	// target of at most one.
	RateLimitPolicies []*RateLimitPolicy
	// Source is the file name the mesh was parsed from, as given to Parse.
	Source string

	meshOrigin origin // zero when the file has no Mesh document
	services   map[string]*Service
	workloads  map[string]*Workload
	policies   map[string]*TrafficPolicy // by target Service key
	authz      map[string][]*AuthorizationPolicy
	rateLimits map[string]*RateLimitPolicy // by target Service key
}

// Metadata names a document. Namespace is never empty after parsing.
type Metadata struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace,omitempty"`
}

// MeshSpec is the mesh-wide configuration.
type MeshSpec struct {
	// TrustDomain is the SPIFFE trust domain of every identity in the mesh
	// (DefaultTrustDomain when empty).
	TrustDomain string `json:"trustDomain,omitempty"`
	// Defaults apply to every destination Service; a TrafficPolicy targeting
	// a Service overrides them field by field.
	Defaults *Policy `json:"defaults,omitempty"`
	// MTLS is the mTLS mode between sidecars: STRICT (the default),
	// PERMISSIVE or DISABLE; lower case is accepted. After parsing it is
	// always one of MTLSStrict, MTLSPermissive, MTLSDisable.
	MTLS string `json:"mtls,omitempty"`
	// Tracing, when set, makes every sidecar trace requests and export
	// the spans to a collector (tracing.go).
	Tracing *Tracing `json:"tracing,omitempty"`
	// AccessLog, when set, is written by every sidecar's HTTP connection
	// managers (see AccessLogSpec).
	AccessLog *AccessLogSpec `json:"accessLog,omitempty"`
	// OutboundTrafficPolicy is what a captured outbound connection to no
	// Service's address meets: OutboundAllowAny (the default) forwards it
	// to its original destination, OutboundRegistryOnly closes it (Istio's
	// ALLOW_ANY and REGISTRY_ONLY, which are accepted too). After parsing
	// it is always one of the two constants.
	OutboundTrafficPolicy string `json:"outboundTrafficPolicy,omitempty"`
}

// Values of MeshSpec.OutboundTrafficPolicy.
const (
	// OutboundAllowAny: virtualOutbound's own chain is a tcp_proxy to the
	// ORIGINAL_DST PassthroughCluster.
	OutboundAllowAny = "allowAny"
	// OutboundRegistryOnly: virtualOutbound's own chain is a tcp_proxy to
	// BlackHoleCluster, which has no endpoints.
	OutboundRegistryOnly = "registryOnly"
)

// Service is a destination: what its servers speak and where they are.
type Service struct {
	Metadata Metadata
	Spec     ServiceSpec
	origin   origin
}

// ServiceSpec is a Service document's spec.
type ServiceSpec struct {
	// Protocol is what the service's applications speak: grpc, http, http2
	// or tcp.
	Protocol string `json:"protocol"`
	// Port is the service's port, 1..65535; proxyless clients dial
	// "<name>.<namespace>:<port>".
	Port uint32 `json:"port"`
	// Endpoints are the service's servers in file mode, used when no
	// Workload serves the service (an external or sidecar-less service).
	Endpoints []Endpoint `json:"endpoints,omitempty"`
	// UpstreamProtocol is the protocol between sidecars: "http2" (the
	// default for grpc and http2), "http1" (the default for http) or
	// "http3" (QUIC, for grpc and http2; falls back to HTTP/2 over TCP to
	// an endpoint whose UDP is blocked). It must be empty for tcp.
	UpstreamProtocol string `json:"upstreamProtocol,omitempty"`
	// ServerLimits declares what the service's servers enforce; validation
	// warns about client settings that conflict with them.
	ServerLimits *ServerLimits `json:"serverLimits,omitempty"`
	// Addresses are virtual IPs that clients dial on Port (a Kubernetes
	// Service's cluster IPs, which the Kubernetes source sets). A
	// Workload with spec.capture routes a captured connection whose
	// original destination is one of them, on Port, to this Service.
	Addresses []string `json:"addresses,omitempty"`
}

// Endpoint is one server of a Service in file mode.
type Endpoint struct {
	// Address is an IP address.
	Address string `json:"address"`
	Port    uint32 `json:"port"`
	// Weight is the endpoint's load-balancing weight, 1 when unset.
	Weight *uint32 `json:"weight,omitempty"`
	// Zone groups endpoints into localities.
	Zone string `json:"zone,omitempty"`
}

// ServerLimits is what a Service's servers enforce on their clients.
type ServerLimits struct {
	// MinPingInterval is the shortest interval between client PINGs the
	// server tolerates before GOAWAY ENHANCE_YOUR_CALM too_many_pings
	// (grpc-go's keepalive.EnforcementPolicy.MinTime).
	MinPingInterval *Duration `json:"minPingInterval,omitempty"`
	// MaxConcurrentStreams is the server's SETTINGS_MAX_CONCURRENT_STREAMS.
	MaxConcurrentStreams *uint32 `json:"maxConcurrentStreams,omitempty"`
}

// Workload is one sidecar in file mode; its xDS node ID is NodeID().
type Workload struct {
	Metadata Metadata
	Spec     WorkloadSpec
	// ServiceRef is the Service named by Spec.Service, nil when the
	// workload serves none.
	ServiceRef *Service
	// OutboundRefs[i] is the Service named by Spec.Outbound[i].Service.
	OutboundRefs []*Service
	origin       origin
}

// NodeID returns the workload's xDS node ID, "<name>.<namespace>".
func (w *Workload) NodeID() string { return w.Metadata.Name + "." + w.Metadata.Namespace }

// WorkloadSpec is a Workload document's spec.
type WorkloadSpec struct {
	// ServiceAccount names the workload's identity
	// (spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>).
	ServiceAccount string `json:"serviceAccount"`
	// Service is the Service the workload serves, "name.namespace" or
	// "name" (the workload's namespace). Required with Inbound.
	Service string `json:"service,omitempty"`
	// Inbound is where the sidecar receives the service's traffic.
	Inbound *Inbound `json:"inbound,omitempty"`
	// Outbound lists the services the application calls through the
	// sidecar, each on its own local port.
	Outbound []Outbound `json:"outbound,omitempty"`
	// Admin is the sidecar's admin address, host:port.
	Admin string `json:"admin,omitempty"`
	// Address is the IP of the workload's own network namespace (a pod
	// IP on Kubernetes, where the control plane's Kubernetes source sets
	// it): the inbound listener binds Address:inbound.port and other
	// sidecars reach the workload there; its ports then clash with no other
	// workload's. Empty in file mode: every workload shares 127.0.0.1.
	Address string `json:"address,omitempty"`
	// Capture, when set, says that traffic capture (`meshd capture`)
	// redirects the application's outbound TCP to the sidecar (the
	// Kubernetes source sets it for injected pods): the sidecar gets the
	// capture listener on 127.0.0.1:capture.outboundPort, which hands each
	// connection to the Service whose spec.addresses and spec.port are its
	// original destination.
	Capture *Capture `json:"capture,omitempty"`
}

// Capture is a workload's traffic-capture side.
type Capture struct {
	// OutboundPort is the port capture redirects outbound TCP to.
	OutboundPort uint32 `json:"outboundPort"`
}

// Inbound is a workload's inbound side.
type Inbound struct {
	// Port is the port the sidecar's inbound listener binds on 127.0.0.1.
	Port uint32 `json:"port"`
	// App is the local application's address, host:port.
	App string `json:"app"`
}

// Outbound is one service a workload calls.
type Outbound struct {
	// Service is "name.namespace" or "name" (the workload's namespace).
	Service string `json:"service"`
	// Port is the local port, on 127.0.0.1, the application calls.
	Port uint32 `json:"port"`
}

// TrafficPolicy sets how clients reach one Service.
type TrafficPolicy struct {
	Metadata Metadata
	Spec     TrafficPolicySpec
	// Target is the Service named by Spec.TargetRef.
	Target *Service
	origin origin
}

// TrafficPolicySpec is a TrafficPolicy document's spec: a target and the
// Policy fields, inline.
type TrafficPolicySpec struct {
	TargetRef TargetRef `json:"targetRef"`
	Policy
}

// TargetRef names the Service a TrafficPolicy applies to.
type TargetRef struct {
	// Kind must be "Service".
	Kind string `json:"kind"`
	Name string `json:"name"`
	// Namespace defaults to the TrafficPolicy's namespace.
	Namespace string `json:"namespace,omitempty"`
}

// AuthorizationPolicy allows the listed SPIFFE IDs to call one Service
// through its workloads' inbound listeners; every other caller is denied
// (403, gRPC PERMISSION_DENIED). A Service with no AuthorizationPolicy
// accepts every caller that passes the mTLS mode.
type AuthorizationPolicy struct {
	Metadata Metadata
	Spec     AuthorizationPolicySpec
	// Target is the Service named by Spec.TargetRef.
	Target *Service
	origin origin
}

// AuthorizationPolicySpec is an AuthorizationPolicy document's spec.
type AuthorizationPolicySpec struct {
	TargetRef TargetRef `json:"targetRef"`
	// Allow lists the callers: SPIFFE IDs ("spiffe://td/ns/NS/sa/SA") or
	// patterns whose path segments may be "*" (mtls.AuthorizePattern: a
	// last "*" matches one or more segments, any other exactly one), such
	// as "spiffe://td/ns/NS/*" or "spiffe://td/ns/NS/sa/*". At least one
	// entry; each in the mesh's trust domain.
	Allow []string `json:"allow"`
}

// Policy is the client-side traffic settings for one destination. Every field
// is optional; an unset field keeps the value from the mesh defaults, or
// Envoy's default when the defaults leave it unset too (Timeout excepted).
// docs/mesh.md tables each field's rules and the Envoy field it sets.
type Policy struct {
	// HTTP2 is the HTTP/2 settings between sidecars (and, for
	// maxConcurrentStreams and the windows, the Service's inbound side).
	HTTP2 *HTTP2 `json:"http2,omitempty"`
	// ConnectionPool is the cluster's circuit-breaker limits, connection
	// lifetimes and connect timeout.
	ConnectionPool *ConnectionPool `json:"connectionPool,omitempty"`
	// Retries is the route's retry policy.
	Retries *Retries `json:"retries,omitempty"`
	// Timeout is the route's timeout and its
	// max_stream_duration.grpc_timeout_header_max. Unset it is 0 (none),
	// not Envoy's 15 s, which would cut long-lived streams.
	Timeout *Duration `json:"timeout,omitempty"`
	// OutlierDetection is the cluster's consecutive-5xx ejection.
	OutlierDetection *OutlierDetection `json:"outlierDetection,omitempty"`
	// LoadBalancer is round_robin, least_request or random.
	LoadBalancer string `json:"loadBalancer,omitempty"`
	// AutoTune lets the control plane adjust settings from what the
	// sidecars observe (xds/autotune).
	AutoTune *AutoTune `json:"autoTune,omitempty"`
}

// AutoTune opts a Service's clients into closed-loop tuning: the control
// plane derives settings from the sidecars' observations of the Service's
// endpoints and pushes them to every sidecar that calls it. Learned values
// are an input to translation; the mesh file is never rewritten. Each
// bound caps what the control plane may choose.
type AutoTune struct {
	// Keepalive raises http2.keepalive.interval to at least the minimum
	// ping interval the endpoints enforce (learned from GOAWAY
	// too_many_pings) and to 3 × timeout + 2 × p99 PING RTT. It has an
	// effect only where the effective policy sets http2.keepalive.
	Keepalive *bool `json:"keepalive,omitempty"`
	// ConnectionPool raises connectionPool.maxConnections to
	// ceil(peak concurrent streams / the peer's
	// SETTINGS_MAX_CONCURRENT_STREAMS) + headroom.
	ConnectionPool *bool `json:"connectionPool,omitempty"`
	// Windows sets http2.initialStreamWindowSize and
	// initialConnectionWindowSize from bandwidth × RTT.
	Windows *bool `json:"windows,omitempty"`
	// MaxKeepaliveInterval bounds a learned keepalive interval (default
	// 5m).
	MaxKeepaliveInterval *Duration `json:"maxKeepaliveInterval,omitempty"`
	// MaxConnections bounds a learned maxConnections (default 64).
	MaxConnections *uint32 `json:"maxConnections,omitempty"`
	// WindowMemoryBudget bounds a learned window in bytes (default 16 MiB):
	// what one connection may buffer for the Service.
	WindowMemoryBudget *uint32 `json:"windowMemoryBudget,omitempty"`
}

// HTTP2 is the client's HTTP/2 settings (Envoy Http2ProtocolOptions).
type HTTP2 struct {
	// MaxConcurrentStreams is the cluster's max_concurrent_streams, also
	// advertised by the Service's inbound listeners; 1..2³¹−1.
	MaxConcurrentStreams *uint32 `json:"maxConcurrentStreams,omitempty"`
	// InitialStreamWindowSize and InitialConnectionWindowSize are
	// initial_stream_window_size and initial_connection_window_size on
	// both sides of the hop; 65535..2³¹−1.
	InitialStreamWindowSize     *uint32 `json:"initialStreamWindowSize,omitempty"`
	InitialConnectionWindowSize *uint32 `json:"initialConnectionWindowSize,omitempty"`
	// Keepalive is connection_keepalive.
	Keepalive *Keepalive `json:"keepalive,omitempty"`
}

// Keepalive is HTTP/2 PING keepalive (Envoy connection_keepalive): a PING
// every Interval, the connection closed when one is not answered in Timeout.
// The two go together; Timeout must be shorter than Interval.
type Keepalive struct {
	// Interval is connection_keepalive.interval, at least 1ms.
	Interval *Duration `json:"interval,omitempty"`
	// Timeout is connection_keepalive.timeout, at least 1ms.
	Timeout *Duration `json:"timeout,omitempty"`
}

// ConnectionPool is the client's pool limits and connection lifetimes.
type ConnectionPool struct {
	// MaxConnections, MaxPendingRequests and MaxRequests are the
	// cluster's circuit_breakers thresholds of those names; MaxRequests
	// reaches proxyless gRPC clients too.
	MaxConnections     *uint32 `json:"maxConnections,omitempty"`
	MaxPendingRequests *uint32 `json:"maxPendingRequests,omitempty"`
	MaxRequests        *uint32 `json:"maxRequests,omitempty"`
	// IdleTimeout (0: never), MaxConnectionDuration and
	// MaxRequestsPerConnection are the upstream
	// common_http_protocol_options of those names.
	IdleTimeout              *Duration `json:"idleTimeout,omitempty"`
	MaxConnectionDuration    *Duration `json:"maxConnectionDuration,omitempty"`
	MaxRequestsPerConnection *uint32   `json:"maxRequestsPerConnection,omitempty"`
	// ConnectTimeout is the cluster's connect_timeout, at least 1ms.
	ConnectTimeout *Duration `json:"connectTimeout,omitempty"`
}

// Retries is the route's retry policy.
type Retries struct {
	// Attempts is the number of retries (Envoy num_retries), 0..MaxAttempts.
	Attempts *uint32 `json:"attempts,omitempty"`
	// RetryOn are Envoy retry_on conditions (5xx, reset, refused-stream,
	// unavailable, ...).
	RetryOn []string `json:"retryOn,omitempty"`
	// PerTryTimeout is retry_policy.per_try_timeout, at least 1ms.
	PerTryTimeout *Duration `json:"perTryTimeout,omitempty"`
	// BudgetPercent caps active retries at this percentage of active
	// requests (Envoy retry_budget.budget_percent), in (0, 100].
	BudgetPercent *float64 `json:"budgetPercent,omitempty"`
}

// OutlierDetection ejects endpoints that fail consecutively (the cluster's
// outlier_detection, with always_eject_one_host so that a Service of fewer
// than 10 endpoints can eject one).
type OutlierDetection struct {
	// Consecutive5xx is consecutive_5xx, at least 1.
	Consecutive5xx *uint32 `json:"consecutive5xx,omitempty"`
	// Interval is the ejection sweep's interval, at least 1ms.
	Interval *Duration `json:"interval,omitempty"`
	// BaseEjectionTime is base_ejection_time, at least 1ms.
	BaseEjectionTime *Duration `json:"baseEjectionTime,omitempty"`
}

// Duration is a duration written as a Go duration string ("1s", "500ms",
// "1m30s"), the subset of Envoy's JSON durations people write by hand.
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// String returns the Go form, e.g. "1m30s".
func (d Duration) String() string { return time.Duration(d).String() }

// MarshalJSON encodes d as its string form.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON accepts a duration string; anything else is an error.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("expected a duration string such as \"1s\": %w", err)
	}
	v, err := parseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

func parseDuration(s string) (time.Duration, error) {
	v, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q (want e.g. \"1s\", \"500ms\")", s)
	}
	return v, nil
}

// Key returns "name.namespace", the form Workload outbound entries use.
func (s *Service) Key() string { return s.Metadata.Name + "." + s.Metadata.Namespace }

// HostPort returns "<name>.<namespace>:<port>", the proxyless target and
// API listener name.
func (s *Service) HostPort() string { return s.Key() + ":" + strconv.Itoa(int(s.Spec.Port)) }

// UpstreamHTTP3 is the upstreamProtocol of HTTP/3 between sidecars.
const UpstreamHTTP3 = "http3"

// SidecarProtocol returns the protocol sidecars speak to each other for this
// service: "http2", "http1", "http3" or "tcp".
func (s *Service) SidecarProtocol() string {
	switch {
	case s.Spec.Protocol == ProtocolTCP:
		return ProtocolTCP
	case s.Spec.UpstreamProtocol != "":
		return s.Spec.UpstreamProtocol
	case s.Spec.Protocol == ProtocolHTTP:
		return "http1"
	default:
		return "http2"
	}
}

// AppProtocol returns the protocol the service's applications speak on the
// wire: "http2" (grpc, http2), "http1" (http) or "tcp".
func (s *Service) AppProtocol() string {
	switch s.Spec.Protocol {
	case ProtocolTCP:
		return ProtocolTCP
	case ProtocolHTTP:
		return "http1"
	default:
		return "http2"
	}
}

// Service returns the Service with key "name.namespace", or nil.
func (m *Mesh) Service(key string) *Service { return m.services[key] }

// Workload returns the Workload with node ID "name.namespace", or nil.
func (m *Mesh) Workload(nodeID string) *Workload { return m.workloads[nodeID] }

// PolicyFor returns the TrafficPolicy targeting s, or nil.
func (m *Mesh) PolicyFor(s *Service) *TrafficPolicy { return m.policies[s.Key()] }

// AuthorizationPoliciesFor returns the AuthorizationPolicies targeting s,
// in m.AuthorizationPolicies order; none means every caller is allowed.
func (m *Mesh) AuthorizationPoliciesFor(s *Service) []*AuthorizationPolicy {
	return m.authz[s.Key()]
}

// WorkloadsOf returns the workloads serving s, in m.Workloads order.
func (m *Mesh) WorkloadsOf(s *Service) []*Workload {
	var ws []*Workload
	for _, w := range m.Workloads {
		if w.ServiceRef == s {
			ws = append(ws, w)
		}
	}
	return ws
}

// SPIFFEID returns the workload's SPIFFE ID in m's trust domain.
func (m *Mesh) SPIFFEID(w *Workload) string {
	return "spiffe://" + m.Spec.TrustDomain + "/ns/" + w.Metadata.Namespace + "/sa/" + w.Spec.ServiceAccount
}

// resolveRef turns "name.namespace" or "name" (in ns) into a Service key.
func resolveRef(ref, ns string) string {
	if strings.Contains(ref, ".") {
		return ref
	}
	return ref + "." + ns
}
