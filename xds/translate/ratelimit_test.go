package translate_test

import (
	"encoding/json"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	lrlv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	wasmfv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"meshd.dev/meshd/filters/localratelimit"
	"meshd.dev/meshd/xds/translate"
)

func TestRateLimitPolicyLocalRateLimit(t *testing.T) {
	const (
		rl    = "---\napiVersion: meshd.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: api-limit, namespace: prod}\n"
		authz = "---\napiVersion: meshd.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: prod}\nspec: {targetRef: {kind: Service, name: api}, allow: [\"spiffe://td.test/ns/web/sa/web\"]}\n"
	)
	tests := []struct {
		name  string
		extra string
		// want are the inbound http_filters of api-0, in order.
		want   []string
		bucket [3]int64 // max_tokens, tokens_per_fill, fill_interval (ns)
	}{
		{"limit alone", rl + "spec: {targetRef: {kind: Service, name: api}, requestsPerUnit: 20, burst: 20}\n",
			[]string{translate.LocalRateLimitFilterName, translate.RouterFilterName}, [3]int64{20, 1, int64(50 * time.Millisecond)}},
		{"after RBAC", rl + "spec: {targetRef: {kind: Service, name: api}, requestsPerUnit: 500}\n" + authz,
			[]string{translate.RBACFilterName, translate.LocalRateLimitFilterName, translate.RouterFilterName}, [3]int64{500, 25, int64(50 * time.Millisecond)}},
		{"per minute", rl + "spec: {targetRef: {kind: Service, name: api}, requestsPerUnit: 120, unit: minute, burst: 30}\n",
			[]string{translate.LocalRateLimitFilterName, translate.RouterFilterName}, [3]int64{30, 1, int64(500 * time.Millisecond)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := modeMesh(t, "PERMISSIVE", tt.extra)
			res := translateOK(t, m)
			chains := httpFilters(t, findNamed[*listenerv3.Listener](t, res.Nodes["api-0.prod"].Listeners, "inbound|17001"))
			if len(chains) != 2 {
				t.Fatalf("PERMISSIVE inbound has %d chains, want 2", len(chains))
			}
			for _, chain := range chains {
				var names []string
				for _, f := range chain {
					names = append(names, f.GetName())
				}
				if len(names) != len(tt.want) {
					t.Fatalf("http_filters = %v, want %v", names, tt.want)
				}
				for i := range names {
					if names[i] != tt.want[i] {
						t.Fatalf("http_filters = %v, want %v", names, tt.want)
					}
				}
				var cfg lrlv3.LocalRateLimit
				if err := chain[len(chain)-2].GetTypedConfig().UnmarshalTo(&cfg); err != nil {
					t.Fatal(err)
				}
				tb := cfg.GetTokenBucket()
				got := [3]int64{int64(tb.GetMaxTokens()), int64(tb.GetTokensPerFill().GetValue()), int64(tb.GetFillInterval().AsDuration())}
				if got != tt.bucket {
					t.Errorf("token_bucket = %v, want %v", got, tt.bucket)
				}
				if cfg.GetStatPrefix() != "rate_limit_policy_prod_api-limit" || !cfg.GetRateLimitedAsResourceExhausted() ||
					cfg.GetFilterEnabled().GetDefaultValue().GetNumerator() != 100 || cfg.GetFilterEnforced().GetDefaultValue().GetNumerator() != 100 {
					t.Errorf("config = %v: want stat_prefix rate_limit_policy_prod_api-limit, enabled and enforced 100%%, RESOURCE_EXHAUSTED", &cfg)
				}
				// The sidecar's filter accepts exactly this config.
				if _, err := localratelimit.Compile(&cfg, nil); err != nil {
					t.Errorf("localratelimit.Compile: %v", err)
				}
			}
			// Other listeners get no limiter: the caller's outbound side and
			// the tcp service's inbound.
			for _, chain := range httpFilters(t, findNamed[*listenerv3.Listener](t, res.Nodes["web.web"].Listeners, "outbound|17100")) {
				if len(chain) != 1 {
					t.Errorf("outbound http_filters = %v, want only the router", chain)
				}
			}
		})
	}
}

