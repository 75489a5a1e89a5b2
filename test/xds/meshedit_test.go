package xds_test

import (
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"meshd.dev/meshd/internal/meshtest"
	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/xds/model"
	"meshd.dev/meshd/xds/server"
	"meshd.dev/meshd/xds/translate"
)

// Node IDs of the two workloads of tunedMesh.
const (
	serverNode = "greeter-server.demo"
	clientNode = "greeter-client.demo"
)

// knobs are the values of tunedMesh that the edit tests change: each lands
// in a different part of the sidecars' config.
type knobs struct {
	// Timeout is the greeter route's timeout (RDS of the client node).
	Timeout time.Duration
	// Attempts is the greeter route's retry count (RDS of the client node).
	Attempts int
	// KeepaliveInterval is the greeter cluster's HTTP/2 keepalive
	// interval (CDS of the client node).
	KeepaliveInterval time.Duration
	// MaxStreams is maxConcurrentStreams of the greeter policy (CDS of the
	// client node, the inbound listener of the server node).
	MaxStreams int
	// Weight is the endpoint weight of the "direct" service (EDS of the
	// client node).
	Weight int
}

// baseKnobs are tunedMesh's values before any edit. The timeouts stay far
// above any test's duration so that no edit cuts a long-lived stream.
var baseKnobs = knobs{Timeout: 300 * time.Second, Attempts: 1, KeepaliveInterval: 30 * time.Second, MaxStreams: 100, Weight: 1}

// edit returns k with the i-th edit applied: edits rotate through the
// route timeout and retries, the keepalive interval, maxConcurrentStreams
// and the endpoint weight, each time with a value not used before.
func (k knobs) edit(i int) (knobs, string) {
	switch i % 4 {
	case 0:
		k.Timeout += time.Second
		k.Attempts = 1 + (k.Attempts % 3)
		return k, fmt.Sprintf("route timeout %v, %d retries", k.Timeout, k.Attempts)
	case 1:
		k.KeepaliveInterval += time.Second
		return k, fmt.Sprintf("keepalive interval %v", k.KeepaliveInterval)
	case 2:
		k.MaxStreams++
		return k, fmt.Sprintf("maxConcurrentStreams %d", k.MaxStreams)
	default:
		k.Weight++
		return k, fmt.Sprintf("endpoint weight %d", k.Weight)
	}
}

// inDump returns, per node ID, strings the sidecar's /config_dump (Envoy's
// JSON with proto field names) contains once it applied k.
func (k knobs) inDump() map[string][]string {
	return map[string][]string{
		clientNode: {
			fmt.Sprintf(`"timeout":"%ds"`, int(k.Timeout.Seconds())),
			fmt.Sprintf(`"num_retries":%d`, k.Attempts),
			fmt.Sprintf(`"connection_keepalive":{"interval":"%ds"`, int(k.KeepaliveInterval.Seconds())),
			fmt.Sprintf(`"max_concurrent_streams":%d`, k.MaxStreams),
			fmt.Sprintf(`"load_balancing_weight":%d`, k.Weight),
		},
		// The inbound listener advertises the policy's stream limit.
		serverNode: {fmt.Sprintf(`"max_concurrent_streams":%d`, k.MaxStreams)},
	}
}

// checkDumps fails the test unless each sidecar's /config_dump shows k's
// values and, for the state-of-the-world sidecar (serverNode), version
// (a delta sidecar shows per-resource versions instead).
func checkDumps(t *testing.T, sidecars map[string]*testutil.Sidecar, version string, k knobs) {
	t.Helper()
	for node, wants := range k.inDump() {
		if node == serverNode {
			wants = append(wants, `"version_info":"`+version+`"`)
		}
		// include_eds: the endpoint weights are in the EDS resources.
		dump := sidecars[node].Admin(t, http.MethodGet, "/config_dump?include_eds")
		for _, want := range wants {
			if !strings.Contains(dump, want) {
				t.Errorf("%s: /config_dump lacks %s after the ACK", node, want)
			}
		}
	}
}

// tunedMeshPorts are the loopback ports of tunedMesh.
type tunedMeshPorts struct {
	Inbound, Outbound, Direct, AdminServer, AdminClient int
}

