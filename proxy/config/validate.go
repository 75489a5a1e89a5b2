package config

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	quicv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/quic/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"meshd.dev/meshd/proxy/overload"
	"meshd.dev/meshd/proxy/tlscontext"
)

// FieldError is one problem in a configuration: the path of the field, in
// proto field names from the root of the validated message
// (static_resources.clusters[0].load_assignment), and why it is rejected.
type FieldError struct {
	Path   string
	Reason string
}

// Error returns "path: reason" (just the reason for a problem with the
// document as a whole).
func (e *FieldError) Error() string {
	if e.Path == "" {
		return e.Reason
	}
	return e.Path + ": " + e.Reason
}

// ValidationError reports every problem found in one configuration input.
// It is never empty.
type ValidationError struct {
	// Source names the input: `bootstrap examples/sidecar.yaml`,
	// `listener "ingress"`.
	Source   string
	Problems []*FieldError
}

// Error returns the source and the problems, one per line.
func (e *ValidationError) Error() string {
	var b strings.Builder
	b.WriteString(e.Source)
	if len(e.Problems) == 1 {
		b.WriteString(": invalid: ")
		b.WriteString(e.Problems[0].Error())
		return b.String()
	}
	fmt.Fprintf(&b, ": %d problems:", len(e.Problems))
	for _, p := range e.Problems {
		b.WriteString("\n  ")
		b.WriteString(p.Error())
	}
	return b.String()
}

// Unwrap returns the problems, for errors.As.
func (e *ValidationError) Unwrap() []error {
	errs := make([]error, len(e.Problems))
	for i, p := range e.Problems {
		errs[i] = p
	}
	return errs
}

// ResourceOptions is what validating one resource needs to know about the
// configuration around it.
type ResourceOptions struct {
	// Dynamic reports that the sidecar has an ADS control plane
	// (dynamic_resources.ads_config): RDS route configurations and EDS
	// clusters are allowed only then.
	Dynamic bool
	// Clusters, when not nil, is the set of cluster names that route and
	// tcp_proxy references must name. When nil (clusters come from CDS and
	// are checked by the caller) references are not checked.
	Clusters map[string]bool
	// IdentityClusters are the static clusters with pipe endpoints (see
	// IsIdentityCluster), which routes and tcp_proxy must not name.
	IdentityClusters map[string]bool
}

// ValidateBootstrap validates a decoded bootstrap: the protos' generated
// ValidateAll (protoc-gen-validate rules, including inside every Any), then
// meshd's checks: every set field is one meshd supports (docs/bootstrap.md),
// every typed_config type is registered for its extension point, no duration
// is negative, regexes compile, names are unique, references resolve, and
// the listener, cluster and route rules of ValidateListener, ValidateCluster
// and ValidateRouteConfiguration hold. All problems are returned together as
// a *ValidationError; nil means the bootstrap is valid.
func ValidateBootstrap(b *bootstrapv3.Bootstrap) error {
	if b == nil {
		return missing("bootstrap")
	}
	v := &validator{}
	v.pgvAll("", b)
	v.walk("", b.ProtoReflect(), OtherExtension)

	dyn := b.GetDynamicResources()
	opts := ResourceOptions{Dynamic: dyn.GetAdsConfig() != nil}
	static := map[string]bool{}
	for _, c := range b.GetStaticResources().GetClusters() {
		static[c.GetName()] = true
		if IsIdentityCluster(c) {
			if opts.IdentityClusters == nil {
				opts.IdentityClusters = map[string]bool{}
			}
			opts.IdentityClusters[c.GetName()] = true
		}
	}
	if dyn.GetCdsConfig() == nil {
		opts.Clusters = static
	}
	if b.GetAdmin() != nil {
		v.admin("admin", b.GetAdmin())
	}
	if dyn != nil {
		v.dynamicResources("dynamic_resources", dyn, b.GetStaticResources().GetClusters())
	}
	if lsc := b.GetClusterManager().GetLoadStatsConfig(); lsc != nil {
		v.grpcSource("cluster_manager.load_stats_config", lsc, b.GetStaticResources().GetClusters(), false)
	}
	if om := b.GetOverloadManager(); om != nil && !v.has("overload_manager") {
		if _, err := overload.Compile(om); err != nil {
			var fe *overload.FieldError
			for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
				if errors.As(e, &fe) {
					v.addf("overload_manager."+fe.Field, "%s", fe.Reason)
				}
			}
		}
	}

	// Listeners and clusters are checked with their references to
	// static_resources.secrets resolved, as they are compiled.
	v.staticSecrets(b.GetStaticResources().GetSecrets())
	resolved, probs := inlineStaticSecrets(b)
	v.probs = append(v.probs, probs...)

	seen := map[string]string{}
	for i, l := range resolved.GetStaticResources().GetListeners() {
		p := fmt.Sprintf("static_resources.listeners[%d]", i)
		v.unique(seen, "listener", p, l.GetName())
		v.listener(p, l, opts)
	}
	seen = map[string]string{}
	for i, c := range resolved.GetStaticResources().GetClusters() {
		p := fmt.Sprintf("static_resources.clusters[%d]", i)
		v.unique(seen, "cluster", p, c.GetName())
		v.cluster(p, c, opts)
	}
	return v.result("bootstrap")
}

