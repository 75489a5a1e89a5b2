package server

import (
	"fmt"
	"sort"
	"time"
)

// maxUnknownNodes bounds the unknown nodes the server remembers between
// publishes (node IDs are chosen by clients). Past it, further unknown
// nodes are still served the empty config, but not listed or warned about
// one by one.
const maxUnknownNodes = 1024

// UnknownNode is a connected proxy whose node ID the published mesh does
// not name (a sidecar whose Workload is missing, or a Pod the source left
// out). It is served the empty config of UnknownSidecarKey.
type UnknownNode struct {
	Node string `json:"node"`
	// Reason says why the mesh does not know the node.
	Reason string `json:"reason"`
	// Since is when the server first saw the node unknown (and warned).
	Since time.Time `json:"since"`
	// Streams is how many xDS streams of the node are open.
	Streams int `json:"streams"`
}

// unknownNode is the tracker's record of one unknown node ID.
type unknownNode struct {
	since   time.Time
	streams int // open streams counted as unknown
}

// markUnknown counts st's node as unknown if the mesh does not name it
// (and a mesh is published), and uncounts it if the mesh now does. A node
// counted for the first time since it was last forgotten is warned about
// once, with reason(id). Callers hold no tracker lock.
func (t *tracker) markUnknown(st *streamState) {
	st.mu.Lock()
	node := st.node
	st.mu.Unlock()
	if node == nil {
		return
	}
	id := node.GetId()
	var warn, overflow bool
	t.unknownMu.Lock()
	// Classified under the lock: a publish swaps the hash before it calls
	// refreshUnknown, so the last classification applied is the newest.
	isUnknown := t.published.Load() && t.hash.ID(node) == UnknownSidecarKey
	switch {
	case st.closed || isUnknown == st.unknown:
	case isUnknown:
		u := t.unknown[id]
		if u == nil {
			if len(t.unknown) >= maxUnknownNodes {
				overflow = !t.unknownOverflow
				t.unknownOverflow = true
				break
			}
			u = &unknownNode{since: time.Now()}
			t.unknown[id] = u
			warn = true
		}
		u.streams++
		st.unknown = true
	default:
		t.uncountLocked(id, st)
	}
	t.setUnknownGaugeLocked()
	t.unknownMu.Unlock()
	switch {
	case warn:
		t.log.Warn("proxy not in the mesh; serving it an empty config (no listeners, no clusters) until the mesh names it",
			"node", id, "reason", t.unknownReason(id))
	case overflow:
		t.log.Warn("more proxies not in the mesh than the server lists; serving them an empty config without a warning each",
			"node", id, "listed", maxUnknownNodes)
	}
}

// uncountLocked removes st from its unknown node's open streams. The
// record stays (so a reconnecting node is not warned about again) until
// refreshUnknown forgets nodes without streams. t.unknownMu is held.
func (t *tracker) uncountLocked(id string, st *streamState) {
	if !st.unknown {
		return
	}
	st.unknown = false
	if u := t.unknown[id]; u != nil && u.streams > 0 {
		u.streams--
	}
}

// closeUnknown uncounts a closed stream.
func (t *tracker) closeUnknown(id string, st *streamState) {
	t.unknownMu.Lock()
	st.closed = true
	t.uncountLocked(id, st)
	t.setUnknownGaugeLocked()
	t.unknownMu.Unlock()
}

// refreshUnknown re-classifies every open stream after a publish (a node
// may have joined or left the mesh), then forgets the unknown nodes that
// have no stream left, so each is warned about again only if it comes back
// after a change of the mesh.
func (t *tracker) refreshUnknown() {
	t.published.Store(true)
	t.mu.RLock()
	states := make([]*streamState, 0, len(t.streams))
	for _, st := range t.streams {
		states = append(states, st)
	}
	t.mu.RUnlock()
	for _, st := range states {
		t.markUnknown(st)
	}
	t.unknownMu.Lock()
	for id, u := range t.unknown {
		if u.streams == 0 {
			delete(t.unknown, id)
		}
	}
	t.unknownOverflow = false
	t.setUnknownGaugeLocked()
	t.unknownMu.Unlock()
}

// setUnknownGaugeLocked sets control_plane.unknown_nodes to the unknown
// nodes with an open stream. t.unknownMu is held.
func (t *tracker) setUnknownGaugeLocked() {
	n := 0
	for _, u := range t.unknown {
		if u.streams > 0 {
			n++
		}
	}
	t.metrics.unknownNodes.Set(int64(n))
}

// unknownNodes lists the unknown nodes with an open stream, by node ID.
func (t *tracker) unknownNodes() []UnknownNode {
	t.unknownMu.Lock()
	out := make([]UnknownNode, 0, len(t.unknown))
	for id, u := range t.unknown {
		if u.streams > 0 {
			out = append(out, UnknownNode{Node: id, Since: u.since, Streams: u.streams})
		}
	}
	t.unknownMu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	for i := range out {
		out[i].Reason = t.unknownReason(out[i].Node)
	}
	return out
}

// unknownReason says why the mesh does not name node id: the source's
// rejection of the Pod behind it when there is one (a Kubernetes Pod
// "<name>.<namespace>" left out), otherwise that no Workload has the ID.
func (s *Server) unknownReason(id string) string {
	if s.rejected != nil {
		for _, r := range s.rejected() {
			if r.Kind == "Pod" && r.Annotation == "" && r.Name+"."+r.Namespace == id {
				return fmt.Sprintf("Pod %s/%s is left out of the mesh: %s", r.Namespace, r.Name, r.Reason)
			}
		}
	}
	return fmt.Sprintf("no Workload of the published mesh (version %s) has node ID %q (<name>.<namespace>)", s.Version(), id)
}
