package sidecar

import (
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
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
