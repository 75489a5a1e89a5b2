package server

import (
	"context"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"go.opentelemetry.io/otel/trace"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"
)

// Stream kinds shown on /status.
const (
	StreamSotW  = "sotw"
	StreamDelta = "delta"
)

// tracker is the server's go-control-plane Callbacks: it follows every
// stream's node, what was sent per type (nonce, version), what the node
// ACKed and the last NACK, and it hands NACKed versions to holdCache.
//
// go-control-plane calls the callbacks of one stream from that stream's
// goroutine, one at a time, and OnStreamRequest right before the
// CreateWatch for the same request.
type tracker struct {
	hash    *nodeHash
	metrics *metrics
	log     *slog.Logger

	mu      sync.RWMutex // guards streams (the map, not the entries)
	streams map[streamKey]*streamState

	// holds maps a NACK request (by pointer) to the version it rejected,
	// from OnStreamRequest until holdCache.CreateWatch takes it.
	holds sync.Map

	// tracer records a span per push answered (tracing.go); nil: none.
	tracer trace.Tracer

	nodesMu sync.Mutex     // guards nodes
	nodes   map[string]int // node ID → open streams that identified it

	// published is set by the first publish: before it every proxy would
	// look unknown.
	published atomic.Bool
	// unknownReason says why a node ID is unknown (Server.unknownReason);
	// called with no tracker lock held.
	unknownReason func(id string) string

	unknownMu       sync.Mutex              // guards the fields below and streamState.unknown, closed
	unknown         map[string]*unknownNode // proxies the mesh does not name, by node ID
	unknownOverflow bool                    // maxUnknownNodes reached and warned about since the last publish
}

// streamKey names a stream: the SotW and delta servers number their
// streams independently.
type streamKey struct {
	kind string
	id   int64
}

// streamState is one ADS or xDS stream.
type streamState struct {
	mu      sync.Mutex // guards the fields below
	kind    string
	since   time.Time
	node    *core.Node
	types   map[string]*typeState
	pending *discovery.DiscoveryRequest // NACK whose hold holdCache has not taken yet

	unknown bool // counted in tracker.unknown; guarded by tracker.unknownMu
	closed  bool // guarded by tracker.unknownMu
}

// typeState is one resource type on one stream.
type typeState struct {
	sentNonce   string
	sentVersion string
	sentAt      time.Time
	acked       string
	ackedAt     time.Time
	nack        *NACKRecord
}

// NACKRecord is a rejected push.
type NACKRecord struct {
	// Version is the version the node rejected.
	Version string `json:"version"`
	// Error is the node's error_detail message.
	Error string    `json:"error"`
	At    time.Time `json:"at"`
}

var _ serverv3.Callbacks = (*tracker)(nil)

func newTracker(hash *nodeHash, m *metrics, log *slog.Logger) *tracker {
	return &tracker{hash: hash, metrics: m, log: log, streams: map[streamKey]*streamState{}, nodes: map[string]int{},
		unknown: map[string]*unknownNode{}, unknownReason: func(string) string { return "" }}
}

func (t *tracker) open(id int64, kind string) {
	t.mu.Lock()
	t.streams[streamKey{kind, id}] = &streamState{kind: kind, since: time.Now(), types: map[string]*typeState{}}
	t.mu.Unlock()
	t.metrics.streamsActive.Inc()
}

func (t *tracker) closed(id int64, kind string) {
	k := streamKey{kind, id}
	t.mu.Lock()
	st := t.streams[k]
	delete(t.streams, k)
	t.mu.Unlock()
	if st == nil {
		return
	}
	st.mu.Lock()
	if st.pending != nil {
		t.holds.Delete(st.pending)
	}
	node := st.node
	st.mu.Unlock()
	if node != nil {
		t.nodeStreams(node.GetId(), -1)
		t.closeUnknown(node.GetId(), st)
	}
	t.metrics.streamsActive.Dec()
}

func (t *tracker) stream(id int64, kind string) *streamState {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.streams[streamKey{kind, id}]
}

func (st *streamState) typ(url string) *typeState {
	ts := st.types[url]
	if ts == nil {
		ts = &typeState{}
		st.types[url] = ts
	}
	return ts
}

