package translate_test

import (
	"strings"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	"meshd.dev/meshd/examples"
	"meshd.dev/meshd/xds/translate"
)

// TestGRPCTimeoutHeaderMax: every sidecar HTTP route enforces a gRPC
// request's grpc-timeout (max_stream_duration.grpc_timeout_header_max
// set), capped at the TrafficPolicy's timeout on the client's outbound
// route (0, no cap, when the policy has none) and uncapped on the server's
// inbound route; the proxyless route, where grpc-go enforces its own
// deadline, sets none.
func TestGRPCTimeoutHeaderMax(t *testing.T) {
	const policyTimeout = "  timeout: 10s\n"
	if !strings.Contains(string(examples.Mesh), policyTimeout) {
		t.Fatalf("examples/mesh.yaml has no %q", policyTimeout)
	}
	tests := []struct {
		name         string
		mesh         string
		wantOutbound string
	}{
		{"policy timeout caps", string(examples.Mesh), "10s"},
		{"no policy timeout", strings.Replace(string(examples.Mesh), policyTimeout, "", 1), "0s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := translateOK(t, mustParse(t, []byte(tt.mesh)))

			out := find[*routev3.RouteConfiguration](t, res.Nodes["greeter-client.demo"].Routes, "outbound|15201")
			ra := out.GetVirtualHosts()[0].GetRoutes()[0].GetRoute()
			if ra.GetMaxStreamDuration().GetGrpcTimeoutHeaderMax() == nil {
				t.Fatalf("outbound route: max_stream_duration.grpc_timeout_header_max unset: %v", ra)
			}
			if got := ra.GetMaxStreamDuration().GetGrpcTimeoutHeaderMax().AsDuration().String(); got != tt.wantOutbound {
				t.Errorf("outbound grpc_timeout_header_max = %s, want %s", got, tt.wantOutbound)
			}
			if got := ra.GetTimeout().AsDuration().String(); got != tt.wantOutbound {
				t.Errorf("outbound timeout = %s, want %s (the cap and the timeout of calls without grpc-timeout agree)", got, tt.wantOutbound)
			}
			if ra.GetMaxStreamDuration().GetMaxStreamDuration() != nil {
				t.Errorf("outbound max_stream_duration.max_stream_duration = %v, want unset", ra.GetMaxStreamDuration().GetMaxStreamDuration())
			}

			in := inlineRoute(t, find[*listenerv3.Listener](t, res.Nodes["greeter-server.demo"].Listeners, translate.InboundListenerName(15101)))
			if got := in.GetMaxStreamDuration().GetGrpcTimeoutHeaderMax(); got == nil || got.AsDuration() != 0 {
				t.Errorf("inbound grpc_timeout_header_max = %v, want 0s (honour the header, no cap)", got)
			}

			pl := find[*routev3.RouteConfiguration](t, res.Proxyless.Routes, "greeter.demo:50051")
			if msd := pl.GetVirtualHosts()[0].GetRoutes()[0].GetRoute().GetMaxStreamDuration(); msd != nil {
				t.Errorf("proxyless route max_stream_duration = %v, want unset", msd)
			}
		})
	}
}

// inlineRoute returns the first route action of l's HTTP connection
// manager's inline route_config.
func inlineRoute(t *testing.T, l *listenerv3.Listener) *routev3.RouteAction {
	t.Helper()
	var h hcmv3.HttpConnectionManager
	if err := l.GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(&h); err != nil {
		t.Fatalf("listener %s: %v", l.GetName(), err)
	}
	rc := h.GetRouteConfig()
	if rc == nil {
		t.Fatalf("listener %s: no inline route_config", l.GetName())
	}
	return rc.GetVirtualHosts()[0].GetRoutes()[0].GetRoute()
}
