package client

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"meshd.dev/meshd/proxy/config"
	"meshd.dev/meshd/proxy/identity"
	"meshd.dev/meshd/proxy/route"
	"meshd.dev/meshd/proxy/tlscontext"
	"meshd.dev/meshd/proxy/upstream"
)

// Type URLs, in the order a new stream subscribes to them (Envoy's: CDS
// before LDS, so clusters can warm before listeners route to them).
// Secrets come last: they are subscribed by name once a listener or
// cluster names an SDS secret with `sds_config: {ads: {}}`.
var allTypes = []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType, resourcev3.SecretType}

// typeStatScope is where each type's update counters live (Envoy's names
// for LDS and CDS; meshd's own for RDS and EDS, which Envoy keeps per
// route config and per cluster).
var typeStatScope = map[string]string{
	resourcev3.ListenerType: "listener_manager.lds",
	resourcev3.ClusterType:  "cluster_manager.cds",
	resourcev3.RouteType:    "xds.rds",
	resourcev3.EndpointType: "xds.eds",
	resourcev3.SecretType:   "xds.sds",
}

// typeState is what the client holds for one resource type. Owned by
// state.mu.
type typeState struct {
	url string
	// wildcard types (LDS, CDS) get every resource for the node; the
	// others get names.
	wildcard bool
	names    map[string]bool
	// accepted are the resources of the last accepted update, by name.
	accepted map[string]config.XDSResource
	version  string // last accepted version_info
	nonce    string // last nonce received on the current stream
	received bool   // an update was accepted
}

func (ts *typeState) sortedNames() []string {
	if ts.wildcard {
		return nil
	}
	return slices.Sorted(maps.Keys(ts.names))
}

// state is the client's resources and warming state. It outlives streams.
type state struct {
	c *Client

	mu    sync.Mutex
	types map[string]*typeState
	// live is what the last applied snapshot was compiled from, by type
	// and name: warming resources keep serving their live version.
	live     map[string]map[string]config.XDSResource
	initDone bool
	timedOut bool
	// rdsStats are the per-subscription RDS stats created so far.
	rdsStats map[rdsSub]*rdsSubStats
}

func newState(c *Client) *state {
	st := &state{c: c, types: map[string]*typeState{}, live: map[string]map[string]config.XDSResource{}, rdsStats: map[rdsSub]*rdsSubStats{}}
	for _, tu := range allTypes {
		ts := &typeState{url: tu, names: map[string]bool{}, accepted: map[string]config.XDSResource{}}
		ts.wildcard = tu == resourcev3.ListenerType || tu == resourcev3.ClusterType
		st.types[tu] = ts
		st.live[tu] = map[string]config.XDSResource{}
	}
	return st
}

// serve runs one stream: it subscribes, then handles responses in order
// until the stream breaks or ctx ends.
// cancel ends the stream; serve calls it and waits for its receiver before
// returning.
func (st *state) serve(ctx context.Context, cancel context.CancelFunc, t transport) (progressed bool, err error) {
	defer cancel()
	st.mu.Lock()
	node := st.c.opts.Bootstrap.GetNode()
	for _, tu := range allTypes {
		ts := st.types[tu]
		ts.nonce = ""
		if !ts.wildcard && len(ts.names) == 0 {
			continue
		}
		if err := t.subscribe(ts, node); err != nil {
			st.mu.Unlock()
			return false, fmt.Errorf("subscribe %s: %w", tu, err)
		}
		node = nil
	}
	st.mu.Unlock()
	st.c.setConnected(true)

	resps := make(chan *response)
	recvErr := make(chan error, 1)
	recvDone := make(chan struct{})
	go func() {
		defer close(recvDone)
		for {
			r, err := t.recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case resps <- r:
			case <-ctx.Done():
				recvErr <- ctx.Err()
				return
			}
		}
	}()
	// Cancelling the stream's context unblocks the receiver's Recv.
	defer func() { cancel(); <-recvDone }()
	for {
		select {
		case r := <-resps:
			progressed = true
			if err := st.handle(t, r); err != nil {
				return progressed, err
			}
		case err := <-recvErr:
			return progressed, err
		case <-ctx.Done():
			return progressed, ctx.Err()
		}
	}
}

