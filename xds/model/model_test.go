package model

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"meshd.dev/meshd/examples"
)

func TestParseExample(t *testing.T) {
	m, err := Parse(examples.Mesh, "mesh.yaml")
	if err != nil {
		t.Fatalf("Parse(examples.Mesh): %v", err)
	}
	if got := m.Spec.TrustDomain; got != "example.org" {
		t.Errorf("trustDomain = %q, want example.org", got)
	}
	svc := m.Service("greeter.demo")
	if svc == nil {
		t.Fatal("Service greeter.demo missing")
	}
	server, client := m.Workload("greeter-server.demo"), m.Workload("greeter-client.demo")
	if server == nil || client == nil {
		t.Fatalf("workloads: server %v, client %v", server, client)
	}
	if server.ServiceRef != svc || client.OutboundRefs[0] != svc {
		t.Errorf("references not resolved: server.ServiceRef=%v client.OutboundRefs=%v", server.ServiceRef, client.OutboundRefs)
	}
	if got := m.SPIFFEID(client); got != "spiffe://example.org/ns/demo/sa/greeter-client" {
		t.Errorf("SPIFFEID = %q", got)
	}
	if ws := m.WorkloadsOf(svc); len(ws) != 1 || ws[0] != server {
		t.Errorf("WorkloadsOf(greeter) = %v, want [greeter-server]", ws)
	}
	if ws := m.Warnings(); len(ws) != 0 {
		t.Errorf("the built-in example must raise no warnings, got:\n%s", FormatWarnings(ws))
	}
}

func TestLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	if err := os.WriteFile(path, examples.Mesh, 0o600); err != nil {
		t.Fatal(err)
	}
	m, err := Load(path)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if m.Source != path {
		t.Errorf("Source = %q, want %q", m.Source, path)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml")); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("Load(missing) = %v, want an error naming the file", err)
	}
}

