package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"text/template"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"meshd.dev/meshd/internal/testutil"
)

// spireEnv enables TestSPIRE. The test needs spire-server and spire-agent
// binaries, which test/spire/build.sh builds (10-16 min cold on 2 cores)
// into ${MESHD_SPIRE_CACHE:-$HOME/.cache/meshd-spire}/bin; run it with
// `go test -timeout 30m` the first time.
const spireEnv = "MESHD_SPIRE"

// Timeouts of the SPIRE test.
const (
	spireBuildTimeout = 25 * time.Minute
	spireStartTimeout = 30 * time.Second
	// spireSyncTimeout bounds the wait for the agent to have synced the
	// registration entry: until then the Workload API and SDS answer
	// PermissionDenied / no identity (~5 s).
	spireSyncTimeout = 60 * time.Second
	spireCmdTimeout  = 20 * time.Second
)

// The SPIFFE IDs of the SPIRE test.
const (
	spireTrustDomain = "spire.test"
	spireAgentID     = "spiffe://spire.test/agent/e2e"
	// spireWorkloadID is issued to every process of this test's uid: both
	// sidecars and the test's own go-spiffe client.
	spireWorkloadID = "spiffe://spire.test/ns/demo/sa/workload"
)

// spire is a running SPIRE server and agent.
type spire struct {
	bin        string // directory of spire-server and spire-agent
	serverSock string // server API socket
	AgentSock  string // Workload API and SDS socket of the agent
	serverPort int
	dir        string
	serverLog  *testutil.SyncBuffer
	agentLog   *testutil.SyncBuffer
}

// spireBinaries runs test/spire/build.sh, which reuses cached binaries or
// builds them, and returns their directory.
func spireBinaries(t *testing.T) string {
	t.Helper()
	root, err := testutil.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), spireBuildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(root, "test", "spire", "build.sh"))
	cmd.WaitDelay = time.Second
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("test/spire/build.sh: %v\n%s", err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

var spireServerConf = template.Must(template.New("server").Parse(`server {
    bind_address = "127.0.0.1"
    bind_port = "{{.Port}}"
    socket_path = "{{.Dir}}/server.sock"
    trust_domain = "{{.TrustDomain}}"
    data_dir = "{{.Dir}}/server-data"
    log_level = "DEBUG"
    ca_ttl = "24h"
    default_x509_svid_ttl = "1h"
}

plugins {
    DataStore "sql" {
        plugin_data {
            database_type = "sqlite3"
            connection_string = "{{.Dir}}/server-data/datastore.sqlite3"
        }
    }
    NodeAttestor "join_token" {
        plugin_data {}
    }
    KeyManager "memory" {
        plugin_data {}
    }
}
`))

var spireAgentConf = template.Must(template.New("agent").Parse(`agent {
    data_dir = "{{.Dir}}/agent-data"
    log_level = "DEBUG"
    server_address = "127.0.0.1"
    server_port = "{{.Port}}"
    socket_path = "{{.Dir}}/agent.sock"
    trust_bundle_path = "{{.Dir}}/bundle.pem"
    trust_domain = "{{.TrustDomain}}"
    sds {
        default_svid_name = "default"
        default_bundle_name = "ROOTCA"
        # meshd takes the bundle as trusted_ca, not as Envoy's SPIFFE
        # certificate validator (custom_validator_config).
        disable_spiffe_cert_validation = true
    }
}

plugins {
    NodeAttestor "join_token" {
        plugin_data {}
    }
    KeyManager "memory" {
        plugin_data {}
    }
    WorkloadAttestor "unix" {
        plugin_data {}
    }
}
`))

// startSPIRE starts a SPIRE server (join-token node attestation, in-memory
// keys, SQLite) and an agent attested with a fresh join token, and
// registers spireWorkloadID for this process's uid. Both are killed at
// cleanup; their logs are printed if the test failed.
func startSPIRE(t *testing.T, bin string) *spire {
	t.Helper()
	// Unix socket paths are limited to 108 bytes: keep the directory short.
	dir, err := os.MkdirTemp("", "spire-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	s := &spire{
		bin: bin, dir: dir,
		serverSock: filepath.Join(dir, "server.sock"), AgentSock: filepath.Join(dir, "agent.sock"),
		serverPort: freeTCPPort(t),
		serverLog:  &testutil.SyncBuffer{}, agentLog: &testutil.SyncBuffer{},
	}
	params := map[string]any{"Dir": dir, "Port": s.serverPort, "TrustDomain": spireTrustDomain}
	writeTemplate(t, filepath.Join(dir, "server.conf"), spireServerConf, params)
	writeTemplate(t, filepath.Join(dir, "agent.conf"), spireAgentConf, params)

	s.start(t, "spire-server", s.serverLog, "run", "-config", filepath.Join(dir, "server.conf"))
	s.waitHealthy(t, "spire-server", "-socketPath", s.serverSock)

	bundle := s.serverCmd(t, "bundle", "show")
	if err := os.WriteFile(filepath.Join(dir, "bundle.pem"), []byte(bundle), 0o600); err != nil {
		t.Fatal(err)
	}
	tokenOut := s.serverCmd(t, "token", "generate", "-spiffeID", spireAgentID, "-ttl", "600")
	token, ok := strings.CutPrefix(strings.TrimSpace(tokenOut), "Token: ")
	if !ok {
		t.Fatalf("spire-server token generate: unexpected output %q", tokenOut)
	}
	s.serverCmd(t, "entry", "create", "-parentID", spireAgentID, "-spiffeID", spireWorkloadID,
		"-selector", "unix:uid:"+strconv.Itoa(os.Getuid()), "-x509SVIDTTL", "3600")

	s.start(t, "spire-agent", s.agentLog, "run", "-config", filepath.Join(dir, "agent.conf"), "-joinToken", token)
	s.waitHealthy(t, "spire-agent", "-socketPath", s.AgentSock)
	return s
}

// start runs a SPIRE binary in the background until the test ends.
func (s *spire) start(t *testing.T, name string, log *testutil.SyncBuffer, args ...string) {
	t.Helper()
	cmd := exec.Command(filepath.Join(s.bin, name), args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.WaitDelay = time.Second
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("%s log:\n%s", name, log)
		}
	})
}

