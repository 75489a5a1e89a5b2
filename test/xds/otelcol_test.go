package xds_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/otel/tracing/tracingtest"
)

// receiver is where the tracing tests' sidecars export spans: a real
// OpenTelemetry collector when one is built (otelcol), else the
// in-process OTLP receiver (tracingtest.Collector).
type receiver interface {
	Addr() string
	Spans() []tracingtest.Span
	Reset()
	Stop()
	Restart()
}

// The collector the tests build: the collector builder and every
// component pinned at one version.
const (
	otelcolVersion = "v0.162.0"
	otelcolBuilder = `dist:
  name: otelcol-meshd
  description: meshd test collector
  output_path: %s
receivers:
  - gomod: go.opentelemetry.io/collector/receiver/otlpreceiver ` + otelcolVersion + `
exporters:
  - gomod: go.opentelemetry.io/collector/exporter/debugexporter ` + otelcolVersion + `
  - gomod: go.opentelemetry.io/collector/exporter/otlpexporter ` + otelcolVersion + `
`
	// otelcolBuildTimeout bounds building the collector (about 2.5 min
	// on an idle 2-core machine).
	otelcolBuildTimeout = 20 * time.Minute
)

var otelcolOnce struct {
	sync.Once
	path string
	err  error
}

// otelcolBinary returns the cached collector, building it when
// MESHD_OTELCOL=1; "" when there is none and none is wanted. The cache is
// ${MESHD_OTELCOL_CACHE:-$HOME/.cache/meshd-otelcol}/<hash of the builder
// config>/, outside the repository.
func otelcolBinary(t *testing.T) string {
	t.Helper()
	otelcolOnce.Do(func() {
		dir := os.Getenv("MESHD_OTELCOL_CACHE")
		if dir == "" {
			home, err := os.UserHomeDir()
			if err != nil {
				otelcolOnce.err = err
				return
			}
			dir = filepath.Join(home, ".cache", "meshd-otelcol")
		}
		sum := sha256.Sum256([]byte(otelcolBuilder))
		dir = filepath.Join(dir, hex.EncodeToString(sum[:8]))
		bin := filepath.Join(dir, "dist", "otelcol-meshd")
		if _, err := os.Stat(bin); err == nil {
			otelcolOnce.path = bin
			return
		}
		if os.Getenv("MESHD_OTELCOL") != "1" {
			return
		}
		otelcolOnce.path, otelcolOnce.err = buildOtelcol(dir, bin)
	})
	if otelcolOnce.err != nil {
		t.Fatalf("building the OpenTelemetry collector: %v", otelcolOnce.err)
	}
	return otelcolOnce.path
}

func buildOtelcol(dir, bin string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	cfg := filepath.Join(dir, "builder.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(otelcolBuilder, filepath.Join(dir, "dist"))), 0o644); err != nil {
		return "", err
	}
	run := func(name string, env []string, args ...string) error {
		cmd := exec.Command(name, args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), env...)
		cmd.WaitDelay = time.Second
		done := make(chan error, 1)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			return err
		}
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				return fmt.Errorf("%s: %w\n%s", name, err, out.Bytes())
			}
			return nil
		case <-time.After(otelcolBuildTimeout):
			_ = cmd.Process.Kill()
			<-done
			return fmt.Errorf("%s: still running after %v", name, otelcolBuildTimeout)
		}
	}
	gobin := filepath.Join(dir, "bin")
	if err := run("go", []string{"GOBIN=" + gobin}, "install", "go.opentelemetry.io/collector/cmd/builder@"+otelcolVersion); err != nil {
		return "", err
	}
	if err := run(filepath.Join(gobin, "builder"), nil, "--config", cfg); err != nil {
		return "", err
	}
	return bin, nil
}

// startReceiver starts the real collector when it is available, the
// in-process receiver otherwise.
func startReceiver(t *testing.T) receiver {
	t.Helper()
	if bin := otelcolBinary(t); bin != "" {
		return startOtelcol(t, bin)
	}
	return tracingtest.Start(t)
}

// otelcol is a collector process: an OTLP/gRPC receiver on a loopback
// port, the debug exporter, and an OTLP exporter forwarding everything to
// an in-process receiver (sink), which the test reads. The collector
// built here has no file exporter: the contrib module is not served by
// the module mirror.
type otelcol struct {
	t    *testing.T
	bin  string
	dir  string
	addr string
	sink *tracingtest.Collector

	mu   sync.Mutex
	proc *collectorProc
	runs int
}

func startOtelcol(t *testing.T, bin string) *otelcol {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	c := &otelcol{t: t, bin: bin, dir: t.TempDir(), addr: addr, sink: tracingtest.Start(t)}
	c.Restart()
	t.Cleanup(c.Stop)
	return c
}

func (c *otelcol) Addr() string { return c.addr }

// Restart starts the collector (again) on the same port, exporting to a
// new file, and waits until its receiver accepts connections.
func (c *otelcol) Restart() {
	c.t.Helper()
	c.mu.Lock()
	c.runs++
	run := c.runs
	c.mu.Unlock()
	cfg := filepath.Join(c.dir, "config-"+strconv.Itoa(run)+".yaml")
	yaml := fmt.Sprintf(`receivers:
  otlp:
    protocols:
      grpc:
        endpoint: %s
exporters:
  debug: {}
  otlp_grpc:
    endpoint: %s
    tls:
      insecure: true
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [otlp_grpc, debug]
`, c.addr, c.sink.Addr())
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		c.t.Fatal(err)
	}
	p := startCollectorProc(c.t, c.bin, "--config", cfg)
	deadline := time.Now().Add(waitTimeout)
	for {
		conn, err := net.DialTimeout("tcp", c.addr, time.Second)
		if err == nil {
			conn.Close()
			break
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("collector not listening on %s: %v\n%s", c.addr, err, p.Output())
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.mu.Lock()
	c.proc = p
	c.mu.Unlock()
}

// Stop stops the collector process (SIGTERM, then kill).
func (c *otelcol) Stop() {
	c.mu.Lock()
	p := c.proc
	c.proc = nil
	c.mu.Unlock()
	if p != nil {
		p.Stop()
	}
}

// Reset forgets the spans received so far.
func (c *otelcol) Reset() { c.sink.Reset() }

// Output is what the running collector printed ("" when stopped).
func (c *otelcol) Output() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc == nil {
		return ""
	}
	return c.proc.Output()
}

// Spans returns the spans the collector forwarded.
func (c *otelcol) Spans() []tracingtest.Span { return c.sink.Spans() }

// collectorProc is one run of the collector binary.
type collectorProc struct {
	cmd  *exec.Cmd
	out  *testutil.SyncBuffer
	done chan struct{}
}

func startCollectorProc(t *testing.T, bin string, args ...string) *collectorProc {
	t.Helper()
	p := &collectorProc{cmd: exec.Command(bin, args...), out: &testutil.SyncBuffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.WaitDelay = time.Second
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start collector: %v", err)
	}
	go func() {
		defer close(p.done)
		_ = p.cmd.Wait()
	}()
	return p
}

// Output is what the collector printed.
func (p *collectorProc) Output() string { return p.out.String() }

// collectorStopTimeout bounds the collector's graceful stop.
const collectorStopTimeout = 5 * time.Second

// Stop sends SIGTERM and kills the collector if it has not exited within
// collectorStopTimeout.
func (p *collectorProc) Stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(collectorStopTimeout):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}
