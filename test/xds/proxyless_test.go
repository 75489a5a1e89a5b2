package xds_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/xds/server"
)

// TestProxylessGRPC (issue 4, acceptance 5): a grpc-go client dialling
// xds:///greeter.demo:50051 with a bootstrap pointing at meshd control-plane
// resolves the service through it and calls a real grpc-go server.
func TestProxylessGRPC(t *testing.T) {
	backend := testutil.StartGRPCInteropServer(t)
	dir := t.TempDir()
	meshPath := filepath.Join(dir, "mesh.yaml")
	writeFile(t, meshPath, greeterMesh(backend.Addr))
	cp := startControlPlane(t, meshPath)

	bootstrap := filepath.Join(dir, "grpc-bootstrap.json")
	writeFile(t, bootstrap, fmt.Sprintf(`{
  "xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
  "node": {"id": "proxyless-e2e", "locality": {}}
}`, cp.XDS))
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "GRPC_XDS_BOOTSTRAP="+bootstrap, clientModeEnv+"=xds:///greeter.demo:50051")
	cmd.WaitDelay = time.Second
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := false
	defer func() {
		if !exited {
			_ = stdin.Close()
			_ = cmd.Wait()
		}
	}()
	// The client prints one line once its calls succeeded; the context
	// kills it (ending the read) if that takes too long.
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	if !strings.HasPrefix(line, fmt.Sprintf("%d calls ok", proxylessCalls)) {
		_ = stdin.Close()
		err := cmd.Wait()
		exited = true
		t.Fatalf("proxyless client: %q, exit %v\n%s", line, err, stderr.String())
	}
	if n := backend.StartedRPCs(); n != proxylessCalls {
		t.Errorf("backend saw %d RPCs, want %d", n, proxylessCalls)
	}
	st := cp.WaitStatus(t, "the proxyless node's ACKs", waitTimeout, func(st server.Status) bool {
		for _, s := range st.Streams {
			if s.Node == "proxyless-e2e" && len(s.Types) >= 4 {
				for _, ts := range s.Types {
					if ts.AckedVersion != st.Version {
						return false
					}
				}
				return true
			}
		}
		return false
	})
	if st.Streams[0].CacheKey != server.ProxylessKey || st.Streams[0].Stream != server.StreamSotW {
		t.Errorf("proxyless stream = %+v, want cache key %q over sotw", st.Streams[0], server.ProxylessKey)
	}
	_ = stdin.Close()
	err = cmd.Wait()
	exited = true
	if err != nil {
		t.Errorf("proxyless client exit: %v\n%s", err, stderr.String())
	}
}