// ValidateListener applies to one listener the checks ValidateBootstrap
// applies to a static listener, for xDS updates. Paths are relative to the
// listener.
func ValidateListener(l *listenerv3.Listener, opts ResourceOptions) error {
	if l == nil {
		return missing("listener")
	}
	v := &validator{}
	v.pgvAll("", l)
	v.walk("", l.ProtoReflect(), OtherExtension)
	v.listener("", l, opts)
	return v.result(fmt.Sprintf("listener %q", l.GetName()))
}

// ValidateCluster applies to one cluster the checks ValidateBootstrap applies
// to a static cluster, for xDS updates. Paths are relative to the cluster.
func ValidateCluster(c *clusterv3.Cluster, opts ResourceOptions) error {
	if c == nil {
		return missing("cluster")
	}
	v := &validator{}
	v.pgvAll("", c)
	v.walk("", c.ProtoReflect(), OtherExtension)
	v.cluster("", c, opts)
	return v.result(fmt.Sprintf("cluster %q", c.GetName()))
}

// ValidateRouteConfiguration applies to one route configuration (an RDS
// resource) the checks ValidateBootstrap applies to an HCM's inline
// route_config. Paths are relative to the route configuration.
func ValidateRouteConfiguration(rc *routev3.RouteConfiguration, opts ResourceOptions) error {
	if rc == nil {
		return missing("route configuration")
	}
	v := &validator{}
	v.pgvAll("", rc)
	v.walk("", rc.ProtoReflect(), OtherExtension)
	v.routeConfig("", rc, opts)
	return v.result(fmt.Sprintf("route configuration %q", rc.GetName()))
}

// missing is the error for a nil resource.
func missing(kind string) error {
	return &ValidationError{Source: kind, Problems: []*FieldError{{Reason: "missing (nil)"}}}
}

// validator accumulates problems.
type validator struct {
	probs []*FieldError
}

func (v *validator) addf(path, format string, args ...any) {
	v.probs = append(v.probs, &FieldError{Path: path, Reason: fmt.Sprintf(format, args...)})
}

func (v *validator) has(path string) bool {
	return slices.ContainsFunc(v.probs, func(p *FieldError) bool { return p.Path == path })
}

func (v *validator) result(source string) error {
	if len(v.probs) == 0 {
		return nil
	}
	return &ValidationError{Source: source, Problems: v.probs}
}

// unique reports name at path if seen already holds it.
func (v *validator) unique(seen map[string]string, kind, path, name string) {
	if name == "" {
		return
	}
	if first, dup := seen[name]; dup {
		v.addf(join(path, "name"), "duplicate %s name %q (first at %s)", kind, name, first)
		return
	}
	seen[name] = path
}

// --- protoc-gen-validate ---------------------------------------------------

// pgvError is the method set of every error protoc-gen-validate generates.
type pgvError interface {
	error
	Field() string
	Reason() string
	Cause() error
	Key() bool
}

// pgvMulti is the method set of protoc-gen-validate's ValidateAll errors.
type pgvMulti interface {
	error
	AllErrors() []error
}

// pgvAll runs m's generated ValidateAll and records its violations with
// their paths.
func (v *validator) pgvAll(path string, m proto.Message) {
	va, ok := m.(interface{ ValidateAll() error })
	if !ok {
		return
	}
	if err := va.ValidateAll(); err != nil {
		v.pgvErr(path, m.ProtoReflect().Descriptor(), err)
	}
}

// pgvErr flattens one protoc-gen-validate error tree, found at path in a
// message of type md, into problems.
func (v *validator) pgvErr(path string, md protoreflect.MessageDescriptor, err error) {
	if multi, ok := err.(pgvMulti); ok {
		for _, e := range multi.AllErrors() {
			v.pgvErr(path, md, e)
		}
		return
	}
	fe, ok := err.(pgvError)
	if !ok {
		v.addf(path, "%v", err)
		return
	}
	fpath, child := pgvPath(path, md, fe.Field(), fe.Key())
	cause := fe.Cause()
	switch {
	case cause == nil:
		v.addf(fpath, "%s", fe.Reason())
	case child != nil && isPGV(cause):
		v.pgvErr(fpath, child, cause)
	default:
		v.addf(fpath, "%s: %v", fe.Reason(), cause)
	}
}

func isPGV(err error) bool {
	switch err.(type) {
	case pgvMulti, pgvError:
		return true
	}
	return false
}

// pgvPath turns protoc-gen-validate's Go field name ("StaticResources",
// "Listeners[0]", "TypedExtensionProtocolOptions[key]") into a proto path
// element under path, and returns the message type of the named element
// (nil for scalars).
func pgvPath(path string, md protoreflect.MessageDescriptor, goName string, key bool) (string, protoreflect.MessageDescriptor) {
	base, index, indexed := strings.Cut(goName, "[")
	index = strings.TrimSuffix(index, "]")
	norm := strings.ToLower(base)
	fields := md.Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if strings.ReplaceAll(string(fd.Name()), "_", "") != norm {
			continue
		}
		p := join(path, string(fd.Name()))
		switch {
		case fd.IsMap() && indexed:
			p += fmt.Sprintf("[%q]", index)
			if key {
				return p + " (key)", nil
			}
			return p, fd.MapValue().Message()
		case indexed:
			return p + "[" + index + "]", fd.Message()
		default:
			return p, fd.Message()
		}
	}
	oneofs := md.Oneofs()
	for i := range oneofs.Len() {
		if od := oneofs.Get(i); strings.ReplaceAll(string(od.Name()), "_", "") == norm {
			return join(path, string(od.Name())), nil
		}
	}
	return join(path, goName), nil
}

