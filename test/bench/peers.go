package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/template"
	"time"
)

// Peer proxies: the HTTP/2 proxies a user might pick instead of a meshd
// sidecar, configured as in the reference configurations the method comes
// from (one worker, h2c frontend, HTTP/2 backends, gRPC path to the gRPC
// port, the rest to the HTTP port), with the harness's ports and without
// their TLS frontends.
const (
	targetNghttpx = "nghttpx"
	targetHAProxy = "haproxy"
)

// Peer process limits.
const (
	// peerReadyTimeout bounds the wait for a peer's frontend to accept.
	peerReadyTimeout = 15 * time.Second
	// peerStopTimeout bounds the wait for exit after SIGTERM.
	peerStopTimeout = 5 * time.Second
	// peerMaxConns is each peer's connection limit: room for the
	// idle-connection scenario's idle and active connections.
	peerMaxConns = 12000
	// aptTimeout bounds `apt-get install`.
	aptTimeout = 10 * time.Minute
)

// peerPackages maps each peer's executable to the Debian package that
// installs it.
var peerPackages = map[string]string{
	targetNghttpx: "nghttp2-proxy",
	targetHAProxy: "haproxy",
}

// nghttpxTemplate is the reference nghttpx.conf with the harness's ports,
// no TLS frontend, and an fd limit for the idle-connection scenario.
var nghttpxTemplate = template.Must(template.New("nghttpx").Parse(`# Rendered by meshd's test/bench harness.
frontend=127.0.0.1,{{.Port}};no-tls
backend={{.GRPCHost}},{{.GRPCPort}};/grpc.testing.TestService/;proto=h2
backend={{.HTTPHost}},{{.HTTPPort}};/;proto=h2
workers=1
single-process=yes
rlimit-nofile={{.MaxFDs}}
worker-frontend-connections={{.MaxConns}}
errorlog-file={{.Dir}}/nghttpx.err
pid-file={{.Dir}}/nghttpx.pid
`))

// haproxyTemplate is the reference haproxy.cfg with the harness's ports, no
// TLS frontend, and maxconn raised for the idle-connection scenario. HAProxy
// would derive RLIMIT_NOFILE from maxconn (twice it, for a backend
// connection per frontend one) and refuse to start above the hard limit;
// ulimit-n sets it to what the harness has instead and "no strict-limits"
// lets it start with that, still far above the descriptors an HTTP/2 proxy
// multiplexing its backend connections uses.
var haproxyTemplate = template.Must(template.New("haproxy").Parse(`# Rendered by meshd's test/bench harness.
global
    nbthread 1
    maxconn {{.MaxConns}}
    ulimit-n {{.MaxFDs}}
    no strict-limits
    pidfile {{.Dir}}/haproxy.pid
defaults
    mode http
    maxconn {{.MaxConns}}
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend fe
    bind 127.0.0.1:{{.Port}} proto h2
    use_backend be_grpc if { path_beg /grpc.testing.TestService/ }
    default_backend be_web
backend be_web
    server s1 {{.HTTPHost}}:{{.HTTPPort}} proto h2
backend be_grpc
    server g1 {{.GRPCHost}}:{{.GRPCPort}} proto h2
`))

// peerParams fill the peer templates.
type peerParams struct {
	Port               int
	GRPCHost, HTTPHost string
	GRPCPort, HTTPPort uint16
	MaxConns, MaxFDs   int
	Dir                string
}

// ensurePeers finds the peers' executables, installing the missing ones
// with apt-get when running as root (and saying so on w). It returns the
// path of each peer found, and for each missing one the reason.
func ensurePeers(ctx context.Context, logger *slog.Logger) (found map[string]string, missing map[string]string) {
	found, missing = map[string]string{}, map[string]string{}
	var pkgs []string
	for _, name := range []string{targetNghttpx, targetHAProxy} {
		if p, err := exec.LookPath(name); err == nil {
			found[name] = p
		} else {
			pkgs = append(pkgs, peerPackages[name])
		}
	}
	if len(pkgs) > 0 {
		switch apt, err := exec.LookPath("apt-get"); {
		case os.Geteuid() != 0:
			logger.Warn("peer proxies missing and not running as root: not installing", "packages", pkgs)
		case err != nil:
			logger.Warn("peer proxies missing and no apt-get", "packages", pkgs)
		default:
			if err := aptInstall(ctx, apt, pkgs, logger); err != nil {
				logger.Warn("installing peer proxies failed", "packages", pkgs, "err", err)
			}
		}
	}
	for _, name := range []string{targetNghttpx, targetHAProxy} {
		if _, ok := found[name]; ok {
			continue
		}
		if p, err := exec.LookPath(name); err == nil {
			found[name] = p
		} else {
			missing[name] = fmt.Sprintf("%s not found (install with: apt-get install -y %s)", name, peerPackages[name])
		}
	}
	return found, missing
}

