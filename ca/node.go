package ca

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// TokenMetadataKey is the field of a bootstrap's node.metadata that holds
// the sidecar's bootstrap token. node.metadata is a Struct that Envoy
// accepts and passes to the control plane uninterpreted, so a bootstrap
// with the token still works with `envoy -c`.
const TokenMetadataKey = "meshd.token"

// SetNodeToken stores token in n.metadata[TokenMetadataKey], keeping the
// other metadata fields.
func SetNodeToken(n *corev3.Node, token string) {
	if n.Metadata == nil {
		n.Metadata = &structpb.Struct{}
	}
	if n.Metadata.Fields == nil {
		n.Metadata.Fields = map[string]*structpb.Value{}
	}
	n.Metadata.Fields[TokenMetadataKey] = structpb.NewStringValue(token)
}

// NodeToken returns the token SetNodeToken stored in n, and false when n
// carries none (a bootstrap made without a CA directory).
func NodeToken(n *corev3.Node) (string, bool) {
	v, ok := n.GetMetadata().GetFields()[TokenMetadataKey]
	if !ok {
		return "", false
	}
	s, ok := v.GetKind().(*structpb.Value_StringValue)
	if !ok || s.StringValue == "" {
		return "", false
	}
	return s.StringValue, true
}