// --- generic walk: supported fields, Any types, durations, regexes ----------

const (
	durationName protoreflect.FullName = "google.protobuf.Duration"
	regexName    protoreflect.FullName = "envoy.type.matcher.v3.RegexMatcher"
)

// walk checks message m at path and everything set below it. side is the
// transport socket extension point in effect (downstream under a filter
// chain, upstream under a cluster).
func (v *validator) walk(path string, m protoreflect.Message, side ExtensionPoint) {
	md := m.Descriptor()
	if raw := m.GetUnknown(); len(raw) > 0 {
		v.addf(path, "unknown fields (numbers %v) in %s", unknownNumbers(raw), md.FullName())
	}
	switch md.FullName() {
	case durationName:
		d := m.Interface().(*durationpb.Duration)
		if (d.GetSeconds() < 0 || d.GetNanos() < 0) && !v.has(path) {
			v.addf(path, "negative duration %s", d.AsDuration())
		}
		return
	case regexName:
		re := m.Get(md.Fields().ByName("regex")).String()
		if _, err := regexp.Compile(re); err != nil {
			v.addf(join(path, "regex"), "invalid regex: %v", err)
		}
	}
	table, listed := supportedFields[md.FullName()]
	fields := md.Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if !m.Has(fd) {
			continue
		}
		fpath := join(path, string(fd.Name()))
		if listed && !slices.Contains(table.supported, fd.Name()) {
			if !slices.Contains(table.ignored, fd.Name()) {
				v.addf(fpath, "field not supported by meshd (%s.%s; see docs/bootstrap.md)", md.FullName(), fd.Name())
			}
			continue
		}
		if fd.Message() == nil {
			continue
		}
		childSide := side
		switch {
		case md.FullName() == "envoy.config.listener.v3.FilterChain" && fd.Name() == "transport_socket":
			childSide = DownstreamTransportSocket
		case md.FullName() == "envoy.config.cluster.v3.Cluster" && fd.Name() == "transport_socket":
			childSide = UpstreamTransportSocket
		}
		val := m.Get(fd)
		switch {
		case fd.IsMap():
			if fd.MapValue().Message() == nil {
				continue
			}
			keys := make([]protoreflect.MapKey, 0, val.Map().Len())
			val.Map().Range(func(k protoreflect.MapKey, _ protoreflect.Value) bool {
				keys = append(keys, k)
				return true
			})
			slices.SortFunc(keys, func(a, b protoreflect.MapKey) int { return strings.Compare(a.String(), b.String()) })
			for _, k := range keys {
				kpath := fmt.Sprintf("%s[%q]", fpath, k.String())
				v.value(kpath, md, fd, val.Map().Get(k).Message(), childSide)
				if md.FullName() == "envoy.config.cluster.v3.Cluster" && fd.Name() == "typed_extension_protocol_options" {
					v.protocolOptionsKey(kpath, k.String(), val.Map().Get(k).Message())
				}
			}
		case fd.IsList():
			list := val.List()
			for j := range list.Len() {
				v.value(fmt.Sprintf("%s[%d]", fpath, j), md, fd, list.Get(j).Message(), childSide)
			}
		default:
			v.value(fpath, md, fd, val.Message(), childSide)
		}
	}
}

// value walks m, the value of field fd of a message of type parent.
func (v *validator) value(path string, parent protoreflect.MessageDescriptor, fd protoreflect.FieldDescriptor, m protoreflect.Message, side ExtensionPoint) {
	if m.Descriptor().FullName() != anyName {
		v.walk(path, m, side)
		return
	}
	v.anyValue(path, extensionPoint(parent.FullName(), fd.Name(), side), m.Interface().(*anypb.Any), side)
}

// extensionPoint classifies an Any held by field field of message parent.
func extensionPoint(parent protoreflect.FullName, field protoreflect.Name, side ExtensionPoint) ExtensionPoint {
	switch {
	case parent == "envoy.config.listener.v3.Filter" && field == "typed_config":
		return NetworkFilter
	case parent == "envoy.config.listener.v3.ListenerFilter" && field == "typed_config":
		return ListenerFilter
	case parent == "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter" && field == "typed_config":
		return HTTPFilter
	case parent == "envoy.config.core.v3.TransportSocket" && field == "typed_config":
		return side
	case parent == "envoy.config.cluster.v3.Cluster" && field == "typed_extension_protocol_options":
		return ClusterProtocolOptions
	case parent == "envoy.config.accesslog.v3.AccessLog" && field == "typed_config":
		return AccessLogger
	case parent == "envoy.config.trace.v3.Tracing.Http" && field == "typed_config":
		return Tracer
	case parent == "envoy.config.overload.v3.ResourceMonitor" && field == "typed_config":
		return ResourceMonitor
	case parent == "envoy.config.overload.v3.OverloadAction" && field == "typed_config":
		return OverloadActionConfig
	case (parent == "envoy.extensions.wasm.v3.PluginConfig" || parent == "envoy.extensions.wasm.v3.VmConfig") && field == "configuration":
		return WasmConfiguration
	case parent == "envoy.config.metrics.v3.StatsSink" && field == "typed_config":
		return StatsSink
	}
	return OtherExtension
}