// handle validates r, and if the whole update compiles, accepts it,
// publishes the snapshot and ACKs; otherwise NACKs and keeps what it had.
// It returns only send errors.
func (st *state) handle(t transport, r *response) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	ts := st.types[r.typeURL]
	if ts == nil {
		st.c.logger.Warn("ignoring a response of a type never subscribed to", "type", r.typeURL)
		return nil
	}
	ts.nonce = r.nonce
	st.c.st.byType[r.typeURL].attempt.Inc()

	before := ts.accepted
	next, err := st.candidate(ts, r)
	if err == nil && r.typeURL == resourcev3.SecretType {
		err = st.deliverSecrets(next)
	}
	if err == nil {
		prev, prevVersion, prevReceived := ts.accepted, ts.version, ts.received
		ts.accepted, ts.version, ts.received = next, r.version, true
		if err = st.publish(); err != nil {
			ts.accepted, ts.version, ts.received = prev, prevVersion, prevReceived
		}
	}
	if err != nil {
		msg := err.Error()
		st.c.recordNACK(r.typeURL, msg)
		if r.typeURL == resourcev3.RouteType {
			st.recordRDS(r, false, nil, time.Now())
		}
		st.c.logger.Warn("xDS update rejected", "type", r.typeURL, "version", r.version, "err", msg)
		return t.ack(ts, r, nackStatus(msg))
	}
	st.c.recordAccepted(r.typeURL, r.version)
	switch r.typeURL {
	case resourcev3.RouteType:
		st.recordRDS(r, true, changedRoutes(before, ts.accepted), time.Now())
	case resourcev3.ListenerType:
		st.createRDSStats()
	}
	st.c.logger.Debug("xDS update accepted", "type", r.typeURL, "version", r.version, "resources", len(r.resources))
	if err := t.ack(ts, r, nil); err != nil {
		return err
	}
	return st.resubscribe(t)
}

// candidate returns ts's resources as they would be after r, every new or
// changed resource validated and compiled on its own. Errors name each bad
// resource.
func (st *state) candidate(ts *typeState, r *response) (map[string]config.XDSResource, error) {
	next := map[string]config.XDSResource{}
	if !(r.complete && ts.wildcard) {
		maps.Copy(next, ts.accepted)
	}
	now := time.Now()
	var errs []error
	seen := map[string]bool{}
	for _, raw := range r.resources {
		msg, name, err := decode(ts.url, raw)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if seen[name] {
			errs = append(errs, fmt.Errorf("%s %q: sent twice in one response", kindOf(ts.url), name))
			continue
		}
		seen[name] = true
		if old, ok := ts.accepted[name]; ok && proto.Equal(old.Resource, msg) && (r.complete || old.Version == raw.version) {
			next[name] = old // unchanged: keeps its version and timestamp
			continue
		}
		if err := validate(msg, st.c.opts.Secrets); err != nil {
			errs = append(errs, err)
			continue
		}
		next[name] = config.XDSResource{Name: name, Version: raw.version, LastUpdated: now, Resource: msg}
	}
	for _, name := range r.removed {
		delete(next, name)
	}
	if !ts.wildcard {
		for name := range next {
			if !ts.names[name] {
				delete(next, name)
			}
		}
	}
	return next, errors.Join(errs...)
}