// aptInstall runs `apt-get install -y PKGS`, and when that fails, `apt-get
// update` and the install once more, echoing what it runs.
func aptInstall(ctx context.Context, apt string, pkgs []string, logger *slog.Logger) error {
	ctx, cancel := context.WithTimeout(ctx, aptTimeout)
	defer cancel()
	runApt := func(args ...string) error {
		logger.Info("running", "cmd", "apt-get "+strings.Join(args, " "))
		cmd := exec.CommandContext(ctx, apt, args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("apt-get %s: %w\n%s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	install := append([]string{"install", "-y"}, pkgs...)
	if err := runApt(install...); err == nil {
		return nil
	}
	if err := runApt("update"); err != nil {
		return err
	}
	return runApt(install...)
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago, for
// the peers, whose configurations need a fixed port.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// childProc is a started child process: a peer proxy, and the process
// part of a sidecarProc.
type childProc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed when cmd.Wait returns
}

// PID returns the process id (taskset execs the proxy in place).
func (c *childProc) PID() int { return c.cmd.Process.Pid }

// Log returns what the process wrote to stdout and stderr.
func (c *childProc) Log() string {
	b, _ := os.ReadFile(c.logPath)
	return string(b)
}

// Stop sends SIGTERM and waits for the exit, killing the process after
// peerStopTimeout.
func (c *childProc) Stop() error { return c.terminate(peerStopTimeout) }

// terminate sends SIGTERM and waits for the exit, killing the process
// after timeout; it returns an error only when it had to kill it.
func (c *childProc) terminate(timeout time.Duration) error {
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-c.done:
		return nil
	case <-timer.C:
		_ = c.cmd.Process.Kill()
		<-c.done
		return fmt.Errorf("%s did not exit within %v of SIGTERM; killed", c.name, timeout)
	}
}

// startPeer renders the peer's configuration into dir and starts it pinned
// to cpu (when cpu >= 0) in front of the backend, returning once its
// frontend accepts connections, with the frontend's address.
func startPeer(ctx context.Context, name, path, dir string, be *backendProc, cpu int, noFile uint64) (*childProc, string, error) {
	port, err := freePort()
	if err != nil {
		return nil, "", err
	}
	gh, gp, err := splitAddr(name+": backend grpc", be.GRPCAddr)
	if err != nil {
		return nil, "", err
	}
	hh, hp, err := splitAddr(name+": backend http", be.HTTPAddr)
	if err != nil {
		return nil, "", err
	}
	p := peerParams{Port: port, GRPCHost: gh, GRPCPort: gp, HTTPHost: hh, HTTPPort: hp,
		MaxConns: peerMaxConns, MaxFDs: int(min(noFile, 2*peerMaxConns+100)), Dir: dir}
	var tmpl *template.Template
	var args []string
	conf := filepath.Join(dir, name+".conf")
	switch name {
	case targetNghttpx:
		tmpl, args = nghttpxTemplate, []string{path, "--conf=" + conf}
	case targetHAProxy:
		tmpl, args = haproxyTemplate, []string{path, "-db", "-f", conf}
	default:
		return nil, "", fmt.Errorf("unknown peer %q", name)
	}
	var b strings.Builder
	if err := tmpl.Execute(&b, p); err != nil {
		return nil, "", fmt.Errorf("%s config: %w", name, err)
	}
	if err := os.WriteFile(conf, []byte(b.String()), 0o644); err != nil {
		return nil, "", fmt.Errorf("%s config: %w", name, err)
	}
	if cpu >= 0 {
		args = append([]string{"taskset", "-c", strconv.Itoa(cpu)}, args...)
	}
	logPath := filepath.Join(dir, name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, "", fmt.Errorf("%s log: %w", name, err)
	}
	defer logFile.Close()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Dir = dir
	if err := cmd.Start(); err != nil {
		return nil, "", fmt.Errorf("start %s: %w", strings.Join(args, " "), err)
	}
	c := &childProc{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(c.done) }()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	deadline := time.Now().Add(peerReadyTimeout)
	for {
		select {
		case <-c.done:
			return nil, "", fmt.Errorf("%s exited during start-up: %v\n%s", name, cmd.ProcessState, c.Log())
		case <-ctx.Done():
			_ = c.Stop()
			return nil, "", ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if nc, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			nc.Close()
			return c, addr, nil
		}
		if time.Now().After(deadline) {
			_ = c.Stop()
			return nil, "", fmt.Errorf("%s: %s not accepting within %v\n%s", name, addr, peerReadyTimeout, c.Log())
		}
	}
}