// anyValue checks an Any at path: its type must be known and registered at
// point, and its content valid.
func (v *validator) anyValue(path string, point ExtensionPoint, a *anypb.Any, side ExtensionPoint) {
	inner, err := a.UnmarshalNew()
	switch {
	case errors.Is(err, protoregistry.NotFound) && isEnvoyMessage(a.GetTypeUrl()):
		// An Envoy type meshd does not implement, so not linked.
		v.unsupported(path, point, a.GetTypeUrl())
		return
	case errors.Is(err, protoregistry.NotFound):
		v.addf(path, "unknown type %q: not an Envoy API type", a.GetTypeUrl())
		return
	case err != nil:
		v.addf(path, "cannot decode %q: %v", a.GetTypeUrl(), err)
		return
	}
	if !IsSupported(point, a.GetTypeUrl()) {
		v.unsupported(path, point, a.GetTypeUrl())
		return
	}
	v.pgvAll(path, inner)
	v.walk(path, inner.ProtoReflect(), side)
}

// unsupported reports typeURL at path as a type meshd does not implement
// at point, listing the ones it does.
func (v *validator) unsupported(path string, point ExtensionPoint, typeURL string) {
	supported := "none yet"
	if s := SupportedTypes(point); len(s) > 0 {
		supported = strings.Join(s, ", ")
	}
	v.addf(path, "unsupported typed_config type %q for extension point %q (meshd supports: %s)", typeURL, point, supported)
}

// protocolOptionsKey checks that a typed_extension_protocol_options key names
// the type of its value, which is how meshd finds the options.
func (v *validator) protocolOptionsKey(path, key string, m protoreflect.Message) {
	a, ok := m.Interface().(*anypb.Any)
	if !ok || a.GetTypeUrl() == "" {
		return
	}
	if name := string(typeName(a.GetTypeUrl())); key != name {
		v.addf(path, "key must be the type name of its value, %q", name)
	}
}

// unknownNumbers lists the field numbers in raw protobuf bytes.
func unknownNumbers(raw []byte) []protowire.Number {
	var nums []protowire.Number
	for len(raw) > 0 {
		num, typ, n := protowire.ConsumeTag(raw)
		if n < 0 {
			break
		}
		raw = raw[n:]
		n = protowire.ConsumeFieldValue(num, typ, raw)
		if n < 0 {
			break
		}
		raw = raw[n:]
		nums = append(nums, num)
	}
	return nums
}

// --- meshd semantics ---------------------------------------------------------

// admin checks the admin listener.
func (v *validator) admin(path string, a *bootstrapv3.Admin) {
	sa := a.GetAddress().GetSocketAddress()
	if sa == nil {
		v.addf(join(path, "address"), "a socket_address is required")
		return
	}
	v.bindAddress(join(path, "address.socket_address"), sa)
}

// bindAddress checks an address meshd listens on.
func (v *validator) bindAddress(path string, sa *corev3.SocketAddress) {
	if _, err := netip.ParseAddr(sa.GetAddress()); err != nil {
		v.addf(join(path, "address"), "must be an IP address to listen on, got %q", sa.GetAddress())
	}
	if sa.GetProtocol() != corev3.SocketAddress_TCP {
		v.addf(join(path, "protocol"), "%s listeners are not supported yet (TCP only)", sa.GetProtocol())
	}
}

// dynamicResources checks the ADS configuration against the static clusters.
func (v *validator) dynamicResources(path string, d *bootstrapv3.Bootstrap_DynamicResources, static []*clusterv3.Cluster) {
	ads := d.GetAdsConfig()
	if ads == nil {
		for _, name := range []string{"lds_config", "cds_config"} {
			if d.ProtoReflect().Has(d.ProtoReflect().Descriptor().Fields().ByName(protoreflect.Name(name))) {
				v.addf(join(path, name), "requires ads_config (meshd takes dynamic resources over ADS only)")
			}
		}
		return
	}
	v.grpcSource(join(path, "ads_config"), ads, static, true)
	if d.GetLdsConfig() != nil {
		v.adsSource(join(path, "lds_config"), d.GetLdsConfig())
	}
	if d.GetCdsConfig() != nil {
		v.adsSource(join(path, "cds_config"), d.GetCdsConfig())
	}
}