// decode unpacks one resource and returns it with its name.
func decode(typeURL string, raw rawResource) (proto.Message, string, error) {
	if raw.any == nil {
		return nil, raw.name, fmt.Errorf("%s %q: no resource body", kindOf(typeURL), raw.name)
	}
	if raw.any.GetTypeUrl() != typeURL {
		return nil, raw.name, fmt.Errorf("%s %q: resource type %s in a %s response", kindOf(typeURL), raw.name, raw.any.GetTypeUrl(), typeURL)
	}
	var msg interface {
		proto.Message
		GetName() string
	}
	var cla *endpointv3.ClusterLoadAssignment
	switch typeURL {
	case resourcev3.ListenerType:
		msg = &listenerv3.Listener{}
	case resourcev3.ClusterType:
		msg = &clusterv3.Cluster{}
	case resourcev3.RouteType:
		msg = &routev3.RouteConfiguration{}
	case resourcev3.SecretType:
		msg = &tlsv3.Secret{}
	case resourcev3.EndpointType:
		cla = &endpointv3.ClusterLoadAssignment{}
		if err := raw.any.UnmarshalTo(cla); err != nil {
			return nil, raw.name, fmt.Errorf("%s %q: %w", kindOf(typeURL), raw.name, err)
		}
		if raw.name != "" && raw.name != cla.GetClusterName() {
			return nil, raw.name, fmt.Errorf("%s %q: the resource is named %q", kindOf(typeURL), raw.name, cla.GetClusterName())
		}
		return cla, cla.GetClusterName(), nil
	}
	if err := raw.any.UnmarshalTo(msg); err != nil {
		return nil, raw.name, fmt.Errorf("%s %q: %w", kindOf(typeURL), raw.name, err)
	}
	name := msg.GetName()
	if raw.name != "" && raw.name != name {
		return nil, raw.name, fmt.Errorf("%s %q: the resource is named %q", kindOf(typeURL), raw.name, name)
	}
	return msg, name, nil
}

func kindOf(typeURL string) string {
	switch typeURL {
	case resourcev3.ListenerType:
		return "listener"
	case resourcev3.ClusterType:
		return "cluster"
	case resourcev3.RouteType:
		return "route configuration"
	case resourcev3.EndpointType:
		return "cluster load assignment"
	case resourcev3.SecretType:
		return "secret"
	}
	return typeURL
}

// dynamicOpts are the options every xDS resource is validated with.
// Cluster references are not checked per resource: like Envoy (RDS
// validate_clusters defaults to false), a route naming a cluster that is
// not (yet) known answers 503 until it arrives, instead of NACKing an
// update that merely arrived before its clusters.
var dynamicOpts = config.ResourceOptions{Dynamic: true}

// validate checks one resource and compiles it on its own, so that a
// resource still warming is rejected now rather than when it would go live.
func validate(msg proto.Message, secrets tlscontext.Secrets) error {
	switch m := msg.(type) {
	case *listenerv3.Listener:
		if err := config.ValidateListener(m, dynamicOpts); err != nil {
			return err
		}
		if _, err := config.CompileListenerWith(m, secrets); err != nil {
			return fmt.Errorf("listener %q: %w", m.GetName(), err)
		}
	case *clusterv3.Cluster:
		if err := config.ValidateCluster(m, dynamicOpts); err != nil {
			return err
		}
		if _, err := upstream.CompileClusterWith(m, secrets); err != nil {
			return fmt.Errorf("cluster %q: %w", m.GetName(), err)
		}
	case *routev3.RouteConfiguration:
		if err := config.ValidateRouteConfiguration(m, dynamicOpts); err != nil {
			return err
		}
		if _, err := route.Compile(m); err != nil {
			return fmt.Errorf("route configuration %q: %w", m.GetName(), err)
		}
	case *endpointv3.ClusterLoadAssignment:
		return config.ValidateClusterLoadAssignment(m)
	case *tlsv3.Secret:
		if _, err := identity.ParseSecret(m); err != nil {
			return err
		}
	}
	return nil
}

// deliverSecrets hands the secrets an update would leave accepted to the
// identity manager, which applies them to the sources of TLS contexts
// using `sds_config: {ads: {}}`; an error NACKs the update.
func (st *state) deliverSecrets(next map[string]config.XDSResource) error {
	if st.c.opts.ADSSecrets == nil {
		return nil
	}
	out := make([]identity.ADSSecret, 0, len(next))
	for _, name := range slices.Sorted(maps.Keys(next)) {
		ps, err := identity.ParseSecret(next[name].Resource.(*tlsv3.Secret))
		if err != nil {
			return err
		}
		out = append(out, identity.ADSSecret{Name: name, Parsed: ps})
	}
	return st.c.opts.ADSSecrets(out)
}

