package capture

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"meshd.dev/meshd/internal/testutil"
)

func TestMain(m *testing.M) { os.Exit(testutil.Main(m)) }

// proxyUID is the sidecar's UID in the test; capture exempts it.
const proxyUID = 1337

// requireNetns skips the test unless it can create network namespaces
// and load capture rules.
func requireNetns(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("traffic capture test needs root (network namespaces, netfilter); skipped")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("traffic capture test needs the ip command (iproute2); skipped")
	}
	backend, err := Detect()
	if err != nil {
		t.Skipf("traffic capture test needs iptables or nft (apt-get install iptables); skipped: %v", err)
	}
	return backend
}

func ip(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// inNS runs fn on an OS thread in network namespace ns: sockets fn creates
// and processes it starts live there.
func inNS(t *testing.T, ns string, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer orig.Close()
	target, err := os.Open("/var/run/netns/" + ns)
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("setns %s: %v", ns, err)
	}
	defer func() {
		// A thread that cannot return stays locked and dies with the
		// goroutine, so no other goroutine runs in ns by accident.
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err == nil {
			runtime.UnlockOSThread()
		}
	}()
	fn()
}

// prefixServer answers each line with prefix+line.
func prefixServer(t *testing.T, ln net.Listener, prefix string) {
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				r := bufio.NewReader(c)
				line, err := r.ReadString('\n')
				if err != nil {
					return
				}
				_, _ = io.WriteString(c, prefix+line)
			}()
		}
	}()
}

// call dials addr from the current thread's namespace, sends a line and
// returns the answer.
func call(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "hello\n"); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

const captureBootstrap = `
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 0}}
static_resources:
  listeners:
  - name: virtual_inbound
    address: {socket_address: {address: 0.0.0.0, port_value: 15006}}
    use_original_dst: true
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: inbound_passthrough, cluster: blackhole}
  - name: inbound_8080
    address: {socket_address: {address: 0.0.0.0, port_value: 8080}}
    bind_to_port: false
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: inbound_8080, cluster: inbound_app}
  - name: virtual_outbound
    address: {socket_address: {address: 0.0.0.0, port_value: 15001}}
    use_original_dst: true
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: outbound_passthrough, cluster: passthrough}
  - name: outbound_greeter
    address: {socket_address: {address: 10.96.0.10, port_value: 80}}
    bind_to_port: false
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: outbound_greeter, cluster: greeter}
  clusters:
  - name: blackhole
    type: STATIC
    connect_timeout: 1s
    load_assignment: {cluster_name: blackhole, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}}]}]}
  - name: passthrough
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 1s
    cleanup_interval: 1s
  - name: inbound_app
    type: STATIC
    connect_timeout: 1s
    load_assignment: {cluster_name: inbound_app, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 8080}}}}]}]}
  - name: greeter
    type: STATIC
    connect_timeout: 1s
    load_assignment: {cluster_name: greeter, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 10.200.2.2, port_value: 9090}}}}]}]}
`

