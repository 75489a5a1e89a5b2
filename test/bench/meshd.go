package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Sidecar process limits.
const (
	// buildTimeout bounds `go build -tags meshd_sidecar ./cmd/meshd`.
	buildTimeout = 5 * time.Minute
	// sidecarReadyTimeout bounds the time from start to GET /ready == 200.
	sidecarReadyTimeout = 20 * time.Second
	// adminTimeout bounds one admin request.
	adminTimeout = 5 * time.Second
	// sidecarDrainSeconds is the sidecar's --drain-time-s; the harness has
	// finished its load when it stops the sidecar.
	sidecarDrainSeconds = 1
	// sidecarStopTimeout bounds the wait for exit after SIGTERM.
	sidecarStopTimeout = sidecarDrainSeconds*time.Second + 5*time.Second
)

// buildMeshd builds the sidecar-only meshd (./cmd/meshd with -tags
// meshd_sidecar, the build a sidecar runs in production) of the module at
// root into dir. Every meshd target runs only `meshd sidecar`.
func buildMeshd(ctx context.Context, root, dir string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, buildTimeout)
	defer cancel()
	out := filepath.Join(dir, "meshd")
	cmd := exec.CommandContext(ctx, "go", "build", "-tags", "meshd_sidecar", "-o", out, "./cmd/meshd")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build -tags meshd_sidecar ./cmd/meshd: %w\n%s", err, b)
	}
	return out, nil
}

// moduleRoot returns the directory holding the go.mod of the module the
// working directory is in.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod in the working directory or above it: run from inside the meshd module")
		}
		dir = parent
	}
}

// sidecarProc is a running `meshd sidecar`.
type sidecarProc struct {
	// AdminAddr is the bound admin address; ListenerAddr the bound address
	// of the bench listener. Immutable.
	AdminAddr, ListenerAddr string
	// node is the sidecar's name (its bootstrap node), which prefixes the
	// stats the harness reports for it. Immutable.
	node string

	childProc
	client *http.Client
}

// startSidecar writes the bootstrap into dir as NAME.yaml and starts meshd
// on it, pinned to cpu with `taskset -c` when cpu >= 0, with GOMAXPROCS=1.
// It returns once GET /ready answers 200 and the bound address of the
// listener called listenerName is known.
func startSidecar(ctx context.Context, meshd, dir, name, bootstrap string, cpu int) (*sidecarProc, error) {
	bootPath := filepath.Join(dir, name+".yaml")
	if err := os.WriteFile(bootPath, []byte(bootstrap), 0o644); err != nil {
		return nil, fmt.Errorf("sidecar %s: write bootstrap: %w", name, err)
	}
	adminPath := filepath.Join(dir, name+".admin-address")
	// A sidecar of the same name started earlier (a restarted target) left
	// its address here: reading it would wait on a stopped process.
	if err := os.Remove(adminPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("sidecar %s: remove the old admin address file: %w", name, err)
	}
	logPath := filepath.Join(dir, name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("sidecar %s: log file: %w", name, err)
	}
	defer logFile.Close() // the child has its own descriptor

	args := []string{meshd, "sidecar", "-c", bootPath, "--admin-address-path", adminPath,
		"--drain-time-s", strconv.Itoa(sidecarDrainSeconds), "--log-level", "warn"}
	if cpu >= 0 {
		args = append([]string{"taskset", "-c", strconv.Itoa(cpu)}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("sidecar %s: start %s: %w", name, strings.Join(args, " "), err)
	}
	s := &sidecarProc{
		node: name, childProc: childProc{name: "sidecar " + name, cmd: cmd, logPath: logPath, done: make(chan struct{})},
		client: &http.Client{Timeout: adminTimeout},
	}
	go func() { _ = cmd.Wait(); close(s.done) }()
	if err := s.waitReady(ctx, adminPath); err != nil {
		s.Stop()
		return nil, fmt.Errorf("sidecar %s: %w\n%s", name, err, s.Log())
	}
	return s, nil
}

// waitReady polls for the admin address file, GET /ready and the listener
// address until sidecarReadyTimeout.
func (s *sidecarProc) waitReady(ctx context.Context, adminPath string) error {
	deadline := time.Now().Add(sidecarReadyTimeout)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			return fmt.Errorf("exited during start-up: %v", s.cmd.ProcessState)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if s.AdminAddr == "" {
			b, err := os.ReadFile(adminPath)
			if err != nil || len(bytes.TrimSpace(b)) == 0 {
				last = fmt.Errorf("admin address file %s not written", adminPath)
				continue
			}
			s.AdminAddr = strings.TrimSpace(string(b))
		}
		code, _, err := s.admin("/ready")
		if err != nil || code != http.StatusOK {
			last = fmt.Errorf("GET /ready: %d %v", code, err)
			continue
		}
		addr, err := s.listenerAddr(listenerName)
		if err != nil {
			last = err
			continue
		}
		s.ListenerAddr = addr
		return nil
	}
	return fmt.Errorf("not ready within %v: %v", sidecarReadyTimeout, last)
}

