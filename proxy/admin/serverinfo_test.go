package admin

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"meshd.dev/meshd/proxy/stats"
)

// informerBackend is a fakeBackend that also describes itself.
type informerBackend struct {
	*fakeBackend
	version string
	node    *corev3.Node
}

func (b informerBackend) Version() string    { return b.version }
func (b informerBackend) Node() *corev3.Node { return b.node }

var _ Informer = informerBackend{}

// TestServerInfo: /server_info has Envoy's ServerInfo shape: the state
// /ready reports, printed even when LIVE (the enum's zero), whole-second
// uptimes since the server was created, hot restart disabled, and, from
// a Backend that is an Informer, the version and node.
func TestServerInfo(t *testing.T) {
	node := &corev3.Node{Id: "greeter-client.demo", Cluster: "greeter-client"}
	tests := []struct {
		name    string
		backend func() Backend
		want    map[string]any
	}{
		{
			name:    "live informer",
			backend: func() Backend { return informerBackend{newFakeBackend(), "meshd/v1/go1.26/full", node} },
			want: map[string]any{
				"version": "meshd/v1/go1.26/full", "state": "LIVE", "hot_restart_version": "disabled",
				"uptime_current_epoch": "90s", "uptime_all_epochs": "90s",
				"node": map[string]any{"id": "greeter-client.demo", "cluster": "greeter-client"},
			},
		},
		{
			name: "not ready, no node yet",
			backend: func() Backend {
				b := newFakeBackend()
				b.ready = false
				return informerBackend{b, "meshd/v1/go1.26/full", nil}
			},
			want: map[string]any{
				"version": "meshd/v1/go1.26/full", "state": "PRE_INITIALIZING", "hot_restart_version": "disabled",
				"uptime_current_epoch": "90s", "uptime_all_epochs": "90s",
			},
		},
		{
			name: "draining, backend without Informer",
			backend: func() Backend {
				b := newFakeBackend()
				b.hcFailed = true
				return b
			},
			want: map[string]any{
				"state": "DRAINING", "hot_restart_version": "disabled",
				"uptime_current_epoch": "90s", "uptime_all_epochs": "90s",
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := New(tc.backend(), stats.NewStore(), slog.New(slog.NewTextHandler(io.Discard, nil)))
			srv.started = time.Now().Add(-90*time.Second - 300*time.Millisecond)
			rec := httptest.NewRecorder()
			srv.ServeHTTP(rec, httptest.NewRequest("GET", "/server_info", nil))
			if rec.Code != 200 || rec.Header().Get("Content-Type") != contentJSON {
				t.Fatalf("GET /server_info = %d %q, want 200 %s", rec.Code, rec.Header().Get("Content-Type"), contentJSON)
			}
			var got map[string]any
			if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
				t.Fatalf("body %q: %v", rec.Body.String(), err)
			}
			gotJSON, _ := json.Marshal(got)
			wantJSON, _ := json.Marshal(tc.want)
			if string(gotJSON) != string(wantJSON) {
				t.Errorf("/server_info = %s, want %s", gotJSON, wantJSON)
			}
		})
	}
}
