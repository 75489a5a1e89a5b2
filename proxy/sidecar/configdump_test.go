package sidecar

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"meshd.dev/meshd/proxy/admin"
	"meshd.dev/meshd/proxy/stats"
)

// dumpJSON is s.ConfigDump() as protojson with proto field names, the
// admin server's rendering before any filter.
func dumpJSON(t *testing.T, s *Sidecar) string {
	t.Helper()
	cd, err := s.ConfigDump()
	if err != nil {
		t.Fatal(err)
	}
	b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(cd)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestConfigDumpStaticResources: a bootstrap-only snapshot dumps its static
// listeners and clusters in a ListenersConfigDump and a ClustersConfigDump
// after the bootstrap, as Envoy does, so ?resource=static_clusters finds
// them without xDS.
func TestConfigDumpStaticResources(t *testing.T) {
	s := New(Options{})
	if cd, err := s.ConfigDump(); err != nil || len(cd.GetConfigs()) != 0 {
		t.Fatalf("before the first config: %v, %v; want no configs", cd, err)
	}
	s.snap.Swap(compile(t, bootstrap(0, "x")))
	cd, err := s.ConfigDump()
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, c := range cd.GetConfigs() {
		types = append(types, c.GetTypeUrl()[strings.LastIndex(c.GetTypeUrl(), ".")+1:])
	}
	if got, want := strings.Join(types, ","), "BootstrapConfigDump,ListenersConfigDump,ClustersConfigDump"; got != want {
		t.Errorf("configs = %s, want %s", got, want)
	}
	dump := dumpJSON(t, s)
	for _, want := range []string{`"static_listeners":[{"listener":{"@type":"type.googleapis.com/envoy.config.listener.v3.Listener"`, `"static_clusters":[{"cluster":{"@type":"type.googleapis.com/envoy.config.cluster.v3.Cluster"`} {
		if !strings.Contains(strings.ReplaceAll(dump, " ", ""), want) {
			t.Errorf("dump lacks %s:\n%s", want, dump)
		}
	}
}

// selfSigned is a PEM certificate and PKCS#8 key for localhost.
func selfSigned(t *testing.T) (certPEM, keyPEM string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"}, DNSNames: []string{"localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kd, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}))
}

// TestAdminConfigDumpRedactsInlineKeys: a static listener's inline private
// key is served as "[redacted]" by the admin server's /config_dump on every
// path that reaches it (the bootstrap, static_listeners, a mask down to
// the key), while the certificate is shown.
func TestAdminConfigDumpRedactsInlineKeys(t *testing.T) {
	cert, key := selfSigned(t)
	boot := strings.Replace(bootstrap(0, "x"), `
    filter_chains:
    - filters:`, fmt.Sprintf(`
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificates:
            - certificate_chain: { inline_string: %q }
              private_key: { inline_string: %q }
      filters:`, cert, key), 1)
	s := New(Options{})
	s.snap.Swap(compile(t, boot))
	a := admin.New(s, stats.NewStore(), nil)
	defer a.Close()
	keyLine := strings.Split(key, "\n")[1] // the first line of the key's base64
	for _, q := range []string{
		"", "?resource=static_listeners",
		"?resource=static_listeners&mask=listener.filter_chains,listener.name",
		"?mask=bootstrap.static_resources",
	} {
		w := httptest.NewRecorder()
		a.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/config_dump"+q, nil))
		body := strings.ReplaceAll(w.Body.String(), " ", "")
		if w.Code != http.StatusOK {
			t.Fatalf("/config_dump%s = %d %s", q, w.Code, body)
		}
		if strings.Contains(body, keyLine) || strings.Contains(body, "PRIVATEKEY") {
			t.Errorf("/config_dump%s shows the private key:\n%s", q, body)
		}
		if !strings.Contains(body, `"private_key":{"inline_string":"[redacted]"}`) || !strings.Contains(body, "BEGINCERTIFICATE") {
			t.Errorf("/config_dump%s lacks the certificate or the redacted key:\n%s", q, body)
		}
	}
}
