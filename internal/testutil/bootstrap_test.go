package testutil

import (
	"strconv"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3" // resolves the router's typed_config
)

// TestBootstrapIsValidEnvoy decodes the rendered bootstrap strictly into the
// Envoy v3 protos and runs their validation, so the template is a bootstrap
// `envoy -c` would accept, with the parameters where they belong.
func TestBootstrapIsValidEnvoy(t *testing.T) {
	tests := []struct {
		name         string
		p            BootstrapParams
		wantListener string
		wantPrefix   string
		wantHTTP2    bool
		wantRoute    time.Duration
		wantConnect  time.Duration
	}{
		{
			name:         "defaults",
			p:            BootstrapParams{BackendAddr: "127.0.0.1:8080"},
			wantListener: DefaultListenerName, wantPrefix: DefaultListenerName,
			wantHTTP2: true, wantRoute: 0, wantConnect: time.Second,
		},
		{
			name: "http1 with timeouts",
			p: BootstrapParams{BackendAddr: "127.0.0.1:1", UpstreamProtocol: UpstreamHTTP1, ListenerName: "l1",
				StatPrefix: "p1", RouteTimeout: 1500 * time.Millisecond, ConnectTimeout: 250 * time.Millisecond},
			wantListener: "l1", wantPrefix: "p1",
			wantHTTP2: false, wantRoute: 1500 * time.Millisecond, wantConnect: 250 * time.Millisecond,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			text := MustBootstrap(t, tt.p)
			js, err := yaml.YAMLToJSON([]byte(text))
			if err != nil {
				t.Fatalf("YAMLToJSON: %v\n%s", err, text)
			}
			var b bootstrapv3.Bootstrap
			if err := (protojson.UnmarshalOptions{}).Unmarshal(js, &b); err != nil {
				t.Fatalf("strict decode: %v\n%s", err, text)
			}
			if err := b.ValidateAll(); err != nil {
				t.Fatalf("Validate: %v", err)
			}

			l := b.GetStaticResources().GetListeners()
			if len(l) != 1 || l[0].GetName() != tt.wantListener {
				t.Fatalf("listeners = %v, want one named %q", l, tt.wantListener)
			}
			if port := l[0].GetAddress().GetSocketAddress().GetPortValue(); port != 0 {
				t.Errorf("listener port = %d, want 0", port)
			}
			var hcm hcmv3.HttpConnectionManager
			if err := l[0].GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(&hcm); err != nil {
				t.Fatalf("HCM typed_config: %v", err)
			}
			if hcm.GetStatPrefix() != tt.wantPrefix || hcm.GetCodecType() != hcmv3.HttpConnectionManager_AUTO {
				t.Errorf("HCM stat_prefix %q codec %v, want %q AUTO", hcm.GetStatPrefix(), hcm.GetCodecType(), tt.wantPrefix)
			}
			route := hcm.GetRouteConfig().GetVirtualHosts()[0].GetRoutes()[0].GetRoute()
			if route.GetCluster() != BackendCluster || route.GetTimeout().AsDuration() != tt.wantRoute {
				t.Errorf("route cluster %q timeout %v, want %q %v", route.GetCluster(), route.GetTimeout().AsDuration(), BackendCluster, tt.wantRoute)
			}

			c := b.GetStaticResources().GetClusters()
			if len(c) != 1 || c[0].GetName() != BackendCluster || c[0].GetConnectTimeout().AsDuration() != tt.wantConnect {
				t.Fatalf("clusters = %v, want one %q with connect_timeout %v", c, BackendCluster, tt.wantConnect)
			}
			sa := c[0].GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
			if got := sa.GetAddress() + ":" + strconv.FormatUint(uint64(sa.GetPortValue()), 10); got != tt.p.BackendAddr {
				t.Errorf("endpoint = %s, want %s", got, tt.p.BackendAddr)
			}
			var po upstreamhttpv3.HttpProtocolOptions
			anyOpts := c[0].GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
			if err := anyOpts.UnmarshalTo(&po); err != nil {
				t.Fatalf("HttpProtocolOptions: %v", err)
			}
			if got := po.GetExplicitHttpConfig().GetHttp2ProtocolOptions() != nil; got != tt.wantHTTP2 {
				t.Errorf("upstream http2 = %v, want %v", got, tt.wantHTTP2)
			}
			if !tt.wantHTTP2 && po.GetExplicitHttpConfig().GetHttpProtocolOptions() == nil {
				t.Error("upstream http_protocol_options missing")
			}
		})
	}
}

func TestBootstrapRejectsBadParams(t *testing.T) {
	tests := []struct {
		name string
		p    BootstrapParams
		want string
	}{
		{"no backend", BootstrapParams{}, "BackendAddr"},
		{"port zero", BootstrapParams{BackendAddr: "127.0.0.1:0"}, "port"},
		{"port too big", BootstrapParams{BackendAddr: "127.0.0.1:70000"}, "port"},
		{"negative timeout", BootstrapParams{BackendAddr: "127.0.0.1:1", RouteTimeout: -time.Second}, "negative"},
		{"unknown protocol", BootstrapParams{BackendAddr: "127.0.0.1:1", UpstreamProtocol: "h3"}, "UpstreamProtocol"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Bootstrap(tt.p)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Bootstrap(%+v) error = %v, want one containing %q", tt.p, err, tt.want)
			}
		})
	}
}
