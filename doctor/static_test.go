package doctor

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"meshd.dev/meshd/examples"
)

// service is a grpc Service with server limits; policy is a TrafficPolicy
// spec body (indented two spaces) appended to it, and defaults a Mesh
// spec.defaults body.
func meshFile(defaults, policy string) string {
	var b strings.Builder
	if defaults != "" {
		b.WriteString("apiVersion: meshd.dev/v1alpha1\nkind: Mesh\nmetadata: {name: m}\nspec:\n  defaults:\n" + defaults + "---\n")
	}
	b.WriteString(`apiVersion: meshd.dev/v1alpha1
kind: Service
metadata: {name: greeter, namespace: demo}
spec:
  protocol: grpc
  port: 50051
  serverLimits: {minPingInterval: 10s, maxConcurrentStreams: 100}
`)
	if policy != "" {
		b.WriteString("---\napiVersion: meshd.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: greeter, namespace: demo}\nspec:\n  targetRef: {kind: Service, name: greeter}\n" + policy)
	}
	return b.String()
}

// http3Service makes mesh's greeter an upstreamProtocol http3 service.
func http3Service(mesh string) string {
	return strings.Replace(mesh, "  port: 50051\n", "  port: 50051\n  upstreamProtocol: http3\n", 1)
}

// healthy is a policy that fires no rule above info.
const healthy = `  http2:
    keepalive: {interval: 30s, timeout: 5s}
  connectionPool: {idleTimeout: 5m, connectTimeout: 1s}
  outlierDetection: {consecutive5xx: 5}
  timeout: 10s
`

