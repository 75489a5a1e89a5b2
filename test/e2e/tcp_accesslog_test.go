package e2e

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
)

// tcpLogFormat is the tcp_proxy access-log line of TestTCPProxyAccessLog:
// the connection's fields and one HTTP-only operator, which renders "-".
const tcpLogFormat = "%UPSTREAM_CLUSTER% %UPSTREAM_HOST% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% " +
	"%DOWNSTREAM_PEER_URI_SAN% %REQ(:PATH)% %DOWNSTREAM_LOCAL_ADDRESS%\n"

// listenerLogFormat is the listener-level access-log line.
const listenerLogFormat = "%DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %UPSTREAM_HOST% [%DOWNSTREAM_TRANSPORT_FAILURE_REASON%]\n"

// tcpAccessLogBootstrap has three tcp_proxy listeners writing tcpLog: to an
// echo server, to a port nothing listens on, and over mTLS (with a
// listener access_log writing listenerLog) to the echo server.
func tcpAccessLogBootstrap(pki *testPKI, echoPort, deadPort int, tcpLog, listenerLog string) string {
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	tcpFilter := func(name, cluster string) string {
		return `
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: ` + name + `
          cluster: ` + cluster + `
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: ` + q(tcpLog) + `
              log_format: {text_format: ` + q(tcpLogFormat) + `}`
	}
	cluster := func(name string, port int) string {
		return `
  - name: ` + name + `
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: ` + name + `
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: ` + strconv.Itoa(port) + `}}}}]}]`
	}
	return `admin: {address: {socket_address: {address: 127.0.0.1, port_value: 0}}}
static_resources:
  listeners:
  - name: tcp_echo
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:` + tcpFilter("tcp_echo", "echo") + `
  - name: tcp_refused
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:` + tcpFilter("tcp_refused", "dead") + `
  - name: tcp_mtls
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    access_log:
    - name: envoy.access_loggers.file
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
        path: ` + q(listenerLog) + `
        log_format: {text_format: ` + q(listenerLogFormat) + `}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificates: [{certificate_chain: {filename: ` + q(pki.serverCert) + `}, private_key: {filename: ` + q(pki.serverKey) + `}}]
            validation_context: {trusted_ca: {filename: ` + q(pki.caFile) + `}}
      filters:` + tcpFilter("tcp_mtls", "echo") + `
  clusters:` + cluster("echo", echoPort) + cluster("dead", deadPort) + "\n"
}

// TestTCPProxyAccessLog runs a real `meshd sidecar` with tcp_proxy
// listeners: one connection through to an echo server gives one line with
// its bytes and upstream; an upstream that refuses gives UF; an mTLS
// connection carries the client's SPIFFE ID; and a plaintext client on the
// mTLS listener fails the TLS handshake, which the listener's own
// access_log records.
func TestTCPProxyAccessLog(t *testing.T) {
	testutil.CheckGoroutines(t)
	dir := t.TempDir()
	pki := newTestPKI(t, dir)
	echo := startTCPEcho(t)
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadPort := dead.Addr().(*net.TCPAddr).Port
	dead.Close()
	tcpLog, listenerLog := filepath.Join(dir, "tcp.log"), filepath.Join(dir, "listener.log")

	sc := testutil.StartSidecar(t, tcpAccessLogBootstrap(pki, echo.Port, deadPort, tcpLog, listenerLog))
	echoAddr, refusedAddr, mtlsAddr := sc.ListenerAddr(t, "tcp_echo"), sc.ListenerAddr(t, "tcp_refused"), sc.ListenerAddr(t, "tcp_mtls")

	// exchange sends msg, half-closes and reads until the proxy closes.
	exchange := func(c net.Conn, msg string) string {
		t.Helper()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		defer c.Close()
		if _, err := io.WriteString(c, msg); err != nil {
			t.Logf("write: %v", err) // a refused upstream may close first
		}
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		b, _ := io.ReadAll(c)
		return string(b)
	}
	dialTCP := func(addr string) net.Conn {
		t.Helper()
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	echoHost := fmt.Sprintf("127.0.0.1:%d", echo.Port)
	deadHost := fmt.Sprintf("127.0.0.1:%d", deadPort)

	// One connection to the echo server: one line, 21 bytes each way.
	const msg = "hello through meshd\r\n"
	if got := exchange(dialTCP(echoAddr), msg); got != msg {
		t.Fatalf("echo returned %q, want %q", got, msg)
	}
	lines := waitLines(t, tcpLog, 1)
	want := fmt.Sprintf("echo %s - %d %d - - %s", echoHost, len(msg), len(msg), echoAddr)
	if len(lines) != 1 || lines[0] != want {
		t.Fatalf("tcp_proxy access log after one connection:\n%s\nwant:\n%s", strings.Join(lines, "\n"), want)
	}

	// An upstream that refuses: UF and no bytes sent downstream.
	exchange(dialTCP(refusedAddr), "x")
	lines = waitLines(t, tcpLog, 2)
	if got, want := lines[1], fmt.Sprintf("dead %s UF ", deadHost); !strings.HasPrefix(got, want) || !strings.HasSuffix(got, " 0 - - "+refusedAddr) {
		t.Fatalf("refused upstream line %q, want %q…0 - - %s", got, want, refusedAddr)
	}

	// mTLS: the line carries the client certificate's SPIFFE ID.
	tc, err := tls.Dial("tcp", mtlsAddr, &tls.Config{Certificates: []tls.Certificate{pki.client}, RootCAs: pki.roots, ServerName: "greeter.demo.svc"})
	if err != nil {
		t.Fatalf("mTLS dial: %v", err)
	}
	if got := exchange(tc, msg); got != msg {
		t.Fatalf("mTLS echo returned %q, want %q", got, msg)
	}
	lines = waitLines(t, tcpLog, 3)
	if want := fmt.Sprintf("echo %s - %d %d %s - %s", echoHost, len(msg), len(msg), alClientID, mtlsAddr); lines[2] != want {
		t.Fatalf("mTLS line %q, want %q", lines[2], want)
	}

	// A plaintext client on the mTLS listener: the handshake fails before
	// any filter chain runs, so only the listener's access_log has a line.
	plain := dialTCP(mtlsAddr)
	local := plain.LocalAddr().String()
	exchange(plain, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	ll := waitLines(t, listenerLog, 1)
	prefix := fmt.Sprintf("%s %s - [", mtlsAddr, local)
	if len(ll) != 1 || !strings.HasPrefix(ll[0], prefix) || !strings.Contains(ll[0], "tls:") {
		t.Fatalf("listener access log:\n%s\nwant one line starting %q with the TLS error", strings.Join(ll, "\n"), prefix)
	}
	// The failed handshake wrote no tcp_proxy line (waiting out a flush
	// interval, 1 s, for one that should not be there).
	time.Sleep(1500 * time.Millisecond)
	if lines = waitLines(t, tcpLog, 3); len(lines) != 3 {
		t.Fatalf("tcp_proxy access log has %d lines, want 3:\n%s", len(lines), strings.Join(lines, "\n"))
	}
}
