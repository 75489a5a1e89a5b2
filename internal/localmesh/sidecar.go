package localmesh

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"meshd.dev/meshd/ca"
	"meshd.dev/meshd/xds/model"
	"meshd.dev/meshd/xds/translate"
)

// Sidecar timeouts.
const (
	// sidecarDrainSeconds is the --drain-time-s each sidecar runs with.
	sidecarDrainSeconds = 2
	// sidecarStopTimeout bounds the wait for a sidecar to exit after
	// SIGTERM (its drain plus margin) before it is killed.
	sidecarStopTimeout = sidecarDrainSeconds*time.Second + 3*time.Second
	// adminTimeout bounds one request to a sidecar's admin API.
	adminTimeout = 2 * time.Second
)

// sidecar is one `meshd sidecar` child process.
type sidecar struct {
	nodeID    string
	dir       string // bootstrap, admin address file and log live here
	logPath   string
	adminPath string
	cmd       *exec.Cmd
	exited    chan struct{} // closed when the process has exited
	exitErr   error         // set before exited is closed
	admin     string        // bound admin address, once known
}

// startSidecar writes w's bootstrap (translate.Bootstrap with xdsAddr) to
// dir, with the CA bootstrap token in node.metadata["meshd.token"], and
// starts exe as `sidecar -c` on it, logging to dir/<node>.log.
func startSidecar(exe string, m *model.Mesh, w *model.Workload, xdsAddr, dir, token string) (*sidecar, error) {
	id := w.NodeID()
	b, err := translate.Bootstrap(m, id, xdsAddr)
	if err != nil {
		return nil, fmt.Errorf("sidecar %s: %w", id, err)
	}
	ca.SetNodeToken(b.Node, token)
	js, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(b)
	if err != nil {
		return nil, fmt.Errorf("sidecar %s: encoding bootstrap: %w", id, err)
	}
	y, err := yaml.JSONToYAML(js)
	if err != nil {
		return nil, fmt.Errorf("sidecar %s: encoding bootstrap as YAML: %w", id, err)
	}
	s := &sidecar{
		nodeID:    id,
		dir:       dir,
		logPath:   filepath.Join(dir, id+".log"),
		adminPath: filepath.Join(dir, id+".admin"),
		exited:    make(chan struct{}),
	}
	bootstrapPath := filepath.Join(dir, id+".bootstrap.yaml")
	if err := os.WriteFile(bootstrapPath, y, 0o600); err != nil {
		return nil, fmt.Errorf("sidecar %s: %w", id, err)
	}
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("sidecar %s: %w", id, err)
	}
	s.cmd = exec.Command(exe, "sidecar", "-c", bootstrapPath,
		"--admin-address-path", s.adminPath,
		"--drain-time-s", fmt.Sprint(sidecarDrainSeconds))
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	// Its own process group: a Ctrl-C on the terminal reaches meshd up
	// alone, which stops the sample client before it stops the sidecars.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		_ = logf.Close()
		return nil, fmt.Errorf("sidecar %s: starting %s: %w", id, exe, err)
	}
	go func() {
		s.exitErr = s.cmd.Wait()
		_ = logf.Close()
		close(s.exited)
	}()
	return s, nil
}

// waitReady waits until the sidecar has written its admin address and its
// /ready answers 200, or the process exits, or ctx ends.
func (s *sidecar) waitReady(ctx context.Context, client *http.Client) error {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		if s.admin == "" {
			// The file may be caught half-written: take it once it holds a
			// whole host:port.
			if b, err := os.ReadFile(s.adminPath); err == nil {
				if addr := strings.TrimSpace(string(b)); addr != "" {
					if _, port, err := net.SplitHostPort(addr); err == nil && port != "" {
						s.admin = addr
					}
				}
			}
		}
		if s.admin != "" {
			if ok, _ := s.ready(ctx, client); ok {
				return nil
			}
		}
		select {
		case <-s.exited:
			return fmt.Errorf("sidecar %s exited before it was ready (%v); its log %s ends:\n%s", s.nodeID, s.exitErr, s.logPath, tail(s.logPath, 10))
		case <-ctx.Done():
			return fmt.Errorf("sidecar %s not ready: %w; its log %s ends:\n%s", s.nodeID, context.Cause(ctx), s.logPath, tail(s.logPath, 10))
		case <-t.C:
		}
	}
}

// ready asks the admin API's /ready.
func (s *sidecar) ready(ctx context.Context, client *http.Client) (bool, error) {
	resp, err := s.get(ctx, client, "/ready")
	if err != nil {
		return false, err
	}
	return resp.status == http.StatusOK, nil
}

type adminResponse struct {
	status int
	body   string
}

// adminBodyLimit bounds how much of an admin answer is read.
const adminBodyLimit = 4 << 20

func (s *sidecar) get(ctx context.Context, client *http.Client, path string) (adminResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, adminTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.admin+path, nil)
	if err != nil {
		return adminResponse{}, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return adminResponse{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, adminBodyLimit))
	if err != nil {
		return adminResponse{}, err
	}
	return adminResponse{resp.StatusCode, string(b)}, nil
}

// listeners returns the sidecar's "name::address" lines from /listeners.
func (s *sidecar) listeners(ctx context.Context, client *http.Client) ([]string, error) {
	resp, err := s.get(ctx, client, "/listeners")
	if err != nil {
		return nil, err
	}
	if resp.status != http.StatusOK {
		return nil, fmt.Errorf("sidecar %s /listeners: status %d", s.nodeID, resp.status)
	}
	var ls []string
	for _, l := range strings.Split(strings.TrimSpace(resp.body), "\n") {
		if l != "" {
			ls = append(ls, l)
		}
	}
	return ls, nil
}

// stop sends SIGTERM and waits for the exit, killing the process after
// sidecarStopTimeout. It returns the process's exit error, if any.
func (s *sidecar) stop() error {
	select {
	case <-s.exited:
		return s.exitError()
	default:
	}
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		_ = s.cmd.Process.Kill()
	}
	t := time.NewTimer(sidecarStopTimeout)
	defer t.Stop()
	select {
	case <-s.exited:
		// A sidecar stopped before it installed its signal handler dies
		// of the SIGTERM itself: that is the stop asked for.
		var ee *exec.ExitError
		if errors.As(s.exitErr, &ee) {
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGTERM {
				return nil
			}
		}
		return s.exitError()
	case <-t.C:
		_ = s.cmd.Process.Kill()
		<-s.exited
		return fmt.Errorf("sidecar %s: killed after not stopping within %s of SIGTERM", s.nodeID, sidecarStopTimeout)
	}
}

func (s *sidecar) exitError() error {
	if s.exitErr != nil {
		return fmt.Errorf("sidecar %s: %w (log %s)", s.nodeID, s.exitErr, s.logPath)
	}
	return nil
}

// tail returns the last n lines of the file at path, for error messages.
func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return "  (" + err.Error() + ")"
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		lines = append(lines, "  "+sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}