// adsSecretNames returns the SDS secrets msg's TLS contexts take over ADS
// (`sds_config: {ads: {}}`).
func adsSecretNames(msg proto.Message) []string {
	var ctxs []*tlsv3.CommonTlsContext
	switch m := msg.(type) {
	case *listenerv3.Listener:
		for _, fc := range m.GetFilterChains() {
			var dtc tlsv3.DownstreamTlsContext
			if a := fc.GetTransportSocket().GetTypedConfig(); a.MessageIs(&dtc) && a.UnmarshalTo(&dtc) == nil {
				ctxs = append(ctxs, dtc.GetCommonTlsContext())
			}
		}
	case *clusterv3.Cluster:
		var utc tlsv3.UpstreamTlsContext
		if a := m.GetTransportSocket().GetTypedConfig(); a.MessageIs(&utc) && a.UnmarshalTo(&utc) == nil {
			ctxs = append(ctxs, utc.GetCommonTlsContext())
		}
	}
	var names []string
	for _, ctx := range ctxs {
		scs := append([]*tlsv3.SdsSecretConfig{ctx.GetValidationContextSdsSecretConfig(), ctx.GetCombinedValidationContext().GetValidationContextSdsSecretConfig()},
			ctx.GetTlsCertificateSdsSecretConfigs()...)
		for _, sc := range scs {
			if sc.GetSdsConfig().GetAds() != nil {
				names = append(names, sc.GetName())
			}
		}
	}
	return names
}

// secretsReady reports whether every ADS secret msg names was accepted.
func secretsReady(msg proto.Message, secrets map[string]config.XDSResource) bool {
	for _, n := range adsSecretNames(msg) {
		if !hasKey(secrets, n) {
			return false
		}
	}
	return true
}

// rdsNames returns the route configurations a listener's connection
// managers take over RDS, in every filter chain and the default one,
// each once.
func rdsNames(l *listenerv3.Listener) []string {
	var out []string
	for _, s := range rdsSubsOf(l) {
		if !slices.Contains(out, s.routeConfig) {
			out = append(out, s.routeConfig)
		}
	}
	return out
}

// routesReady reports whether every route configuration l takes over RDS
// has been accepted.
func routesReady(l *listenerv3.Listener, accepted map[string]config.XDSResource) bool {
	for _, n := range rdsNames(l) {
		if !hasKey(accepted, n) {
			return false
		}
	}
	return true
}

// edsName returns the assignment an EDS cluster subscribes to, or "".
func edsName(c *clusterv3.Cluster) string {
	if c.GetType() != clusterv3.Cluster_EDS {
		return ""
	}
	if n := c.GetEdsClusterConfig().GetServiceName(); n != "" {
		return n
	}
	return c.GetName()
}