func TestParseDefaults(t *testing.T) {
	m, err := Parse([]byte(`
apiVersion: meshd.dev/v1alpha1
kind: Service
metadata: {name: web}
spec: {protocol: http, port: 8080, endpoints: [{address: 10.0.0.1, port: 80}]}
`), "f.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s := m.Service("web.default")
	if s == nil {
		t.Fatal("namespace did not default to \"default\"")
	}
	if m.Spec.TrustDomain != DefaultTrustDomain {
		t.Errorf("trustDomain = %q, want %q", m.Spec.TrustDomain, DefaultTrustDomain)
	}
	if got := s.SidecarProtocol(); got != "http1" {
		t.Errorf("SidecarProtocol = %q, want http1", got)
	}
	if got := s.HostPort(); got != "web.default:8080" {
		t.Errorf("HostPort = %q", got)
	}
}

const header = "apiVersion: meshd.dev/v1alpha1\n"

const greeter = header + `kind: Service
metadata: {name: greeter, namespace: demo}
spec: {protocol: grpc, port: 50051, serverLimits: {minPingInterval: 10s, maxConcurrentStreams: 100}}
`

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		file string
		// want are substrings of the error, one per expected problem, in order.
		want []string
	}{
		{"unknown top-level field", header + "kind: Service\nmetadata: {name: a}\nspec: {protocol: grpc, port: 1}\nstatus: {}\n",
			[]string{"f.yaml: document 1 (Service default/a): status: unknown field"}},
		{"unknown spec field with path", greeter + "---\n" + header + "kind: Workload\nmetadata: {name: w, namespace: demo}\nspec:\n  serviceAccount: sa\n  outbound: [{service: greeter, port: 1, prot: 2}]\n",
			[]string{"f.yaml: document 2 (Workload demo/w): spec.outbound[0].prot: unknown field"}},
		{"wrong type", header + "kind: Service\nmetadata: {name: a}\nspec: {protocol: grpc, port: \"80\"}\n",
			[]string{"document 1 (Service default/a): spec.port: expected an integer, got string \"80\""}},
		{"every problem reported", header + "kind: Service\nmetadata: {name: a}\nspec: {protocol: grpc, port: -1, bogus: 1}\n",
			[]string{"spec.bogus: unknown field", "spec.port: -1 is out of range"}},
		{"bad duration", greeter + "---\n" + header + "kind: TrafficPolicy\nmetadata: {name: p, namespace: demo}\nspec: {targetRef: {kind: Service, name: greeter}, timeout: 5 seconds}\n",
			[]string{"document 2 (TrafficPolicy demo/p): spec.timeout: invalid duration \"5 seconds\""}},
		{"negative duration", greeter + "---\n" + header + "kind: TrafficPolicy\nmetadata: {name: p, namespace: demo}\nspec: {targetRef: {kind: Service, name: greeter}, connectionPool: {idleTimeout: -1s}}\n",
			[]string{"spec.connectionPool.idleTimeout: negative duration -1s"}},
		{"wrong apiVersion", "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {}\n",
			[]string{"document 1 (Service default/a): apiVersion: unsupported \"v1\""}},
		{"unknown kind", header + "kind: Gateway\nmetadata: {name: a}\nspec: {}\n",
			[]string{"kind: unknown kind \"Gateway\""}},
		{"missing name", header + "kind: Service\nmetadata: {}\nspec: {protocol: grpc, port: 1}\n",
			[]string{"document 1 (Service): metadata.name: required"}},
		{"bad name", header + "kind: Service\nmetadata: {name: Greeter}\nspec: {protocol: grpc, port: 1}\n",
			[]string{"metadata.name: \"Greeter\" must consist of lower-case"}},
		{"not an object", "- a\n- b\n", []string{"document 1: a document must be an object"}},
		{"invalid yaml", "a: [\n", []string{"document 1: invalid YAML"}},
		{"document numbering counts separators", "# only a comment\n---\n" + header + "kind: Service\nmetadata: {name: a}\nspec: {protocol: smtp, port: 1}\n",
			[]string{"document 2 (Service default/a): spec.protocol: unknown protocol \"smtp\""}},
		{"duplicate name", greeter + "---\n" + greeter,
			[]string{"document 2 (Service demo/greeter): metadata.name: duplicate Service demo/greeter (first defined in document 1 (Service demo/greeter))"}},
		{"two Mesh documents", header + "kind: Mesh\nmetadata: {name: a}\n---\n" + header + "kind: Mesh\nmetadata: {name: b}\n",
			[]string{"document 2 (Mesh default/b): a mesh file has at most one Mesh document"}},
		{"http3 for an http service", header + "kind: Service\nmetadata: {name: a}\nspec: {protocol: http, port: 80, upstreamProtocol: http3}\n",
			[]string{"spec.upstreamProtocol: http3 carries grpc and http2 services"}},
		{"unknown upstream protocol", header + "kind: Service\nmetadata: {name: a}\nspec: {protocol: grpc, port: 80, upstreamProtocol: h3}\n",
			[]string{"spec.upstreamProtocol: unknown protocol \"h3\" (http2, http1 or http3)"}},
		{"http3 without mTLS", header + "kind: Mesh\nmetadata: {name: m}\nspec: {mtls: DISABLE}\n---\n" + header + "kind: Service\nmetadata: {name: a}\nspec: {protocol: grpc, port: 80, upstreamProtocol: http3}\n",
			[]string{"document 2 (Service default/a): spec.upstreamProtocol: http3 needs mTLS between sidecars"}},
		{"bad workload address", greeter + "---\n" + header + "kind: Workload\nmetadata: {name: w, namespace: demo}\nspec: {serviceAccount: sa, address: 10.0.0.300}\n",
			[]string{"document 2 (Workload demo/w): spec.address: \"10.0.0.300\" is not an IP address"}},
		{"port clash inside an addressed workload", greeter + "---\n" + header + "kind: Workload\nmetadata: {name: w, namespace: demo}\nspec: {serviceAccount: sa, address: 10.0.0.3, service: greeter, inbound: {port: 15006, app: 127.0.0.1:1}, outbound: [{service: greeter, port: 15006}]}\n",
			[]string{"spec.outbound[0].port: port 15006 is already used by spec.inbound.port"}},
		{"bad service addresses", header + "kind: Service\nmetadata: {name: a}\nspec: {protocol: grpc, port: 80, addresses: [10.96.0.300, 127.0.0.1, 10.96.0.1, 10.96.0.1]}\n",
			[]string{"spec.addresses[0]: \"10.96.0.300\" is not an IP address", "spec.addresses[1]: 127.0.0.1 cannot be a Service's virtual address", "spec.addresses[3]: duplicate address 10.96.0.1 (also spec.addresses[2])"}},
		{"service address taken", header + "kind: Service\nmetadata: {name: a}\nspec: {protocol: grpc, port: 80, addresses: [10.96.0.1]}\n---\n" + header + "kind: Service\nmetadata: {name: b}\nspec: {protocol: tcp, port: 80, addresses: [10.96.0.1]}\n",
			[]string{"document 2 (Service default/b): spec.addresses[0]: 10.96.0.1:80 is already the address of document 1 (Service default/a)"}},
		{"capture port clash", greeter + "---\n" + header + "kind: Workload\nmetadata: {name: w, namespace: demo}\nspec: {serviceAccount: sa, address: 10.0.0.3, service: greeter, inbound: {port: 15006, app: 127.0.0.1:1}, capture: {outboundPort: 15006}}\n",
			[]string{"spec.capture.outboundPort: port 15006 is already used by spec.inbound.port"}},
		{"capture port missing", greeter + "---\n" + header + "kind: Workload\nmetadata: {name: w, namespace: demo}\nspec: {serviceAccount: sa, capture: {}}\n",
			[]string{"spec.capture.outboundPort: required"}},
		{"port out of range", header + "kind: Service\nmetadata: {name: a}\nspec: {protocol: grpc, port: 70000}\n",
			[]string{"spec.port: 70000 is out of range 1..65535"}},
		{"endpoint not an IP", header + "kind: Service\nmetadata: {name: a}\nspec: {protocol: grpc, port: 1, endpoints: [{address: db.local, port: 5}]}\n",
			[]string{"spec.endpoints[0].address: \"db.local\" is not an IP address"}},
		{"dangling workload service", header + "kind: Workload\nmetadata: {name: w}\nspec: {serviceAccount: sa, service: nope, inbound: {port: 1, app: \"127.0.0.1:2\"}}\n",
			[]string{"document 1 (Workload default/w): spec.service: no Service nope.default in the mesh file"}},
		{"dangling outbound", header + "kind: Workload\nmetadata: {name: w}\nspec: {serviceAccount: sa, outbound: [{service: x.y, port: 3}]}\n",
			[]string{"spec.outbound[0].service: no Service x.y in the mesh file"}},
		{"inbound without service", header + "kind: Workload\nmetadata: {name: w}\nspec: {serviceAccount: sa, inbound: {port: 1, app: \"127.0.0.1:2\"}}\n",
			[]string{"spec.service: required when spec.inbound is set"}},
		{"bad app address", greeter + "---\n" + header + "kind: Workload\nmetadata: {name: w, namespace: demo}\nspec: {serviceAccount: sa, service: greeter, inbound: {port: 1, app: localhost}}\n",
			[]string{"spec.inbound.app: \"localhost\" is not host:port"}},
		{"port clash", greeter + "---\n" + header + "kind: Workload\nmetadata: {name: w, namespace: demo}\nspec: {serviceAccount: sa, outbound: [{service: greeter, port: 9}, {service: greeter, port: 9}]}\n",
			[]string{"spec.outbound[1].port: port 9 is already used by spec.outbound[0].port"}},
		{"admin port clash across workloads", greeter + "---\n" + header + "kind: Workload\nmetadata: {name: w, namespace: demo}\nspec: {serviceAccount: sa, outbound: [{service: greeter, port: 9}]}\n---\n" + header + "kind: Workload\nmetadata: {name: v, namespace: demo}\nspec: {serviceAccount: sa, admin: \"127.0.0.1:9\"}\n",
			[]string{"document 3 (Workload demo/v): spec.admin: port 9 is already used by document 2 (Workload demo/w) spec.outbound[0].port"}},
		{"dangling targetRef", header + "kind: TrafficPolicy\nmetadata: {name: p}\nspec: {targetRef: {kind: Service, name: nope}}\n",
			[]string{"document 1 (TrafficPolicy default/p): spec.targetRef: no Service nope.default in the mesh file"}},
		{"targetRef kind", greeter + "---\n" + header + "kind: TrafficPolicy\nmetadata: {name: p, namespace: demo}\nspec: {targetRef: {kind: Workload, name: greeter}}\n",
			[]string{"spec.targetRef.kind: unsupported kind \"Workload\""}},
		{"two policies for one service", greeter + "---\n" + header + "kind: TrafficPolicy\nmetadata: {name: p, namespace: demo}\nspec: {targetRef: {kind: Service, name: greeter}}\n---\n" + header + "kind: TrafficPolicy\nmetadata: {name: q, namespace: demo}\nspec: {targetRef: {kind: Service, name: greeter}}\n",
			[]string{"document 3 (TrafficPolicy demo/q): spec.targetRef: Service greeter.demo is already the target of document 2"}},
		{"keepalive timeout not below interval", header + "kind: Mesh\nmetadata: {name: m}\nspec: {defaults: {http2: {keepalive: {interval: 10s, timeout: 10s}}}}\n",
			[]string{"document 1 (Mesh default/m): spec.defaults.http2.keepalive.timeout: 10s must be shorter than interval 10s"}},
		{"keepalive pair across documents", header + "kind: Mesh\nmetadata: {name: m}\nspec: {defaults: {http2: {keepalive: {interval: 10s, timeout: 2s}}}}\n---\n" + greeter + "---\n" + header + "kind: TrafficPolicy\nmetadata: {name: p, namespace: demo}\nspec: {targetRef: {kind: Service, name: greeter}, http2: {keepalive: {timeout: 20s}}}\n",
			[]string{"document 3 (TrafficPolicy demo/p): spec.http2.keepalive.timeout: 20s must be shorter than interval 10s (with spec.defaults of the Mesh)"}},
		{"keepalive without interval", header + "kind: Mesh\nmetadata: {name: m}\nspec: {defaults: {http2: {keepalive: {timeout: 2s}}}}\n",
			[]string{"spec.defaults.http2.keepalive.interval: required with keepalive"}},
		{"windows out of range", header + "kind: Mesh\nmetadata: {name: m}\nspec: {defaults: {http2: {initialStreamWindowSize: 1000, initialConnectionWindowSize: 2147483648}}}\n",
			[]string{"spec.defaults.http2.initialStreamWindowSize: 1000 is outside the HTTP/2 window range 65535..2147483647",
				"spec.defaults.http2.initialConnectionWindowSize: 2147483648 is outside"}},
		{"zero streams", header + "kind: Mesh\nmetadata: {name: m}\nspec: {defaults: {http2: {maxConcurrentStreams: 0}}}\n",
			[]string{"spec.defaults.http2.maxConcurrentStreams: 0 is out of range 1..2147483647"}},
		{"pool zeros", header + "kind: Mesh\nmetadata: {name: m}\nspec: {defaults: {connectionPool: {maxConnections: 0, maxRequests: 0, connectTimeout: 0s}}}\n",
			[]string{"connectionPool.maxConnections: must be at least 1", "connectionPool.maxRequests: must be at least 1", "connectionPool.connectTimeout: 0s is shorter than the minimum 1ms"}},
		{"retries", header + "kind: Mesh\nmetadata: {name: m}\nspec: {defaults: {retries: {attempts: 11, retryOn: [5xx, sometimes], budgetPercent: 0}}}\n",
			[]string{"spec.defaults.retries.attempts: 11 is more than 10", "spec.defaults.retries.retryOn[1]: unknown retry condition \"sometimes\"", "spec.defaults.retries.budgetPercent: 0 is out of range (0, 100]"}},
		{"load balancer", header + "kind: Mesh\nmetadata: {name: m}\nspec: {defaults: {loadBalancer: maglev}}\n",
			[]string{"spec.defaults.loadBalancer: unknown load balancer \"maglev\""}},
		{"tcp with http settings", header + "kind: Service\nmetadata: {name: db}\nspec: {protocol: tcp, port: 5432}\n---\n" + header + "kind: TrafficPolicy\nmetadata: {name: p}\nspec: {targetRef: {kind: Service, name: db}, timeout: 1s}\n",
			[]string{"document 2 (TrafficPolicy default/p): spec: http2, retries and timeout do not apply to tcp Service db.default"}},
		{"trust domain", header + "kind: Mesh\nmetadata: {name: m}\nspec: {trustDomain: Example.ORG}\n",
			[]string{"spec.trustDomain: \"Example.ORG\" is not a SPIFFE trust domain"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Parse([]byte(tt.file), "f.yaml")
			if err == nil {
				t.Fatalf("Parse succeeded (%d services), want errors %q", len(m.Services), tt.want)
			}
			var me *Error
			if !errors.As(err, &me) {
				t.Fatalf("error %T is not *model.Error: %v", err, err)
			}
			if len(me.Problems) != len(tt.want) {
				t.Errorf("got %d problems, want %d:\n%v", len(me.Problems), len(tt.want), err)
			}
			for i, w := range tt.want {
				if i < len(me.Problems) && !strings.Contains(me.Problems[i].String(), w) {
					t.Errorf("problem %d = %q, want it to contain %q", i, me.Problems[i], w)
				}
			}
			for _, p := range me.Problems {
				if p.Source != "f.yaml" || (p.Document == "" && len(tt.file) > 0) {
					t.Errorf("problem %q does not name the file and document", p)
				}
				// Index is the N of "document N", so a caller can map a
				// problem back to the document without parsing its label.
				n := "document " + strconv.Itoa(p.Index)
				if p.Document != "" && p.Document != n && !strings.HasPrefix(p.Document, n+" ") || p.Document == "" && p.Index != 0 {
					t.Errorf("problem %q has Index %d", p, p.Index)
				}
			}
		})
	}
}

