package probe

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"meshd.dev/meshd/internal/testutil"
)

func TestMain(m *testing.M) { os.Exit(testutil.Main(m)) }

// port returns the numeric port of a 127.0.0.1 listener address.
func port(t *testing.T, addr string) int32 {
	t.Helper()
	ap, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return int32(ap.Port)
}

// closedPort returns a 127.0.0.1 port nothing listens on (bound, then
// closed).
func closedPort(t *testing.T) int32 {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := port(t, ln.Addr().String())
	ln.Close()
	return p
}

// TestProbesAgainstRealServers runs each kind of original probe, through
// the status-port handler over real HTTP, against real local servers:
// net/http answering 200, 302 and 500 (and one that never answers), a TCP
// port with and without a listener, and a grpc-go health server whose
// services are SERVING and NOT_SERVING.
func TestProbesAgainstRealServers(t *testing.T) {
	testutil.CheckGoroutines(t)
	hang := make(chan struct{})
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ok":
			if r.Header.Get("X-Probe") != "yes" || r.Host != "app.local" {
				http.Error(w, "header or host missing", http.StatusBadRequest)
				return
			}
			w.WriteHeader(http.StatusOK)
		case "/moved":
			http.Redirect(w, r, "/elsewhere", http.StatusFound)
		case "/hang":
			select {
			case <-hang:
			case <-r.Context().Done():
			}
		default:
			http.Error(w, "boom", http.StatusInternalServerError)
		}
	}))
	defer app.Close()
	defer close(hang) // before app.Close: the hanging handler returns
	tlsApp := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) }))
	defer tlsApp.Close()

	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus("greeter", healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	go func() { _ = gs.Serve(gl) }()
	defer gs.Stop()

	httpPort, tlsPort, grpcPort, closed := port(t, app.Listener.Addr().String()), port(t, tlsApp.Listener.Addr().String()), port(t, gl.Addr().String()), closedPort(t)
	httpGet := func(path string, p int32, scheme string) *Prober {
		return &Prober{HTTPGet: &HTTPGetAction{Path: path, Port: p, Scheme: scheme,
			HTTPHeaders: []HTTPHeader{{Name: "X-Probe", Value: "yes"}, {Name: "Host", Value: "app.local"}}}}
	}
	svc := func(s string) *string { return &s }
	tests := []struct {
		name   string
		p      *Prober
		status int
		reason string
	}{
		{"http 200", httpGet("/ok", httpPort, ""), http.StatusOK, ""},
		{"http 302 counts as success", httpGet("/moved", httpPort, SchemeHTTP), http.StatusOK, ""},
		{"http 500", httpGet("/fail", httpPort, ""), http.StatusServiceUnavailable, "status 500"},
		{"https without verification", httpGet("/", tlsPort, SchemeHTTPS), http.StatusOK, ""},
		{"http timeout", func() *Prober { p := httpGet("/hang", httpPort, ""); p.TimeoutSeconds = 1; return p }(), http.StatusServiceUnavailable, "deadline exceeded"},
		{"http refused", httpGet("/ok", closed, ""), http.StatusServiceUnavailable, "refused"},
		{"tcp open", &Prober{TCPSocket: &TCPSocketAction{Port: httpPort}}, http.StatusOK, ""},
		{"tcp closed port", &Prober{TCPSocket: &TCPSocketAction{Port: closed}}, http.StatusServiceUnavailable, "refused"},
		{"grpc SERVING", &Prober{GRPC: &GRPCAction{Port: grpcPort}}, http.StatusOK, ""},
		{"grpc NOT_SERVING", &Prober{GRPC: &GRPCAction{Port: grpcPort, Service: svc("greeter")}}, http.StatusServiceUnavailable, "NOT_SERVING"},
		{"grpc unknown service", &Prober{GRPC: &GRPCAction{Port: grpcPort, Service: svc("nope")}}, http.StatusServiceUnavailable, "NotFound"},
		{"grpc closed port", &Prober{GRPC: &GRPCAction{Port: closed}, TimeoutSeconds: 1}, http.StatusServiceUnavailable, "grpc"},
	}
	probes := map[string]*Prober{}
	for i, tt := range tests {
		if err := tt.p.Validate(); err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		probes[Path("app", string(rune('a'+i)))] = tt.p
	}
	var ready atomic.Bool
	status := httptest.NewServer(&Handler{Probes: probes, Ready: ready.Load})
	defer status.Close()
	client := status.Client()
	defer client.CloseIdleConnections()
	get := func(path string) (int, string) {
		t.Helper()
		res, err := client.Get(status.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(body)
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			code, body := get(Path("app", string(rune('a'+i))))
			if code != tt.status || !strings.Contains(body, tt.reason) {
				t.Fatalf("status %d body %q, want %d with %q", code, body, tt.status, tt.reason)
			}
			// Every probe ends within its timeout (plus scheduling slack).
			if d := time.Since(start); d > tt.p.Timeout()+2*time.Second {
				t.Fatalf("probe took %v, timeout %v", d, tt.p.Timeout())
			}
		})
	}
	if code, _ := get(Path("app", "nope")); code != http.StatusNotFound {
		t.Errorf("unknown path: status %d, want 404", code)
	}
	if code, _ := get(ReadyPath); code != http.StatusServiceUnavailable {
		t.Errorf("%s before ready: %d, want 503", ReadyPath, code)
	}
	ready.Store(true)
	if code, _ := get(ReadyPath); code != http.StatusOK {
		t.Errorf("%s when ready: %d, want 200", ReadyPath, code)
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"empty", "", ""},
		{"valid", `{"/app-health/app/readyz":{"httpGet":{"path":"/h","port":8080},"timeoutSeconds":3},"/app-health/app/livez":{"tcpSocket":{"port":8081}},"/app-health/app/startupz":{"grpc":{"port":50051}}}`, ""},
		{"not JSON", `{`, "MESHD_APP_PROBES"},
		{"unknown field", `{"/app-health/a/livez":{"exec":{"command":["true"]}}}`, "unknown field"},
		{"two actions", `{"/app-health/a/livez":{"tcpSocket":{"port":1},"grpc":{"port":1}}}`, "exactly one"},
		{"named port", `{"/app-health/a/livez":{"tcpSocket":{"port":"http"}}}`, "\"/app-health/a/livez\": json: cannot unmarshal string into Go struct field TCPSocketAction.tcpSocket.port"},
		{"port over 65535", `{"/app-health/a/livez":{"httpGet":{"port":65536}}}`, "httpGet.port: 65536 is not a port number"},
		{"port 0", `{"/app-health/a/livez":{"grpc":{"port":0}}}`, "grpc.port"},
		{"bad scheme", `{"/app-health/a/livez":{"httpGet":{"port":1,"scheme":"FTP"}}}`, "httpGet.scheme"},
		{"negative timeout", `{"/app-health/a/livez":{"tcpSocket":{"port":1},"timeoutSeconds":-1}}`, "timeoutSeconds"},
		{"bad path", `{"/other":{"tcpSocket":{"port":1}}}`, "starts with /app-health/"},
		{"null", `{"/app-health/a/livez":null}`, "null probe"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.in)
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if tt.in != "" && len(got) != 3 {
					t.Fatalf("got %d probes, want 3", len(got))
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one containing %q", err, tt.want)
			}
		})
	}
}
