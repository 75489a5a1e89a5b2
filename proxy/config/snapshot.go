package config

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"

	"meshd.dev/meshd/mtls"
	"meshd.dev/meshd/proxy/accesslog"
	httpcm "meshd.dev/meshd/proxy/http/hcm"
	"meshd.dev/meshd/proxy/route"
	"meshd.dev/meshd/proxy/tcpproxy"
	"meshd.dev/meshd/proxy/tlscontext"
	"meshd.dev/meshd/proxy/upstream"
)

// Snapshot is one compiled, immutable configuration of the sidecar. The
// runtime applies it whole; nothing in it changes afterwards.
type Snapshot struct {
	// Version identifies the snapshot ("bootstrap" or an xDS version).
	Version   string
	Node      *corev3.Node
	Admin     string // admin listen address, "" when none
	Listeners []*Listener
	Clusters  []*upstream.Spec
	// Bootstrap is the source document, for /config_dump.
	Bootstrap *bootstrapv3.Bootstrap
	// Dynamic is what the xDS client had accepted when it compiled the
	// snapshot (for /config_dump); nil for a bootstrap-only snapshot.
	Dynamic *DynamicResources
}

// XDSResource is one resource accepted from the control plane.
type XDSResource struct {
	Name string
	// Version is the version_info of the response that carried it (SotW)
	// or the resource's own version (delta).
	Version     string
	LastUpdated time.Time
	Resource    proto.Message
}

// DynamicResources are the xDS resources a snapshot is compiled from:
// Listener, RouteConfiguration, Cluster and ClusterLoadAssignment messages.
// Compiling never modifies them.
type DynamicResources struct {
	Listeners []XDSResource
	Routes    []XDSResource
	Clusters  []XDSResource
	Endpoints []XDSResource
	// Versions is the last accepted version_info per type URL.
	Versions map[string]string
}

// Listener is a compiled listener with its terminal network filter: an
// HTTP connection manager (HCM) or a tcp_proxy (TCP); exactly one is set.
type Listener struct {
	Name    string
	Address string // "ip:port"
	// TLS is the server TLS config, nil for plaintext.
	TLS *tls.Config
	// Identity is the SVID source of an SDS-fed TLS context, nil
	// otherwise; for the admin's /certs and /listeners.
	Identity mtls.Source
	// TLSOptional is set for a tls_inspector listener with a
	// transport_protocol "tls" chain and a plaintext twin (PERMISSIVE
	// mTLS): connections that do not open with a TLS handshake are served
	// in plaintext by the same filters (listener.Config.TLSOptional).
	TLSOptional bool
	HCM         *httpcm.Config
	TCP         *tcpproxy.Config
	// QUIC is set for a UDP listener serving HTTP/3 (Address is then a UDP
	// address); nil for TCP listeners.
	QUIC *QUICListener
	// OriginalDst: the listener runs envoy.filters.listener.original_dst
	// (listener.Config.OriginalDst).
	OriginalDst bool
	// UseOriginalDst: connections whose original destination is another
	// listener's address are handed to that listener (Envoy's
	// use_original_dst).
	UseOriginalDst bool
	// NoBind: bind_to_port false; the listener only receives connections
	// handed over by a use_original_dst listener.
	NoBind bool
	// Outbound: traffic_direction is OUTBOUND, so /drain_listeners
	// ?inboundonly leaves the listener accepting (Envoy's rule: INBOUND
	// and UNSPECIFIED listeners are drained).
	Outbound bool
	// AccessLogs is the listener's own access_log: one line per connection
	// the listener closes before a filter chain serves it (TLS handshake
	// failure, no filter chain for its protocol). Nil without access_log.
	AccessLogs []*accesslog.Logger
	raw        *listenerv3.Listener
	chain      int // index of the served filter chain in raw
}

