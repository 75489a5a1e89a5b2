package hardening

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"text/template"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"meshd.dev/meshd/internal/testutil"
)

// Bounds of the harness; every wait in the suite is bounded by one of them.
const (
	// frameTimeout bounds one read of the raw-frame client.
	frameTimeout = 10 * time.Second
	// clkTck is USER_HZ, the unit of /proc/PID/stat's utime and stime, 100
	// on every Linux architecture Go supports.
	clkTck = 100
)

// sidecarParams shapes the bootstrap of startSidecar.
type sidecarParams struct {
	// HCM is YAML appended to both listeners' HttpConnectionManager
	// (indented by the template), e.g. flood limits and timeouts.
	HCM string
	// Bootstrap is YAML appended at the top level (overload_manager).
	Bootstrap string
	// ConnBufferLimit is per_connection_buffer_limit_bytes of the
	// listeners and the cluster (0: unset).
	ConnBufferLimit int
}

var bootstrapTmpl = template.Must(template.New("b").Parse(`node: { id: hardening, cluster: hardening }
admin:
  address:
    socket_address: { address: 127.0.0.1, port_value: 0 }
{{.Bootstrap}}
static_resources:
  listeners:
{{- range .Listeners}}
  - name: {{.Name}}
    address:
      socket_address: { address: 127.0.0.1, port_value: 0 }
{{- if $.ConnBufferLimit}}
    per_connection_buffer_limit_bytes: {{$.ConnBufferLimit}}
{{- end}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {{.Name}}
          codec_type: {{.Codec}}
          route_config:
            name: local
            virtual_hosts:
            - name: backend
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: backend, timeout: 0s }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
{{$.HCM}}
{{- if .TLS}}
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: ["h2", "http/1.1"]
            tls_certificates:
            - certificate_chain: { filename: "{{$.CertDir}}/server.pem" }
              private_key: { filename: "{{$.CertDir}}/server-key.pem" }
{{- end}}
{{- end}}
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 1s
    lb_policy: ROUND_ROBIN
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}
{{- if $.ConnBufferLimit}}
    per_connection_buffer_limit_bytes: {{$.ConnBufferLimit}}
{{- end}}
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: 127.0.0.1, port_value: {{.BackendPort}} }
`))

// indent prefixes every line of s with n spaces.
func indent(s string, n int) string {
	if strings.TrimSpace(s) == "" {
		return ""
	}
	pad := strings.Repeat(" ", n)
	var b strings.Builder
	for line := range strings.Lines(strings.Trim(s, "\n")) {
		b.WriteString(pad + strings.TrimRight(line, "\n") + "\n")
	}
	return strings.TrimRight(b.String(), "\n")
}

// mesh is a running sidecar in front of the suite's backend, with three
// listeners: cleartext AUTO ("plain"), TLS AUTO ("tls") and cleartext
// HTTP2 ("h2c").
type mesh struct {
	sc      *testutil.Sidecar
	backend *backend
	plain   string // listener addresses: cleartext AUTO,
	tlsAddr string // TLS AUTO (ALPN h2 or http/1.1),
	h2c     string // cleartext HTTP2 only
	certDir string
}

// startSidecar starts a backend and a sidecar configured by p.
func startSidecar(t *testing.T, p sidecarParams) *mesh {
	t.Helper()
	be := startBackend(t)
	root, err := testutil.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	certDir := filepath.Join(root, "examples", "certs")
	_, port, _ := net.SplitHostPort(be.addr)
	var b strings.Builder
	err = bootstrapTmpl.Execute(&b, map[string]any{
		"Bootstrap":       p.Bootstrap,
		"HCM":             indent(p.HCM, 10),
		"ConnBufferLimit": p.ConnBufferLimit,
		"CertDir":         certDir,
		"BackendPort":     port,
		"Listeners": []struct {
			Name, Codec string
			TLS         bool
		}{{"plain", "AUTO", false}, {"tls", "AUTO", true}, {"h2c", "HTTP2", false}},
	})
	if err != nil {
		t.Fatal(err)
	}
	sc := testutil.StartSidecar(t, b.String())
	return &mesh{
		sc:      sc,
		backend: be,
		plain:   sc.ListenerAddr(t, "plain"),
		tlsAddr: sc.ListenerAddr(t, "tls"),
		h2c:     sc.ListenerAddr(t, "h2c"),
		certDir: certDir,
	}
}

// stat returns one counter or gauge of the sidecar (0 when absent).
func (m *mesh) stat(t *testing.T, name string) int64 {
	t.Helper()
	return m.sc.Stats(t)[name]
}

