package hardening

import (
	"context"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// h2specEnv names the h2spec binary (github.com/summerwind/h2spec
// v2.2.1+incompatible); .ci/run installs it outside the repository and
// sets it.
const h2specEnv = "H2SPEC"

// h2specTimeout bounds one h2spec run (145 cases).
const h2specTimeout = 3 * time.Minute

// TestH2SpecSidecar runs all of h2spec against a sidecar's downstream
// HTTP/2 listeners, cleartext (codec_type HTTP2, h2c prior knowledge) and
// TLS (codec_type AUTO, ALPN h2),
// through the connection manager to a real backend: every case must pass;
// docs/RELIABILITY.md lists no waiver.
func TestH2SpecSidecar(t *testing.T) {
	bin := os.Getenv(h2specEnv)
	if bin == "" {
		t.Skip(h2specEnv + " is not set (.ci/run installs h2spec and sets it)")
	}
	// h2spec opens max_concurrent_streams + 1 streams to test the limit:
	// Envoy's default (2^31-1) would never end.
	m := startSidecar(t, sidecarParams{HCM: "http2_protocol_options: { max_concurrent_streams: 100 }"})
	summary := regexp.MustCompile(`(\d+) tests, (\d+) passed, (\d+) skipped, (\d+) failed`)
	for _, tt := range []struct {
		name string
		addr string
		tls  bool
	}{
		// A cleartext AUTO listener serves a connection that does not
		// start with the HTTP/2 preface as HTTP/1.1, as Envoy's does, so
		// h2spec's invalid-preface case gets an HTTP/1.1 400 there: the
		// cleartext HTTP/2 listener is the codec_type HTTP2 one.
		{"h2c", m.h2c, false},
		{"TLS", m.tlsAddr, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			host, port, _ := net.SplitHostPort(tt.addr)
			args := []string{"-h", host, "-p", port, "-o", "2"}
			if tt.tls {
				args = append(args, "-t", "-k")
			}
			ctx, cancel := context.WithTimeout(context.Background(), h2specTimeout)
			defer cancel()
			out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
			text := string(out)
			if d := os.Getenv("H2SPEC_OUT"); d != "" {
				_ = os.WriteFile(d+"."+tt.name, out, 0o644)
			}
			sm := summary.FindStringSubmatch(text)
			if sm == nil {
				t.Fatalf("h2spec printed no summary (err %v):\n%s", err, text)
			}
			t.Logf("FIGURES h2spec %s: %s", tt.name, sm[0])
			if err != nil || sm[4] != "0" || sm[1] != sm[2] {
				var failed []string
				for line := range strings.Lines(text) {
					if strings.Contains(line, "×") {
						failed = append(failed, strings.TrimSpace(line))
					}
				}
				t.Errorf("h2spec %s: %s (err %v); failed cases:\n%s", tt.name, sm[0], err, strings.Join(failed, "\n"))
			}
		})
	}
}
