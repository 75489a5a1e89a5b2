package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"

	"meshd.dev/meshd/internal/testutil"
)

// The SPIFFE IDs of the access-log test's certificates.
const (
	alServerID = "spiffe://test.example/ns/demo/sa/greeter-server"
	alClientID = "spiffe://test.example/ns/demo/sa/greeter-client"
)

// alTextFormat is the documented text format the test checks field by
// field.
const alTextFormat = `[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" ` +
	`%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% ` +
	`%REQUEST_DURATION% %RESPONSE_DURATION% "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" ` +
	`%UPSTREAM_CLUSTER% %UPSTREAM_HOST% %UPSTREAM_REQUEST_ATTEMPT_COUNT% %ROUTE_NAME% %GRPC_STATUS% ` +
	`%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_PEER_URI_SAN% %DOWNSTREAM_LOCAL_URI_SAN% ` +
	`%REQUESTED_SERVER_NAME% %HOSTNAME% %START_TIME(%s)%` + "\n"

// TestAccessLogAndOTLPMetrics runs a sidecar process with an mTLS inbound
// listener, two access logs (text and JSON) and an OpenTelemetry stats
// sink; a grpc-go client with its own SVID calls through it. Every
// documented field of both lines is checked, including the client's and
// the listener's SPIFFE IDs, and the OTLP receiver must get the Envoy-named
// counters and both duration histograms.
func TestAccessLogAndOTLPMetrics(t *testing.T) {
	testutil.CheckGoroutines(t)
	dir := t.TempDir()
	pki := newTestPKI(t, dir)
	backend := testutil.StartGRPCInteropServer(t)
	recv := testutil.StartMetricsReceiver(t)
	textLog, jsonLog := filepath.Join(dir, "access.log"), filepath.Join(dir, "access.json")

	sc := testutil.StartSidecar(t, accessLogBootstrap(pki, backend.Addr, recv.Addr, textLog, jsonLog))
	addr := sc.ListenerAddr(t, "inbound")

	creds := credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{pki.client}, RootCAs: pki.roots, ServerName: "greeter.demo.svc",
	})
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	client := testgrpc.NewTestServiceClient(cc)
	const calls = 3
	for i := range calls {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		ctx = metadata.AppendToOutgoingContext(ctx, "x-request-id", fmt.Sprintf("req-%d", i))
		_, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{ResponseSize: 10, Payload: &testgrpc.Payload{Body: make([]byte, 20)}})
		cancel()
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}

	// Lines are flushed every second (Envoy's file_flush_interval).
	text := waitLines(t, textLog, calls)
	jsonLines := waitLines(t, jsonLog, calls)
	_, port, _ := net.SplitHostPort(addr)
	textRE := regexp.MustCompile(`^\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\] ` +
		`"POST /grpc\.testing\.TestService/UnaryCall HTTP/2" 200 - via_upstream (\d+) (\d+) (\d+) (\d+) (\d+) ` +
		`"grpc-go/[^"]+" "req-(\d)" "greeter\.demo\.svc" app ` + regexp.QuoteMeta(backend.Addr) + ` 1 to_app OK ` +
		`127\.0\.0\.1:\d+ 127\.0\.0\.1:` + port + ` ` + regexp.QuoteMeta(alClientID) + ` ` + regexp.QuoteMeta(alServerID) + ` ` +
		`greeter\.demo\.svc \S+ (\d+)$`)
	for i, line := range text {
		m := textRE.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("access log line %d does not match the documented fields:\n%s\nwant %s", i, line, textRE)
		}
		// 20 payload bytes plus protobuf and gRPC framing each way; 10
		// response bytes likewise.
		rx, _ := strconv.Atoi(m[1])
		tx, _ := strconv.Atoi(m[2])
		if rx < 25 || rx > 100 || tx < 15 || tx > 100 {
			t.Errorf("line %d: bytes received %s, sent %s; want the framed 20-byte request and 10-byte response", i, m[1], m[2])
		}
		if m[6] != fmt.Sprint(i) {
			t.Errorf("line %d has request id req-%s, want req-%d (lines in request order)", i, m[6], i)
		}
		if sec := m[7]; len(sec) < 10 {
			t.Errorf("line %d: START_TIME(%%s) = %s, want Unix seconds", i, sec)
		}
	}
	for i, line := range jsonLines {
		var got map[string]any
		if err := json.Unmarshal([]byte(line), &got); err != nil {
			t.Fatalf("JSON line %d %q: %v", i, line, err)
		}
		want := map[string]any{
			"code": 200.0, "flags": "-", "method": "POST", "path": "/grpc.testing.TestService/UnaryCall",
			"protocol": "HTTP/2", "peer": alClientID, "local": alServerID, "upstream": backend.Addr,
			"cluster": "app", "grpc": "OK", "request_id": fmt.Sprintf("req-%d", i), "missing": nil,
		}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("JSON line %d: %s = %#v, want %#v (line %s)", i, k, got[k], v, line)
			}
		}
		if d, ok := got["duration_ms"].(float64); !ok || d < 0 {
			t.Errorf("JSON line %d: duration_ms = %#v, want a number", i, got["duration_ms"])
		}
	}

	// OTLP: the Envoy-named counters (tag-extracted names, tags as
	// attributes) and both semantic-convention histograms.
	wait := 15 * time.Second
	rq := recv.WaitMetric(t, wait, "http.downstream_rq_total >= 3 for inbound", func(m *metricspb.Metric) bool {
		return m.GetName() == "http.downstream_rq_total" && sumFor(m, "envoy.http_conn_manager_prefix", "inbound") >= calls
	})
	t.Logf("%s: %v", rq.GetName(), rq.GetSum().GetDataPoints())
	recv.WaitMetric(t, wait, "cluster.upstream_rq_total >= 3 for app", func(m *metricspb.Metric) bool {
		return m.GetName() == "cluster.upstream_rq_total" && sumFor(m, "envoy.cluster_name", "app") >= calls
	})
	for _, name := range []string{"http.server.request.duration", "http.client.request.duration"} {
		h := recv.WaitMetric(t, wait, name+" with 3 POST 200", func(m *metricspb.Metric) bool {
			if m.GetName() != name || m.GetUnit() != "s" {
				return false
			}
			for _, dp := range m.GetHistogram().GetDataPoints() {
				if attr(dp.GetAttributes(), "http.request.method") == "POST" && attr(dp.GetAttributes(), "http.response.status_code") == "200" && dp.GetCount() >= calls {
					return true
				}
			}
			return false
		})
		if b := h.GetHistogram().GetDataPoints()[0].GetExplicitBounds(); len(b) != 14 || b[0] != 0.005 || b[13] != 10 {
			t.Errorf("%s bounds %v, want the semantic conventions' 0.005 … 10 s", name, b)
		}
	}

	// Rotation: move the text log away, POST /reopen_logs, and the next
	// request lands in a new file at the same path.
	if err := os.Rename(textLog, textLog+".1"); err != nil {
		t.Fatal(err)
	}
	sc.Admin(t, "POST", "/reopen_logs")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := client.EmptyCall(ctx, &testgrpc.Empty{}); err != nil {
		t.Fatal(err)
	}
	if rotated := waitLines(t, textLog, 1); !strings.Contains(rotated[0], "/grpc.testing.TestService/EmptyCall") {
		t.Errorf("after /reopen_logs the new file has %q", rotated)
	}
	if st := sc.Stats(t); st["access_logs.dropped"] != 0 || st["stats_sinks.open_telemetry.export_success"] == 0 {
		t.Errorf("access_logs.dropped = %d, stats_sinks.open_telemetry.export_success = %d; want 0 and > 0",
			st["access_logs.dropped"], st["stats_sinks.open_telemetry.export_success"])
	}
}