// request records one request: an ACK or NACK of the response with nonce,
// or a first request carrying the version the node already had. It
// returns the rejected version for a NACK, and whether the request is the
// first to identify the stream's node.
func (t *tracker) request(st *streamState, node *core.Node, typeURL, nonce, version string, nackMsg *string) (rejected string, nack, identified bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if node != nil {
		if st.node == nil {
			t.nodeStreams(node.GetId(), 1)
			identified = true
		}
		st.node = node
	}
	ts := st.typ(typeURL)
	switch {
	case nonce == "":
		// A first request: version_info is what the node applied from an
		// earlier stream (it reconnected).
		if version != "" {
			ts.acked, ts.ackedAt = version, time.Now()
		}
		return "", false, identified
	case nonce != ts.sentNonce:
		// Stale: answers an older response; the server ignores it too.
		return "", false, identified
	case nackMsg != nil:
		t.metrics.nacks.Inc()
		t.tracePush(st.node.GetId(), typeURL, ts.sentVersion, ts.sentAt, nackMsg)
		rec := &NACKRecord{Version: ts.sentVersion, Error: *nackMsg, At: time.Now()}
		if ts.nack == nil || ts.nack.Version != rec.Version || ts.nack.Error != rec.Error {
			t.log.Warn("xDS NACK; holding the node on its last good version until the config changes",
				"node", st.node.GetId(), "type", shortType(typeURL), "version", rec.Version, "error", rec.Error)
		}
		ts.nack = rec
		return ts.sentVersion, true, identified
	default:
		t.metrics.acks.Inc()
		t.tracePush(st.node.GetId(), typeURL, ts.sentVersion, ts.sentAt, nil)
		ts.acked, ts.ackedAt = ts.sentVersion, time.Now()
		t.metrics.pushLatency.Record(float64(ts.ackedAt.Sub(ts.sentAt).Microseconds()) / 1000)
		return "", false, identified
	}
}

// nodeStreams adds delta to the open streams of node id and keeps the
// connected-nodes gauge (distinct node IDs with a stream) in step.
func (t *tracker) nodeStreams(id string, delta int) {
	t.nodesMu.Lock()
	defer t.nodesMu.Unlock()
	n := t.nodes[id] + delta
	switch {
	case n <= 0:
		delete(t.nodes, id)
	default:
		t.nodes[id] = n
	}
	t.metrics.connectedNodes.Set(int64(len(t.nodes)))
}

func (t *tracker) response(id int64, kind, typeURL, nonce, version string) {
	t.metrics.pushes.Inc()
	st := t.stream(id, kind)
	if st == nil {
		return
	}
	st.mu.Lock()
	ts := st.typ(typeURL)
	ts.sentNonce, ts.sentVersion, ts.sentAt = nonce, version, time.Now()
	st.mu.Unlock()
}

// OnStreamOpen implements sotw.Callbacks.
func (t *tracker) OnStreamOpen(_ context.Context, id int64, _ string) error {
	t.open(id, StreamSotW)
	return nil
}

// OnStreamClosed implements sotw.Callbacks.
func (t *tracker) OnStreamClosed(id int64, _ *core.Node) { t.closed(id, StreamSotW) }

// OnStreamRequest implements sotw.Callbacks. A NACK (a request with
// error_detail answering the last response's nonce) is recorded and the
// rejected version is stored for holdCache.CreateWatch.
func (t *tracker) OnStreamRequest(id int64, req *discovery.DiscoveryRequest) error {
	st := t.stream(id, StreamSotW)
	if st == nil {
		return nil
	}
	msg := errorDetail(req.GetErrorDetail())
	rejected, nack, identified := t.request(st, req.GetNode(), req.GetTypeUrl(), req.GetResponseNonce(), req.GetVersionInfo(), msg)
	if identified {
		t.markUnknown(st)
	}
	st.mu.Lock()
	if st.pending != nil {
		t.holds.Delete(st.pending)
		st.pending = nil
	}
	if nack {
		t.holds.Store(req, rejected)
		st.pending = req
	}
	st.mu.Unlock()
	return nil
}

// OnStreamResponse implements sotw.Callbacks.
func (t *tracker) OnStreamResponse(_ context.Context, id int64, req *discovery.DiscoveryRequest, resp *discovery.DiscoveryResponse) {
	t.response(id, StreamSotW, req.GetTypeUrl(), resp.GetNonce(), resp.GetVersionInfo())
}

// OnDeltaStreamOpen implements delta.Callbacks.
func (t *tracker) OnDeltaStreamOpen(_ context.Context, id int64, _ string) error {
	t.open(id, StreamDelta)
	return nil
}

// OnDeltaStreamClosed implements delta.Callbacks.
func (t *tracker) OnDeltaStreamClosed(id int64, _ *core.Node) { t.closed(id, StreamDelta) }

// OnStreamDeltaRequest implements delta.Callbacks. The delta server tracks
// the resource versions it sent, so the cache does not resend after a
// NACK; the NACK is only recorded.
func (t *tracker) OnStreamDeltaRequest(id int64, req *discovery.DeltaDiscoveryRequest) error {
	st := t.stream(id, StreamDelta)
	if st == nil {
		return nil
	}
	msg := errorDetail(req.GetErrorDetail())
	if _, _, identified := t.request(st, req.GetNode(), req.GetTypeUrl(), req.GetResponseNonce(), "", msg); identified {
		t.markUnknown(st)
	}
	return nil
}

// errorDetail returns the message of a request's error_detail, nil when
// the request has none (an ACK or a first request).
func errorDetail(d *rpcstatus.Status) *string {
	if d == nil {
		return nil
	}
	m := d.GetMessage()
	return &m
}

