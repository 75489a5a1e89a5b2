package translate

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	lrlv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	wasmfv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	wasmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/wasm/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"meshd.dev/meshd/xds/model"
)

// Names of the filters a RateLimitPolicy becomes.
const (
	// LocalRateLimitFilterName is the HTTP filter of engine native.
	LocalRateLimitFilterName = "envoy.filters.http.local_ratelimit"
	// WasmFilterName is the HTTP filter of engine wasm.
	WasmFilterName = "envoy.filters.http.wasm"
)

// The engine wasm filter's fixed settings.
const (
	// RateLimitVMID is the vm_id of the rate-limit plugin: its buckets live
	// in that VM id's shared data, common to every VM instance of a
	// sidecar.
	RateLimitVMID = "meshd.ratelimit"
	// WasmRuntime is the vm_config.runtime emitted, so that Envoy runs the
	// same resources; meshd runs every runtime name on wazero.
	WasmRuntime = "envoy.wasm.runtime.v8"
	// ModuleClusterName is the STATIC (or STRICT_DNS) cluster to the host
	// serving WASM modules, named by the wasm filter's
	// vm_config.code.remote.http_uri.cluster. Envoy fetches the module
	// through it; meshd fetches http_uri.uri directly.
	ModuleClusterName = "meshd_control_plane_http"
	// moduleFetchTimeout is http_uri.timeout of module fetches.
	moduleFetchTimeout = 10 * time.Second
)

// Options are a translation's inputs that do not come from the mesh file.
// The zero value translates every mesh that needs nothing outside it.
type Options struct {
	// RateLimitModule is the rate-limit guest (filters/ratelimit/guest)
	// sidecars fetch for RateLimitPolicies with engine wasm. When nil, a
	// mesh with such a policy is a translation error naming it.
	RateLimitModule *WasmModule
	// Tuning is what closed-loop tuning learned (xds/autotune), laid over
	// each Service's effective policy for the aspects its autoTune
	// enables. Nil gives the mesh file's values.
	Tuning Tuning
}

// WasmModule is a proxy-wasm module sidecars fetch over HTTP.
type WasmModule struct {
	// URL is the module's http:// address (host:port with an explicit
	// port). It becomes http_uri.uri, and its host:port the endpoint of
	// ModuleClusterName.
	URL string
	// SHA256 is the module's hex SHA-256 digest: vm_config.code.remote.sha256.
	// A sidecar that fetches different bytes rejects (NACKs) the listener
	// and keeps its previous config.
	SHA256 string
}

// check validates m and returns its URL's host and port.
func (m *WasmModule) check() (string, uint32, error) {
	if b, err := hex.DecodeString(m.SHA256); err != nil || len(b) != 32 {
		return "", 0, fmt.Errorf("sha256 %q is not a hex SHA-256 digest", m.SHA256)
	}
	u, err := url.Parse(m.URL)
	if err != nil {
		return "", 0, fmt.Errorf("url: %w", err)
	}
	if u.Scheme != "http" || u.Host == "" || u.User != nil {
		return "", 0, fmt.Errorf("url %q: want http://HOST:PORT/PATH", m.URL)
	}
	host, p, err := net.SplitHostPort(u.Host)
	if err != nil {
		return "", 0, fmt.Errorf("url %q: host needs an explicit port: %w", m.URL, err)
	}
	port, err := strconv.ParseUint(p, 10, 16)
	if err != nil || port == 0 {
		return "", 0, fmt.Errorf("url %q: port %q is not in 1..65535", m.URL, p)
	}
	return host, uint32(port), nil
}

// RateLimitStatPrefix is the stat prefix of a RateLimitPolicy: with engine
// native its stats are
// <prefix>.http_local_rate_limit.{enabled,ok,rate_limited,enforced}; with
// engine wasm it is the plugin's name (the guest's counters are
// wasmcustom.wasm_ratelimit.*).
func RateLimitStatPrefix(p *model.RateLimitPolicy) string {
	return "rate_limit_policy_" + p.Metadata.Namespace + "_" + p.Metadata.Name
}

// rateLimitFilter is the limiter of svc's inbound listeners, or nil when
// no RateLimitPolicy targets svc.
func (t *translator) rateLimitFilter(svc *model.Service) []*hcmv3.HttpFilter {
	p := t.m.RateLimitPolicyFor(svc)
	switch {
	case p == nil:
		return nil
	case p.Spec.Engine == model.EngineWasm:
		return t.wasmRateLimitFilter(p)
	}
	return t.localRateLimitFilter(p)
}

// localRateLimitFilter is an envoy.filters.http.local_ratelimit with the
// policy's token bucket, enabled for every request and enforced for every
// request unless dryRun, answering gRPC calls with RESOURCE_EXHAUSTED.
// Validation admits engine native with key global only, so one
// listener-level bucket is exactly the policy.
func (t *translator) localRateLimitFilter(p *model.RateLimitPolicy) []*hcmv3.HttpFilter {
	b := p.Spec.TokenBucket()
	percent := func(n uint32) *corev3.RuntimeFractionalPercent {
		return &corev3.RuntimeFractionalPercent{
			DefaultValue: &typev3.FractionalPercent{Numerator: n, Denominator: typev3.FractionalPercent_HUNDRED},
		}
	}
	enforced := uint32(100)
	if p.Spec.DryRun {
		enforced = 0
	}
	cfg := &lrlv3.LocalRateLimit{
		StatPrefix: RateLimitStatPrefix(p),
		TokenBucket: &typev3.TokenBucket{
			MaxTokens:     b.MaxTokens,
			TokensPerFill: wrapperspb.UInt32(b.TokensPerFill),
			FillInterval:  durationpb.New(b.FillInterval),
		},
		FilterEnabled:                  percent(100),
		FilterEnforced:                 percent(enforced),
		EnableXRatelimitHeaders:        ratelimitv3.XRateLimitHeadersRFCVersion_DRAFT_VERSION_03,
		RateLimitedAsResourceExhausted: true,
	}
	return []*hcmv3.HttpFilter{{
		Name:       LocalRateLimitFilterName,
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: t.typed(cfg)},
	}}
}