func newTunedMeshPorts(t *testing.T) tunedMeshPorts {
	p := meshtest.FreePorts(t, 5)
	return tunedMeshPorts{Inbound: p[0], Outbound: p[1], Direct: p[2], AdminServer: p[3], AdminClient: p[4]}
}

// tunedMesh is the two-sidecar mesh of twoSidecarMesh (client sidecar
// outbound → server sidecar inbound → app) plus a TrafficPolicy for greeter
// and a second service, "direct", whose one endpoint is the app itself
// (reached from the client sidecar's port p.Direct), so that every kind of
// edit has a field to change.
func tunedMesh(app string, p tunedMeshPorts, k knobs) string {
	host, port, _ := strings.Cut(app, ":")
	return fmt.Sprintf(`apiVersion: meshd.dev/v1alpha1
kind: Mesh
metadata:
  name: test
spec:
  trustDomain: test.example
---
apiVersion: meshd.dev/v1alpha1
kind: Service
metadata:
  name: greeter
  namespace: demo
spec:
  protocol: grpc
  port: 50051
  upstreamProtocol: http2
---
apiVersion: meshd.dev/v1alpha1
kind: Service
metadata:
  name: direct
  namespace: demo
spec:
  protocol: grpc
  port: 50052
  endpoints:
    - address: %s
      port: %s
      weight: %d
---
apiVersion: meshd.dev/v1alpha1
kind: Workload
metadata:
  name: greeter-server
  namespace: demo
spec:
  serviceAccount: greeter-server
  service: greeter
  inbound:
    port: %d
    app: %s
  admin: 127.0.0.1:%d
---
apiVersion: meshd.dev/v1alpha1
kind: Workload
metadata:
  name: greeter-client
  namespace: demo
spec:
  serviceAccount: greeter-client
  outbound:
    - service: greeter.demo
      port: %d
    - service: direct.demo
      port: %d
  admin: 127.0.0.1:%d
---
apiVersion: meshd.dev/v1alpha1
kind: TrafficPolicy
metadata:
  name: greeter
  namespace: demo
spec:
  targetRef:
    kind: Service
    name: greeter
    namespace: demo
  timeout: %s
  retries:
    attempts: %d
    retryOn: ["unavailable"]
  http2:
    maxConcurrentStreams: %d
    keepalive:
      interval: %s
      timeout: 5s
`, host, port, k.Weight, p.Inbound, app, p.AdminServer, p.Outbound, p.Direct, p.AdminClient,
		k.Timeout, k.Attempts, k.MaxStreams, k.KeepaliveInterval)
}

// nodeTypes is the set of resource types, per node ID, whose resources
// differ between two meshes.
type nodeTypes map[string][]string

// translated parses and translates a mesh text as the control plane does.
func translated(t *testing.T, text string) *translate.Result {
	t.Helper()
	m, err := model.Parse([]byte(text), "test mesh")
	if err != nil {
		t.Fatalf("the test's mesh does not parse: %v", err)
	}
	// A stand-in for the control plane's rate-limit module: which types
	// change between two meshes does not depend on its URL.
	res, err := translate.TranslateWith(m, translate.Options{RateLimitModule: &translate.WasmModule{
		URL: "http://127.0.0.1:1/wasm/ratelimit.wasm", SHA256: strings.Repeat("0", 64)}})
	if err != nil {
		t.Fatalf("the test's mesh does not translate: %v", err)
	}
	return res
}

// changedTypes returns, per sidecar node, the resource types whose
// resources differ between before and after: those are the types a delta
// stream gets a response for (a state-of-the-world stream gets every type
// at the new version).
func changedTypes(before, after *translate.Result) nodeTypes {
	out := nodeTypes{}
	for id, a := range after.Nodes {
		b := before.Nodes[id]
		if b == nil {
			b = &translate.Resources{}
		}
		for _, tc := range []struct {
			url  string
			x, y []types.Resource
		}{
			{resourcev3.ListenerType, b.Listeners, a.Listeners},
			{resourcev3.RouteType, b.Routes, a.Routes},
			{resourcev3.ClusterType, b.Clusters, a.Clusters},
			{resourcev3.EndpointType, b.Endpoints, a.Endpoints},
			{resourcev3.SecretType, b.Secrets, a.Secrets},
		} {
			if !slices.EqualFunc(tc.x, tc.y, func(x, y types.Resource) bool { return proto.Equal(x, y) }) {
				out[id] = append(out[id], tc.url)
			}
		}
	}
	return out
}

