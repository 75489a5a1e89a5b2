package client

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"meshd.dev/meshd/ca"
	cav1 "meshd.dev/meshd/ca/proto/meshd/ca/v1"
	"meshd.dev/meshd/examples"
	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/mtls"
	"meshd.dev/meshd/proxy/stats"
	"meshd.dev/meshd/xds/model"
)

const testTimeout = 10 * time.Second

var secret = []byte("0123456789abcdef0123456789abcdef")

// startCA serves the CA service for the example mesh on 127.0.0.1:0 and
// returns a client connection to it. Both are stopped by t.Cleanup.
func startCA(t *testing.T, opts ca.Options) (*ca.CA, *grpc.ClientConn) {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString("example.org")
	root, err := ca.GenerateRoot(td)
	if err != nil {
		t.Fatal(err)
	}
	authority, err := ca.New(td, opts, root)
	if err != nil {
		t.Fatal(err)
	}
	m := exampleMesh(t)
	tokens := ca.NewTokenAuthenticator(secret, td)
	if err := tokens.SetMesh(m); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	ca.NewService(authority, tokens, ca.ServiceOptions{}).Register(g)
	var wg sync.WaitGroup
	wg.Go(func() { _ = g.Serve(lis) })
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cc.Close()
		g.Stop()
		wg.Wait()
	})
	return authority, cc
}

// TestServiceAuth calls Sign directly: the identity comes from the token,
// bad credentials are UNAUTHENTICATED and a CSR for someone else is
// INVALID_ARGUMENT.
func TestServiceAuth(t *testing.T) {
	testutil.CheckGoroutines(t)
	authority, cc := startCA(t, ca.Options{})
	cli := cav1.NewCertificateAuthorityClient(cc)
	good := ca.BootstrapToken(secret, "greeter-server.demo")
	tests := []struct {
		name     string
		auth     string // authorization metadata; "" sends none
		csrURI   string
		wantCode codes.Code
		wantID   string
	}{
		{name: "good token", auth: "Bearer " + good, wantCode: codes.OK, wantID: "spiffe://example.org/ns/demo/sa/greeter-server"},
		{name: "CSR names the same ID", auth: "Bearer " + good, csrURI: "spiffe://example.org/ns/demo/sa/greeter-server", wantCode: codes.OK, wantID: "spiffe://example.org/ns/demo/sa/greeter-server"},
		{name: "CSR names another ID", auth: "Bearer " + good, csrURI: "spiffe://example.org/ns/demo/sa/greeter-client", wantCode: codes.InvalidArgument},
		{name: "no metadata", wantCode: codes.Unauthenticated},
		{name: "not bearer", auth: "Basic " + good, wantCode: codes.Unauthenticated},
		{name: "bad token", auth: "Bearer " + good[:len(good)-2] + "AA", wantCode: codes.Unauthenticated},
		{name: "unknown node", auth: "Bearer " + ca.BootstrapToken(secret, "intruder.demo"), wantCode: codes.Unauthenticated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			if tt.auth != "" {
				ctx = metadataCtx(ctx, tt.auth)
			}
			resp, err := cli.Sign(ctx, &cav1.SignRequest{CsrDer: testCSR(t, tt.csrURI)})
			if got := status.Code(err); got != tt.wantCode {
				t.Fatalf("Sign: code %v (%v), want %v", got, err, tt.wantCode)
			}
			if tt.wantCode != codes.OK {
				return
			}
			var chain []*x509.Certificate
			for _, der := range resp.GetCertChainDer() {
				c, err := x509.ParseCertificate(der)
				if err != nil {
					t.Fatal(err)
				}
				chain = append(chain, c)
			}
			id, _, err := x509svid.Verify(chain, authority.X509Bundle())
			if err != nil || id.String() != tt.wantID {
				t.Fatalf("issued SVID: ID %v, err %v; want %s", id, err, tt.wantID)
			}
			if !resp.GetExpiresAt().AsTime().Equal(chain[0].NotAfter) || len(resp.GetBundleDer()) != 1 {
				t.Errorf("expires_at %v (leaf %v), %d bundle certs", resp.GetExpiresAt().AsTime(), chain[0].NotAfter, len(resp.GetBundleDer()))
			}
		})
	}
}

