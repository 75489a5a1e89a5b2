package e2e

import (
	"net/http"
	"os"
	"testing"

	"meshd.dev/meshd/internal/testutil"
)

func TestMain(m *testing.M) { os.Exit(testutil.Main(m)) }

// mode is where a test's client sends its traffic.
type mode struct {
	name       string
	viaSidecar bool
}

// modes runs a test body straight at the backend (the baseline) and through
// a meshd sidecar.
var modes = []mode{{"direct", false}, {"sidecar", true}}

// front returns the address a client should dial in mode m: the backend's,
// or that of the listener of a sidecar started in front of it (nil in direct
// mode). args go to `meshd sidecar`.
func front(t *testing.T, m mode, backendAddr, upstreamProtocol string, args ...string) (string, *testutil.Sidecar) {
	t.Helper()
	if !m.viaSidecar {
		return backendAddr, nil
	}
	bootstrap := testutil.MustBootstrap(t, testutil.BootstrapParams{BackendAddr: backendAddr, UpstreamProtocol: upstreamProtocol})
	sc := testutil.StartSidecar(t, bootstrap, args...)
	return sc.ListenerAddr(t, testutil.DefaultListenerName), sc
}

// http1Client returns a client that speaks only HTTP/1.1, with keep-alive.
// Callers must CloseIdleConnections when done, for the leak check.
func http1Client() *http.Client {
	var p http.Protocols
	p.SetHTTP1(true)
	return &http.Client{Transport: &http.Transport{Protocols: &p}, Timeout: requestTimeout}
}
