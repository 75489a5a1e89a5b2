package config

import (
	"fmt"
	"slices"
	"strings"
	"sync"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"meshd.dev/meshd/filters"
	_ "meshd.dev/meshd/filters/all" // the built-in HTTP filters
	"meshd.dev/meshd/otel/tracing"
	"meshd.dev/meshd/proxy/overload"
)

// ExtensionPoint names a place in the Envoy API where a typed_config (an Any)
// selects an implementation. Which types meshd accepts is decided per point:
// DownstreamTlsContext is a valid listener transport socket and an invalid
// cluster one, as in Envoy.
type ExtensionPoint string

// The extension points meshd validates. An Any found anywhere else is
// classified as OtherExtension, for which nothing is registered, so it is
// always rejected as unsupported.
const (
	// NetworkFilter is envoy.config.listener.v3.Filter.typed_config.
	NetworkFilter ExtensionPoint = "network filter"
	// HTTPFilter is HttpConnectionManager.http_filters[].typed_config.
	HTTPFilter ExtensionPoint = "http filter"
	// DownstreamTransportSocket is a listener filter chain's transport_socket.typed_config.
	DownstreamTransportSocket ExtensionPoint = "downstream transport socket"
	// UpstreamTransportSocket is a cluster's transport_socket.typed_config.
	UpstreamTransportSocket ExtensionPoint = "upstream transport socket"
	// ClusterProtocolOptions is a value of Cluster.typed_extension_protocol_options.
	ClusterProtocolOptions ExtensionPoint = "cluster protocol options"
	// ListenerFilter is envoy.config.listener.v3.ListenerFilter.typed_config.
	ListenerFilter ExtensionPoint = "listener filter"
	// AccessLogger is envoy.config.accesslog.v3.AccessLog.typed_config.
	AccessLogger ExtensionPoint = "access logger"
	// Tracer is envoy.config.trace.v3.Tracing.Http.typed_config (the
	// connection manager's tracing provider).
	Tracer ExtensionPoint = "tracer"
	// WasmConfiguration is the configuration of a proxy-wasm plugin or VM
	// (envoy.extensions.wasm.v3.PluginConfig.configuration,
	// VmConfig.configuration): google.protobuf.StringValue or BytesValue,
	// handed to the guest as bytes.
	WasmConfiguration ExtensionPoint = "wasm configuration"
	// ResourceMonitor is envoy.config.overload.v3.ResourceMonitor.typed_config.
	ResourceMonitor ExtensionPoint = "resource monitor"
	// OverloadActionConfig is envoy.config.overload.v3.OverloadAction.typed_config.
	OverloadActionConfig ExtensionPoint = "overload action"
	// OtherExtension is every other Any in the API.
	OtherExtension ExtensionPoint = "extension"
)

// registry holds the supported message types per extension point. It is
// filled during initialization (this file's init and, later, the init
// functions of the packages implementing extensions) and only read after.
var registry = struct {
	sync.RWMutex
	types map[ExtensionPoint]map[protoreflect.FullName]bool
}{types: map[ExtensionPoint]map[protoreflect.FullName]bool{}}

func init() {
	for _, r := range []struct {
		point ExtensionPoint
		name  string
	}{
		{NetworkFilter, "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"},
		{NetworkFilter, tcpProxyType},
		{ListenerFilter, tlsInspectorType},
		{ListenerFilter, originalDstType},
		{DownstreamTransportSocket, "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"},
		{UpstreamTransportSocket, "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"},
		{ClusterProtocolOptions, "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"},
		{Tracer, tracing.OpenTelemetryConfigType},
		{WasmConfiguration, "google.protobuf.StringValue"},
		{WasmConfiguration, "google.protobuf.BytesValue"},
		{ResourceMonitor, overload.FixedHeapConfigType},
		{OverloadActionConfig, overload.ShrinkHeapConfigType},
	} {
		RegisterType(r.point, r.name)
	}
}

// typeName returns the message name a type URL denotes: everything after its
// last '/', which is how Envoy and the protobuf resolvers read it
// ("type.googleapis.com/a.b.C" and "a.b.C" both name a.b.C).
func typeName(typeURL string) protoreflect.FullName {
	if i := strings.LastIndexByte(typeURL, '/'); i >= 0 {
		typeURL = typeURL[i+1:]
	}
	return protoreflect.FullName(typeURL)
}

// RegisterType declares that meshd implements the message type named by
// typeURL (with or without the "type.googleapis.com/" prefix) at point. It is
// meant to be called from init functions. Registering the same pair twice is
// a no-op. It panics if the type is not linked into the binary, so that a
// misspelt registration fails at start rather than rejecting every config.
func RegisterType(point ExtensionPoint, typeURL string) {
	name := typeName(typeURL)
	if _, err := protoregistry.GlobalTypes.FindMessageByName(name); err != nil {
		panic(fmt.Sprintf("config.RegisterType(%q, %q): %v", point, typeURL, err))
	}
	registry.Lock()
	defer registry.Unlock()
	if registry.types[point] == nil {
		registry.types[point] = map[protoreflect.FullName]bool{}
	}
	registry.types[point][name] = true
}

// IsSupported reports whether meshd implements the message type named by
// typeURL at point. HTTP filters are the ones registered with package
// filters (the router and every filter package linked through filters/all)
// besides any registered here.
func IsSupported(point ExtensionPoint, typeURL string) bool {
	if point == HTTPFilter && filters.IsRegistered(typeURL) {
		return true
	}
	registry.RLock()
	defer registry.RUnlock()
	return registry.types[point][typeName(typeURL)]
}

// isEnvoyMessage reports whether typeURL (with or without its
// "type.googleapis.com/" prefix) names a message of the Envoy configuration
// API, linked into this binary or not. meshd links only the Envoy packages
// it implements, so the protobuf registry cannot tell an Envoy type meshd
// does not implement (unsupported) from a misspelt one (unknown); the
// generated name table can.
func isEnvoyMessage(typeURL string) bool {
	_, found := slices.BinarySearch(envoyMessageNames, string(typeName(typeURL)))
	return found
}

// SupportedTypes returns the sorted full names of the types registered at point.
func SupportedTypes(point ExtensionPoint) []string {
	registry.RLock()
	defer registry.RUnlock()
	var names []string
	for n := range registry.types[point] {
		names = append(names, string(n))
	}
	if point == HTTPFilter {
		names = append(names, filters.RegisteredTypes()...)
	}
	slices.Sort(names)
	names = slices.Compact(names)
	return names
}
