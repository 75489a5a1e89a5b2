package tcpproxy_test

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/proxy/accesslog"
)

// logFormat puts the fields a tcp_proxy record carries on one line, with
// HTTP-only operators that must render "-".
const logFormat = "%UPSTREAM_CLUSTER% %UPSTREAM_HOST% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% " +
	"%CONNECTION_TERMINATION_DETAILS% %REQ(:PATH)% %PROTOCOL% %RESPONSE_CODE% %DOWNSTREAM_LOCAL_ADDRESS%\n"

// withFileLog adds a file access_log at path with logFormat.
func withFileLog(t *testing.T, path string) func(*tcpproxyv3.TcpProxy) {
	t.Helper()
	fl, err := anypb.New(&filev3.FileAccessLog{Path: path, AccessLogFormat: &filev3.FileAccessLog_LogFormat{
		LogFormat: &corev3.SubstitutionFormatString{Format: &corev3.SubstitutionFormatString_TextFormatSource{
			TextFormatSource: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: logFormat}},
		}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	return func(tp *tcpproxyv3.TcpProxy) {
		tp.AccessLog = []*accesslogv3.AccessLog{{Name: "envoy.access_loggers.file", ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: fl}}}
	}
}

// logLines flushes m and returns the lines of path.
func logLines(t *testing.T, m *accesslog.Manager, path string) []string {
	t.Helper()
	m.Flush()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	s := strings.TrimSuffix(string(b), "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// TestAccessLog: one line per connection with the connection's bytes,
// upstream and flags; HTTP-only operators render "-".
func TestAccessLog(t *testing.T) {
	testutil.CheckGoroutines(t)
	backend := serveTCP(t, echo)
	dead := deadAddr(t)
	tests := []struct {
		name     string
		clusters map[string][]string
		mutate   func(*tcpproxyv3.TcpProxy)
		send     string
		echoed   bool // the backend echoes send back
		// want are the lines, with {backend}, {dead} and {listener}
		// replaced.
		want []string
	}{
		{
			name:     "echo",
			clusters: map[string][]string{"backend": {backend}},
			send:     "hello tcp log",
			echoed:   true,
			want:     []string{"backend {backend} - 13 13 - - - 0 {listener}"},
		},
		{
			name:     "upstream refused",
			clusters: map[string][]string{"backend": {dead}},
			send:     "x",
			want:     []string{"backend {dead} UF 0 0 - - - 0 {listener}"},
		},
		{
			name:     "cluster not found",
			clusters: map[string][]string{"other": {backend}},
			want:     []string{"backend - NC 0 0 - - - 0 {listener}"},
		},
		{
			name:     "flush on connected",
			clusters: map[string][]string{"backend": {backend}},
			mutate: func(tp *tcpproxyv3.TcpProxy) {
				tp.AccessLogOptions = &tcpproxyv3.TcpProxy_TcpAccessLogOptions{FlushAccessLogOnConnected: true}
			},
			send:   "abc",
			echoed: true,
			want:   []string{"backend {backend} - 0 0 - - - 0 {listener}", "backend {backend} - 3 3 - - - 0 {listener}"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "tcp.log")
			m := accesslog.NewManager(accesslog.ManagerOptions{Logger: slog.New(slog.DiscardHandler), FlushInterval: time.Hour})
			t.Cleanup(func() { _ = m.Close() })
			log := withFileLog(t, path)
			h := start(t, config(t, func(tp *tcpproxyv3.TcpProxy) {
				log(tp)
				if tc.mutate != nil {
					tc.mutate(tp)
				}
			}), tc.clusters)
			h.proxy.SetAccessLogs(m)

			c := dial(t, h.addr)
			if tc.send != "" {
				// A refused upstream may close the connection before
				// the write: its error is not the test's concern.
				_, _ = c.Write([]byte(tc.send))
			}
			_ = c.CloseWrite()
			got, _ := io.ReadAll(c)
			if tc.echoed && string(got) != tc.send {
				t.Fatalf("echo = %q, want %q", got, tc.send)
			}
			r := strings.NewReplacer("{backend}", backend, "{dead}", dead, "{listener}", h.addr)
			want := make([]string, len(tc.want))
			for k, w := range tc.want {
				want[k] = r.Replace(w)
			}
			var lines []string
			eventually(t, "access log lines", func() bool {
				lines = logLines(t, m, path)
				return len(lines) >= len(want)
			})
			if strings.Join(lines, "\n") != strings.Join(want, "\n") {
				t.Errorf("access log:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
			}
		})
	}
}

// TestAccessLogIdleTimeoutAndInterval: access_log_flush_interval writes
// lines while the connection lasts, and the final line of a connection
// closed by idle_timeout says so in %CONNECTION_TERMINATION_DETAILS%.
func TestAccessLogIdleTimeoutAndInterval(t *testing.T) {
	testutil.CheckGoroutines(t)
	backend := serveTCP(t, echo)
	path := filepath.Join(t.TempDir(), "tcp.log")
	m := accesslog.NewManager(accesslog.ManagerOptions{Logger: slog.New(slog.DiscardHandler), FlushInterval: time.Hour})
	t.Cleanup(func() { _ = m.Close() })
	log := withFileLog(t, path)
	const idle = 300 * time.Millisecond
	h := start(t, config(t, func(tp *tcpproxyv3.TcpProxy) {
		log(tp)
		tp.IdleTimeout = durationpb.New(idle)
		tp.AccessLogOptions = &tcpproxyv3.TcpProxy_TcpAccessLogOptions{AccessLogFlushInterval: durationpb.New(idle / 4)}
	}), map[string][]string{"backend": {backend}})
	h.proxy.SetAccessLogs(m)

	c := dial(t, h.addr)
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	// Silence until idle_timeout closes the connection.
	if n, err := c.Read(buf); err == nil {
		t.Fatalf("read %d bytes, want the connection closed", n)
	}
	var lines []string
	eventually(t, "final access log line", func() bool {
		lines = logLines(t, m, path)
		return len(lines) > 0 && strings.Contains(lines[len(lines)-1], " idle_timeout ")
	})
	if len(lines) < 2 {
		t.Fatalf("%d lines, want periodic lines before the final one:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	want := "backend " + backend + " - 4 4 idle_timeout - - 0 " + h.addr
	if last := lines[len(lines)-1]; last != want {
		t.Errorf("final line %q, want %q", last, want)
	}
	for _, l := range lines[:len(lines)-1] {
		if strings.Contains(l, "idle_timeout") {
			t.Errorf("intermediate line %q has the termination details", l)
		}
	}
}