// tlsConfig trusts the example CA and offers ALPN protos.
func (m *mesh) tlsConfig(t *testing.T, protos ...string) *tls.Config {
	t.Helper()
	pem, err := os.ReadFile(filepath.Join(m.certDir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return &tls.Config{RootCAs: pool, ServerName: "localhost", NextProtos: protos}
}

// backend is the upstream: an HTTP/2 (h2c) server with a few endpoints.
//
//	/            drains the request body, answers "hello from meshd\n" (h2spec
//	             skips a flow-control case for bodies under 5 bytes)
//	/hang        answers nothing until the request is cancelled (at most 30 s)
//	/big?size=N  N bytes
//	/fat         204 with ~16 KB of unique response headers
type backend struct {
	addr string
}

func startBackend(t *testing.T) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte("b"), 32<<10)
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, "hello from meshd\n")
	})
	mux.HandleFunc("/hang", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(30 * time.Second):
		}
	})
	var fat atomic.Int64
	mux.HandleFunc("/fat", func(w http.ResponseWriter, r *http.Request) {
		// Eight 2000-byte header values unique to this response, so HPACK
		// cannot index them away: ~16 KB of HEADERS per response.
		k := fat.Add(1)
		for i := range 8 {
			w.Header().Set("x-fat-"+strconv.Itoa(i), strconv.FormatInt(k, 10)+strings.Repeat("f", 2000))
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("size"))
		w.Header().Set("content-length", strconv.Itoa(n))
		for n > 0 {
			k := min(n, len(chunk))
			if _, err := w.Write(chunk[:k]); err != nil {
				return
			}
			n -= k
		}
	})
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: mux, Protocols: &protos, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
	return &backend{addr: ln.Addr().String()}
}

// procSample is what /proc says about the sidecar at one moment.
type procSample struct {
	at       time.Time
	cpuTicks uint64
	rss      int64
}

func sampleProc(t *testing.T, pid int) procSample {
	t.Helper()
	s := procSample{at: time.Now()}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatalf("reading the sidecar's stat: %v", err)
	}
	end := bytes.LastIndexByte(stat, ')')
	f := strings.Fields(string(stat[end+1:]))
	if len(f) < 13 {
		t.Fatalf("/proc/%d/stat: %d fields after comm", pid, len(f))
	}
	u, _ := strconv.ParseUint(f[11], 10, 64) // utime, field 14
	k, _ := strconv.ParseUint(f[12], 10, 64) // stime, field 15
	s.cpuTicks = u + k
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("reading the sidecar's status: %v", err)
	}
	for line := range strings.Lines(string(status)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.Fields(rest)[0], 10, 64)
			s.rss = kb << 10
		}
	}
	return s
}

// cpuFraction is the CPU the process used between a and b, in cores.
func cpuFraction(a, b procSample) float64 {
	wall := b.at.Sub(a.at).Seconds()
	if wall <= 0 {
		return 0
	}
	return float64(b.cpuTicks-a.cpuTicks) / clkTck / wall
}

// rawConn is a hand-driven HTTP/2 client connection.
type rawConn struct {
	nc   net.Conn
	fr   *http2.Framer
	enc  *hpack.Encoder
	hbuf bytes.Buffer
}

// dialRaw connects to addr (TLS with ALPN h2 when tlsCfg is set), sends
// the preface and an empty SETTINGS (or settings), and returns the
// connection without reading anything.
func dialRaw(t *testing.T, addr string, tlsCfg *tls.Config, settings ...http2.Setting) *rawConn {
	t.Helper()
	c, err := dialRawErr(addr, tlsCfg, nil, settings...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.nc.Close() })
	return c
}

// dialRawErr is dialRaw for attacker goroutines: the caller closes c.nc.
// control, when set, runs on the socket before it connects (see
// net.Dialer.Control), where socket buffer sizes still shape what the
// handshake negotiates: the window scale and the first advertised window.
func dialRawErr(addr string, tlsCfg *tls.Config, control func(network, address string, rc syscall.RawConn) error, settings ...http2.Setting) (*rawConn, error) {
	d := net.Dialer{Timeout: frameTimeout, Control: control}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	if tlsCfg != nil {
		tc := tls.Client(nc, tlsCfg)
		_ = tc.SetDeadline(time.Now().Add(frameTimeout))
		if err := tc.Handshake(); err != nil {
			_ = nc.Close()
			return nil, fmt.Errorf("TLS handshake: %w", err)
		}
		_ = tc.SetDeadline(time.Time{})
		nc = tc
	}
	c := &rawConn{nc: nc, fr: http2.NewFramer(nc, nc)}
	c.fr.ReadMetaHeaders = hpack.NewDecoder(65536, nil)
	c.fr.MaxHeaderListSize = 1 << 20
	c.fr.AllowIllegalWrites = true
	c.enc = hpack.NewEncoder(&c.hbuf)
	_ = nc.SetWriteDeadline(time.Now().Add(frameTimeout))
	if _, err := nc.Write([]byte(http2.ClientPreface)); err != nil {
		_ = nc.Close()
		return nil, err
	}
	if err := c.fr.WriteSettings(settings...); err != nil {
		_ = nc.Close()
		return nil, err
	}
	return c, nil
}