// RateLimitPluginConfig is the rate-limit guest's plugin configuration
// (filters/ratelimit/guest), as the wasm filter's configuration carries
// it in a google.protobuf.StringValue.
type RateLimitPluginConfig struct {
	RequestsPerUnit uint32 `json:"requests_per_unit"`
	Unit            string `json:"unit"`
	Burst           uint32 `json:"burst"`
	Key             string `json:"key"`
	DryRun          bool   `json:"dry_run"`
	// XRateLimitHeaders is the guest's enable_x_ratelimit_headers (the
	// name and values of Envoy's local_ratelimit field, default OFF: the
	// x-ratelimit-* headers go on rejected responses only;
	// DRAFT_VERSION_03 adds them to every response). Policies leave it
	// OFF: headers on every admitted response cost a second guest entry
	// and three header host calls per request, about three times the
	// filter's own CPU (docs/RATIONALE.md).
	XRateLimitHeaders string `json:"enable_x_ratelimit_headers,omitempty"`
}

// wasmRateLimitFilter is an envoy.filters.http.wasm running the
// rate-limit module of the policy's spec.module, else of
// Options.RateLimitModule, fetched remotely and
// checked against its sha256, with the policy as plugin configuration.
// fail_open is true: a limiter whose VM failed lets requests through
// (counted in wasm.<vm_id>.fail_open) rather than failing the service it
// protects.
func (t *translator) wasmRateLimitFilter(p *model.RateLimitPolicy) []*hcmv3.HttpFilter {
	mod := t.opts.RateLimitModule
	if ref := p.Spec.Module; ref != nil {
		mod = &WasmModule{URL: ref.URL, SHA256: ref.SHA256}
	}
	if mod == nil {
		t.fail(noModule(p))
		return nil
	}
	if _, _, err := mod.check(); err != nil {
		t.fail(fmt.Errorf("translate: rate-limit module: %w", err))
		return nil
	}
	conf, err := json.Marshal(RateLimitPluginConfig{
		RequestsPerUnit: p.Spec.RequestsPerUnit, Unit: p.Spec.Unit, Burst: *p.Spec.Burst,
		Key: p.Spec.Key, DryRun: p.Spec.DryRun,
	})
	if err != nil {
		t.fail(fmt.Errorf("translate: %s: plugin configuration: %w", policyLabel(p), err))
		return nil
	}
	t.moduleHost = mod
	cfg := &wasmfv3.Wasm{Config: &wasmv3.PluginConfig{
		Name: RateLimitStatPrefix(p),
		Vm: &wasmv3.PluginConfig_VmConfig{VmConfig: &wasmv3.VmConfig{
			VmId:    RateLimitVMID,
			Runtime: WasmRuntime,
			Code: &corev3.AsyncDataSource{Specifier: &corev3.AsyncDataSource_Remote{Remote: &corev3.RemoteDataSource{
				HttpUri: &corev3.HttpUri{
					Uri:              mod.URL,
					HttpUpstreamType: &corev3.HttpUri_Cluster{Cluster: ModuleClusterName},
					Timeout:          durationpb.New(moduleFetchTimeout),
				},
				Sha256: mod.SHA256,
			}}},
		}},
		Configuration: t.typed(wrapperspb.String(string(conf))),
		//lint:ignore SA1019 the sidecar's wasm filter takes fail_open and refuses failure_policy (filters/wasm), so the control plane sends fail_open
		FailOpen: true,
	}}
	return []*hcmv3.HttpFilter{{
		Name:       WasmFilterName,
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: t.typed(cfg)},
	}}
}

// checkRateLimitModules fails the translation when a policy with engine
// wasm has no module, whether or not a Workload serves its target yet.
func (t *translator) checkRateLimitModules() {
	for _, p := range t.m.RateLimitPolicies {
		if p.Spec.Engine == model.EngineWasm && p.Spec.Module == nil && t.opts.RateLimitModule == nil {
			t.fail(noModule(p))
			return
		}
	}
}

func noModule(p *model.RateLimitPolicy) error {
	return fmt.Errorf("translate: %s: spec.engine wasm: the control plane has no rate-limit module to serve (meshd control-plane --ratelimit-wasm FILE)", policyLabel(p))
}

// moduleCluster is the cluster ModuleClusterName to the host serving mod.
func (t *translator) moduleCluster(mod *WasmModule) *clusterv3.Cluster {
	host, port, err := mod.check()
	if err != nil {
		t.fail(fmt.Errorf("translate: rate-limit module: %w", err))
		return nil
	}
	c := &clusterv3.Cluster{
		Name:           ModuleClusterName,
		ConnectTimeout: durationpb.New(time.Second),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: ModuleClusterName,
			Endpoints:   []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{lbEndpoint(host, port, 1)}}},
		},
	}
	if _, err := netip.ParseAddr(host); err == nil {
		c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}
	} else {
		c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS}
	}
	return c
}

// policyLabel names p in errors.
func policyLabel(p *model.RateLimitPolicy) string {
	return "RateLimitPolicy " + p.Metadata.Namespace + "/" + p.Metadata.Name
}