// SameSocket reports whether o can keep l's bound socket and connections:
// same address and same transport. Everything else swaps in place.
func (l *Listener) SameSocket(o *Listener) bool {
	return l.Address == o.Address &&
		l.TLSOptional == o.TLSOptional &&
		l.OriginalDst == o.OriginalDst && l.UseOriginalDst == o.UseOriginalDst && l.NoBind == o.NoBind &&
		(l.QUIC == nil) == (o.QUIC == nil) && (l.QUIC == nil || *l.QUIC == *o.QUIC) &&
		proto.Equal(l.raw.GetFilterChains()[l.chain].GetTransportSocket(), o.raw.GetFilterChains()[o.chain].GetTransportSocket()) &&
		sameFilter(l, o)
}

// Compile turns a validated bootstrap into a snapshot of its static
// resources. A bootstrap with dynamic_resources compiles too: its static
// part is what the sidecar runs while the xDS client warms up, and
// CompileResources adds the dynamic resources. Errors name the field path.
func Compile(b *bootstrapv3.Bootstrap) (*Snapshot, error) {
	return CompileResources(b, nil)
}

// CompileResources compiles the bootstrap's static resources together with
// the dynamic resources d (nil: none) into one snapshot, named by
// version. An EDS cluster gets the endpoints of the ClusterLoadAssignment
// named by its service name (none when it has not arrived; the xDS client
// decides when a cluster may go live without them); a connection manager
// using rds gets the RouteConfiguration of that name, which must be
// present. Errors name the resource and the field path below it.
func CompileResources(b *bootstrapv3.Bootstrap, d *DynamicResources) (*Snapshot, error) {
	return CompileResourcesWith(b, d, nil)
}

