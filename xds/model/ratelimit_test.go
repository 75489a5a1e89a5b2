package model

import (
	"strings"
	"testing"
	"time"
)

const httpService = header + `kind: Service
metadata: {name: web, namespace: demo}
spec: {protocol: http, port: 8080}
---
` + header + `kind: Service
metadata: {name: db, namespace: demo}
spec: {protocol: tcp, port: 5432}
---
`

func rateLimitDoc(spec string) string {
	return httpService + header + "kind: RateLimitPolicy\nmetadata: {name: rl, namespace: demo}\nspec: " + spec + "\n"
}

func TestRateLimitPolicyParse(t *testing.T) {
	u32 := func(v uint32) *uint32 { return &v }
	tests := []struct {
		name   string
		spec   string
		want   RateLimitPolicySpec
		bucket TokenBucket
	}{
		{"defaults", "{targetRef: {kind: Service, name: web}, requestsPerUnit: 20}",
			RateLimitPolicySpec{RequestsPerUnit: 20, Unit: UnitSecond, Burst: u32(20), Key: KeyGlobal, Engine: EngineNative},
			TokenBucket{MaxTokens: 20, TokensPerFill: 1, FillInterval: 50 * time.Millisecond}},
		{"burst and high rate", "{targetRef: {kind: Service, name: web}, requestsPerUnit: 500, burst: 100}",
			RateLimitPolicySpec{RequestsPerUnit: 500, Unit: UnitSecond, Burst: u32(100), Key: KeyGlobal, Engine: EngineNative},
			TokenBucket{MaxTokens: 100, TokensPerFill: 25, FillInterval: 50 * time.Millisecond}},
		{"slow rate", "{targetRef: {kind: Service, name: web}, requestsPerUnit: 3, burst: 1}",
			RateLimitPolicySpec{RequestsPerUnit: 3, Unit: UnitSecond, Burst: u32(1), Key: KeyGlobal, Engine: EngineNative},
			TokenBucket{MaxTokens: 1, TokensPerFill: 1, FillInterval: 333333333 * time.Nanosecond}},
		{"per minute, explicit engine and key", "{targetRef: {kind: Service, name: web, namespace: demo}, requestsPerUnit: 7, unit: minute, key: global, engine: native}",
			RateLimitPolicySpec{RequestsPerUnit: 7, Unit: UnitMinute, Burst: u32(7), Key: KeyGlobal, Engine: EngineNative},
			TokenBucket{MaxTokens: 7, TokensPerFill: 1, FillInterval: 60 * time.Second / 7}},
		{"rate above 20 per fill interval", "{targetRef: {kind: Service, name: web}, requestsPerUnit: 30, burst: 2}",
			RateLimitPolicySpec{RequestsPerUnit: 30, Unit: UnitSecond, Burst: u32(2), Key: KeyGlobal, Engine: EngineNative},
			TokenBucket{MaxTokens: 2, TokensPerFill: 2, FillInterval: 66666666 * time.Nanosecond}},
		{"wasm keyed by source identity, dry run", "{targetRef: {kind: Service, name: web}, requestsPerUnit: 100, burst: 10, key: source-identity, engine: wasm, dryRun: true}",
			RateLimitPolicySpec{RequestsPerUnit: 100, Unit: UnitSecond, Burst: u32(10), Key: KeySourceIdentity, Engine: EngineWasm, DryRun: true},
			TokenBucket{MaxTokens: 10, TokensPerFill: 5, FillInterval: 50 * time.Millisecond}},
		{"wasm keyed by header", "{targetRef: {kind: Service, name: web}, requestsPerUnit: 60, unit: minute, key: \"header:x-user\", engine: wasm}",
			RateLimitPolicySpec{RequestsPerUnit: 60, Unit: UnitMinute, Burst: u32(60), Key: "header:x-user", Engine: EngineWasm},
			TokenBucket{MaxTokens: 60, TokensPerFill: 1, FillInterval: time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Parse([]byte(rateLimitDoc(tt.spec)), "f.yaml")
			if err != nil {
				t.Fatal(err)
			}
			if len(m.RateLimitPolicies) != 1 {
				t.Fatalf("RateLimitPolicies = %v", m.RateLimitPolicies)
			}
			p := m.RateLimitPolicies[0]
			web := m.Service("web.demo")
			if p.Target != web || m.RateLimitPolicyFor(web) != p {
				t.Errorf("target not resolved: Target=%v RateLimitPolicyFor=%v", p.Target, m.RateLimitPolicyFor(web))
			}
			if m.RateLimitPolicyFor(m.Service("db.demo")) != nil {
				t.Error("RateLimitPolicyFor(db) is not nil")
			}
			got := p.Spec
			got.TargetRef = TargetRef{}
			if got.RequestsPerUnit != tt.want.RequestsPerUnit || got.Unit != tt.want.Unit || got.Burst == nil || *got.Burst != *tt.want.Burst ||
				got.Key != tt.want.Key || got.Engine != tt.want.Engine || got.DryRun != tt.want.DryRun {
				t.Errorf("spec = %+v (burst %v), want %+v (burst %d)", got, got.Burst, tt.want, *tt.want.Burst)
			}
			b := p.Spec.TokenBucket()
			if b != tt.bucket {
				t.Errorf("TokenBucket() = %+v, want %+v", b, tt.bucket)
			}
			if b.FillInterval < minFillInterval {
				t.Errorf("fill interval %v below Envoy's minimum %v", b.FillInterval, minFillInterval)
			}
			// The bucket's rate is the policy's, to within the nanosecond
			// rounding of the interval.
			rate := float64(b.TokensPerFill) / b.FillInterval.Seconds() * unitDuration(tt.want.Unit).Seconds()
			if d := rate - float64(tt.want.RequestsPerUnit); d < -1e-6*rate || d > 1e-6*rate+1e-9 {
				t.Errorf("bucket rate %v per %s, want %d", rate, tt.want.Unit, tt.want.RequestsPerUnit)
			}
		})
	}
}