// waitLines polls path until it holds at least n lines, and returns them.
func waitLines(t *testing.T, path string, n int) []string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(path)
		lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
		if len(b) > 0 && len(lines) >= n {
			return lines
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s has %q after 10s, want %d lines", path, b, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func attr(kvs []*commonpb.KeyValue, key string) string {
	for _, kv := range kvs {
		if kv.GetKey() == key {
			v := kv.GetValue()
			if s := v.GetStringValue(); s != "" {
				return s
			}
			return fmt.Sprint(v.GetIntValue())
		}
	}
	return ""
}

// sumFor returns the value of the sum's data point with attribute key=value.
func sumFor(m *metricspb.Metric, key, value string) int64 {
	for _, dp := range m.GetSum().GetDataPoints() {
		if attr(dp.GetAttributes(), key) == value {
			return dp.GetAsInt()
		}
	}
	return -1
}

func accessLogBootstrap(pki *testPKI, app, collector, textLog, jsonLog string) string {
	appHost, appPort, _ := net.SplitHostPort(app)
	colHost, colPort, _ := net.SplitHostPort(collector)
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	return `node: {id: greeter-server.demo, cluster: greeter}
admin: {address: {socket_address: {address: 127.0.0.1, port_value: 0}}}
stats_flush_interval: 0.2s
stats_sinks:
- name: envoy.stat_sinks.open_telemetry
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.stat_sinks.open_telemetry.v3.SinkConfig
    grpc_service: {envoy_grpc: {cluster_name: otel_collector}}
static_resources:
  listeners:
  - name: inbound
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            alpn_protocols: [h2]
            tls_certificates: [{certificate_chain: {filename: ` + q(pki.serverCert) + `}, private_key: {filename: ` + q(pki.serverKey) + `}}]
            validation_context: {trusted_ca: {filename: ` + q(pki.caFile) + `}}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound
          codec_type: HTTP2
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: ` + q(textLog) + `
              log_format: {text_format: ` + q(alTextFormat) + `}
          - name: envoy.access_loggers.file
            filter: {status_code_filter: {comparison: {op: GE, value: {default_value: 200, runtime_key: unused}}}}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: ` + q(jsonLog) + `
              log_format:
                json_format:
                  code: "%RESPONSE_CODE%"
                  flags: "%RESPONSE_FLAGS%"
                  method: "%REQ(:METHOD)%"
                  path: "%REQ(:PATH)%"
                  protocol: "%PROTOCOL%"
                  peer: "%DOWNSTREAM_PEER_URI_SAN%"
                  local: "%DOWNSTREAM_LOCAL_URI_SAN%"
                  upstream: "%UPSTREAM_HOST%"
                  cluster: "%UPSTREAM_CLUSTER%"
                  grpc: "%GRPC_STATUS%"
                  request_id: "%REQ(X-REQUEST-ID)%"
                  duration_ms: "%DURATION%"
                  missing: "%REQ(X-NOT-SENT)%"
          route_config:
            virtual_hosts: [{name: all, domains: ["*"], routes: [{name: to_app, match: {prefix: "/"}, route: {cluster: app}}]}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: app
    type: STATIC
    connect_timeout: 1s
` + h2Options + `    load_assignment:
      cluster_name: app
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: ` + appHost + `, port_value: ` + appPort + `}}}}]}]
  - name: otel_collector
    type: STATIC
    connect_timeout: 1s
` + h2Options + `    load_assignment:
      cluster_name: otel_collector
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: ` + colHost + `, port_value: ` + colPort + `}}}}]}]
`
}

