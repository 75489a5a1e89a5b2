// Package probe runs the application's kubelet probes from inside the pod,
// on the sidecar's status port.
//
// `meshd inject` rewrites every httpGet, tcpSocket and grpc liveness,
// readiness and startup probe of an application container to an httpGet on
// the sidecar's status port (DefaultStatusPort) at
// /app-health/<container>/<livez|readyz|startupz>, and hands the original
// probes to the sidecar as JSON in the environment variable EnvAppProbes.
// The sidecar serves that port with a Handler: each path performs the
// original probe against the application on 127.0.0.1 (the sidecar's own
// traffic is exempt from capture by UID, so it reaches the application
// directly) within the probe's timeout and answers 200 when it passes, 503
// when it fails. kubelet, which has no mesh identity, thus never needs a
// path around the sidecar's mTLS inbound listener.
//
// The semantics are kubelet's (pkg/probe): an HTTP probe passes on a
// status in [200, 400) and does not verify an HTTPS server's certificate; a
// TCP probe passes when the connection opens; a gRPC probe passes when
// grpc.health.v1.Health/Check answers SERVING.
package probe

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// DefaultStatusPort is the sidecar's status port (Istio's, so operators
// and network policies recognise it). Capture leaves it alone.
const DefaultStatusPort = 15021

// EnvAppProbes names the environment variable of the sidecar container
// holding the original probes: a JSON object from probe path (Path) to
// Prober.
const EnvAppProbes = "MESHD_APP_PROBES"

// PathPrefix starts every application probe path.
const PathPrefix = "/app-health/"

// ReadyPath is the sidecar's own readiness on the status port.
const ReadyPath = "/healthz/ready"

// Probe kinds, the last element of a probe path.
const (
	Liveness  = "livez"
	Readiness = "readyz"
	Startup   = "startupz"
)

// DefaultTimeout is kubelet's probe timeout when timeoutSeconds is unset.
const DefaultTimeout = time.Second

// Path returns the status-port path of container's probe of kind.
func Path(container, kind string) string { return PathPrefix + container + "/" + kind }

// Prober is one original probe: exactly one of HTTPGet, TCPSocket and GRPC,
// with numeric ports (`meshd inject` resolves named ports, which only the
// pod spec can), and its timeout. Its JSON is the Kubernetes Probe's
// (core/v1) for these fields, so the actions are declared here rather than
// taken from the Kubernetes API types: the sidecar, which parses them,
// then links none of the Kubernetes packages (docs/RATIONALE.md).
type Prober struct {
	HTTPGet        *HTTPGetAction   `json:"httpGet,omitempty"`
	TCPSocket      *TCPSocketAction `json:"tcpSocket,omitempty"`
	GRPC           *GRPCAction      `json:"grpc,omitempty"`
	TimeoutSeconds int32            `json:"timeoutSeconds,omitempty"`
}

// URI schemes of an HTTPGetAction, as Kubernetes spells them.
const (
	SchemeHTTP  = "HTTP"
	SchemeHTTPS = "HTTPS"
)

// HTTPGetAction is a kubelet httpGet probe: GET Scheme://Host:Port/Path
// with HTTPHeaders (a Host header sets the request's host). Empty Host is
// 127.0.0.1, empty Scheme is HTTP.
type HTTPGetAction struct {
	Path        string       `json:"path,omitempty"`
	Port        int32        `json:"port"`
	Host        string       `json:"host,omitempty"`
	Scheme      string       `json:"scheme,omitempty"`
	HTTPHeaders []HTTPHeader `json:"httpHeaders,omitempty"`
}

// HTTPHeader is one header an HTTPGetAction sends.
type HTTPHeader struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// TCPSocketAction is a kubelet tcpSocket probe: it passes when a TCP
// connection to Host:Port opens. Empty Host is 127.0.0.1.
type TCPSocketAction struct {
	Port int32  `json:"port"`
	Host string `json:"host,omitempty"`
}

// GRPCAction is a kubelet grpc probe: grpc.health.v1.Health/Check of
// Service (nil: the empty name, the server as a whole) on 127.0.0.1:Port.
type GRPCAction struct {
	Port    int32   `json:"port"`
	Service *string `json:"service,omitempty"`
}

// Validate reports what makes p unusable, naming the field.
func (p *Prober) Validate() error {
	n := 0
	for _, set := range []bool{p.HTTPGet != nil, p.TCPSocket != nil, p.GRPC != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		return fmt.Errorf("exactly one of httpGet, tcpSocket and grpc must be set (%d are)", n)
	}
	if p.TimeoutSeconds < 0 {
		return fmt.Errorf("timeoutSeconds: %d is negative", p.TimeoutSeconds)
	}
	var port int32
	var field string
	switch {
	case p.HTTPGet != nil:
		port, field = p.HTTPGet.Port, "httpGet.port"
		if s := p.HTTPGet.Scheme; s != "" && s != SchemeHTTP && s != SchemeHTTPS {
			return fmt.Errorf("httpGet.scheme: %q is not HTTP or HTTPS", s)
		}
	case p.TCPSocket != nil:
		port, field = p.TCPSocket.Port, "tcpSocket.port"
	default:
		port, field = p.GRPC.Port, "grpc.port"
	}
	if port < 1 || port > 65535 {
		return fmt.Errorf("%s: %d is not a port number in 1..65535", field, port)
	}
	return nil
}

