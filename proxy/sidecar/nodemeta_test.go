package sidecar

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
)

// TestWithNodeMetadata: the admin address is added to a copy of the
// bootstrap, keeping the node's other metadata and leaving the original
// untouched.
func TestWithNodeMetadata(t *testing.T) {
	token := &structpb.Struct{Fields: map[string]*structpb.Value{"meshd.token": structpb.NewStringValue("t")}}
	tests := []struct {
		name string
		in   *bootstrapv3.Bootstrap
		keep map[string]string
	}{
		{"no node", &bootstrapv3.Bootstrap{}, nil},
		{"node without metadata", &bootstrapv3.Bootstrap{Node: &corev3.Node{Id: "a.b"}}, nil},
		{"metadata kept", &bootstrapv3.Bootstrap{Node: &corev3.Node{Id: "a.b", Metadata: token}}, map[string]string{"meshd.token": "t"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(tt.in.GetNode().GetMetadata().GetFields())
			out := withNodeMetadata(tt.in, NodeAdminKey, "127.0.0.1:15000")
			f := out.GetNode().GetMetadata().GetFields()
			if f[NodeAdminKey].GetStringValue() != "127.0.0.1:15000" || out.GetNode().GetId() != tt.in.GetNode().GetId() {
				t.Errorf("node %v: want %s = 127.0.0.1:15000 and the same id", out.GetNode(), NodeAdminKey)
			}
			for k, v := range tt.keep {
				if f[k].GetStringValue() != v {
					t.Errorf("metadata %s = %q, want %q kept", k, f[k].GetStringValue(), v)
				}
			}
			if n := len(tt.in.GetNode().GetMetadata().GetFields()); n != before {
				t.Errorf("the original bootstrap's metadata changed: %d fields, had %d", n, before)
			}
		})
	}
}

// TestAdminRedactsCAToken: /config_dump's bootstrap and /server_info's
// node show the built-in CA's bootstrap token as "[redacted]" and keep the
// rest of the node; the snapshot the CA client reads keeps the token.
func TestAdminRedactsCAToken(t *testing.T) {
	const secret = "s3cret-bootstrap-token"
	tests := []struct {
		name      string
		meta      map[string]string
		wantToken bool
	}{
		{"token and other metadata", map[string]string{"meshd.token": secret, "meshd.admin": "127.0.0.1:15000"}, true},
		{"no token", map[string]string{"meshd.admin": "127.0.0.1:15000"}, false},
		{"no metadata", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap := compile(t, bootstrap(0, "x"))
			snap.Node = &corev3.Node{Id: "greeter-client.demo"}
			if tt.meta != nil {
				snap.Node.Metadata = &structpb.Struct{Fields: map[string]*structpb.Value{}}
				for k, v := range tt.meta {
					snap.Node.Metadata.Fields[k] = structpb.NewStringValue(v)
				}
			}
			snap.Bootstrap.Node = snap.Node
			s := New(Options{})
			s.snap.Swap(snap)

			dump := []byte(dumpJSON(t, s))
			node := s.Node()
			nodeJSON, err := protojson.Marshal(node)
			if err != nil {
				t.Fatal(err)
			}
			// protojson varies its whitespace on purpose: compact both.
			var dumpC, nodeC bytes.Buffer
			if err := json.Compact(&dumpC, dump); err != nil {
				t.Fatal(err)
			}
			if err := json.Compact(&nodeC, nodeJSON); err != nil {
				t.Fatal(err)
			}
			for what, got := range map[string]string{"/config_dump": dumpC.String(), "/server_info node": nodeC.String()} {
				if strings.Contains(got, secret) {
					t.Errorf("%s shows the CA token: %s", what, got)
				}
				if tt.wantToken && !strings.Contains(got, `"meshd.token":"[redacted]"`) {
					t.Errorf("%s lacks the redacted token: %s", what, got)
				}
				if tt.meta != nil && !strings.Contains(got, `"meshd.admin":"127.0.0.1:15000"`) {
					t.Errorf("%s lost the other metadata: %s", what, got)
				}
				if !strings.Contains(got, "greeter-client.demo") {
					t.Errorf("%s lost the node id: %s", what, got)
				}
			}
			if got := snap.Node.GetMetadata().GetFields()["meshd.token"].GetStringValue(); tt.wantToken && got != secret {
				t.Errorf("the snapshot's token became %q, want it kept for the CA client", got)
			}
		})
	}
}

// TestWithUserAgent: the copy names the sidecar "meshd" whatever the
// bootstrap's node says, keeps the node's ID and metadata, and leaves the
// original untouched.
func TestWithUserAgent(t *testing.T) {
	token := &structpb.Struct{Fields: map[string]*structpb.Value{"meshd.token": structpb.NewStringValue("t")}}
	tests := []struct {
		name string
		in   *bootstrapv3.Bootstrap
	}{
		{"no node", &bootstrapv3.Bootstrap{}},
		{"node with metadata", &bootstrapv3.Bootstrap{Node: &corev3.Node{Id: "a.b", Metadata: token}}},
		{"bootstrap names another agent", &bootstrapv3.Bootstrap{Node: &corev3.Node{Id: "a.b", UserAgentName: "gRPC Go"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := tt.in.GetNode().GetUserAgentName()
			out := withUserAgent(tt.in, UserAgentName)
			if got := out.GetNode().GetUserAgentName(); got != "meshd" {
				t.Errorf("user_agent_name = %q, want meshd", got)
			}
			if out.GetNode().GetId() != tt.in.GetNode().GetId() || len(out.GetNode().GetMetadata().GetFields()) != len(tt.in.GetNode().GetMetadata().GetFields()) {
				t.Errorf("node %v: want the id and metadata of %v", out.GetNode(), tt.in.GetNode())
			}
			if got := tt.in.GetNode().GetUserAgentName(); got != before {
				t.Errorf("the original bootstrap's user_agent_name changed to %q", got)
			}
		})
	}
}