// CompileResourcesWith is CompileResources with TLS contexts' SDS secrets
// resolved through secrets (the sidecar's identity manager). With nil
// secrets, a TLS context using SDS is a compile error naming it.
func CompileResourcesWith(b *bootstrapv3.Bootstrap, d *DynamicResources, secrets tlscontext.Secrets) (*Snapshot, error) {
	s := &Snapshot{Version: "bootstrap", Node: b.GetNode(), Bootstrap: b, Dynamic: d}
	if d != nil {
		s.Version = versionString(d.Versions)
	}
	if a := b.GetAdmin().GetAddress(); a != nil {
		addr, err := socketAddress(a)
		if err != nil {
			return nil, fmt.Errorf("admin.address: %w", err)
		}
		s.Admin = addr
	}
	var errs []error
	routes := map[string]*route.Table{}
	assignments := map[string][]upstream.Endpoint{}
	if d != nil {
		for _, r := range d.Routes {
			rc, ok := r.Resource.(*routev3.RouteConfiguration)
			if !ok {
				errs = append(errs, fmt.Errorf("route configuration %q: not a RouteConfiguration (%T)", r.Name, r.Resource))
				continue
			}
			t, err := route.Compile(rc)
			if err != nil {
				errs = append(errs, fmt.Errorf("route configuration %q: %w", r.Name, err))
				continue
			}
			routes[r.Name] = t
		}
		for _, r := range d.Endpoints {
			cla, ok := r.Resource.(*endpointv3.ClusterLoadAssignment)
			if !ok {
				errs = append(errs, fmt.Errorf("cluster load assignment %q: not a ClusterLoadAssignment (%T)", r.Name, r.Resource))
				continue
			}
			eps, err := upstream.CompileAssignment(cla)
			if err != nil {
				errs = append(errs, fmt.Errorf("cluster load assignment %q: %w", r.Name, err))
				continue
			}
			assignments[r.Name] = eps
		}
	}
	addListener := func(where string, l *listenerv3.Listener) {
		cl, err := CompileListenerWith(l, secrets)
		if err == nil {
			err = bindRoutes(cl, routes)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", where, err))
			return
		}
		s.Listeners = append(s.Listeners, cl)
	}
	addCluster := func(where string, c *clusterv3.Cluster) {
		if IsIdentityCluster(c) {
			// A pipe cluster only names an SDS or Workload API socket.
			return
		}
		spec, err := upstream.CompileClusterWith(c, secrets)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", where, err))
			return
		}
		if spec.Discovery == upstream.EDS {
			spec = spec.WithEndpoints(assignments[spec.EDSServiceName])
		}
		s.Clusters = append(s.Clusters, spec)
	}
	// Static listeners and clusters are compiled with their references to
	// static_resources.secrets resolved; s.Bootstrap keeps them as written.
	resolved, probs := inlineStaticSecrets(b)
	for _, p := range probs {
		errs = append(errs, p)
	}
	for i, l := range resolved.GetStaticResources().GetListeners() {
		addListener(fmt.Sprintf("static_resources.listeners[%d]", i), l)
	}
	for i, c := range resolved.GetStaticResources().GetClusters() {
		addCluster(fmt.Sprintf("static_resources.clusters[%d]", i), c)
	}
	if d != nil {
		for _, r := range d.Listeners {
			l, ok := r.Resource.(*listenerv3.Listener)
			if !ok {
				errs = append(errs, fmt.Errorf("listener %q: not a Listener (%T)", r.Name, r.Resource))
				continue
			}
			addListener(fmt.Sprintf("listener %q", r.Name), l)
		}
		for _, r := range d.Clusters {
			c, ok := r.Resource.(*clusterv3.Cluster)
			if !ok {
				errs = append(errs, fmt.Errorf("cluster %q: not a Cluster (%T)", r.Name, r.Resource))
				continue
			}
			addCluster(fmt.Sprintf("cluster %q", r.Name), c)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return s, nil
}

// bindRoutes gives a connection manager that uses rds its route table.
func bindRoutes(l *Listener, routes map[string]*route.Table) error {
	if l.HCM == nil || l.HCM.RDSName == "" {
		return nil
	}
	t, ok := routes[l.HCM.RDSName]
	if !ok {
		return fmt.Errorf("filter_chains[0].filters[0].typed_config.rds.route_config_name: route configuration %q has not been received", l.HCM.RDSName)
	}
	l.HCM = l.HCM.WithRoutes(t)
	return nil
}

// versionString joins per-type versions in a fixed order, e.g.
// "cds=v3,eds=v3,lds=v3,rds=v3".
func versionString(v map[string]string) string {
	keys := make([]string, 0, len(v))
	for k := range v {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		short := k[strings.LastIndexByte(k, '.')+1:]
		b.WriteString(short)
		b.WriteByte('=')
		b.WriteString(v[k])
	}
	return b.String()
}

// CompileListener compiles one listener. Errors name the field path below
// the listener. A TLS context with SDS secrets is an error here;
// CompileListenerWith resolves them.
func CompileListener(l *listenerv3.Listener) (*Listener, error) {
	return CompileListenerWith(l, nil)
}

// CompileListenerWith is CompileListener with the SDS secrets of a
// DownstreamTlsContext resolved through secrets (nil: SDS is an error).
func CompileListenerWith(l *listenerv3.Listener, secrets tlscontext.Secrets) (*Listener, error) {
	addr, err := socketAddress(l.GetAddress())
	if err != nil {
		return nil, fmt.Errorf("address: %w", err)
	}
	logs, err := accesslog.Compile(l.GetAccessLog())
	if err != nil {
		return nil, err
	}
	if len(logs) == 0 {
		logs = nil
	} else if isQUICListener(l) {
		return nil, errors.New("access_log: listener access logs are for TCP listeners; log HTTP/3 requests with the connection manager's access_log")
	}
	out, err := compileListenerFilters(l, addr, secrets)
	if err != nil {
		return nil, err
	}
	out.AccessLogs = logs
	out.Outbound = l.GetTrafficDirection() == corev3.TrafficDirection_OUTBOUND
	return out, nil
}

// compileListenerFilters compiles what CompileListenerWith does but the
// listener's own access_log.
func compileListenerFilters(l *listenerv3.Listener, addr string, secrets tlscontext.Secrets) (*Listener, error) {
	sel, err := selectFilterChain(l)
	if err != nil {
		return nil, err
	}
	fc := l.GetFilterChains()[sel.index]
	if len(fc.GetFilters()) != 1 {
		return nil, fmt.Errorf("filter_chains[%d].filters: exactly one network filter (http_connection_manager) is supported, got %d", sel.index, len(fc.GetFilters()))
	}
	if isTCPProxy(fc.GetFilters()[0]) {
		out, err := compileTCPListener(l, fc, addr, secrets)
		if err != nil {
			return nil, err
		}
		out.TLSOptional, out.chain = sel.tlsOptional, sel.index
		setOriginalDst(out, l, sel)
		return out, nil
	}
	var m hcmv3.HttpConnectionManager
	if err := fc.GetFilters()[0].GetTypedConfig().UnmarshalTo(&m); err != nil {
		return nil, fmt.Errorf("filter_chains[0].filters[0].typed_config: %w", err)
	}
	if err := checkHTTP3Codec(&m, isQUICListener(l)); err != nil {
		return nil, fmt.Errorf("filter_chains[0].filters[0].typed_config.%w", err)
	}
	h, err := httpcm.Compile(&m)
	if err != nil {
		return nil, fmt.Errorf("filter_chains[0].filters[0].typed_config.%w", err)
	}
	if err := compileListenerHTTP2(l, &h.HTTP2); err != nil {
		return nil, err
	}
	h.PerConnectionBufferLimit = l.GetPerConnectionBufferLimitBytes().GetValue()
	out := &Listener{Name: l.GetName(), Address: addr, HCM: h, raw: l, TLSOptional: sel.tlsOptional, chain: sel.index}
	setOriginalDst(out, l, sel)
	if isQUICListener(l) && (out.OriginalDst || out.UseOriginalDst || out.NoBind) {
		return nil, fmt.Errorf("listener_filters: %s, use_original_dst and bind_to_port are for TCP listeners", OriginalDstName)
	}
	if isQUICListener(l) {
		if out.QUIC, err = compileQUICListener(l); err != nil {
			return nil, err
		}
		if err := quicDownstreamTLS(fc, sel.index, secrets, out); err != nil {
			return nil, err
		}
		setLocalPrincipal(h, out)
		return out, nil
	}
	if ts := fc.GetTransportSocket(); ts != nil {
		var dtc tlsv3.DownstreamTlsContext
		if err := ts.GetTypedConfig().UnmarshalTo(&dtc); err != nil {
			return nil, fmt.Errorf("filter_chains[0].transport_socket.typed_config: %w", err)
		}
		cfg, src, err := downstreamTLS(&dtc, codecALPN(h.Codec), secrets)
		if err != nil {
			return nil, fmt.Errorf("filter_chains[0].transport_socket.typed_config.%w", err)
		}
		out.TLS, out.Identity = cfg, src
		setLocalPrincipal(h, out)
	}
	return out, nil
}

// setLocalPrincipal gives the connection manager the SPIFFE ID of the
// listener's certificate (XFCC's By field).
func setLocalPrincipal(h *httpcm.Config, l *Listener) {
	if len(l.TLS.Certificates) > 0 {
		if p := httpcm.LocalPrincipal(l.TLS.Certificates[0].Leaf); p != "" {
			h.LocalPrincipal = p
		}
	}
	if l.Identity != nil {
		// The SVID's ID is stable across rotations; the identity
		// manager has it before the first snapshot is compiled.
		if svid, err := l.Identity.GetX509SVID(); err == nil {
			h.LocalPrincipal = svid.ID.String()
		}
	}
}

func socketAddress(a *corev3.Address) (string, error) {
	sa := a.GetSocketAddress()
	if sa == nil {
		return "", fmt.Errorf("socket_address: required")
	}
	if net.ParseIP(sa.GetAddress()) == nil {
		return "", fmt.Errorf("socket_address.address: %q is not an IP address", sa.GetAddress())
	}
	port := sa.GetPortValue()
	if port > 65535 {
		return "", fmt.Errorf("socket_address.port_value: %d is out of range 0..65535", port)
	}
	return net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(port))), nil
}

