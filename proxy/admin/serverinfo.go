package admin

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/encoding/protojson"
)

// Informer is optionally implemented by a Backend to describe the process
// on /server_info. Without it /server_info shows the state and uptimes
// only.
type Informer interface {
	// Version is the build's version string (Envoy's is
	// "SHA/VERSION/STATUS/BUILD_TYPE/SSL"; meshd's is
	// "meshd/VERSION/GO_VERSION/BUILD").
	Version() string
	// Node is the node the process identifies as to the control plane
	// (the bootstrap's, after --service-node), nil when it has none.
	Node() *corev3.Node
}

// serverInfo is the part of Envoy's envoy.admin.v3.ServerInfo that meshd
// fills, in its JSON shape: state is always printed (protojson would omit
// LIVE, the enum's zero), durations as protojson prints them. meshd has no
// hot restart, so the current epoch is every epoch and hot_restart_version
// says "disabled", as Envoy's does with --disable-hot-restart;
// command_line_options is left out rather than filled with zeros.
type serverInfo struct {
	Version            string          `json:"version,omitempty"`
	State              string          `json:"state"`
	HotRestartVersion  string          `json:"hot_restart_version"`
	UptimeCurrentEpoch string          `json:"uptime_current_epoch"`
	UptimeAllEpochs    string          `json:"uptime_all_epochs"`
	Node               json.RawMessage `json:"node,omitempty"`
}

// handleServerInfo is Envoy's GET /server_info: the version, the server
// state /ready reports (PRE_INITIALIZING, LIVE or DRAINING), the uptime
// since the admin server was created (with the process) and the node.
func (s *Server) handleServerInfo(w http.ResponseWriter, _ *http.Request) {
	info := serverInfo{
		State:             s.state(),
		HotRestartVersion: "disabled",
	}
	up := protoDuration(time.Since(s.started))
	info.UptimeCurrentEpoch, info.UptimeAllEpochs = up, up
	if inf, ok := s.backend.(Informer); ok {
		info.Version = inf.Version()
		if n := inf.Node(); n != nil {
			node, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(n)
			if err != nil {
				s.writeError(w, http.StatusInternalServerError, fmt.Sprintf("server_info: node: %v\n", err))
				return
			}
			info.Node = node
		}
	}
	s.writeJSON(w, "server_info", info)
}

// protoDuration formats d as protojson formats a google.protobuf.Duration
// of whole seconds ("3s"), as Envoy prints uptimes.
func protoDuration(d time.Duration) string {
	return fmt.Sprintf("%ds", int64(d/time.Second))
}