// waitHealthy polls `NAME healthcheck ARGS` until it succeeds.
func (s *spire) waitHealthy(t *testing.T, name string, args ...string) {
	t.Helper()
	deadline := time.Now().Add(spireStartTimeout)
	var last []byte
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), spireCmdTimeout)
		cmd := exec.CommandContext(ctx, filepath.Join(s.bin, name), append([]string{"healthcheck"}, args...)...)
		out, err := cmd.CombinedOutput()
		cancel()
		if err == nil {
			return
		}
		last = out
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("%s not healthy within %v: %s", name, spireStartTimeout, last)
}

// serverCmd runs `spire-server ARGS -socketPath SOCK` and returns stdout.
func (s *spire) serverCmd(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), spireCmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(s.bin, "spire-server"), append(args, "-socketPath", s.serverSock)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("spire-server %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

func writeTemplate(t *testing.T, path string, tmpl *template.Template, params any) {
	t.Helper()
	var b bytes.Buffer
	if err := tmpl.Execute(&b, params); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// waitX509Source opens a go-spiffe X509Source on the agent's socket,
// retrying while the agent has not synced the registration entry yet (the
// first fetches fail with PermissionDenied).
func waitX509Source(t *testing.T, sock string) *workloadapi.X509Source {
	t.Helper()
	deadline := time.Now().Add(spireSyncTimeout)
	var lastErr error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+sock)))
		cancel()
		if err == nil {
			t.Cleanup(func() { _ = src.Close() })
			return src
		}
		lastErr = err
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("no SVID from the SPIRE agent within %v: %v", spireSyncTimeout, lastErr)
	return nil
}

// spireSDS is the sds_config of a secret served by the SPIRE agent over the
// spire_agent pipe cluster.
const spireSDS = `{ resource_api_version: V3, api_config_source: { api_type: GRPC, transport_api_version: V3, grpc_services: [ { envoy_grpc: { cluster_name: spire_agent } } ] } }`

// spireBootstrap is a sidecar bootstrap in the form Envoy's SPIRE
// integration uses: a spire_agent cluster on the agent's Unix socket
// (pipe), the listener and/or cluster TLS contexts fed by its SDS secrets
// (the SVID by its SPIFFE ID, the bundle by the trust domain), and the
// peer's ID matched with match_typed_subject_alt_names.
var spireBootstrap = template.Must(template.New("bootstrap").Parse(`node:
  id: {{.Node}}
  cluster: spire-e2e
admin:
  address:
    socket_address: { address: 127.0.0.1, port_value: 0 }
static_resources:
  listeners:
  - name: ingress
    address:
      socket_address: { address: 127.0.0.1, port_value: 0 }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          codec_type: AUTO
          route_config:
            name: local_route
            virtual_hosts:
            - name: backend
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: backend, timeout: 10s }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
{{- if .Inbound}}
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificate_sds_secret_configs:
            - { name: "{{.ID}}", sds_config: {{.SDS}} }
            combined_validation_context:
              default_validation_context:
                match_typed_subject_alt_names:
                - { san_type: URI, matcher: { exact: "{{.ID}}" } }
              validation_context_sds_secret_config: { name: "spiffe://{{.TD}}", sds_config: {{.SDS}} }
{{- end}}
  clusters:
  - name: spire_agent
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    load_assignment:
      cluster_name: spire_agent
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { pipe: { path: "{{.Sock}}" } } }
  - name: backend
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { {{if .Inbound}}http_protocol_options{{else}}http2_protocol_options{{end}}: {} }
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {{.Port}} } } }
{{- if not .Inbound}}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          alpn_protocols: [h2]
          tls_certificate_sds_secret_configs:
          - { name: "{{.ID}}", sds_config: {{.SDS}} }
          combined_validation_context:
            default_validation_context:
              match_typed_subject_alt_names:
              - { san_type: URI, matcher: { exact: "{{.ID}}" } }
            validation_context_sds_secret_config: { name: "spiffe://{{.TD}}", sds_config: {{.SDS}} }
{{- end}}
`))

