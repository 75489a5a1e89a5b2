package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
)

// badBootstrapTimeout bounds one meshd run on a bad bootstrap: it must fail
// at start-up, not after serving.
const badBootstrapTimeout = 15 * time.Second

// TestBadBootstrap checks that a bad bootstrap stops meshd at start-up with a
// non-zero exit and a message naming the field path and the reason (issue
// 2, acceptance 4). Each case breaks one thing in an otherwise valid
// bootstrap.
func TestBadBootstrap(t *testing.T) {
	good := testutil.MustBootstrap(t, testutil.BootstrapParams{BackendAddr: "127.0.0.1:9", UpstreamProtocol: testutil.UpstreamHTTP1})
	const (
		listenerSocket = "      socket_address: { address: 127.0.0.1, port_value: 0 }\n    filter_chains:"
		routerFilter   = "          http_filters:\n"
	)
	tests := []struct {
		name string
		// edit turns the good bootstrap into the bad one.
		old, new string
		// wantStderr must all appear in stderr.
		wantStderr []string
		// wantReason must match stderr: why the field is wrong.
		wantReason string
	}{
		{
			name:       "unknown field",
			old:        "    lb_policy: ROUND_ROBIN\n",
			new:        "    lb_policy: ROUND_ROBIN\n    bogus_field: 1\n",
			wantStderr: []string{"static_resources.clusters[0]", "bogus_field"},
			wantReason: `(?i)unknown`,
		},
		{
			name: "unsupported filter type",
			old:  routerFilter,
			new: routerFilter + "          - name: envoy.filters.http.buffer\n" +
				"            typed_config:\n" +
				"              \"@type\": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer\n" +
				"              max_request_bytes: 1024\n",
			wantStderr: []string{"http_filters[0]", "envoy.extensions.filters.http.buffer.v3.Buffer"},
			wantReason: `(?i)unknown|unsupported|not supported|not registered|unregistered`,
		},
		{
			name: "unknown filter type URL",
			old:  routerFilter,
			new: routerFilter + "          - name: meshd.test.no_such_filter\n" +
				"            typed_config:\n" +
				"              \"@type\": type.googleapis.com/meshd.test.NoSuchFilter\n",
			wantStderr: []string{"meshd.test.NoSuchFilter"},
			wantReason: `(?i)unknown|unsupported|not supported|not registered|unregistered|resolve|not found`,
		},
		{
			name:       "missing cluster",
			old:        "                  cluster: backend\n",
			new:        "                  cluster: no_such_cluster\n",
			wantStderr: []string{"virtual_hosts[0].routes[0].route.cluster", "no_such_cluster"},
			wantReason: `(?i)unknown|not found|undefined|missing|no cluster|does not exist|not defined`,
		},
		{
			name:       "negative timeout",
			old:        "    connect_timeout: 1s\n",
			new:        "    connect_timeout: -1s\n",
			wantStderr: []string{"static_resources.clusters[0].connect_timeout"},
			wantReason: `(?i)greater than|negative|must be|positive`,
		},
		{
			name:       "port out of range",
			old:        listenerSocket,
			new:        strings.Replace(listenerSocket, "port_value: 0", "port_value: 70000", 1),
			wantStderr: []string{"static_resources.listeners[0].address.socket_address.port_value"},
			wantReason: `(?i)65535|range|less than|must be|too large`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if strings.Count(good, tt.old) != 1 {
				t.Fatalf("the good bootstrap has %d copies of %q, want exactly 1:\n%s", strings.Count(good, tt.old), tt.old, good)
			}
			bad := strings.Replace(good, tt.old, tt.new, 1)
			dir := t.TempDir()
			path := filepath.Join(dir, "bootstrap.yaml")
			if err := os.WriteFile(path, []byte(bad), 0o600); err != nil {
				t.Fatal(err)
			}
			r := testutil.RunMeshd(t, badBootstrapTimeout, "sidecar", "-c", path, "--admin-address-path", filepath.Join(dir, "admin"))
			if r.ExitCode <= 0 {
				t.Fatalf("exit code %d, want a non-zero exit (not a signal)\n--- stderr ---\n%s", r.ExitCode, r.Stderr)
			}
			if strings.Contains(r.Stderr, "panic:") {
				t.Fatalf("meshd panicked:\n%s", r.Stderr)
			}
			for _, want := range tt.wantStderr {
				if !strings.Contains(r.Stderr, want) {
					t.Errorf("stderr does not name %q:\n%s", want, r.Stderr)
				}
			}
			if !regexp.MustCompile(tt.wantReason).MatchString(r.Stderr) {
				t.Errorf("stderr gives no reason matching %s:\n%s", tt.wantReason, r.Stderr)
			}
		})
	}

	t.Run("missing file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "absent.yaml")
		r := testutil.RunMeshd(t, badBootstrapTimeout, "sidecar", "-c", path)
		if r.ExitCode <= 0 || !strings.Contains(r.Stderr, path) {
			t.Errorf("exit %d, stderr %q; want a non-zero exit naming %s", r.ExitCode, r.Stderr, path)
		}
	})
}

// TestVersion checks `meshd version` (README: version, Go version,
// dependency versions).
func TestVersion(t *testing.T) {
	r := testutil.RunMeshd(t, badBootstrapTimeout, "version")
	if r.ExitCode != 0 {
		t.Fatalf("meshd version: exit %d\n%s", r.ExitCode, r.Stderr)
	}
	for _, want := range []string{"meshd", "go1.", "google.golang.org/grpc", "golang.org/x/net"} {
		if !strings.Contains(r.Stdout, want) {
			t.Errorf("meshd version output lacks %q:\n%s", want, r.Stdout)
		}
	}
}