func TestStaticRules(t *testing.T) {
	tests := []struct {
		name     string
		mesh     string
		rule     string
		scenario string
		severity Severity
		evidence string // substring
		fix      string // substring
	}{
		{"keepalive below the servers' min ping interval", meshFile("", strings.Replace(healthy, "interval: 30s, timeout: 5s", "interval: 5s, timeout: 1s", 1)),
			"keepalive-below-min-ping", S2, Warning, "interval 5s is below the servers' serverLimits.minPingInterval 10s", "TrafficPolicy demo/greeter: spec.http2.keepalive.interval: 10s"},
		{"keepalive interval under 3 × timeout, from the Mesh defaults", meshFile("    http2:\n      keepalive: {interval: 20s, timeout: 10s}\n", strings.Replace(healthy, "    keepalive: {interval: 30s, timeout: 5s}\n", "    maxConcurrentStreams: 100\n", 1)),
			"keepalive-interval-vs-timeout", S10, Warning, "below 3 × timeout 10s = 30s", "Mesh m: spec.defaults.http2.keepalive.interval: 30s"},
		{"no keepalive", meshFile("", strings.Replace(healthy, "    keepalive: {interval: 30s, timeout: 5s}\n", "    maxConcurrentStreams: 100\n", 1)),
			"no-keepalive", S10, Info, "no HTTP/2 keepalive", "spec.http2.keepalive: {interval: 30s, timeout: 5s}"},
		{"pool below the servers' capacity", meshFile("", strings.Replace(healthy, "idleTimeout: 5m,", "idleTimeout: 5m, maxConnections: 2, maxRequests: 1000,", 1)),
			"pool-below-peer-capacity", S1, Warning, "maxConnections 2 × serverLimits.maxConcurrentStreams 100 = 200 streams, below maxRequests 1000", "spec.connectionPool.maxConnections: 10"},
		{"no pending queue", meshFile("", strings.Replace(healthy, "idleTimeout: 5m,", "idleTimeout: 5m, maxPendingRequests: 0,", 1)),
			"no-pending-queue", S11, Warning, "maxPendingRequests 0", "spec.connectionPool.maxPendingRequests: 1024"},
		{"one request per connection over HTTP/2", meshFile("", strings.Replace(healthy, "idleTimeout: 5m,", "idleTimeout: 5m, maxRequestsPerConnection: 1,", 1)),
			"max-requests-per-connection", S1, Error, "maxRequestsPerConnection 1", "spec.connectionPool.maxRequestsPerConnection: remove it"},
		{"few requests per connection over HTTP/1.1", strings.Replace(meshFile("", strings.Replace(healthy, "idleTimeout: 5m,", "idleTimeout: 5m, maxRequestsPerConnection: 10,", 1)), "protocol: grpc", "protocol: http", 1),
			"max-requests-per-connection", S4, Warning, "a new connection after every 10 requests", "at least 1000"},
		{"short connection duration", meshFile("", strings.Replace(healthy, "idleTimeout: 5m,", "idleTimeout: 5m, maxConnectionDuration: 10s,", 1)),
			"short-connection-duration", S9, Warning, "maxConnectionDuration 10s", "spec.connectionPool.maxConnectionDuration: 30m"},
		{"idle timeout unset", meshFile("", strings.Replace(healthy, "idleTimeout: 5m, ", "", 1)),
			"idle-timeout", S10, Warning, "Envoy's default 1h0m0s", "spec.connectionPool.idleTimeout: 5m"},
		{"idle timeout disabled", meshFile("", strings.Replace(healthy, "idleTimeout: 5m", "idleTimeout: 0s", 1)),
			"idle-timeout", S10, Warning, "idleTimeout 0 disables", "spec.connectionPool.idleTimeout: 5m"},
		{"idle timeout shorter than the pauses between requests", meshFile("", strings.Replace(healthy, "idleTimeout: 5m", "idleTimeout: 10ms", 1)),
			"short-idle-timeout", S1, Warning, "idleTimeout 10ms closes connections in the pauses between requests", "spec.connectionPool.idleTimeout: 5m"},
		{"idle timeout above middleboxes'", meshFile("", strings.Replace(healthy, "idleTimeout: 5m", "idleTimeout: 10m", 1)),
			"idle-timeout", S10, Warning, "set to 10m0s is longer than common middlebox idle timeouts", "idleTimeout: 5m"},
		{"long connect timeout", meshFile("", strings.Replace(healthy, "connectTimeout: 1s", "connectTimeout: 30s", 1)),
			"long-connect-timeout", S5, Warning, "connectTimeout 30s also bounds the TLS handshake", "spec.connectionPool.connectTimeout: 1s"},
		{"no outlier detection", meshFile("", strings.Replace(healthy, "  outlierDetection: {consecutive5xx: 5}\n", "", 1)),
			"no-outlier-detection", S5, Info, "no outlier detection", "spec.outlierDetection:"},
		{"route timeout disabled", meshFile("", strings.Replace(healthy, "timeout: 10s", "timeout: 0s", 1)),
			"no-route-timeout", S6, Warning, "timeout 0s disables the route timeout", "TrafficPolicy demo/greeter: spec.timeout: 10s"},
		{"route timeout unset", meshFile("", strings.Replace(healthy, "  timeout: 10s\n", "", 1)),
			"no-route-timeout", S6, Info, "no route timeout", "spec.timeout: 10s"},
		{"retries beyond the timeout", meshFile("", healthy+"  retries: {attempts: 3, perTryTimeout: 5s}\n"),
			"retries-exceed-timeout", S6, Warning, "perTryTimeout 5s × (attempts 3 + 1) = 20s exceeds timeout 10s", "spec.retries.perTryTimeout: 2.5s"},
		{"connection window below the stream window", meshFile("", strings.Replace(healthy, "  http2:\n", "  http2:\n    initialStreamWindowSize: 1048576\n    initialConnectionWindowSize: 65535\n", 1)),
			"connection-window-below-stream-window", S7, Warning, "initialConnectionWindowSize 65535 is below initialStreamWindowSize 1048576", "spec.http2.initialConnectionWindowSize: 4194304"},
		{"max streams above the servers'", meshFile("", strings.Replace(healthy, "  http2:\n", "  http2:\n    maxConcurrentStreams: 1000\n", 1)),
			"max-streams-above-server-limit", S3, Info, "maxConcurrentStreams 1000 is above the servers' 100", "spec.http2.maxConcurrentStreams: 100"},
		// An http3 service's clients fall back to HTTP/2 with the same
		// settings: the HTTP/2 rules hold.
		{"keepalive below the servers' min ping interval, http3 service", http3Service(meshFile("", strings.Replace(healthy, "interval: 30s, timeout: 5s", "interval: 5s, timeout: 1s", 1))),
			"keepalive-below-min-ping", S2, Warning, "interval 5s is below the servers' serverLimits.minPingInterval 10s", "spec.http2.keepalive.interval: 10s"},
		{"connection window below the stream window, http3 service", http3Service(meshFile("", strings.Replace(healthy, "  http2:\n", "  http2:\n    initialStreamWindowSize: 1048576\n    initialConnectionWindowSize: 65535\n", 1))),
			"connection-window-below-stream-window", S7, Warning, "initialConnectionWindowSize 65535 is below initialStreamWindowSize 1048576", "spec.http2.initialConnectionWindowSize: 4194304"},
		{"no TrafficPolicy: the fix names a new one", meshFile("    http2:\n      keepalive: {interval: 30s, timeout: 5s}\n    connectionPool: {idleTimeout: 5m}\n    outlierDetection: {consecutive5xx: 5}\n    timeout: 0s\n", ""),
			"no-route-timeout", S6, Warning, "timeout 0s", "Mesh m: spec.defaults.timeout: 10s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := StaticBytes([]byte(tt.mesh), "mesh.yaml")
			var got *Finding
			for i, f := range r.Findings {
				if f.Rule == tt.rule && f.Scenario == tt.scenario {
					got = &r.Findings[i]
				}
			}
			if got == nil {
				var b bytes.Buffer
				_ = r.WriteText(&b)
				t.Fatalf("no %s finding for %s; report:\n%s\nmesh:\n%s", tt.rule, tt.scenario, b.String(), tt.mesh)
			}
			if got.Severity != tt.severity || !strings.Contains(got.Evidence, tt.evidence) || !strings.Contains(got.Fix, tt.fix) || got.Subject != "Service demo/greeter" {
				t.Errorf("finding %+v; want severity %v, evidence containing %q, fix containing %q", *got, tt.severity, tt.evidence, tt.fix)
			}
			if r.ExitCode() < int(tt.severity) {
				t.Errorf("exit code %d below the finding's severity %v", r.ExitCode(), tt.severity)
			}
		})
	}
}