func u32(v uint32) *uint32 { return &v }

func TestEffectivePolicy(t *testing.T) {
	m, err := Parse([]byte(header+`kind: Mesh
metadata: {name: m}
spec:
  defaults:
    http2: {maxConcurrentStreams: 50, keepalive: {interval: 30s, timeout: 5s}}
    connectionPool: {maxConnections: 2}
    loadBalancer: random
---
`+greeter+`---
`+header+`kind: TrafficPolicy
metadata: {name: p, namespace: demo}
spec:
  targetRef: {kind: Service, name: greeter}
  http2: {keepalive: {interval: 20s}}
  loadBalancer: least_request
---
`+header+`kind: Service
metadata: {name: other, namespace: demo}
spec: {protocol: http, port: 80}
`), "f.yaml")
	if err != nil {
		t.Fatal(err)
	}
	g := m.EffectivePolicy(m.Service("greeter.demo"))
	if g.HTTP2.MaxConcurrentStreams == nil || *g.HTTP2.MaxConcurrentStreams != 50 {
		t.Errorf("maxConcurrentStreams not kept from defaults: %+v", g.HTTP2)
	}
	if k := g.HTTP2.Keepalive; k.Interval.D() != 20*time.Second || k.Timeout.D() != 5*time.Second {
		t.Errorf("keepalive = %s/%s, want 20s (policy) / 5s (defaults)", k.Interval, k.Timeout)
	}
	if g.LoadBalancer != LBLeastRequest || *g.ConnectionPool.MaxConnections != 2 {
		t.Errorf("lb %q maxConnections %d", g.LoadBalancer, *g.ConnectionPool.MaxConnections)
	}
	// The overlay must not have written into the defaults.
	if d := m.Spec.Defaults.HTTP2.Keepalive.Interval.D(); d != 30*time.Second {
		t.Errorf("defaults modified: interval %s", d)
	}
	o := m.EffectivePolicy(m.Service("other.demo"))
	if o.LoadBalancer != LBRandom || o.HTTP2.Keepalive.Interval.D() != 30*time.Second {
		t.Errorf("other service policy = %+v, want the defaults", o)
	}
	o.HTTP2.MaxConcurrentStreams = u32(1)
	if *m.Spec.Defaults.HTTP2.MaxConcurrentStreams != 50 {
		t.Error("EffectivePolicy result shares structs with the mesh")
	}
}

