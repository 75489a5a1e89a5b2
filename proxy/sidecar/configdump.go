package sidecar

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"strconv"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"meshd.dev/meshd/ca"
	"meshd.dev/meshd/proxy/config"
	"meshd.dev/meshd/proxy/identity"
)

// configDump renders snap as Envoy's admin.v3.ConfigDump: a
// BootstrapConfigDump, a ListenersConfigDump with static_listeners and a
// ClustersConfigDump with static_clusters (so ?resource=static_clusters
// works with or without xDS, as in Envoy), and for xDS snapshots their
// dynamic_listeners and dynamic_active_clusters, a RoutesConfigDump with
// dynamic_route_configs and an EndpointsConfigDump with
// dynamic_endpoint_configs (served only with ?include_eds), each dynamic
// resource with its version_info and last_updated; and with identities a
// SecretsConfigDump whose dynamic_active_secrets are the SDS secrets in use
// (private keys shown as "[redacted]", as Envoy does).
//
// The built-in CA's bootstrap token in node.metadata["meshd.token"] is a
// credential too: it reads "[redacted]" (see redactedNode).
func configDump(snap *config.Snapshot, ids *identity.Manager) (*adminv3.ConfigDump, error) {
	boot := snap.Bootstrap
	if n := redactedNode(boot.GetNode()); n != boot.GetNode() {
		boot = proto.CloneOf(boot)
		boot.Node = n
	}
	dumps := []proto.Message{&adminv3.BootstrapConfigDump{Bootstrap: boot}}
	b, d := snap.Bootstrap, snap.Dynamic
	ls := &adminv3.ListenersConfigDump{}
	cs := &adminv3.ClustersConfigDump{}
	if d != nil {
		ls.VersionInfo, cs.VersionInfo = d.Versions[resourcev3.ListenerType], d.Versions[resourcev3.ClusterType]
	}
	for _, l := range b.GetStaticResources().GetListeners() {
		a, err := anypb.New(l)
		if err != nil {
			return nil, fmt.Errorf("config_dump: listener %q: %w", l.GetName(), err)
		}
		ls.StaticListeners = append(ls.StaticListeners, &adminv3.ListenersConfigDump_StaticListener{Listener: a})
	}
	for _, c := range b.GetStaticResources().GetClusters() {
		a, err := anypb.New(c)
		if err != nil {
			return nil, fmt.Errorf("config_dump: cluster %q: %w", c.GetName(), err)
		}
		cs.StaticClusters = append(cs.StaticClusters, &adminv3.ClustersConfigDump_StaticCluster{Cluster: a})
	}
	if d == nil {
		dumps = append(dumps, ls, cs)
	} else {
		rs := &adminv3.RoutesConfigDump{}
		es := &adminv3.EndpointsConfigDump{}
		for _, r := range d.Listeners {
			a, err := anypb.New(r.Resource)
			if err != nil {
				return nil, fmt.Errorf("config_dump: listener %q: %w", r.Name, err)
			}
			ls.DynamicListeners = append(ls.DynamicListeners, &adminv3.ListenersConfigDump_DynamicListener{
				Name: r.Name,
				ActiveState: &adminv3.ListenersConfigDump_DynamicListenerState{
					VersionInfo: r.Version, Listener: a, LastUpdated: timestamppb.New(r.LastUpdated),
				},
			})
		}
		for _, r := range d.Clusters {
			a, err := anypb.New(r.Resource)
			if err != nil {
				return nil, fmt.Errorf("config_dump: cluster %q: %w", r.Name, err)
			}
			cs.DynamicActiveClusters = append(cs.DynamicActiveClusters, &adminv3.ClustersConfigDump_DynamicCluster{
				VersionInfo: r.Version, Cluster: a, LastUpdated: timestamppb.New(r.LastUpdated),
			})
		}
		for _, r := range d.Routes {
			a, err := anypb.New(r.Resource)
			if err != nil {
				return nil, fmt.Errorf("config_dump: route configuration %q: %w", r.Name, err)
			}
			rs.DynamicRouteConfigs = append(rs.DynamicRouteConfigs, &adminv3.RoutesConfigDump_DynamicRouteConfig{
				VersionInfo: r.Version, RouteConfig: a, LastUpdated: timestamppb.New(r.LastUpdated),
			})
		}
		for _, r := range d.Endpoints {
			a, err := anypb.New(r.Resource)
			if err != nil {
				return nil, fmt.Errorf("config_dump: cluster load assignment %q: %w", r.Name, err)
			}
			es.DynamicEndpointConfigs = append(es.DynamicEndpointConfigs, &adminv3.EndpointsConfigDump_DynamicEndpointConfig{
				VersionInfo: r.Version, EndpointConfig: a, LastUpdated: timestamppb.New(r.LastUpdated),
			})
		}
		dumps = append(dumps, ls, cs, rs, es)
	}
	if ids != nil {
		sd, err := secretsDump(ids)
		if err != nil {
			return nil, err
		}
		dumps = append(dumps, sd)
	}
	cd := &adminv3.ConfigDump{}
	for _, m := range dumps {
		a, err := anypb.New(m)
		if err != nil {
			return nil, fmt.Errorf("config_dump: %w", err)
		}
		cd.Configs = append(cd.Configs, a)
	}
	return cd, nil
}

// secretsDump renders the identity sources' current secrets.
func secretsDump(ids *identity.Manager) (*adminv3.SecretsConfigDump, error) {
	sd := &adminv3.SecretsConfigDump{}
	add := func(version uint64, s *tlsv3.Secret) error {
		a, err := anypb.New(s)
		if err != nil {
			return fmt.Errorf("config_dump: secret %q: %w", s.GetName(), err)
		}
		sd.DynamicActiveSecrets = append(sd.DynamicActiveSecrets, &adminv3.SecretsConfigDump_DynamicSecret{
			Name: s.GetName(), VersionInfo: strconv.FormatUint(version, 10), Secret: a,
		})
		return nil
	}
	for _, cs := range ids.Certs() {
		cert := &tlsv3.Secret{Name: cs.CertSecret, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: inlinePEM(cs.Chain),
			PrivateKey:       &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "[redacted]"}},
		}}}
		if err := add(cs.Version, cert); err != nil {
			return nil, err
		}
		if cs.ValidationSecret == cs.CertSecret {
			continue
		}
		ca := &tlsv3.Secret{Name: cs.ValidationSecret, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: inlinePEM(cs.Roots),
		}}}
		if err := add(cs.Version, ca); err != nil {
			return nil, err
		}
	}
	return sd, nil
}

// inlinePEM is certs as a PEM inline_bytes data source.
func inlinePEM(certs []*x509.Certificate) *corev3.DataSource {
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
}

// redactedNode returns n as the admin API shows it: n itself, or, when
// its metadata carries the built-in CA's bootstrap token
// (node.metadata["meshd.token"], which obtains SVIDs for the workload), a
// copy in which the token reads "[redacted]", as private keys do.
func redactedNode(n *corev3.Node) *corev3.Node {
	if _, ok := n.GetMetadata().GetFields()[ca.TokenMetadataKey]; !ok {
		return n
	}
	c := proto.CloneOf(n)
	c.Metadata.Fields[ca.TokenMetadataKey] = structpb.NewStringValue("[redacted]")
	return c
}
