package client

import (
	"slices"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/anypb"
)

// response is one DiscoveryResponse or DeltaDiscoveryResponse, normalised.
type response struct {
	typeURL string
	// version is version_info (SotW) or system_version_info (delta).
	version string
	nonce   string
	// resources carry their own version in delta; in SotW they carry the
	// response's version.
	resources []rawResource
	removed   []string // delta only
	// complete reports a SotW response, which for LDS and CDS is the whole
	// set of the type.
	complete bool
}

type rawResource struct {
	name    string // delta's Resource.name; "" in SotW (taken from the message)
	version string
	any     *anypb.Any
}

// transport is one ADS stream in one of the two protocol variants. It is
// used by one goroutine at a time for sending and one for receiving.
type transport interface {
	recv() (*response, error)
	// subscribe sends the first request for ts on this stream, carrying
	// what was accepted before (SotW version_info; delta
	// initial_resource_versions). node is set on the stream's first request.
	subscribe(ts *typeState, node *corev3.Node) error
	// ack acknowledges r (detail nil) or rejects it with detail.
	ack(ts *typeState, r *response, detail *statuspb.Status) error
	// resubscribe tells the server ts's resource names changed from old.
	resubscribe(ts *typeState, old map[string]bool) error
}

func nackStatus(msg string) *statuspb.Status {
	return &statuspb.Status{Code: int32(codes.InvalidArgument), Message: msg}
}

// --- state of the world ---

type sotwTransport struct {
	s discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
}

func (t *sotwTransport) recv() (*response, error) {
	m, err := t.s.Recv()
	if err != nil {
		return nil, err
	}
	r := &response{typeURL: m.GetTypeUrl(), version: m.GetVersionInfo(), nonce: m.GetNonce(), complete: true}
	for _, a := range m.GetResources() {
		r.resources = append(r.resources, rawResource{version: m.GetVersionInfo(), any: a})
	}
	return r, nil
}

func (t *sotwTransport) send(ts *typeState, node *corev3.Node, nonce string, detail *statuspb.Status) error {
	return t.s.Send(&discoveryv3.DiscoveryRequest{
		Node:          node,
		TypeUrl:       ts.url,
		VersionInfo:   ts.version,
		ResourceNames: ts.sortedNames(),
		ResponseNonce: nonce,
		ErrorDetail:   detail,
	})
}

func (t *sotwTransport) subscribe(ts *typeState, node *corev3.Node) error {
	return t.send(ts, node, "", nil)
}

func (t *sotwTransport) ack(ts *typeState, r *response, detail *statuspb.Status) error {
	return t.send(ts, nil, r.nonce, detail)
}

func (t *sotwTransport) resubscribe(ts *typeState, _ map[string]bool) error {
	return t.send(ts, nil, ts.nonce, nil)
}

// --- incremental (delta) ---

type deltaTransport struct {
	s discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
}

func (t *deltaTransport) recv() (*response, error) {
	m, err := t.s.Recv()
	if err != nil {
		return nil, err
	}
	r := &response{typeURL: m.GetTypeUrl(), version: m.GetSystemVersionInfo(), nonce: m.GetNonce(), removed: m.GetRemovedResources()}
	for _, res := range m.GetResources() {
		r.resources = append(r.resources, rawResource{name: res.GetName(), version: res.GetVersion(), any: res.GetResource()})
	}
	return r, nil
}

func (t *deltaTransport) subscribe(ts *typeState, node *corev3.Node) error {
	req := &discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: ts.url}
	if ts.wildcard {
		req.ResourceNamesSubscribe = []string{"*"}
	} else {
		req.ResourceNamesSubscribe = ts.sortedNames()
	}
	if len(ts.accepted) > 0 {
		req.InitialResourceVersions = make(map[string]string, len(ts.accepted))
		for name, r := range ts.accepted {
			req.InitialResourceVersions[name] = r.Version
		}
	}
	return t.s.Send(req)
}

func (t *deltaTransport) ack(ts *typeState, r *response, detail *statuspb.Status) error {
	return t.s.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: ts.url, ResponseNonce: r.nonce, ErrorDetail: detail})
}

func (t *deltaTransport) resubscribe(ts *typeState, old map[string]bool) error {
	req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: ts.url}
	for n := range ts.names {
		if !old[n] {
			req.ResourceNamesSubscribe = append(req.ResourceNamesSubscribe, n)
		}
	}
	for n := range old {
		if !ts.names[n] {
			req.ResourceNamesUnsubscribe = append(req.ResourceNamesUnsubscribe, n)
		}
	}
	slices.Sort(req.ResourceNamesSubscribe)
	slices.Sort(req.ResourceNamesUnsubscribe)
	return t.s.Send(req)
}
