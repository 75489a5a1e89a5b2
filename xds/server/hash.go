package server

import (
	"slices"
	"strings"
	"sync/atomic"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// nodeHash maps a node to its cache key: its own ID when it is a sidecar of
// the published mesh (or was one, see Server.Publish), ProxylessKey
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
	return ProxylessKey
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
