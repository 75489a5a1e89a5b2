package tlscontext

import (
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/mtls"
	"meshd.dev/meshd/mtls/mtlstest"
)

const handshakeTimeout = 5 * time.Second

// fixedSecrets serves one source for every config, recording what it was
// asked.
type fixedSecrets struct {
	src   mtls.Source
	asked []string
}

func (f *fixedSecrets) Source(cert, validation *tlsv3.SdsSecretConfig) (mtls.Source, error) {
	f.asked = append(f.asked, cert.GetName(), validation.GetName())
	return f.src, nil
}

func sds(name, cluster string) *tlsv3.SdsSecretConfig {
	return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: &corev3.ConfigSource{
		ConfigSourceSpecifier: &corev3.ConfigSource_ApiConfigSource{ApiConfigSource: &corev3.ApiConfigSource{
			ApiType: corev3.ApiConfigSource_GRPC,
			GrpcServices: []*corev3.GrpcService{{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
				EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: cluster}}}},
		}},
	}}
}

func uriMatcher(m *matcherv3.StringMatcher) *tlsv3.SubjectAltNameMatcher {
	return &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_URI, Matcher: m}
}

func combined(matchers ...*tlsv3.SubjectAltNameMatcher) *tlsv3.CommonTlsContext {
	return &tlsv3.CommonTlsContext{
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sds(SVIDSecretName, "meshd_identity")},
		ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
			DefaultValidationContext:         &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: matchers},
			ValidationContextSdsSecretConfig: sds(BundleSecretName, "meshd_identity"),
		}},
	}
}

func source(t *testing.T, ca *mtlstest.CA, id string) *mtls.StaticSource {
	t.Helper()
	src := mtls.NewStaticSource()
	if err := src.Update(ca.Issue(t, id), x509bundle.NewSet(ca.Bundle())); err != nil {
		t.Fatal(err)
	}
	return src
}

// handshake runs a TLS handshake between the two configs over a loopback
// TCP connection and returns the client's and the server's errors.
func handshake(t *testing.T, client, server *tls.Config) (cerr, serr error) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	done := make(chan error, 1)
	go func() {
		c, err := lis.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(handshakeTimeout))
		sc := tls.Server(c, server)
		err = sc.Handshake()
		if err == nil {
			// TLS 1.3: the client's certificate is checked after the
			// client's handshake returned; a read surfaces its fate.
			_, err = sc.Write([]byte("x"))
		}
		done <- err
	}()
	c, err := net.DialTimeout("tcp", lis.Addr().String(), handshakeTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(handshakeTimeout))
	cc := tls.Client(c, client)
	cerr = cc.Handshake()
	if cerr == nil {
		_, cerr = cc.Read(make([]byte, 1))
	}
	return cerr, <-done
}

// TestSDSHandshake: SDS-fed server and client configs authorize the peer
// by its URI SAN (exact, prefix) or, without matchers, by the local trust
// domain.
func TestSDSHandshake(t *testing.T) {
	testutil.CheckGoroutines(t)
	ca := mtlstest.NewCA(t, "example.org")
	const serverID, clientID = "spiffe://example.org/ns/demo/sa/server", "spiffe://example.org/ns/demo/sa/client"
	exact := func(s string) *matcherv3.StringMatcher {
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: s}}
	}
	prefix := func(s string) *matcherv3.StringMatcher {
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: s}}
	}
	for _, tc := range []struct {
		name                   string
		serverSANs, clientSANs []*tlsv3.SubjectAltNameMatcher
		serverOK, clientOK     bool
	}{
		{"no matchers: same trust domain", nil, nil, true, true},
		{"exact both ways", []*tlsv3.SubjectAltNameMatcher{uriMatcher(exact(clientID))}, []*tlsv3.SubjectAltNameMatcher{uriMatcher(exact(serverID))}, true, true},
		{"prefix", []*tlsv3.SubjectAltNameMatcher{uriMatcher(prefix("spiffe://example.org/ns/demo/"))}, nil, true, true},
		{"client refuses the server's ID", nil, []*tlsv3.SubjectAltNameMatcher{uriMatcher(exact("spiffe://example.org/ns/demo/sa/other"))}, true, false},
		{"server refuses the client's ID", []*tlsv3.SubjectAltNameMatcher{uriMatcher(prefix("spiffe://example.org/ns/prod/"))}, nil, false, true},
		{"any of several matchers", []*tlsv3.SubjectAltNameMatcher{uriMatcher(exact("spiffe://example.org/x")), uriMatcher(exact(clientID))}, nil, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ss := &fixedSecrets{src: source(t, ca, serverID)}
			scfg, ssrc, err := SDSServerConfig(&tlsv3.DownstreamTlsContext{
				CommonTlsContext: combined(tc.serverSANs...), RequireClientCertificate: wrapperspb.Bool(true),
			}, []string{"h2"}, ss)
			if err != nil {
				t.Fatal(err)
			}
			if ssrc != ss.src || strings.Join(ss.asked, ",") != "default,ROOTCA" {
				t.Fatalf("server source %v asked %v", ssrc, ss.asked)
			}
			ccfg, _, err := SDSClientConfig(&tlsv3.UpstreamTlsContext{CommonTlsContext: combined(tc.clientSANs...)}, []string{"h2"}, &fixedSecrets{src: source(t, ca, clientID)})
			if err != nil {
				t.Fatal(err)
			}
			cerr, serr := handshake(t, ccfg, scfg)
			var ve *mtls.VerifyError
			switch {
			case tc.serverOK && tc.clientOK:
				if cerr != nil || serr != nil {
					t.Fatalf("client %v, server %v; want both to succeed", cerr, serr)
				}
			case !tc.clientOK:
				if !errors.As(cerr, &ve) || ve.Reason != mtls.ReasonUnauthorized {
					t.Fatalf("client error %v, want unauthorized", cerr)
				}
			case !tc.serverOK:
				if !errors.As(serr, &ve) || ve.Reason != mtls.ReasonUnauthorized {
					t.Fatalf("server error %v, want unauthorized", serr)
				}
			}
		})
	}
}