// spireSidecar starts a sidecar whose TLS material comes from the SPIRE
// agent over SDS. inbound: its listener is the mTLS server in front of an
// HTTP/1 backend on port; otherwise its listener is plaintext and its
// cluster calls port over mTLS (h2). The sidecar retries SDS until the agent
// answers, so its readiness covers the first fetch.
func spireSidecar(t *testing.T, sock, node string, inbound bool, port int) *testutil.Sidecar {
	t.Helper()
	var b bytes.Buffer
	err := spireBootstrap.Execute(&b, map[string]any{
		"Node": node, "Inbound": inbound, "Port": port, "Sock": sock,
		"ID": spireWorkloadID, "TD": spireTrustDomain, "SDS": spireSDS,
	})
	if err != nil {
		t.Fatal(err)
	}
	return testutil.StartSidecar(t, b.String(), "--log-level", "debug")
}

// TestSPIRE (acceptance 5): a SPIRE server and agent (join-token node
// attestation, unix workload attestor, the agent's SDS with
// default_svid_name "default" and default_bundle_name "ROOTCA") issue
// spireWorkloadID to this test's uid. The test's own go-spiffe client gets
// its SVID from the Workload API (retrying until the agent has synced);
// an inbound sidecar gets the same ID over SDS from the agent's socket and
// serves mTLS to that client; an outbound sidecar, also fed by SDS, carries
// plaintext calls to the inbound sidecar over mTLS. /certs of both sidecars
// names the SPIRE-issued ID.
func TestSPIRE(t *testing.T) {
	if os.Getenv(spireEnv) != "1" {
		t.Skipf("set %s=1 to run the SPIRE test (builds SPIRE once with test/spire/build.sh; see README)", spireEnv)
	}
	bin := spireBinaries(t)
	s := startSPIRE(t, bin)
	src := waitX509Source(t, s.AgentSock)
	svid, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID.String() != spireWorkloadID {
		t.Fatalf("Workload API SVID %s, want %s", svid.ID, spireWorkloadID)
	}

	backend := testutil.StartEchoBackend(t)
	_, backendPort, _ := net.SplitHostPort(backend.Addr)
	bp, _ := strconv.Atoi(backendPort)
	server := spireSidecar(t, s.AgentSock, "spire-server-side", true, bp)
	serverAddr := server.ListenerAddr(t, "ingress")

	t.Run("go-spiffe client to inbound sidecar", func(t *testing.T) {
		id := spiffeid.RequireFromString(spireWorkloadID)
		tlsConf := tlsconfig.MTLSClientConfig(src, src, tlsconfig.AuthorizeID(id))
		tlsConf.NextProtos = []string{"h2"}
		var protos http.Protocols
		protos.SetHTTP2(true)
		tr := &http.Transport{TLSClientConfig: tlsConf, Protocols: &protos}
		defer tr.CloseIdleConnections()
		c := &http.Client{Transport: tr, Timeout: requestTimeout}
		getOK(t, c, "https://"+serverAddr+"/echo")

		// A client without a certificate is refused at the handshake.
		// It trusts the SPIRE bundle, so only the server can refuse.
		bundle, err := src.GetX509BundleForTrustDomain(id.TrustDomain())
		if err != nil {
			t.Fatal(err)
		}
		plain := tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeID(id))
		plain.NextProtos = []string{"h2"}
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: requestTimeout}, "tcp", serverAddr, plain)
		if err == nil {
			_ = conn.SetReadDeadline(time.Now().Add(requestTimeout))
			_, err = conn.Read(make([]byte, 1))
			conn.Close()
		}
		if err == nil {
			t.Fatal("a client without a certificate was not refused")
		}
		waitLog(t, server, "no_certificate")
	})

	t.Run("sidecar to sidecar", func(t *testing.T) {
		_, sp, _ := net.SplitHostPort(serverAddr)
		port, _ := strconv.Atoi(sp)
		client := spireSidecar(t, s.AgentSock, "spire-client-side", false, port)
		c := &http.Client{Timeout: requestTimeout}
		for range 5 {
			getOK(t, c, "http://"+client.ListenerAddr(t, "ingress")+"/echo")
		}
		for name, sc := range map[string]*testutil.Sidecar{"inbound": server, "outbound": client} {
			if certs := sc.Admin(t, http.MethodGet, "/certs"); !strings.Contains(certs, spireWorkloadID) {
				t.Errorf("%s sidecar /certs does not name %s:\n%.2000s", name, spireWorkloadID, certs)
			}
		}
	})
}

// getOK GETs url and fails the test unless the answer is 200.
func getOK(t *testing.T, c *http.Client, url string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s\n%s", url, resp.Status, body)
	}
}

// waitLog waits until sc's stderr contains want.
func waitLog(t *testing.T, sc *testutil.Sidecar, want string) {
	t.Helper()
	deadline := time.Now().Add(requestTimeout)
	for !strings.Contains(sc.Stderr(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("sidecar stderr has no %q within %v:\n%s", want, requestTimeout, sc.Stderr())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