// TestCaptureInNetworkNamespaces runs an application and its sidecar in one
// network namespace with `meshd capture` rules, a client in a second and a
// server in a third (veth pairs between them): the client's plain TCP to
// the application's port reaches the application through the sidecar, and
// the application's call to a service address (a virtual IP that only the
// sidecar knows, like a cluster IP) reaches the server through the sidecar
// too, routed by its original destination. The sidecar's stats show both.
func TestCaptureInNetworkNamespaces(t *testing.T) {
	backend := requireNetns(t)
	bin := testutil.BuildMeshd(t)
	suffix := strconv.Itoa(os.Getpid())
	app, cli, srv := "meshd-app-"+suffix, "meshd-cli-"+suffix, "meshd-srv-"+suffix
	for _, ns := range []string{app, cli, srv} {
		_ = exec.Command("ip", "netns", "del", ns).Run()
		ip(t, "netns", "add", ns)
		t.Cleanup(func() {
			if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
				t.Errorf("ip netns del %s: %v: %s", ns, err, out)
			}
		})
		ip(t, "-n", ns, "link", "set", "lo", "up")
	}
	// app 10.200.1.1 <-> cli 10.200.1.2; app 10.200.2.1 <-> srv 10.200.2.2.
	for _, l := range []struct{ a, b, aNS, bNS, aIP, bIP string }{
		{"mc" + suffix, "mc" + suffix + "p", app, cli, "10.200.1.1/24", "10.200.1.2/24"},
		{"ms" + suffix, "ms" + suffix + "p", app, srv, "10.200.2.1/24", "10.200.2.2/24"},
	} {
		ip(t, "link", "add", l.a, "netns", l.aNS, "type", "veth", "peer", "name", l.b, "netns", l.bNS)
		ip(t, "-n", l.aNS, "addr", "add", l.aIP, "dev", l.a)
		ip(t, "-n", l.bNS, "addr", "add", l.bIP, "dev", l.b)
		ip(t, "-n", l.aNS, "link", "set", l.a, "up")
		ip(t, "-n", l.bNS, "link", "set", l.b, "up")
	}
	// The service address is virtual: a route makes it reachable for the
	// routing decision that precedes the redirect.
	ip(t, "-n", app, "route", "add", "10.96.0.0/16", "via", "10.200.2.2")

	// The application (root, captured) and the server.
	inNS(t, app, func() {
		ln, err := net.Listen("tcp", "0.0.0.0:8080")
		if err != nil {
			t.Fatal(err)
		}
		prefixServer(t, ln, "app:")
	})
	inNS(t, srv, func() {
		ln, err := net.Listen("tcp", "10.200.2.2:9090")
		if err != nil {
			t.Fatal(err)
		}
		prefixServer(t, ln, "srv:")
		// A destination outside the mesh: no listener matches it.
		ext, err := net.Listen("tcp", "10.200.2.2:9191")
		if err != nil {
			t.Fatal(err)
		}
		prefixServer(t, ext, "ext:")
	})

	// The capture rules, as the init container installs them.
	inNS(t, app, func() {
		out, err := exec.Command(bin, "capture", "--backend", backend, "--inbound-port", "15006", "--outbound-port", "15001",
			"--proxy-uid", strconv.Itoa(proxyUID)).CombinedOutput()
		if err != nil {
			t.Fatalf("meshd capture: %v: %s", err, out)
		}
	})

	// The sidecar runs as proxyUID, from a directory that UID can read.
	dir, err := os.MkdirTemp("", "meshd-capture-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	sidecarBin := filepath.Join(dir, "meshd")
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sidecarBin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	bootstrap := filepath.Join(dir, "bootstrap.yaml")
	if err := os.WriteFile(bootstrap, []byte(captureBootstrap), 0o644); err != nil {
		t.Fatal(err)
	}
	adminPath := filepath.Join(dir, "admin")
	var stderr strings.Builder
	cmd := exec.Command(sidecarBin, "sidecar", "-c", bootstrap, "--admin-address-path", adminPath, "--drain-time-s", "0")
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: proxyUID, Gid: proxyUID}, Pdeathsig: syscall.SIGKILL}
	inNS(t, app, func() {
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
	})
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})

	var admin string
	deadline := time.Now().Add(30 * time.Second)
	for admin == "" {
		if b, err := os.ReadFile(adminPath); err == nil && len(b) > 0 {
			admin = strings.TrimSpace(string(b))
			break
		}
		select {
		case <-exited:
			t.Fatalf("sidecar exited: %s", stderr.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("sidecar did not write its admin address: %s", stderr.String())
		}
	}
	stats := func() map[string]int64 {
		t.Helper()
		var body string
		// net/http dials on its own goroutine (in the root namespace):
		// speak HTTP/1.0 on a connection made here instead.
		inNS(t, app, func() {
			c, err := net.DialTimeout("tcp", admin, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.WriteString(c, "GET /stats HTTP/1.0\r\nHost: admin\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			res, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			b, err := io.ReadAll(res.Body)
			if err != nil {
				t.Fatal(err)
			}
			body = string(b)
		})
		return testutil.ParseStats(body)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	retry := func(ns, addr, want string) {
		t.Helper()
		var got string
		var err error
		for ctx.Err() == nil {
			inNS(t, ns, func() { got, err = call(addr) })
			if err == nil && got == want {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("%s -> %s: got %q, %v; want %q\nsidecar log:\n%s", ns, addr, got, err, want, stderr.String())
	}

	// Inbound: the client's plain TCP to the application's port.
	retry(cli, "10.200.1.1:8080", "app:hello")
	// Outbound: the application's call to the service address.
	retry(app, "10.96.0.10:80", "srv:hello")
	// Passthrough: the application's call to an address no listener
	// matches reaches it through the ORIGINAL_DST cluster.
	retry(app, "10.200.2.2:9191", "ext:hello")

	st := stats()
	for _, name := range []string{
		"cluster.inbound_app.upstream_cx_total", // redirected to 15006, handed to inbound_8080, then the app
		"cluster.greeter.upstream_cx_total",     // redirected to 15001, handed to 10.96.0.10:80, then the server
		"cluster.passthrough.upstream_cx_total", // redirected to 15001, no listener for 10.200.2.2:9191: its original destination
	} {
		if st[name] < 1 {
			t.Errorf("stat %s = %d, want at least 1 (the connection did not go through the sidecar)", name, st[name])
		}
	}
	if st["cluster.blackhole.upstream_cx_total"] != 0 {
		t.Errorf("cluster.blackhole.upstream_cx_total = %d: a connection was not routed by its original destination", st["cluster.blackhole.upstream_cx_total"])
	}
}