// grpcSource checks an ApiConfigSource served by one envoy_grpc service on
// a static cluster: ADS (delta allowed) or LRS (GRPC only).
func (v *validator) grpcSource(apath string, src *corev3.ApiConfigSource, static []*clusterv3.Cluster, delta bool) {
	switch t := src.GetApiType(); {
	case t == corev3.ApiConfigSource_GRPC, delta && t == corev3.ApiConfigSource_DELTA_GRPC:
	case delta:
		v.addf(join(apath, "api_type"), "%s is not supported (GRPC or DELTA_GRPC)", t)
	default:
		v.addf(join(apath, "api_type"), "%s is not supported (GRPC)", t)
	}
	v.apiVersion(join(apath, "transport_api_version"), src.GetTransportApiVersion())
	if n := len(src.GetGrpcServices()); n != 1 {
		v.addf(join(apath, "grpc_services"), "exactly one gRPC service is required, got %d", n)
	}
	for i, gs := range src.GetGrpcServices() {
		gpath := fmt.Sprintf("%s.grpc_services[%d]", apath, i)
		name := gs.GetEnvoyGrpc().GetClusterName()
		if gs.GetEnvoyGrpc() == nil {
			v.addf(gpath, "envoy_grpc is required")
			continue
		}
		if !slices.ContainsFunc(static, func(c *clusterv3.Cluster) bool { return c.GetName() == name }) {
			v.addf(join(gpath, "envoy_grpc.cluster_name"), "cluster %q is not a static cluster (it must be in static_resources)", name)
		}
	}
}

func (v *validator) apiVersion(path string, ver corev3.ApiVersion) {
	if ver != corev3.ApiVersion_V3 && ver != corev3.ApiVersion_AUTO {
		v.addf(path, "%s is not supported (V3)", ver)
	}
}

// adsSource checks that a ConfigSource is `ads: {}`.
func (v *validator) adsSource(path string, cs *corev3.ConfigSource) {
	if cs.GetAds() == nil {
		v.addf(path, "must be {ads: {}}: meshd takes dynamic resources over ADS only")
	}
	v.apiVersion(join(path, "resource_api_version"), cs.GetResourceApiVersion())
}

// unpack returns the message in a, or nil if it cannot be decoded (already
// reported by the walk).
func unpack(a *anypb.Any) proto.Message {
	if a == nil {
		return nil
	}
	m, err := a.UnmarshalNew()
	if err != nil {
		return nil
	}
	return m
}

// listener checks a listener at path.
func (v *validator) listener(path string, l *listenerv3.Listener, opts ResourceOptions) {
	switch sa := l.GetAddress().GetSocketAddress(); {
	case l.GetAddress() == nil:
		v.addf(join(path, "address"), "required")
	case sa != nil && isQUICListener(l):
		// compileQUICListener requires protocol UDP.
		if _, err := netip.ParseAddr(sa.GetAddress()); err != nil {
			v.addf(join(path, "address.socket_address.address"), "must be an IP address to listen on, got %q", sa.GetAddress())
		}
	case sa != nil:
		v.bindAddress(join(path, "address.socket_address"), sa)
	default:
		v.addf(join(path, "address"), "a socket_address is required (listeners on pipes are not supported)")
	}
	if len(l.GetFilterChains()) == 0 {
		v.addf(join(path, "filter_chains"), "at least one filter chain is required")
	} else if _, err := selectFilterChain(l); err != nil {
		// The error starts with the field path below the listener.
		field, reason, _ := strings.Cut(err.Error(), ": ")
		v.addf(join(path, field), "%s", reason)
	}
	for i, fc := range l.GetFilterChains() {
		fcpath := fmt.Sprintf("%s[%d]", join(path, "filter_chains"), i)
		v.filterChain(fcpath, fc, opts)
		for j, f := range fc.GetFilters() {
			if m, ok := unpack(f.GetTypedConfig()).(*hcmv3.HttpConnectionManager); ok {
				if err := checkHTTP3Codec(m, isQUICListener(l)); err != nil {
					field, reason, _ := strings.Cut(err.Error(), ": ")
					v.addf(fmt.Sprintf("%s.filters[%d].typed_config.%s", fcpath, j, field), "%s", reason)
				}
			}
		}
	}
}

// filterChain checks a filter chain's network filters and TLS context.
func (v *validator) filterChain(path string, fc *listenerv3.FilterChain, opts ResourceOptions) {
	filters := fc.GetFilters()
	if len(filters) == 0 {
		v.addf(join(path, "filters"), "at least one network filter is required")
	}
	for i, f := range filters {
		fpath := fmt.Sprintf("%s[%d]", join(path, "filters"), i)
		last := i == len(filters)-1
		switch cfg := unpack(f.GetTypedConfig()).(type) {
		case *hcmv3.HttpConnectionManager:
			if !last {
				v.addf(fpath, "http_connection_manager is a terminal filter and must be last")
			}
			v.hcm(join(fpath, "typed_config"), cfg, opts)
		case *tcpproxyv3.TcpProxy:
			if !last {
				v.addf(fpath, "tcp_proxy is a terminal filter and must be last")
			}
			if c := cfg.GetCluster(); c != "" {
				v.clusterRef(join(fpath, "typed_config.cluster"), c, opts)
			}
			for j, cw := range cfg.GetWeightedClusters().GetClusters() {
				v.clusterRef(fmt.Sprintf("%s.clusters[%d].name", join(fpath, "typed_config.weighted_clusters"), j), cw.GetName(), opts)
			}
		case nil:
			if f.GetTypedConfig() == nil {
				v.addf(join(fpath, "typed_config"), "required")
			}
		default:
			if last {
				v.addf(fpath, "the last network filter must be a terminal filter (http_connection_manager or tcp_proxy)")
			}
		}
	}
	if ts := fc.GetTransportSocket(); ts != nil {
		switch tc := unpack(ts.GetTypedConfig()).(type) {
		case *tlsv3.DownstreamTlsContext:
			v.downstreamTLS(join(path, "transport_socket.typed_config"), tc)
		case *quicv3.QuicDownstreamTransport:
			if dtc := tc.GetDownstreamTlsContext(); dtc != nil {
				v.downstreamTLS(join(path, "transport_socket.typed_config.downstream_tls_context"), dtc)
			}
		}
	}
}