func TestWarnings(t *testing.T) {
	m, err := Parse([]byte(header+`kind: Mesh
metadata: {name: m}
spec:
  defaults:
    http2: {keepalive: {interval: 5s, timeout: 2s}}
---
`+greeter+`---
`+header+`kind: TrafficPolicy
metadata: {name: p, namespace: demo}
spec:
  targetRef: {kind: Service, name: greeter}
  connectionPool: {maxConnections: 2, maxRequests: 500}
  timeout: 2s
  retries: {attempts: 2, perTryTimeout: 1s}
`), "f.yaml")
	if err != nil {
		t.Fatal(err)
	}
	got := m.Warnings()
	want := []string{
		"f.yaml: document 1 (Mesh default/m): spec.defaults.http2.keepalive.interval: Service demo/greeter: keepalive interval 5s is below the servers' serverLimits.minPingInterval 10s",
		"f.yaml: document 1 (Mesh default/m): spec.defaults.http2.keepalive.interval: Service demo/greeter: keepalive interval 5s is below 3 × timeout 2s = 6s",
		"f.yaml: document 3 (TrafficPolicy demo/p): spec.connectionPool.maxConnections: Service demo/greeter: maxConnections 2 × serverLimits.maxConcurrentStreams 100 = 200 is below maxRequests 500",
		"f.yaml: document 3 (TrafficPolicy demo/p): spec.retries.perTryTimeout: Service demo/greeter: perTryTimeout 1s × (attempts 2 + 1) = 3s exceeds timeout 2s",
	}
	if len(got) != len(want) {
		t.Fatalf("got %d warnings, want %d:\n%s", len(got), len(want), FormatWarnings(got))
	}
	for i, w := range want {
		if !strings.HasPrefix(got[i].String(), w) {
			t.Errorf("warning %d = %q\nwant prefix     %q", i, got[i], w)
		}
	}
}