func TestRateLimitPolicyErrors(t *testing.T) {
	const doc = "f.yaml: document 3 (RateLimitPolicy demo/rl): "
	tests := []struct {
		name  string
		spec  string
		extra string
		want  []string
	}{
		{"missing rate", "{targetRef: {kind: Service, name: web}}", "",
			[]string{doc + "spec.requestsPerUnit: required, at least 1"}},
		{"unknown unit", "{targetRef: {kind: Service, name: web}, requestsPerUnit: 5, unit: hour}", "",
			[]string{doc + "spec.unit: unknown unit \"hour\" (second or minute)"}},
		{"unknown key", "{targetRef: {kind: Service, name: web}, requestsPerUnit: 5, key: cookie}", "",
			[]string{doc + "spec.key: unknown key \"cookie\""}},
		{"header key without name", "{targetRef: {kind: Service, name: web}, requestsPerUnit: 5, key: \"header:\"}", "",
			[]string{doc + "spec.key: \"header:\" names no header"}},
		{"header key upper case", "{targetRef: {kind: Service, name: web}, requestsPerUnit: 5, key: \"header:X-User\"}", "",
			[]string{doc + "spec.key: \"header:X-User\": header name \"X-User\" must be a lower-case HTTP token"}},
		{"native with per-key buckets", "{targetRef: {kind: Service, name: web}, requestsPerUnit: 5, key: source-identity}", "",
			[]string{doc + "spec.key: engine native supports only key global"}},
		{"native with header key", "{targetRef: {kind: Service, name: web}, requestsPerUnit: 5, key: \"header:x-user\", engine: native}", "",
			[]string{doc + "spec.key: engine native supports only key global"}},
		{"module with engine native", "{targetRef: {kind: Service, name: web}, requestsPerUnit: 5, module: {url: \"http://127.0.0.1:80/m.wasm\", sha256: " + strings.Repeat("a", 64) + "}}", "",
			[]string{doc + "spec.module: only engine wasm runs a module (engine is native)"}},
		{"module without port", "{targetRef: {kind: Service, name: web}, requestsPerUnit: 5, engine: wasm, module: {url: \"http://h.example/m.wasm\", sha256: " + strings.Repeat("a", 64) + "}}", "",
			[]string{doc + "spec.module.url: \"http://h.example/m.wasm\": the host needs an explicit port"}},
		{"module over https", "{targetRef: {kind: Service, name: web}, requestsPerUnit: 5, engine: wasm, module: {url: \"https://h.example:443/m.wasm\", sha256: " + strings.Repeat("a", 64) + "}}", "",
			[]string{doc + "spec.module.url: \"https://h.example:443/m.wasm\": want http://HOST:PORT/PATH"}},
		{"module bad digest", "{targetRef: {kind: Service, name: web}, requestsPerUnit: 5, engine: wasm, module: {url: \"http://127.0.0.1:80/m.wasm\", sha256: abc}}", "",
			[]string{doc + "spec.module.sha256: \"abc\" is not a hex SHA-256 digest (64 hex digits)"}},
		{"unknown engine", "{targetRef: {kind: Service, name: web}, requestsPerUnit: 5, engine: lua}", "",
			[]string{doc + "spec.engine: unknown engine \"lua\" (native or wasm)"}},
		{"zero burst", "{targetRef: {kind: Service, name: web}, requestsPerUnit: 5, burst: 0}", "",
			[]string{doc + "spec.burst: 0 is below the 1 tokens added every 200ms"}},
		{"burst below one fill", "{targetRef: {kind: Service, name: web}, requestsPerUnit: 1000, burst: 10}", "",
			[]string{doc + "spec.burst: 10 is below the 50 tokens added every 50ms (1000 per second refilled no more often than every 50ms); use at least 50"}},
		{"tcp target", "{targetRef: {kind: Service, name: db}, requestsPerUnit: 5}", "",
			[]string{doc + "spec.targetRef: Service db.demo is tcp: rate limits apply to HTTP services only"}},
		{"dangling target", "{targetRef: {kind: Service, name: nope}, requestsPerUnit: 5}", "",
			[]string{doc + "spec.targetRef: no Service nope.demo in the mesh file"}},
		{"wrong target kind", "{targetRef: {kind: Workload, name: web}, requestsPerUnit: 5}", "",
			[]string{doc + "spec.targetRef.kind: unsupported kind \"Workload\" (Service)"}},
		{"unknown field", "{targetRef: {kind: Service, name: web}, requestsPerUnit: 5, perSecond: 3}", "",
			[]string{doc + "spec.perSecond: unknown field"}},
		{"negative rate", "{targetRef: {kind: Service, name: web}, requestsPerUnit: -5}", "",
			[]string{doc + "spec.requestsPerUnit: -5 is out of range"}},
		{"two policies for one service", "{targetRef: {kind: Service, name: web}, requestsPerUnit: 5}",
			"---\n" + header + "kind: RateLimitPolicy\nmetadata: {name: rl2, namespace: demo}\nspec: {targetRef: {kind: Service, name: web}, requestsPerUnit: 9}\n",
			[]string{"document 4 (RateLimitPolicy demo/rl2): spec.targetRef: Service web.demo is already the target of document 3 (RateLimitPolicy demo/rl)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(rateLimitDoc(tt.spec)+tt.extra), "f.yaml")
			if err == nil {
				t.Fatal("Parse succeeded, want an error")
			}
			msg := err.Error()
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
		})
	}
}