// downstreamTLS checks that a listener's TLS context has a certificate and,
// when client certificates are required, a CA to verify them.
func (v *validator) downstreamTLS(path string, tc *tlsv3.DownstreamTlsContext) {
	ctx := tc.GetCommonTlsContext()
	cpath := join(path, "common_tls_context")
	if tlscontext.UsesSDS(ctx) {
		if !tc.GetRequireClientCertificate().GetValue() {
			v.addf(join(path, "require_client_certificate"), "must be true with SDS secrets (mutual TLS between SPIFFE identities)")
		}
		v.sdsSecrets(cpath, ctx)
		return
	}
	if len(ctx.GetTlsCertificates()) == 0 {
		v.addf(join(cpath, "tls_certificates"), "a server certificate is required")
	}
	v.certificates(join(cpath, "tls_certificates"), ctx.GetTlsCertificates())
	if tc.GetRequireClientCertificate().GetValue() && ctx.GetValidationContext().GetTrustedCa() == nil {
		v.addf(join(cpath, "validation_context.trusted_ca"), "required when require_client_certificate is true")
	}
}

// sdsSecrets checks the SDS secret configs of a common_tls_context at
// path: each names a gRPC config source cluster or ads (the rest is
// checked when the context is compiled, with the secrets at hand).
func (v *validator) sdsSecrets(path string, ctx *tlsv3.CommonTlsContext) {
	check := func(p string, sc *tlsv3.SdsSecretConfig) {
		if sc == nil {
			return
		}
		if sc.GetName() == "" {
			v.addf(join(p, "name"), "required")
		}
		if sc.GetSdsConfig() == nil {
			v.addf(join(p, "sds_config"), "required: a secret without sds_config is one of static_resources.secrets, which only the bootstrap's static listeners and clusters can name")
			return
		}
		if _, _, err := tlscontext.SDSClusterName(sc.GetSdsConfig()); err != nil {
			v.addf(p, "%v", err)
		}
	}
	for i, sc := range ctx.GetTlsCertificateSdsSecretConfigs() {
		check(fmt.Sprintf("%s[%d]", join(path, "tls_certificate_sds_secret_configs"), i), sc)
	}
	check(join(path, "validation_context_sds_secret_config"), ctx.GetValidationContextSdsSecretConfig())
	check(join(path, "combined_validation_context.validation_context_sds_secret_config"), ctx.GetCombinedValidationContext().GetValidationContextSdsSecretConfig())
}

func (v *validator) certificates(path string, certs []*tlsv3.TlsCertificate) {
	for i, c := range certs {
		cp := fmt.Sprintf("%s[%d]", path, i)
		if c.GetCertificateChain() == nil {
			v.addf(join(cp, "certificate_chain"), "required")
		}
		if c.GetPrivateKey() == nil {
			v.addf(join(cp, "private_key"), "required")
		}
	}
}

const routerType = "envoy.extensions.filters.http.router.v3.Router"

// hcm checks an HTTP connection manager at path.
func (v *validator) hcm(path string, h *hcmv3.HttpConnectionManager, opts ResourceOptions) {
	// Fields of the shared protocol option messages that only clusters honour.
	if h.GetHttp2ProtocolOptions().GetConnectionKeepalive().GetConnectionIdleInterval() != nil {
		v.addf(join(path, "http2_protocol_options.connection_keepalive.connection_idle_interval"), "applies to upstream connections only (a PING before reusing an idle connection; set it on the cluster)")
	}
	switch {
	case h.GetRouteConfig() != nil:
		v.routeConfig(join(path, "route_config"), h.GetRouteConfig(), opts)
	case h.GetRds() != nil:
		if !opts.Dynamic {
			v.addf(join(path, "rds"), "requires dynamic_resources.ads_config (a control plane to serve RDS)")
		}
		v.adsSource(join(path, "rds.config_source"), h.GetRds().GetConfigSource())
	}
	v.tracing(join(path, "tracing"), h.GetTracing(), opts)
	filters := h.GetHttpFilters()
	fpath := join(path, "http_filters")
	if len(filters) == 0 {
		v.addf(fpath, "must end with the router (%s)", routerType)
	}
	for i, f := range filters {
		_, isRouter := unpack(f.GetTypedConfig()).(*routerv3.Router)
		switch last := i == len(filters)-1; {
		case isRouter && !last:
			v.addf(fmt.Sprintf("%s[%d]", fpath, i), "the router must be the last http filter")
		case !isRouter && last:
			v.addf(fmt.Sprintf("%s[%d]", fpath, i), "the last http filter must be the router (%s)", routerType)
		}
	}
}