// TestSDSContextErrors: TLS contexts meshd cannot serve from SDS fail with
// the field and the reason.
func TestSDSContextErrors(t *testing.T) {
	ok := combined()
	for _, tc := range []struct {
		name string
		dtc  *tlsv3.DownstreamTlsContext
		want string
	}{
		{"client certificate not required", &tlsv3.DownstreamTlsContext{CommonTlsContext: ok}, "require_client_certificate: must be true"},
		{"no validation secret", &tlsv3.DownstreamTlsContext{RequireClientCertificate: wrapperspb.Bool(true), CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sds("default", "c")},
		}}, "validation_context_sds_secret_config: required"},
		{"two certificates", &tlsv3.DownstreamTlsContext{RequireClientCertificate: wrapperspb.Bool(true), CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sds("a", "c"), sds("b", "c")},
			ValidationContextType:          &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{ValidationContextSdsSecretConfig: sds("ROOTCA", "c")},
		}}, "exactly one secret is required, got 2"},
		{"secrets from two sources", &tlsv3.DownstreamTlsContext{RequireClientCertificate: wrapperspb.Bool(true), CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sds("default", "c")},
			ValidationContextType:          &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{ValidationContextSdsSecretConfig: sds("ROOTCA", "d")},
		}}, "must equal the certificate secret's sds_config"},
		{"DNS SAN matcher", &tlsv3.DownstreamTlsContext{RequireClientCertificate: wrapperspb.Bool(true),
			CommonTlsContext: combined(&tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_DNS})}, "san_type: DNS is not supported"},
		{"regex SAN matcher", &tlsv3.DownstreamTlsContext{RequireClientCertificate: wrapperspb.Bool(true),
			CommonTlsContext: combined(uriMatcher(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: ".*"}}}))},
			"match_typed_subject_alt_names[0].matcher: only exact and prefix"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := SDSServerConfig(tc.dtc, nil, &fixedSecrets{src: mtls.NewStaticSource()})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
	if _, _, err := SDSClientConfig(&tlsv3.UpstreamTlsContext{CommonTlsContext: ok}, nil, nil); err == nil || !strings.Contains(err.Error(), "not available") {
		t.Errorf("nil secrets: err = %v", err)
	}
}

// TestSANAuthorizer: exact and prefix URI SAN matchers, with and without
// ignore_case. The authorizer runs in every handshake, so it is called
// from several goroutines at once; under -race this also checks that a
// call does not write what the next call reads (the ignore_case prefix
// once lowered its captured pattern on every call).
func TestSANAuthorizer(t *testing.T) {
	id := spiffeid.RequireFromString("spiffe://example.org/NS/demo/SA/greeter")
	for _, tc := range []struct {
		name string
		m    *matcherv3.StringMatcher
		ok   bool
	}{
		{"exact", &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: id.String()}}, true},
		{"exact other case", &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "spiffe://example.org/ns/demo/sa/greeter"}}, false},
		{"exact ignore case", &matcherv3.StringMatcher{IgnoreCase: true, MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "spiffe://example.org/ns/demo/sa/greeter"}}, true},
		{"prefix", &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "spiffe://example.org/NS/demo/"}}, true},
		{"prefix other case", &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "spiffe://example.org/ns/demo/"}}, false},
		{"prefix ignore case", &matcherv3.StringMatcher{IgnoreCase: true, MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "SPIFFE://EXAMPLE.ORG/ns/DEMO/"}}, true},
		{"prefix ignore case mismatch", &matcherv3.StringMatcher{IgnoreCase: true, MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "spiffe://example.org/ns/other/"}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			authz, err := sanAuthorizer(tc.m)
			if err != nil {
				t.Fatal(err)
			}
			const callers, calls = 4, 50
			errs := make(chan error, callers*calls)
			var wg sync.WaitGroup
			for range callers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range calls {
						errs <- authz(id)
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if (err == nil) != tc.ok {
					t.Fatalf("authorize %s: err %v, want ok %v", id, err, tc.ok)
				}
			}
		})
	}
	if _, err := sanAuthorizer(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Suffix{Suffix: "/greeter"}}); err == nil {
		t.Fatal("suffix matcher accepted, want an error naming the supported patterns")
	}
}