// TestRenewsAtHalfLifeTiming: with a 2 s TTL the client renews about
// every second, each SVID reaching the mtls.StaticSource sink. The third
// renewal comes no sooner than 1.4 s after the start (x509 keeps whole
// seconds, so each SVID lives more than 1 s and the next request waits
// more than half of that) and, asserted only without -race (.ci/run's
// non-race timing step), within 4.2 s.
func TestRenewsAtHalfLifeTiming(t *testing.T) {
	const ttl, renewalsWanted, earliest, latest = 2 * time.Second, 3, 1400 * time.Millisecond, 4200 * time.Millisecond
	testutil.CheckGoroutines(t)
	_, cc := startCA(t, ca.Options{})
	sink := mtls.NewStaticSource()
	st := stats.NewStore()
	c, err := New(Options{Conn: cc, Token: ca.BootstrapToken(secret, "greeter-client.demo"), Sink: sink, TTL: ttl, Stats: st})
	if err != nil {
		t.Fatal(err)
	}
	renewalsCounter := st.Root().Scope("ca_client").Counter("renewals")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- c.Run(ctx) }()
	for deadline := start.Add(testTimeout); renewalsCounter.Value() < renewalsWanted && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	took := time.Since(start)
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v, want the context's cancellation", err)
	}
	renewals := renewalsCounter.Value()
	failures := st.Root().Scope("ca_client").Counter("failures").Value()
	if renewals < renewalsWanted || failures != 0 {
		t.Fatalf("renewals %d, failures %d in %v with a %v TTL; want >= %d and 0", renewals, failures, took, ttl, renewalsWanted)
	}
	if took < earliest {
		t.Errorf("%d renewals %v after the start with a %v TTL, want no sooner than %v: the client renews before half-life", renewals, took, ttl, earliest)
	}
	testutil.TimingAtMost(t, fmt.Sprintf("time to %d renewals with a %v TTL", renewalsWanted, ttl), took, latest)
	if v, _ := sink.Watch(); v != renewals+1 {
		t.Errorf("sink saw %d updates, want %d", v, renewals+1)
	}
	svid, err := sink.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID.String() != "spiffe://example.org/ns/demo/sa/greeter-client" {
		t.Errorf("SVID ID %s", svid.ID)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, sink); err != nil {
		t.Errorf("the sink's SVID does not verify against the sink's bundle: %v", err)
	}
	if got, want := st.Root().Scope("ca_client").Gauge("expiry_seconds").Value(), svid.Certificates[0].NotAfter.Unix(); got != want {
		t.Errorf("expiry_seconds %d, want %d", got, want)
	}
}

// TestRetriesUntilAuthorized: a client with an unknown token fails and
// backs off; it is not given an SVID.
func TestRetriesUntilAuthorized(t *testing.T) {
	testutil.CheckGoroutines(t)
	_, cc := startCA(t, ca.Options{})
	st := stats.NewStore()
	sink := mtls.NewStaticSource()
	c, err := New(Options{Conn: cc, Token: "bogus", Sink: sink, Stats: st, MinBackoff: 20 * time.Millisecond, MaxBackoff: 80 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = c.Run(ctx)
	if f := st.Root().Scope("ca_client").Counter("failures").Value(); f < 3 || f > 60 {
		t.Errorf("failures in 1 s with 20–80 ms backoff = %d, want a bounded retry loop (3..60)", f)
	}
	if c.Current() != nil {
		t.Error("a client with a bad token has an SVID")
	}
	if _, err := sink.GetX509SVID(); !errors.Is(err, mtls.ErrNoSVID) {
		t.Errorf("sink: %v, want ErrNoSVID", err)
	}
}

func TestNewValidates(t *testing.T) {
	sink := mtls.NewStaticSource()
	cc, err := grpc.NewClient("127.0.0.1:1", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	for _, tt := range []struct {
		name string
		opts Options
	}{
		{"no conn", Options{Token: "t", Sink: sink}},
		{"no token", Options{Conn: cc, Sink: sink}},
		{"token and token source", Options{Conn: cc, Sink: sink, Token: "t", TokenSource: func() (string, error) { return "t", nil }}},
		{"no sink", Options{Conn: cc, Token: "t"}},
		{"negative TTL", Options{Conn: cc, Token: "t", Sink: sink, TTL: -time.Second}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(tt.opts); err == nil {
				t.Fatal("New accepted invalid options")
			}
		})
	}
}

var _ Sink = (*mtls.StaticSource)(nil)

func metadataCtx(ctx context.Context, auth string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, ca.AuthorizationMetadata, auth)
}

// testCSR returns a CSR for a fresh key, with uri as its URI SAN if set.
func testCSR(t *testing.T, uri string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.CertificateRequest{}
	if uri != "" {
		u, err := url.Parse(uri)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = []*url.URL{u}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func exampleMesh(t *testing.T) *model.Mesh {
	t.Helper()
	m, err := model.Parse(examples.Mesh, "example")
	if err != nil {
		t.Fatal(err)
	}
	return m
}