// Timeout is p's timeout: timeoutSeconds, or DefaultTimeout when unset.
func (p *Prober) Timeout() time.Duration {
	if p.TimeoutSeconds > 0 {
		return time.Duration(p.TimeoutSeconds) * time.Second
	}
	return DefaultTimeout
}

// Parse decodes EnvAppProbes' value strictly and validates every probe;
// the error names the path of the first bad one. An empty value is no
// probes.
func Parse(data string) (map[string]*Prober, error) {
	out := map[string]*Prober{}
	if strings.TrimSpace(data) == "" {
		return out, nil
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal([]byte(data), &raw); err != nil {
		return nil, fmt.Errorf("%s: %w", EnvAppProbes, err)
	}
	for _, path := range slices.Sorted(maps.Keys(raw)) {
		if !strings.HasPrefix(path, PathPrefix) {
			return nil, fmt.Errorf("%s: %q: a probe path starts with %s", EnvAppProbes, path, PathPrefix)
		}
		if bytes.Equal(raw[path], []byte("null")) {
			return nil, fmt.Errorf("%s: %q: null probe", EnvAppProbes, path)
		}
		p := new(Prober)
		dec := json.NewDecoder(bytes.NewReader(raw[path]))
		dec.DisallowUnknownFields()
		if err := dec.Decode(p); err != nil {
			return nil, fmt.Errorf("%s: %q: %w", EnvAppProbes, path, err)
		}
		if err := p.Validate(); err != nil {
			return nil, fmt.Errorf("%s: %q: %w", EnvAppProbes, path, err)
		}
		out[path] = p
	}
	return out, nil
}

// Run performs p against the application at host (127.0.0.1 when p names
// none) within p's timeout and ctx, and returns nil when it passes, or why
// it failed.
func (p *Prober) Run(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, p.Timeout())
	defer cancel()
	switch {
	case p.HTTPGet != nil:
		return runHTTP(ctx, p.HTTPGet)
	case p.TCPSocket != nil:
		return runTCP(ctx, p.TCPSocket)
	case p.GRPC != nil:
		return runGRPC(ctx, p.GRPC)
	}
	return errors.New("no probe action")
}

func hostOr(host string) string {
	if host == "" {
		return "127.0.0.1"
	}
	return host
}

// probeTransport is shared by HTTP probes: no proxy, no certificate
// verification (as kubelet), no keep-alive (each probe is one exchange,
// so no idle connection outlives it).
var probeTransport = &http.Transport{
	Proxy:             nil,
	TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // kubelet does not verify probe targets either
	DisableKeepAlives: true,
}

// maxBodyRead bounds how much of a probe response is read (kubelet reads
// 10 KiB).
const maxBodyRead = 10 << 10

func runHTTP(ctx context.Context, a *HTTPGetAction) error {
	scheme := "http"
	if a.Scheme == SchemeHTTPS {
		scheme = "https"
	}
	path := a.Path
	if path == "" {
		path = "/"
	} else if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	u, err := url.Parse(scheme + "://" + net.JoinHostPort(hostOr(a.Host), strconv.Itoa(int(a.Port))) + path)
	if err != nil {
		return fmt.Errorf("httpGet: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return fmt.Errorf("httpGet: %w", err)
	}
	req.Header.Set("User-Agent", "kube-probe/meshd")
	req.Header.Set("Accept", "*/*")
	for _, h := range a.HTTPHeaders {
		if strings.EqualFold(h.Name, "Host") {
			req.Host = h.Value
			continue
		}
		req.Header.Add(h.Name, h.Value)
	}
	client := http.Client{
		Transport: probeTransport,
		// A redirect is an answer: kubelet counts 3xx as success.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	res, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("httpGet %s: %w", u, err)
	}
	defer res.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, maxBodyRead))
	if res.StatusCode < 200 || res.StatusCode >= 400 {
		return fmt.Errorf("httpGet %s: status %d", u, res.StatusCode)
	}
	return nil
}

func runTCP(ctx context.Context, a *TCPSocketAction) error {
	addr := net.JoinHostPort(hostOr(a.Host), strconv.Itoa(int(a.Port)))
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("tcpSocket %s: %w", addr, err)
	}
	return c.Close()
}

func runGRPC(ctx context.Context, a *GRPCAction) error {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(a.Port)))
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithUserAgent("kube-probe/meshd"))
	if err != nil {
		return fmt.Errorf("grpc %s: %w", addr, err)
	}
	defer cc.Close()
	svc := ""
	if a.Service != nil {
		svc = *a.Service
	}
	res, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
	if err != nil {
		return fmt.Errorf("grpc %s: health check of service %q: %w", addr, svc, err)
	}
	if st := res.GetStatus(); st != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("grpc %s: service %q is %s", addr, svc, st)
	}
	return nil
}

// Handler serves the status port: GET PathPrefix paths run their probe
// (200 "ok" when it passes, 503 with the reason when it fails, 404 for a
// path with no probe), and ReadyPath answers 200 while Ready reports true
// and 503 otherwise.
type Handler struct {
	// Probes are the application's probes by path (Parse's result).
	// Immutable once serving.
	Probes map[string]*Prober
	// Ready reports the sidecar's readiness; nil serves no ReadyPath.
	Ready func() bool
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if r.URL.Path == ReadyPath && h.Ready != nil {
		if !h.Ready() {
			http.Error(w, "sidecar not ready", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
		return
	}
	p := h.Probes[r.URL.Path]
	if p == nil {
		http.NotFound(w, r)
		return
	}
	if err := p.Run(r.Context()); err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	_, _ = io.WriteString(w, "ok\n")
}
