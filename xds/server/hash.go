package server

import (
	"slices"
	"strings"
	"sync/atomic"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// nodeHash maps a node to its cache key: its own ID when it is a sidecar of
// the published mesh (or was one, see Server.Publish), UnknownSidecarKey
// when it is a proxy (IsProxyNode) the mesh does not name, ProxylessKey
// otherwise. The sidecar set is swapped whole on publish.
type nodeHash struct {
	sidecars atomic.Pointer[map[string]struct{}]
}

func newNodeHash() *nodeHash {
	h := &nodeHash{}
	h.sidecars.Store(&map[string]struct{}{})
	return h
}

// ID implements cache.NodeHash.
func (h *nodeHash) ID(node *core.Node) string {
	id := node.GetId()
	if _, ok := (*h.sidecars.Load())[id]; ok {
		return id
	}
	if IsProxyNode(node) {
		return UnknownSidecarKey
	}
	return ProxylessKey
}

// proxyUserAgents are the node.user_agent_name values of proxies: Envoy
// sets "envoy", meshd's sidecar "meshd" (proxy/sidecar). Proxyless gRPC
// libraries name themselves "gRPC Go", "gRPC Java", "gRPC C-core"...
var proxyUserAgents = []string{"envoy", "meshd"}

// IsProxyNode reports whether node is a proxy (Envoy or a meshd sidecar)
// rather than a proxyless gRPC client: its user_agent_name is "envoy" or
// "meshd" (any case), or its metadata carries the admin address only
// meshd's sidecar reports (NodeAdminKey). A proxy applies Listeners with
// addresses; proxyless resources (API listeners) are not for it.
func IsProxyNode(node *core.Node) bool {
	ua := node.GetUserAgentName()
	for _, p := range proxyUserAgents {
		if strings.EqualFold(ua, p) {
			return true
		}
	}
	_, admin := node.GetMetadata().GetFields()[NodeAdminKey]
	return admin
}

func (h *nodeHash) setSidecars(ids []string) {
	m := make(map[string]struct{}, len(ids))
	for _, id := range ids {
		m[id] = struct{}{}
	}
	h.sidecars.Store(&m)
}

func sortStrings(s []string) { slices.Sort(s) }

// shortType turns "type.googleapis.com/envoy.config.listener.v3.Listener"
// into "Listener" for messages.
func shortType(typeURL string) string {
	if i := strings.LastIndexByte(typeURL, '.'); i >= 0 {
		return typeURL[i+1:]
	}
	return typeURL
}

// typeNames are the types the server publishes, in the order Envoy applies
// them (CDS, EDS, LDS, RDS, SDS first as dependencies).
var typeNames = []string{
	resource.SecretType,
	resource.ClusterType,
	resource.EndpointType,
	resource.ListenerType,
	resource.RouteType,
}