func TestRateLimitPolicyWasm(t *testing.T) {
	const rl = "---\napiVersion: meshd.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: api-limit, namespace: prod}\n"
	sum := strings.Repeat("ab", 32)
	mod := &translate.WasmModule{URL: "http://127.0.0.1:15014/wasm/ratelimit-" + sum + ".wasm", SHA256: sum}
	tests := []struct {
		name, spec string
		want       translate.RateLimitPluginConfig
	}{
		{"by source identity", "{targetRef: {kind: Service, name: api}, requestsPerUnit: 100, burst: 10, key: source-identity, engine: wasm}",
			translate.RateLimitPluginConfig{RequestsPerUnit: 100, Unit: "second", Burst: 10, Key: "source-identity"}},
		{"by header per minute, dry run", "{targetRef: {kind: Service, name: api}, requestsPerUnit: 60, unit: minute, key: \"header:x-user\", engine: wasm, dryRun: true}",
			translate.RateLimitPluginConfig{RequestsPerUnit: 60, Unit: "minute", Burst: 60, Key: "header:x-user", DryRun: true}},
		{"module of the policy", "{targetRef: {kind: Service, name: api}, requestsPerUnit: 5, engine: wasm, module: {url: \"http://10.1.2.3:8080/rl.wasm\", sha256: " + strings.Repeat("cd", 32) + "}}",
			translate.RateLimitPluginConfig{RequestsPerUnit: 5, Unit: "second", Burst: 5, Key: "global"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := modeMesh(t, "STRICT", rl+"spec: "+tt.spec+"\n")
			res, err := translate.TranslateWith(m, translate.Options{RateLimitModule: mod})
			if err != nil {
				t.Fatal(err)
			}
			api := res.Nodes["api-0.prod"]
			wantURL, wantSum, wantEP := mod.URL, sum, "127.0.0.1:15014"
			if strings.Contains(tt.spec, "module:") {
				wantURL, wantSum, wantEP = "http://10.1.2.3:8080/rl.wasm", strings.Repeat("cd", 32), "10.1.2.3:8080"
			}
			for _, chain := range httpFilters(t, findNamed[*listenerv3.Listener](t, api.Listeners, "inbound|17001")) {
				if len(chain) != 2 || chain[0].GetName() != translate.WasmFilterName || chain[1].GetName() != translate.RouterFilterName {
					t.Fatalf("http_filters = %v, want wasm then router", chain)
				}
				var w wasmfv3.Wasm
				if err := chain[0].GetTypedConfig().UnmarshalTo(&w); err != nil {
					t.Fatal(err)
				}
				pc := w.GetConfig()
				vc := pc.GetVmConfig()
				remote := vc.GetCode().GetRemote()
				//lint:ignore SA1019 checks the fail_open the translation sends (xds/translate/ratelimit.go)
				if pc.GetName() != "rate_limit_policy_prod_api-limit" || !pc.GetFailOpen() || vc.GetVmId() != translate.RateLimitVMID ||
					vc.GetRuntime() != translate.WasmRuntime || remote.GetSha256() != wantSum || remote.GetHttpUri().GetUri() != wantURL ||
					remote.GetHttpUri().GetCluster() != translate.ModuleClusterName || remote.GetHttpUri().GetTimeout().AsDuration() <= 0 {
					t.Errorf("wasm config = %v", pc)
				}
				var conf wrapperspb.StringValue
				if err := pc.GetConfiguration().UnmarshalTo(&conf); err != nil {
					t.Fatalf("configuration: %v", err)
				}
				var got translate.RateLimitPluginConfig
				dec := json.NewDecoder(strings.NewReader(conf.GetValue()))
				dec.DisallowUnknownFields()
				if err := dec.Decode(&got); err != nil || got != tt.want {
					t.Errorf("plugin configuration %s = %+v (%v), want %+v", conf.GetValue(), got, err, tt.want)
				}
			}
			c := findNamed[*clusterv3.Cluster](t, api.Clusters, translate.ModuleClusterName)
			ep := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
			if c.GetType() != clusterv3.Cluster_STATIC || net.JoinHostPort(ep.GetAddress(), strconv.Itoa(int(ep.GetPortValue()))) != wantEP {
				t.Errorf("module cluster = %v", c)
			}
			for _, r := range res.Nodes["web.web"].Clusters {
				if r.(*clusterv3.Cluster).GetName() == translate.ModuleClusterName {
					t.Error("web.web, which runs no wasm filter, got the module cluster")
				}
			}
		})
	}
}

func TestRateLimitPolicyWasmErrors(t *testing.T) {
	const policy = "---\napiVersion: meshd.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: api-limit, namespace: prod}\n" +
		"spec: {targetRef: {kind: Service, name: api}, requestsPerUnit: 5, engine: wasm}\n"
	sum := strings.Repeat("0f", 32)
	tests := []struct {
		name string
		mod  *translate.WasmModule
		want string
	}{
		{"no module", nil, "RateLimitPolicy prod/api-limit: spec.engine wasm: the control plane has no rate-limit module to serve (meshd control-plane --ratelimit-wasm FILE)"},
		{"bad digest", &translate.WasmModule{URL: "http://127.0.0.1:1/m.wasm", SHA256: "abc"}, `rate-limit module: sha256 "abc" is not a hex SHA-256 digest`},
		{"https", &translate.WasmModule{URL: "https://127.0.0.1:1/m.wasm", SHA256: sum}, `want http://HOST:PORT/PATH`},
		{"no port", &translate.WasmModule{URL: "http://cp.example/m.wasm", SHA256: sum}, `host needs an explicit port`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := translate.TranslateWith(modeMesh(t, "STRICT", policy), translate.Options{RateLimitModule: tt.mod})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("TranslateWith error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}