// admin GETs path from the admin API.
func (s *sidecarProc) admin(path string) (int, []byte, error) {
	resp, err := s.client.Get("http://" + s.AdminAddr + path)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// listenerStatuses is the JSON of Envoy's GET /listeners?format=json.
type listenerStatuses struct {
	ListenerStatuses []struct {
		Name         string `json:"name"`
		LocalAddress struct {
			SocketAddress struct {
				Address   string `json:"address"`
				PortValue int    `json:"port_value"`
			} `json:"socket_address"`
		} `json:"local_address"`
	} `json:"listener_statuses"`
}

// parseListenerAddr returns "host:port" of the listener called name in a
// /listeners?format=json body.
func parseListenerAddr(body []byte, name string) (string, error) {
	var ls listenerStatuses
	if err := json.Unmarshal(body, &ls); err != nil {
		return "", fmt.Errorf("/listeners?format=json: %w", err)
	}
	for _, l := range ls.ListenerStatuses {
		if l.Name != name {
			continue
		}
		sa := l.LocalAddress.SocketAddress
		if sa.Address == "" || sa.PortValue <= 0 || sa.PortValue > 65535 {
			return "", fmt.Errorf("/listeners?format=json: listener %q: local_address.socket_address %q port %d is not a bound address", name, sa.Address, sa.PortValue)
		}
		return net.JoinHostPort(sa.Address, strconv.Itoa(sa.PortValue)), nil
	}
	return "", fmt.Errorf("/listeners?format=json: no listener named %q", name)
}

// listenerAddr asks the admin API for the bound address of a listener.
func (s *sidecarProc) listenerAddr(name string) (string, error) {
	code, body, err := s.admin("/listeners?format=json")
	if err != nil {
		return "", err
	}
	if code != http.StatusOK {
		return "", fmt.Errorf("/listeners?format=json: status %d", code)
	}
	return parseListenerAddr(body, name)
}

// stats reads every integer stat of the admin /stats text ("name: value"
// lines).
func (s *sidecarProc) stats() (map[string]int64, error) {
	code, body, err := s.admin("/stats")
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("/stats: status %d", code)
	}
	return parseStats(body), nil
}

// parseStats returns every "name: integer" line of Envoy's /stats text;
// other lines (histograms) are skipped.
func parseStats(body []byte) map[string]int64 {
	out := make(map[string]int64)
	for line := range strings.Lines(string(body)) {
		k, v, found := strings.Cut(strings.TrimSpace(line), ": ")
		if !found {
			continue
		}
		if n, err := strconv.ParseInt(v, 10, 64); err == nil {
			out[k] = n
		}
	}
	return out
}

// Stop sends SIGTERM (a graceful drain) and waits for exit, killing the process after
// sidecarStopTimeout. It returns an error when the exit was not clean.
func (s *sidecarProc) Stop() error {
	if err := s.terminate(sidecarStopTimeout); err != nil {
		return err
	}
	if !s.cmd.ProcessState.Success() {
		return fmt.Errorf("sidecar exited: %v", s.cmd.ProcessState)
	}
	return nil
}