// publish compiles the accepted resources, with warming ones replaced by
// their live version, and applies the snapshot once the initial fetch is
// complete. Before that it only compiles, so that errors are still NACKed.
func (st *state) publish() error {
	lds, cds := st.types[resourcev3.ListenerType], st.types[resourcev3.ClusterType]
	rds, eds := st.types[resourcev3.RouteType], st.types[resourcev3.EndpointType]
	sds := st.types[resourcev3.SecretType]
	d := &config.DynamicResources{Versions: map[string]string{}}
	for _, ts := range st.types {
		if ts.received {
			d.Versions[ts.url] = ts.version
		}
	}
	warming := 0
	for _, name := range slices.Sorted(maps.Keys(cds.accepted)) {
		r := cds.accepted[name]
		// Like Envoy, a cluster warms until its EDS assignment and its
		// ADS secrets have arrived.
		n := edsName(r.Resource.(*clusterv3.Cluster))
		if (n != "" && !hasKey(eds.accepted, n) || !secretsReady(r.Resource, sds.accepted)) && !st.timedOut {
			warming++
			if old, ok := st.live[cds.url][name]; ok {
				d.Clusters = append(d.Clusters, old)
			}
			continue
		}
		d.Clusters = append(d.Clusters, r)
	}
	for _, name := range slices.Sorted(maps.Keys(lds.accepted)) {
		r := lds.accepted[name]
		if !routesReady(r.Resource.(*listenerv3.Listener), rds.accepted) || !secretsReady(r.Resource, sds.accepted) {
			warming++
			if old, ok := st.live[lds.url][name]; ok {
				d.Listeners = append(d.Listeners, old)
			}
			continue
		}
		d.Listeners = append(d.Listeners, r)
	}
	for _, name := range slices.Sorted(maps.Keys(rds.accepted)) {
		d.Routes = append(d.Routes, rds.accepted[name])
	}
	for _, name := range slices.Sorted(maps.Keys(eds.accepted)) {
		d.Endpoints = append(d.Endpoints, eds.accepted[name])
	}
	snap, err := config.CompileResourcesWith(st.c.opts.Bootstrap, d, st.c.opts.Secrets)
	if err != nil {
		return err
	}
	if !st.initDone {
		complete := lds.received && cds.received && warming == 0
		if !complete && !st.timedOut {
			return nil
		}
		if !complete {
			st.c.logger.Warn("initial xDS fetch timed out; serving what has arrived", "warming", warming,
				"lds", lds.received, "cds", cds.received)
		}
	}
	if err := st.c.opts.Apply(snap); err != nil {
		return fmt.Errorf("applying version %s: %w", snap.Version, err)
	}
	st.live = map[string]map[string]config.XDSResource{}
	for tu, rs := range map[string][]config.XDSResource{lds.url: d.Listeners, cds.url: d.Clusters, rds.url: d.Routes, eds.url: d.Endpoints} {
		m := make(map[string]config.XDSResource, len(rs))
		for _, r := range rs {
			m[r.Name] = r
		}
		st.live[tu] = m
	}
	if !st.initDone {
		st.initDone = true
		st.c.warmedOnce.Do(func() { close(st.c.warmed) })
		st.c.logger.Info("xDS config applied; initial fetch complete", "version", snap.Version)
	}
	return nil
}

func hasKey[V any](m map[string]V, k string) bool {
	_, ok := m[k]
	return ok
}

// initTimedOut ends the initial warm-up: what has arrived goes live.
func (st *state) initTimedOut() {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.timedOut = true
	if st.initDone {
		return
	}
	if err := st.publish(); err != nil {
		st.c.logger.Error("publishing after the initial fetch timeout failed", "err", err)
	}
}

// resubscribe updates the RDS and EDS subscriptions to the names the
// accepted and live listeners and clusters need, drops resources no longer
// needed, and tells the server.
func (st *state) resubscribe(t transport) error {
	want := map[string]map[string]bool{resourcev3.RouteType: {}, resourcev3.EndpointType: {}, resourcev3.SecretType: {}}
	for _, m := range []map[string]config.XDSResource{st.types[resourcev3.ListenerType].accepted, st.live[resourcev3.ListenerType]} {
		for _, r := range m {
			for _, n := range rdsNames(r.Resource.(*listenerv3.Listener)) {
				want[resourcev3.RouteType][n] = true
			}
			for _, n := range adsSecretNames(r.Resource) {
				want[resourcev3.SecretType][n] = true
			}
		}
	}
	for _, m := range []map[string]config.XDSResource{st.types[resourcev3.ClusterType].accepted, st.live[resourcev3.ClusterType]} {
		for _, r := range m {
			if n := edsName(r.Resource.(*clusterv3.Cluster)); n != "" {
				want[resourcev3.EndpointType][n] = true
			}
			for _, n := range adsSecretNames(r.Resource) {
				want[resourcev3.SecretType][n] = true
			}
		}
	}
	for _, tu := range []string{resourcev3.EndpointType, resourcev3.RouteType, resourcev3.SecretType} {
		ts := st.types[tu]
		if maps.Equal(ts.names, want[tu]) {
			continue
		}
		old := ts.names
		ts.names = want[tu]
		for name := range ts.accepted {
			if !ts.names[name] {
				delete(ts.accepted, name)
			}
		}
		st.c.logger.Debug("xDS subscription changed", "type", tu, "names", strings.Join(ts.sortedNames(), ","))
		var err error
		if len(old) == 0 {
			err = t.subscribe(ts, nil)
		} else {
			err = t.resubscribe(ts, old)
		}
		if err != nil {
			return fmt.Errorf("subscribe %s: %w", tu, err)
		}
	}
	return nil
}
