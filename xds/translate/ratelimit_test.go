package translate_test

import (
	"testing"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	lrlv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"

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