// codecALPN is the ALPN a listener offers by default: what its codec can
// serve.
func codecALPN(codec httpcm.Codec) []string {
	switch codec {
	case httpcm.CodecHTTP2:
		return []string{"h2"}
	case httpcm.CodecHTTP1:
		return []string{"http/1.1"}
	default:
		return []string{"h2", "http/1.1"}
	}
}

// downstreamTLS builds a listener's server tls.Config: from SDS secrets
// through secrets (returning their source too), or from static files.
// ALPN is alpn_protocols, else defaultALPN.
func downstreamTLS(dtc *tlsv3.DownstreamTlsContext, defaultALPN []string, secrets tlscontext.Secrets) (*tls.Config, mtls.Source, error) {
	if tlscontext.UsesSDS(dtc.GetCommonTlsContext()) {
		return tlscontext.SDSServerConfig(dtc, defaultALPN, secrets)
	}
	cfg, err := serverTLS(dtc, defaultALPN)
	return cfg, nil, err
}

// serverTLS builds a server tls.Config from static certificate files in a
// DownstreamTlsContext. ALPN is alpn_protocols, else defaultALPN.
func serverTLS(dtc *tlsv3.DownstreamTlsContext, defaultALPN []string) (*tls.Config, error) {
	ctx := dtc.GetCommonTlsContext()
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: defaultALPN}
	if p := ctx.GetAlpnProtocols(); len(p) > 0 {
		cfg.NextProtos = p
	}
	if len(ctx.GetTlsCertificates()) == 0 {
		return nil, fmt.Errorf("common_tls_context.tls_certificates: at least one certificate is required")
	}
	certs, err := tlscontext.Certificates(ctx)
	if err != nil {
		return nil, err
	}
	cfg.Certificates = certs
	pool, err := tlscontext.TrustedCA(ctx)
	if err != nil {
		return nil, err
	}
	if pool != nil {
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
	}
	if dtc.GetRequireClientCertificate().GetValue() {
		if cfg.ClientCAs == nil {
			return nil, fmt.Errorf("require_client_certificate: needs common_tls_context.validation_context.trusted_ca")
		}
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// Store holds the current snapshot; readers get it lock-free and keep the
// one they loaded for as long as they need it.
type Store struct {
	p atomic.Pointer[Snapshot]
}

// Load returns the current snapshot, or nil before the first Swap.
func (s *Store) Load() *Snapshot { return s.p.Load() }

// Swap publishes snap and returns the previous snapshot.
func (s *Store) Swap(snap *Snapshot) *Snapshot { return s.p.Swap(snap) }

// IsIdentityCluster reports whether c is a static cluster whose endpoints
// are all pipe (Unix socket) addresses: such a cluster only names the
// socket of an SDS server or SPIFFE Workload API for TLS contexts'
// sds_config and is not compiled as an upstream.
func IsIdentityCluster(c *clusterv3.Cluster) bool {
	n := 0
	for _, lle := range c.GetLoadAssignment().GetEndpoints() {
		for _, lbe := range lle.GetLbEndpoints() {
			if lbe.GetEndpoint().GetAddress().GetPipe() == nil {
				return false
			}
			n++
		}
	}
	return n > 0
}

// setOriginalDst copies the listener's original-destination settings.
func setOriginalDst(out *Listener, l *listenerv3.Listener, sel chainSelection) {
	out.OriginalDst = sel.originalDst
	out.UseOriginalDst = l.GetUseOriginalDst().GetValue()
	out.NoBind = l.GetBindToPort() != nil && !l.GetBindToPort().GetValue()
}