// routeConfig checks a route configuration at path.
func (v *validator) routeConfig(path string, rc *routev3.RouteConfiguration, opts ResourceOptions) {
	names := map[string]string{}
	domains := map[string]string{}
	for i, vh := range rc.GetVirtualHosts() {
		vpath := fmt.Sprintf("%s[%d]", join(path, "virtual_hosts"), i)
		v.unique(names, "virtual host", vpath, vh.GetName())
		for j, d := range vh.GetDomains() {
			dpath := fmt.Sprintf("%s.domains[%d]", vpath, j)
			key := strings.ToLower(d)
			if first, dup := domains[key]; dup {
				v.addf(dpath, "domain %q is already used by %s", d, first)
				continue
			}
			domains[key] = dpath
		}
		for j, r := range vh.GetRoutes() {
			v.route(fmt.Sprintf("%s.routes[%d]", vpath, j), r, opts)
		}
	}
}

// route checks one route's action.
func (v *validator) route(path string, r *routev3.Route, opts ResourceOptions) {
	ra := r.GetRoute()
	if ra == nil {
		return
	}
	apath := join(path, "route")
	switch {
	case ra.GetCluster() != "":
		v.clusterRef(join(apath, "cluster"), ra.GetCluster(), opts)
	case ra.GetWeightedClusters() != nil:
		var total uint64
		for i, cw := range ra.GetWeightedClusters().GetClusters() {
			cpath := fmt.Sprintf("%s.weighted_clusters.clusters[%d]", apath, i)
			total += uint64(cw.GetWeight().GetValue())
			if cw.GetName() != "" {
				v.clusterRef(join(cpath, "name"), cw.GetName(), opts)
			}
		}
		if total == 0 {
			v.addf(join(apath, "weighted_clusters"), "the sum of the weights must be greater than 0")
		}
	}
}

// clusterRef checks that name is a known cluster.
func (v *validator) clusterRef(path, name string, opts ResourceOptions) {
	if opts.Clusters != nil && !opts.Clusters[name] {
		v.addf(path, "unknown cluster %q", name)
	}
	if opts.IdentityClusters[name] {
		v.addf(path, "cluster %q has pipe endpoints: it serves only as an SDS or Workload API source, not as an upstream", name)
	}
}

var (
	supportedClusterTypes = []clusterv3.Cluster_DiscoveryType{clusterv3.Cluster_STATIC, clusterv3.Cluster_STRICT_DNS, clusterv3.Cluster_EDS, clusterv3.Cluster_ORIGINAL_DST}
	supportedLbPolicies   = []clusterv3.Cluster_LbPolicy{clusterv3.Cluster_ROUND_ROBIN, clusterv3.Cluster_LEAST_REQUEST, clusterv3.Cluster_RANDOM}
)

// cluster checks a cluster at path.
func (v *validator) cluster(path string, c *clusterv3.Cluster, opts ResourceOptions) {
	typ := c.GetType()
	switch {
	case c.GetClusterType() != nil:
		// A custom cluster type; reported by the walk as unsupported.
		return
	case !slices.Contains(supportedClusterTypes, typ):
		v.addf(join(path, "type"), "cluster type %s is not supported (STATIC, STRICT_DNS, EDS, ORIGINAL_DST)", typ)
	case typ == clusterv3.Cluster_ORIGINAL_DST:
		if len(c.GetLoadAssignment().GetEndpoints()) > 0 {
			v.addf(join(path, "load_assignment"), "an ORIGINAL_DST cluster takes its hosts from the downstream connections and must have no endpoints")
		}
	case typ == clusterv3.Cluster_EDS:
		if !opts.Dynamic {
			v.addf(join(path, "type"), "EDS requires dynamic_resources.ads_config (a control plane to serve endpoints)")
		}
		if c.GetEdsClusterConfig().GetEdsConfig() == nil {
			v.addf(join(path, "eds_cluster_config.eds_config"), "required for an EDS cluster")
		} else {
			v.adsSource(join(path, "eds_cluster_config.eds_config"), c.GetEdsClusterConfig().GetEdsConfig())
		}
	default:
		v.endpoints(path, c, typ)
	}
	for _, p := range []struct {
		path string
		opts *corev3.HttpProtocolOptions
	}{
		//lint:ignore SA1019 read only to refuse the upstream-only settings it may carry
		{"common_http_protocol_options", c.GetCommonHttpProtocolOptions()},
		{fmt.Sprintf("typed_extension_protocol_options[%q].common_http_protocol_options", httpProtocolOptionsName), httpProtocolOptions(c).GetCommonHttpProtocolOptions()},
	} {
		if p.opts.GetHeadersWithUnderscoresAction() != corev3.HttpProtocolOptions_ALLOW {
			v.addf(join(path, p.path+".headers_with_underscores_action"), "applies to downstream connections only (set it on the http_connection_manager)")
		}
		if p.opts.GetMaxHeadersCount() != nil {
			v.addf(join(path, p.path+".max_headers_count"), "applies to downstream connections only (set it on the http_connection_manager)")
		}
	}
	for _, p := range []struct {
		path string
		opts *corev3.Http2ProtocolOptions
	}{
		//lint:ignore SA1019 read only to refuse the settings it may carry that the sidecar does not support
		{"http2_protocol_options", c.GetHttp2ProtocolOptions()},
		{fmt.Sprintf("typed_extension_protocol_options[%q].explicit_http_config.http2_protocol_options", httpProtocolOptionsName),
			httpProtocolOptions(c).GetExplicitHttpConfig().GetHttp2ProtocolOptions()},
	} {
		for _, f := range downstreamOnlyHTTP2Fields(p.opts) {
			v.addf(join(path, p.path+"."+f), "flood limits apply to downstream connections only (set them on the http_connection_manager)")
		}
	}
	switch lbp := c.GetLbPolicy(); {
	case typ == clusterv3.Cluster_ORIGINAL_DST && lbp != clusterv3.Cluster_CLUSTER_PROVIDED:
		v.addf(join(path, "lb_policy"), "an ORIGINAL_DST cluster needs CLUSTER_PROVIDED (got %s)", lbp)
	case typ != clusterv3.Cluster_ORIGINAL_DST && lbp == clusterv3.Cluster_CLUSTER_PROVIDED:
		v.addf(join(path, "lb_policy"), "CLUSTER_PROVIDED needs type ORIGINAL_DST (type is %s)", typ)
	case lbp != clusterv3.Cluster_CLUSTER_PROVIDED && !slices.Contains(supportedLbPolicies, lbp):
		v.addf(join(path, "lb_policy"), "%s is not supported (ROUND_ROBIN, LEAST_REQUEST, RANDOM; CLUSTER_PROVIDED with ORIGINAL_DST)", lbp)
	}
	if c.GetOriginalDstLbConfig() != nil && typ != clusterv3.Cluster_ORIGINAL_DST {
		v.addf(join(path, "original_dst_lb_config"), "applies to ORIGINAL_DST clusters only (type is %s)", typ)
	}
}