// TestStaticHealthy: the built-in example and the healthy policy fire
// nothing above info, and exit 0.
func TestStaticHealthy(t *testing.T) {
	for name, data := range map[string][]byte{"example": examples.Mesh, "healthy": []byte(meshFile("", healthy))} {
		r := StaticBytes(data, name)
		if r.Worst() != Info || r.ExitCode() != 0 {
			var b bytes.Buffer
			_ = r.WriteText(&b)
			t.Errorf("%s: worst %v, exit %d; want nothing above info:\n%s", name, r.Worst(), r.ExitCode(), b.String())
		}
	}
	if r := StaticBytes(examples.Mesh, "example"); len(r.Findings) != 0 {
		t.Errorf("example mesh: %d findings, want none: %+v", len(r.Findings), r.Findings)
	}
}

// TestStaticInvalidMesh: a file that does not load is one invalid-mesh
// error per problem, exit 2; the evidence starts with the field when the
// problem has one and with the reason otherwise (YAML syntax), never with
// an empty field name.
func TestStaticInvalidMesh(t *testing.T) {
	tests := []struct {
		name         string
		file         string
		wantEvidence string // prefix
		wantFix      string // prefix
	}{
		{"bad field", meshFile("", "  http2: {initialStreamWindowSize: 10}\n"), "spec.http2.initialStreamWindowSize: ", "correct the field;"},
		{"bad YAML", "apiVersion: [\n", "invalid YAML: ", "correct the document;"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := StaticBytes([]byte(tc.file), "bad.yaml")
			if r.ExitCode() != 2 || len(r.Findings) != 1 || r.Findings[0].Rule != "invalid-mesh" {
				t.Fatalf("report %+v; want one invalid-mesh error, exit 2", r)
			}
			if f := r.Findings[0]; !strings.HasPrefix(f.Evidence, tc.wantEvidence) || !strings.HasPrefix(f.Fix, tc.wantFix) {
				t.Errorf("evidence %q fix %q; want them to start with %q and %q", f.Evidence, f.Fix, tc.wantEvidence, tc.wantFix)
			}
		})
	}
}

// TestReportJSON: -o json carries severities by name and round-trips.
func TestReportJSON(t *testing.T) {
	r := StaticBytes([]byte(meshFile("", strings.Replace(healthy, "timeout: 10s", "timeout: 0s", 1))), "mesh.yaml")
	var b bytes.Buffer
	if err := r.WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), `"severity": "warning"`) || !strings.Contains(b.String(), `"scenario": "S6"`) {
		t.Errorf("JSON lacks the S6 warning:\n%s", b.String())
	}
	var back Report
	if err := json.Unmarshal(b.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if back.ExitCode() != 1 || back.Scenarios(Warning)[0] != S6 {
		t.Errorf("decoded report exit %d scenarios %v, want 1 and [S6]", back.ExitCode(), back.Scenarios(Warning))
	}
}