// testPKI is a CA, a server SVID (with the DNS name the client dials) and
// a client SVID, written to files where the bootstrap needs them.
type testPKI struct {
	caFile, serverCert, serverKey string
	roots                         *x509.CertPool
	client                        tls.Certificate
}

func newTestPKI(t *testing.T, dir string) *testPKI {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
		URIs: []*url.URL{{Scheme: "spiffe", Host: "test.example"}},
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	leaf := func(id string, serial int64, dns []string) ([]byte, *ecdsa.PrivateKey) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		u, _ := url.Parse(id)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			URIs:        []*url.URL{u}, DNSNames: dns,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return der, key
	}
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	keyDER := func(k *ecdsa.PrivateKey) []byte {
		b, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	srvDER, srvKey := leaf(alServerID, 2, []string{"greeter.demo.svc"})
	cliDER, cliKey := leaf(alClientID, 3, nil)
	p := &testPKI{
		caFile:     write("ca.pem", "CERTIFICATE", caDER),
		serverCert: write("server.pem", "CERTIFICATE", srvDER),
		serverKey:  write("server-key.pem", "PRIVATE KEY", keyDER(srvKey)),
		roots:      x509.NewCertPool(),
	}
	p.roots.AddCert(caCert)
	p.client = tls.Certificate{Certificate: [][]byte{cliDER}, PrivateKey: cliKey}
	return p
}