// downstreamOnlyHTTP2Fields names the flood limit fields set in o, which
// meshd enforces on downstream connections only.
func downstreamOnlyHTTP2Fields(o *corev3.Http2ProtocolOptions) []string {
	var out []string
	for _, f := range []struct {
		name string
		set  bool
	}{
		{"max_outbound_frames", o.GetMaxOutboundFrames() != nil},
		{"max_outbound_control_frames", o.GetMaxOutboundControlFrames() != nil},
		{"max_consecutive_inbound_frames_with_empty_payload", o.GetMaxConsecutiveInboundFramesWithEmptyPayload() != nil},
		{"max_inbound_priority_frames_per_stream", o.GetMaxInboundPriorityFramesPerStream() != nil},
		{"max_inbound_window_update_frames_per_data_frame_sent", o.GetMaxInboundWindowUpdateFramesPerDataFrameSent() != nil},
	} {
		if f.set {
			out = append(out, f.name)
		}
	}
	return out
}

const httpProtocolOptionsName = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

// httpProtocolOptions returns c's HttpProtocolOptions, or nil.
func httpProtocolOptions(c *clusterv3.Cluster) *upstreamhttpv3.HttpProtocolOptions {
	o, _ := unpack(c.GetTypedExtensionProtocolOptions()[httpProtocolOptionsName]).(*upstreamhttpv3.HttpProtocolOptions)
	return o
}

// endpoints checks the load assignment of a STATIC or STRICT_DNS cluster.
func (v *validator) endpoints(path string, c *clusterv3.Cluster, typ clusterv3.Cluster_DiscoveryType) {
	lpath := join(path, "load_assignment")
	n := 0
	for i, lle := range c.GetLoadAssignment().GetEndpoints() {
		for j, lbe := range lle.GetLbEndpoints() {
			n++
			epath := fmt.Sprintf("%s.endpoints[%d].lb_endpoints[%d].endpoint.address", lpath, i, j)
			if p := lbe.GetEndpoint().GetAddress().GetPipe(); p != nil {
				switch {
				case !IsIdentityCluster(c):
					v.addf(join(epath, "pipe"), "a cluster's endpoints are either all pipes (an SDS or Workload API socket) or all socket addresses")
				case typ != clusterv3.Cluster_STATIC:
					v.addf(join(epath, "pipe"), "pipe endpoints need a STATIC cluster")
				case p.GetPath() == "":
					v.addf(join(epath, "pipe.path"), "required")
				}
				continue
			}
			sa := lbe.GetEndpoint().GetAddress().GetSocketAddress()
			if sa == nil {
				v.addf(epath, "a socket_address is required")
				continue
			}
			spath := join(epath, "socket_address")
			if typ == clusterv3.Cluster_STATIC {
				if _, err := netip.ParseAddr(sa.GetAddress()); err != nil {
					v.addf(join(spath, "address"), "a STATIC cluster needs IP addresses, got %q", sa.GetAddress())
				}
			}
			if sa.GetPortValue() == 0 {
				v.addf(join(spath, "port_value"), "an endpoint needs a port (1-65535)")
			}
			if sa.GetProtocol() != corev3.SocketAddress_TCP {
				v.addf(join(spath, "protocol"), "%s endpoints are not supported (TCP only)", sa.GetProtocol())
			}
		}
	}
	if n == 0 {
		v.addf(lpath, "a %s cluster needs at least one endpoint", typ)
	}
}