// OnStreamDeltaResponse implements delta.Callbacks.
func (t *tracker) OnStreamDeltaResponse(id int64, req *discovery.DeltaDiscoveryRequest, resp *discovery.DeltaDiscoveryResponse) {
	t.response(id, StreamDelta, req.GetTypeUrl(), resp.GetNonce(), resp.GetSystemVersionInfo())
}

// OnFetchRequest implements rest.Callbacks; the REST endpoints are not served.
func (t *tracker) OnFetchRequest(context.Context, *discovery.DiscoveryRequest) error { return nil }

// OnFetchResponse implements rest.Callbacks.
func (t *tracker) OnFetchResponse(*discovery.DiscoveryRequest, *discovery.DiscoveryResponse) {}

// takeHold returns, once, the version a NACK request rejected.
func (t *tracker) takeHold(req *discovery.DiscoveryRequest) (string, bool) {
	v, ok := t.holds.LoadAndDelete(req)
	if !ok {
		return "", false
	}
	return v.(string), true
}

// holdCache wraps the SnapshotCache so that a state-of-the-world NACK does
// not get the rejected version back at once: the watch is created as if the
// node had applied the rejected version, so the cache answers it only when a
// different version is published.
type holdCache struct {
	inner cachev3.Cache
	holds interface {
		takeHold(*discovery.DiscoveryRequest) (string, bool)
	}
}

var _ cachev3.Cache = (*holdCache)(nil)

// CreateWatch implements cache.ConfigWatcher.
func (c *holdCache) CreateWatch(req *cachev3.Request, sub cachev3.Subscription, ch chan cachev3.Response) (func(), error) {
	if v, ok := c.holds.takeHold(req); ok {
		held := proto.Clone(req).(*discovery.DiscoveryRequest)
		held.VersionInfo = v
		req = held
	}
	return c.inner.CreateWatch(req, sub, ch)
}

// CreateDeltaWatch implements cache.ConfigWatcher.
func (c *holdCache) CreateDeltaWatch(req *cachev3.DeltaRequest, sub cachev3.Subscription, ch chan cachev3.DeltaResponse) (func(), error) {
	return c.inner.CreateDeltaWatch(req, sub, ch)
}

// Fetch implements cache.ConfigFetcher.
func (c *holdCache) Fetch(ctx context.Context, req *cachev3.Request) (cachev3.Response, error) {
	return c.inner.Fetch(ctx, req)
}

// StreamStatus is one connected stream on /status.
type StreamStatus struct {
	StreamID       int64                 `json:"stream_id"`
	Node           string                `json:"node"`
	CacheKey       string                `json:"cache_key"`
	Stream         string                `json:"stream"`
	ConnectedSince time.Time             `json:"connected_since"`
	Types          map[string]TypeStatus `json:"types"`
	// Admin is the node's bound admin address as the sidecar reports it in
	// node.metadata["meshd.admin"] (meshd doctor --control-plane reads it);
	// empty for nodes that do not report one.
	Admin string `json:"admin,omitempty"`
}

// TypeStatus is one resource type of a stream on /status.
type TypeStatus struct {
	SentVersion  string      `json:"sent_version,omitempty"`
	AckedVersion string      `json:"acked_version,omitempty"`
	AckedAt      *time.Time  `json:"acked_at,omitempty"`
	LastNACK     *NACKRecord `json:"last_nack,omitempty"`
}

// snapshot returns every stream, by node ID then stream ID.
func (t *tracker) snapshot() []StreamStatus {
	t.mu.RLock()
	keys := make([]streamKey, 0, len(t.streams))
	states := make(map[streamKey]*streamState, len(t.streams))
	for k, st := range t.streams {
		keys = append(keys, k)
		states[k] = st
	}
	t.mu.RUnlock()
	out := make([]StreamStatus, 0, len(keys))
	for _, k := range keys {
		st := states[k]
		st.mu.Lock()
		ss := StreamStatus{
			StreamID:       k.id,
			Node:           st.node.GetId(),
			CacheKey:       t.hash.ID(st.node),
			Stream:         st.kind,
			ConnectedSince: st.since,
			Types:          make(map[string]TypeStatus, len(st.types)),
			Admin:          st.node.GetMetadata().GetFields()[NodeAdminKey].GetStringValue(),
		}
		for url, ts := range st.types {
			s := TypeStatus{SentVersion: ts.sentVersion, AckedVersion: ts.acked}
			if !ts.ackedAt.IsZero() {
				at := ts.ackedAt
				s.AckedAt = &at
			}
			if ts.nack != nil {
				n := *ts.nack
				s.LastNACK = &n
			}
			ss.Types[url] = s
		}
		st.mu.Unlock()
		out = append(out, ss)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Node != out[j].Node {
			return out[i].Node < out[j].Node
		}
		if out[i].Stream != out[j].Stream {
			return out[i].Stream < out[j].Stream
		}
		return out[i].StreamID < out[j].StreamID
	})
	return out
}