// applied reports whether /status shows, for every node and type in want,
// a stream of that node that ACKed version for that type, and (for a
// state-of-the-world stream, which gets every type at every version) every
// type it was sent ACKed at version.
func applied(st server.Status, version string, want nodeTypes) bool {
	for node, urls := range want {
		ok := false
		for _, s := range st.Streams {
			if s.Node != node {
				continue
			}
			all := true
			for _, url := range urls {
				if s.Types[url].AckedVersion != version {
					all = false
				}
			}
			if s.Stream == server.StreamSotW {
				for _, ts := range s.Types {
					if ts.AckedVersion != version {
						all = false
					}
				}
			}
			ok = ok || all
		}
		if !ok {
			return false
		}
	}
	return true
}

// sotwAcked reports whether every state-of-the-world stream in st ACKed
// version for every type it was sent: such a stream gets every type at
// every published version, whether or not its resources changed.
func sotwAcked(st server.Status, version string) bool {
	for _, s := range st.Streams {
		if s.Stream != server.StreamSotW {
			continue
		}
		for _, ts := range s.Types {
			if ts.AckedVersion != version {
				return false
			}
		}
	}
	return true
}

// meshEdit writes text over meshPath and waits until both sidecars ACKed
// the new version for every type whose resources changed (and a
// state-of-the-world sidecar for every type); it returns that
// version and the time from the write to the last ACK seen.
func meshEdit(t *testing.T, cp *meshtest.ControlPlane, meshPath, before, after string, timeout time.Duration) (string, time.Duration) {
	t.Helper()
	prev, err := cp.Status()
	if err != nil {
		t.Fatalf("before the edit: %v", err)
	}
	want := changedTypes(translated(t, before), translated(t, after))
	start := time.Now()
	meshtest.WriteFileAtomic(t, meshPath, after)
	deadline := start.Add(timeout)
	var last server.Status
	for time.Now().Before(deadline) {
		st, err := cp.Status()
		if err == nil {
			last = st
			if st.LastError != nil {
				t.Fatalf("the control plane rejected the edit: %s", st.LastError.Message)
			}
			// checkDumps reads the state-of-the-world sidecar's
			// version_info even when the edit changed nothing of its
			// own, so wait for its ACK of every type as well.
			if st.Version != "" && st.Version != prev.Version && applied(st, st.Version, want) && sotwAcked(st, st.Version) {
				return st.Version, time.Since(start)
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("edit not ACKed by %v within %v; last /status: %+v", want, timeout, last)
	return "", 0
}

// startTunedMesh writes tunedMesh with baseKnobs, starts the control plane
// on it and one sidecar per workload from `meshd bootstrap` (the server
// sidecar over state of the world, the client over delta), and waits until
// both ACKed the first version.
func startTunedMesh(t *testing.T, app string) (cp *meshtest.ControlPlane, sidecars map[string]*testutil.Sidecar, meshPath, text string, p tunedMeshPorts) {
	t.Helper()
	p = newTunedMeshPorts(t)
	meshPath = filepath.Join(t.TempDir(), "mesh.yaml")
	text = tunedMesh(app, p, baseKnobs)
	writeFile(t, meshPath, text)
	cp = startControlPlane(t, meshPath)
	st := cp.WaitStatus(t, "a published version", waitTimeout, func(st server.Status) bool { return st.Version != "" })
	sidecars = startSidecars(t, cp, meshPath)
	all := changedTypes(&translate.Result{}, translated(t, text))
	cp.WaitStatus(t, "both sidecars ACKing the first version", waitTimeout, func(s server.Status) bool { return applied(s, st.Version, all) })
	return cp, sidecars, meshPath, text, p
}

// startSidecars starts the server sidecar (state of the world) and the
// client sidecar (delta) of cp's mesh meshPath, and returns them by node ID.
func startSidecars(t *testing.T, cp *meshtest.ControlPlane, meshPath string) map[string]*testutil.Sidecar {
	t.Helper()
	return map[string]*testutil.Sidecar{
		serverNode: meshtest.StartWorkload(t, cp, meshPath, serverNode),
		clientNode: meshtest.StartDeltaWorkload(t, cp, meshPath, clientNode),
	}
}
