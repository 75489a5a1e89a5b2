package config

import (
	tracev3 "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
)

// tracing checks the cross-references of an HCM's tracing at path: the
// OpenTelemetry provider's cluster must exist. The rest is checked by
// otel/tracing's compiler.
func (v *validator) tracing(path string, t *hcmv3.HttpConnectionManager_Tracing, opts ResourceOptions) {
	var otc tracev3.OpenTelemetryConfig
	if t.GetProvider().GetTypedConfig().UnmarshalTo(&otc) != nil {
		return
	}
	if name := otc.GetGrpcService().GetEnvoyGrpc().GetClusterName(); name != "" {
		v.clusterRef(join(path, "provider.typed_config.grpc_service.envoy_grpc.cluster_name"), name, opts)
	}
}