// block HPACK-encodes kv pairs.
func (c *rawConn) block(kv ...string) []byte {
	c.hbuf.Reset()
	for i := 0; i+1 < len(kv); i += 2 {
		_ = c.enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return slices.Clone(c.hbuf.Bytes())
}

// request sends a HEADERS frame for a request to path.
func (c *rawConn) request(id uint32, path string, end bool, extra ...string) error {
	kv := append([]string{":method", "GET", ":scheme", "http", ":authority", "hardening", ":path", path}, extra...)
	if !end {
		kv[1] = "POST"
	}
	return c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.block(kv...), EndStream: end, EndHeaders: true})
}

// outcome is how the server ended what the attacker did.
type outcome struct {
	goAway     bool
	goAwayCode http2.ErrCode
	debug      string
	rst        map[http2.ErrCode]int // RST_STREAMs received by code
	status     map[string]int        // response :status values
	closed     bool                  // the connection ended (EOF or error)
	frames     int
}

// readUntilEnd reads frames until the connection ends, a GOAWAY arrives,
// stop returns true, or d passes.
func (c *rawConn) readUntilEnd(d time.Duration, stop func(o *outcome) bool) *outcome {
	o := &outcome{rst: map[http2.ErrCode]int{}, status: map[string]int{}}
	_ = c.nc.SetReadDeadline(time.Now().Add(d))
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			var ne net.Error
			o.closed = !(errors.As(err, &ne) && ne.Timeout())
			return o
		}
		o.frames++
		switch f := f.(type) {
		case *http2.GoAwayFrame:
			o.goAway, o.goAwayCode, o.debug = true, f.ErrCode, string(f.DebugData())
			if f.ErrCode != http2.ErrCodeNo {
				return o
			}
		case *http2.RSTStreamFrame:
			o.rst[f.ErrCode]++
		case *http2.MetaHeadersFrame:
			if s := f.PseudoValue("status"); s != "" {
				o.status[s]++
			}
		}
		if stop != nil && stop(o) {
			return o
		}
	}
}

// prober is a well-behaved HTTP/2 client on its own connection, timing
// GET / through the sidecar.
type prober struct {
	client *http.Client
	url    string
}

func newProber(addr string) *prober {
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &protos}
	return &prober{client: &http.Client{Transport: tr, Timeout: 5 * time.Second}, url: "http://" + addr + "/"}
}

func (p *prober) close() { p.client.CloseIdleConnections() }

// window runs requests for d, pause apart, and returns their latencies
// and how many failed.
func (p *prober) window(d, pause time.Duration) (lat []time.Duration, errs int) {
	end := time.Now().Add(d)
	for i := 0; i < 10000 && time.Now().Before(end); i++ {
		if i > 0 {
			time.Sleep(pause)
		}
		start := time.Now()
		resp, err := p.client.Get(p.url)
		if err == nil {
			_, err = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if err == nil && resp.StatusCode != 200 {
				err = fmt.Errorf("status %d", resp.StatusCode)
			}
		}
		if err != nil {
			errs++
			continue
		}
		lat = append(lat, time.Since(start))
	}
	return lat, errs
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(p*float64(len(s))))]
}

// latency is the result of several short probe windows: the median of
// their p99s, which a single scheduling hiccup on a loaded machine does
// not move.
type latency struct {
	p99s   []time.Duration
	median time.Duration
	n      int
	errs   int
}

// add merges the windows of o into l.
func (l *latency) add(o latency) {
	l.p99s = append(l.p99s, o.p99s...)
	l.n += o.n
	l.errs += o.errs
}

// finish computes the median.
func (l *latency) finish() { l.median = percentile(l.p99s, 0.5) }

func (l latency) String() string {
	return fmt.Sprintf("median p99 %v over %d windows (%d requests, %d errors)", l.median.Round(10*time.Microsecond), len(l.p99s), l.n, l.errs)
}

// attack runs fn in a loop (each call is one attacker connection) on
// workers goroutines while on is set, pause apart, until stop is closed
// or maxRounds calls were made.
func attack(workers, maxRounds int, pause time.Duration, stop <-chan struct{}, on *atomic.Bool, fn func(round int)) (wait func() int) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	rounds := 0
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if !on.Load() {
					time.Sleep(10 * time.Millisecond)
					continue
				}
				mu.Lock()
				if rounds >= maxRounds {
					mu.Unlock()
					return
				}
				r := rounds
				rounds++
				mu.Unlock()
				fn(r)
				select {
				case <-stop:
					return
				case <-time.After(pause):
				}
			}
		}()
	}
	return func() int {
		wg.Wait()
		return rounds
	}
}
