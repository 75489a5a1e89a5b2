package doctor

import (
	"context"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
)

// TestFleetNodes reads a control plane's /status: one entry per node
// (a node with two streams appears once), sorted, with its reported admin.
func TestFleetNodes(t *testing.T) {
	testutil.CheckGoroutines(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/status" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write([]byte(`{"version":"v1","sidecars":["b.ns","a.ns"],"streams":[
			{"stream_id":1,"node":"b.ns","admin":"127.0.0.1:2"},
			{"stream_id":2,"node":"a.ns","admin":"127.0.0.1:1"},
			{"stream_id":3,"node":"a.ns"},
			{"stream_id":4,"node":"proxyless-client"}]}`))
	}))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	addr := srv.Listener.Addr().String()
	got, err := FleetNodes(ctx, srv.Client(), addr)
	if err != nil {
		t.Fatal(err)
	}
	want := []FleetNode{{"a.ns", "127.0.0.1:1"}, {"b.ns", "127.0.0.1:2"}, {"proxyless-client", ""}}
	if len(got) != len(want) {
		t.Fatalf("FleetNodes = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("node %d = %v, want %v", i, got[i], want[i])
		}
	}
	if _, err := FleetNodes(ctx, srv.Client(), addr+"0"); err == nil {
		t.Error("FleetNodes of a wrong address succeeded")
	}
}

// TestFleetSkipsNodesWithoutAdmin: a node that reported no admin address
// is skipped, not an error, and a sidecar that cannot be reached is.
func TestFleetSkipsNodesWithoutAdmin(t *testing.T) {
	testutil.CheckGoroutines(t)
	dead := httptest.NewServer(http.NotFoundHandler())
	deadAddr := dead.Listener.Addr().String()
	dead.Close()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(`{"streams":[{"node":"gone.ns","admin":"` + deadAddr + `"},{"node":"proxyless"}]}`))
	}))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := Fleet(ctx, srv.Listener.Addr().String(), "-", LiveOptions{Window: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Nodes) != 2 || r.Nodes[0].Node != "gone.ns" || r.Nodes[0].Error == "" || r.Nodes[1].Skipped == "" || r.Nodes[1].Error != "" {
		t.Fatalf("nodes %+v: want gone.ns failed and proxyless skipped", r.Nodes)
	}
	if r.ExitCode() != 2 {
		t.Errorf("exit code %d, want 2 (a sidecar could not be sampled)", r.ExitCode())
	}
}

// TestFleetTuning turns the control plane's autotune changes on /status
// into info findings with the field, the values, the reason and the
// numbers; a control plane without autotune gives none.
func TestFleetTuning(t *testing.T) {
	testutil.CheckGoroutines(t)
	for _, tc := range []struct {
		name, body string
		want       []Finding
	}{{
		name: "two changes",
		body: `{"autotune":[
 {"at":"2026-01-02T03:04:05Z","service":"demo/greeter","field":"http2.keepalive.interval","from":"1s","to":"4s","reason":"refused at 1s","values":{"interval_ms":4000}},
 {"at":"2026-01-02T03:04:06Z","service":"demo/pool","field":"connectionPool.maxConnections","from":"2","to":"5","reason":"overflow","values":{"max_connections":5}}]}`,
		want: []Finding{
			{Severity: Info, Rule: "autotune", Subject: "Service demo/greeter", Evidence: "http2.keepalive.interval: control plane set 4s (was 1s) at 2026-01-02T03:04:05Z: refused at 1s", Values: map[string]float64{"interval_ms": 4000}},
			{Severity: Info, Rule: "autotune", Subject: "Service demo/pool", Evidence: "connectionPool.maxConnections: control plane set 5 (was 2) at 2026-01-02T03:04:06Z: overflow", Values: map[string]float64{"max_connections": 5}},
		},
	}, {
		name: "no autotune",
		body: `{"version":"v1","streams":[]}`,
		want: []Finding{},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(tc.body)) }))
			defer srv.Close()
			got, err := FleetTuning(context.Background(), nil, strings.TrimPrefix(srv.URL, "http://"))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// TestFleetRejected turns the objects on the control plane's /status
// "rejected" into warning findings naming the object, the annotation, the
// reason and the effect; a control plane that rejected nothing gives none.
func TestFleetRejected(t *testing.T) {
	testutil.CheckGoroutines(t)
	for _, tc := range []struct {
		name, body string
		want       []Finding
	}{{
		name: "an annotation and a pod",
		body: `{"rejected":[
 {"kind":"Pod","namespace":"demo","name":"client-2","annotation":"meshd.dev/outbound","reason":"\"greeter\" is not SERVICE[.NAMESPACE]:LOCALPORT","effect":"annotation ignored","since":"2026-01-02T03:04:05Z"},
 {"kind":"Pod","namespace":"demo","name":"a.b","reason":"metadata.name: bad","effect":"left out","since":"2026-01-02T03:04:06Z"}]}`,
		want: []Finding{
			{Severity: Warning, Rule: "object-rejected", Subject: "Pod demo/client-2",
				Evidence: `annotation meshd.dev/outbound rejected since 2026-01-02T03:04:05Z: "greeter" is not SERVICE[.NAMESPACE]:LOCALPORT; annotation ignored`,
				Fix:      "correct the annotation meshd.dev/outbound of Pod demo/client-2"},
			{Severity: Warning, Rule: "object-rejected", Subject: "Pod demo/a.b",
				Evidence: "rejected since 2026-01-02T03:04:06Z: metadata.name: bad; left out",
				Fix:      "correct Pod demo/a.b (its Warning Events say why)"},
		},
	}, {
		name: "nothing rejected",
		body: `{"version":"v1","streams":[]}`,
		want: []Finding{},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(tc.body)) }))
			defer srv.Close()
			got, err := FleetRejected(context.Background(), nil, strings.TrimPrefix(srv.URL, "http://"))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// TestFleetXDS turns the control plane's unknown nodes and unresolved
// NACKs on /status into findings; a NACK followed by an ACK of a later
// version, or of another type, is not reported, and a node's two streams
// give one finding per type.
func TestFleetXDS(t *testing.T) {
	testutil.CheckGoroutines(t)
	const lds, cds = "type.googleapis.com/envoy.config.listener.v3.Listener", "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	nack := `{"sent_version":"v2","acked_version":"v1","last_nack":{"version":"v2","error":"listener \"x\": address: required","at":"2026-01-02T03:04:05Z"}}`
	for _, tc := range []struct {
		name, body string
		want       []Finding
	}{{
		name: "an unknown node and a held NACK",
		body: `{"streams":[
 {"node":"a.demo","types":{"` + lds + `":` + nack + `,"` + cds + `":{"sent_version":"v2","acked_version":"v2"}}},
 {"node":"a.demo","types":{"` + lds + `":` + nack + `}},
 {"node":"b.demo","types":{"` + lds + `":{"sent_version":"v3","acked_version":"v3","last_nack":{"version":"v2","error":"old","at":"2026-01-02T03:04:05Z"}}}},
 {"node":"ghost.demo","types":{"` + lds + `":{"sent_version":"v2","acked_version":"v2"}}}],
 "unknown_nodes":[{"node":"ghost.demo","reason":"Pod demo/ghost is left out of the mesh: bad","since":"2026-01-02T03:04:06Z","streams":1}]}`,
		want: []Finding{
			{Severity: Warning, Rule: "unknown-node", Subject: "node ghost.demo",
				Evidence: "connected since 2026-01-02T03:04:06Z (1 streams) and served an empty config (no listeners, no clusters): Pod demo/ghost is left out of the mesh: bad",
				Fix:      "add a Workload with this node ID (<name>.<namespace>) to the mesh, fix the Pod the control plane left out, or correct the node ID in the sidecar's bootstrap"},
			{Severity: Error, Rule: "xds-nack", Subject: "node a.demo Listener",
				Evidence: `version v2 rejected at 2026-01-02T03:04:05Z (applied: "v1"): listener "x": address: required`,
				Fix:      "correct what the error names in the mesh; the node keeps its last good config of this type until a version it accepts is published"},
		},
	}, {
		name: "all applied",
		body: `{"version":"v1","streams":[{"node":"a.demo","types":{"` + lds + `":{"sent_version":"v1","acked_version":"v1"}}}]}`,
		want: []Finding{},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(tc.body)) }))
			defer srv.Close()
			got, err := FleetXDS(context.Background(), nil, strings.TrimPrefix(srv.URL, "http://"))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}