func TestSplitDocuments(t *testing.T) {
	tests := []struct {
		in   string
		want []string // "" for an empty document
	}{
		{"a: 1\n", []string{"a: 1\n"}},
		{"---\na: 1\n---\nb: 2\n", []string{"a: 1\n", "b: 2\n"}},
		{"a: 1\n--- # next\nb: 2\n---\n", []string{"a: 1\n", "b: 2\n"}},
		{"a: 1\n---\n# nothing\n---\nb: 2", []string{"a: 1\n", "", "b: 2"}},
		{"a: \"---\"\n----\n", []string{"a: \"---\"\n----\n"}},
	}
	for _, tt := range tests {
		got := splitDocuments([]byte(tt.in))
		gs := make([]string, len(got))
		for i, d := range got {
			gs[i] = string(d)
		}
		if !slices.Equal(gs, tt.want) {
			t.Errorf("splitDocuments(%q) = %q, want %q", tt.in, gs, tt.want)
		}
	}
}

// TestWorkloadAddress checks that workloads with their own network
// namespace (spec.address, as on Kubernetes) may reuse each other's ports.
func TestWorkloadAddress(t *testing.T) {
	pod := func(name, ip string) string {
		return header + "kind: Workload\nmetadata: {name: " + name + ", namespace: demo}\nspec: {serviceAccount: sa, address: " + ip + ", service: greeter, inbound: {port: 15006, app: 127.0.0.1:50051}, outbound: [{service: greeter, port: 15201}]}\n"
	}
	m, err := Parse([]byte(greeter+"---\n"+pod("a", "10.0.0.1")+"---\n"+pod("b", "fd00::2")), "f.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Workload("b.demo").Spec.Address; got != "fd00::2" {
		t.Fatalf("address = %q", got)
	}
}
