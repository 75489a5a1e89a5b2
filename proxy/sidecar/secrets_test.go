package sidecar

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/proxy/admin"
	"meshd.dev/meshd/proxy/stats"
)

// TestStaticSecretsServeTLS: a listener whose certificate and client CA
// are static_resources.secrets, named by SdsSecretConfig without
// sds_config as in an `envoy -c` bootstrap, serves mutual TLS with them:
// a client holding a certificate the secret's CA issued gets the response,
// one without a certificate is refused. /config_dump shows the secret's
// certificate and "[redacted]" for its key.
func TestStaticSecretsServeTLS(t *testing.T) {
	testutil.CheckGoroutines(t)
	cert, key := selfSigned(t)
	boot := strings.Replace(bootstrap(0, "over tls"), `
    filter_chains:
    - filters:`, `
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            alpn_protocols: [http/1.1]
            tls_certificate_sds_secret_configs: [{name: server}]
            validation_context_sds_secret_config: {name: clients}
      filters:`, 1)
	boot = strings.Replace(boot, "static_resources:\n", fmt.Sprintf(`static_resources:
  secrets:
  - name: server
    tls_certificate:
      certificate_chain: {inline_string: %q}
      private_key: {inline_string: %q}
  - name: clients
    validation_context:
      trusted_ca: {inline_string: %q}
`, cert, key, cert), 1)
	s := start(t, compile(t, boot))
	addr := listenerAddr(t, s, "ingress")

	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM([]byte(cert)) {
		t.Fatal("test certificate does not parse")
	}
	clientCert, err := tls.X509KeyPair([]byte(cert), []byte(key))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		certs []tls.Certificate
		want  string // the body, "" for a refused handshake
	}{
		{"client certificate from the secret's CA", []tls.Certificate{clientCert}, "over tls"},
		{"no client certificate", nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "localhost", Certificates: tc.certs}}
			defer tr.CloseIdleConnections()
			resp, err := (&http.Client{Transport: tr}).Get("https://" + addr + "/")
			if tc.want == "" {
				if err == nil {
					resp.Body.Close()
					t.Fatalf("GET without a client certificate: %s, want the handshake refused", resp.Status)
				}
				return
			}
			if err != nil {
				t.Fatalf("GET: %v", err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if string(body) != tc.want {
				t.Errorf("body = %q, want %q", body, tc.want)
			}
		})
	}

	a := admin.New(s, stats.NewStore(), nil)
	defer a.Close()
	w := httptest.NewRecorder()
	a.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/config_dump?mask=bootstrap.static_resources.secrets", nil))
	body := strings.ReplaceAll(w.Body.String(), " ", "")
	keyLine := strings.Split(key, "\n")[1]
	if w.Code != http.StatusOK || strings.Contains(body, keyLine) || strings.Contains(body, "PRIVATEKEY") ||
		!strings.Contains(body, `"private_key":{"inline_string":"[redacted]"}`) || !strings.Contains(body, `"name":"server"`) {
		t.Errorf("/config_dump of the secrets = %d, want the secrets with the key redacted:\n%s", w.Code, body)
	}
}
