package client

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/mtls/mtlstest"
	"meshd.dev/meshd/proxy/config"
	"meshd.dev/meshd/proxy/identity"
)

// adsSecret is an SDS secret config served over ADS.
func adsSecret(name string) *tlsv3.SdsSecretConfig {
	return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: &corev3.ConfigSource{
		ResourceApiVersion:    corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
	}}
}

// tlsResources is resources() with listener l1 serving mTLS from the ADS
// secrets "default" and "ROOTCA".
func tlsResources(t *testing.T, port uint32) map[resourcev3.Type][]types.Resource {
	t.Helper()
	res := resources(t, port)
	dtc, err := anypb.New(&tlsv3.DownstreamTlsContext{
		RequireClientCertificate: wrapperspb.Bool(true),
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{adsSecret("default")},
			ValidationContextType:          &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{ValidationContextSdsSecretConfig: adsSecret("ROOTCA")},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	l := res[resourcev3.ListenerType][0].(*listenerv3.Listener)
	l.FilterChains[0].TransportSocket = &corev3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: dtc}}
	return res
}

// TestADSSecrets: a listener naming ADS secrets makes the client subscribe
// to them and warm until they arrive (Envoy's rule); they then feed the
// identity manager's source, which the compiled listener's TLS uses.
func TestADSSecrets(t *testing.T) {
	for _, m := range modes() {
		t.Run(m.name, func(t *testing.T) {
			defer testutil.CheckGoroutines(t)
			authority := mtlstest.NewCA(t, "example.org")
			const id = "spiffe://example.org/ns/demo/sa/web"
			cp := startControlPlane(t, "127.0.0.1:0")
			defer cp.stop()
			res := tlsResources(t, 9001)
			cp.set("v1", res)

			b := bootstrap(cp.addr, m.delta)
			ids, err := identity.New(identity.Options{Bootstrap: b})
			if err != nil {
				t.Fatal(err)
			}
			defer ids.Close()
			s := &sink{}
			c, err := New(Options{
				Bootstrap: b, Apply: s.apply, InitialFetchTimeout: time.Minute,
				BackoffBase: 50 * time.Millisecond, BackoffMax: 200 * time.Millisecond,
				Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
				Secrets: ids, ADSSecrets: ids.UpdateADS,
			})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() {
				defer close(done)
				_ = c.Run(ctx)
			}()
			defer func() {
				cancel()
				<-done
			}()

			cp.waitRequest("a Secret subscription", func(r request) bool {
				return r.typeURL == resourcev3.SecretType && slices.Equal(slices.Sorted(slices.Values(r.names)), []string{"ROOTCA", "default"})
			})
			select {
			case <-c.Warmed():
				t.Fatal("warmed before the listener's secrets arrived")
			case <-time.After(300 * time.Millisecond):
			}

			svid := authority.Issue(t, id)
			certPEM, keyPEM, err := svid.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			res[resourcev3.SecretType] = []types.Resource{
				&tlsv3.Secret{Name: "default", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
					CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: certPEM}},
					PrivateKey:       &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: keyPEM}},
				}}},
				&tlsv3.Secret{Name: "ROOTCA", Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
					TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: authority.BundlePEM()}},
				}}},
			}
			cp.set("v2", res)
			select {
			case <-c.Warmed():
			case <-time.After(waitTimeout):
				t.Fatal("not warmed after the secrets arrived")
			}
			snap := s.waitSnapshot(t, "listener l1 with TLS", func(snap *config.Snapshot) bool {
				return len(snap.Listeners) == 1 && snap.Listeners[0].TLS != nil
			})
			got, err := snap.Listeners[0].Identity.GetX509SVID()
			if err != nil || got.ID.String() != id {
				t.Fatalf("listener identity SVID %v, %v; want %s", got, err, id)
			}
			if p := snap.Listeners[0].HCM.LocalPrincipal; p != id {
				t.Errorf("local principal %q, want %q", p, id)
			}
		})
	}
}
