package mtls

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/mtls/mtlstest"
)

const handshakeTimeout = 5 * time.Second

var alpn = []string{"h2", "http/1.1"}

func staticSource(t testing.TB, svid *x509svid.SVID, bundles ...*x509bundle.Bundle) *StaticSource {
	t.Helper()
	s := NewStaticSource()
	if err := s.Update(svid, x509bundle.NewSet(bundles...)); err != nil {
		t.Fatalf("Update: %v", err)
	}
	return s
}

// handshake runs both sides over net.Pipe and returns the client's and
// server's connection states and each side's error. After a successful
// server handshake the server writes one byte, which the client reads: in
// TLS 1.3 the client finishes before the server has judged its
// certificate, and that read is where the client learns of a refusal.
func handshake(t testing.TB, client, server *tls.Config) (cs, ss tls.ConnectionState, cerr, serr error) {
	t.Helper()
	c, s := net.Pipe()
	defer c.Close()
	defer s.Close()
	deadline := time.Now().Add(handshakeTimeout)
	c.SetDeadline(deadline)
	s.SetDeadline(deadline)
	tc, ts := tls.Client(c, client), tls.Server(s, server)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if serr = ts.Handshake(); serr != nil {
			s.Close() // unblock a client still waiting for the server
			return
		}
		_, serr = ts.Write([]byte{1})
	}()
	if cerr = tc.Handshake(); cerr == nil {
		_, cerr = tc.Read(make([]byte, 1))
	}
	if cerr != nil {
		c.Close()
	}
	<-done
	return tc.ConnectionState(), ts.ConnectionState(), cerr, serr
}

func TestHandshake(t *testing.T) {
	testutil.CheckGoroutines(t)
	ca := mtlstest.NewCA(t, "example.org")
	other := mtlstest.NewCA(t, "other.org")
	serverID := "spiffe://example.org/ns/prod/sa/api"
	clientID := "spiffe://example.org/ns/prod/sa/web"
	serverSrc := staticSource(t, ca.Issue(t, serverID), ca.Bundle())

	tests := []struct {
		name        string
		client      *tls.Config
		serverAuthz Authorizer
		want        Reason // 0: success
		logHas      string
	}{
		{"good mTLS", ClientConfig(staticSource(t, ca.Issue(t, clientID), ca.Bundle()), AuthorizeID(spiffeid.RequireFromString(serverID)), alpn, "api"), nil, 0, ""},
		{"other trust domain", ClientConfig(staticSource(t, other.Issue(t, "spiffe://other.org/ns/prod/sa/web"), ca.Bundle()), nil, alpn, ""), nil, ReasonUnknownTrustDomain, `"other.org"`},
		{"two URI SANs", ClientConfig(staticSource(t, ca.Issue(t, clientID, mtlstest.WithExtraURI("spiffe://example.org/ns/prod/sa/admin")), ca.Bundle()), nil, alpn, ""), nil, ReasonURISANCount, "2 URI SANs"},
		{"CA leaf", ClientConfig(staticSource(t, ca.Issue(t, clientID, mtlstest.AsCA()), ca.Bundle()), nil, alpn, ""), nil, ReasonCALeaf, "CA=true"},
		{"no certificate", &tls.Config{InsecureSkipVerify: true, NextProtos: alpn}, nil, ReasonNoCertificate, "no certificate"},
		{"expired", ClientConfig(staticSource(t, ca.Issue(t, clientID, mtlstest.Expired()), ca.Bundle()), nil, alpn, ""), nil, ReasonUntrusted, "expired"},
		{"unauthorized", ClientConfig(staticSource(t, ca.Issue(t, clientID), ca.Bundle()), nil, alpn, ""),
			AuthorizeID(spiffeid.RequireFromString("spiffe://example.org/ns/prod/sa/db")), ReasonUnauthorized, clientID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cs, ss, cerr, serr := handshake(t, tt.client, ServerConfig(serverSrc, tt.serverAuthz, alpn))
			if tt.want == 0 {
				if cerr != nil || serr != nil {
					t.Fatalf("handshake: client %v, server %v", cerr, serr)
				}
				if cs.Version != tls.VersionTLS13 || cs.NegotiatedProtocol != "h2" {
					t.Errorf("negotiated %x %q, want TLS 1.3 and h2", cs.Version, cs.NegotiatedProtocol)
				}
				if id, ok := PeerID(&ss); !ok || id.String() != clientID {
					t.Errorf("server's PeerID = %v, %v; want %s", id, ok, clientID)
				}
				if id, ok := PeerID(&cs); !ok || id.String() != serverID {
					t.Errorf("client's PeerID = %v, %v; want %s", id, ok, serverID)
				}
				return
			}
			var ve *VerifyError
			if !errors.As(serr, &ve) || ve.Reason != tt.want || !strings.Contains(serr.Error(), tt.logHas) {
				t.Fatalf("server handshake error %v, want reason %s mentioning %q", serr, tt.want, tt.logHas)
			}
			if cerr == nil {
				t.Fatal("client handshake succeeded against a server that refused it")
			}
		})
	}
}

func TestClientRefusesServer(t *testing.T) {
	testutil.CheckGoroutines(t)
	ca := mtlstest.NewCA(t, "example.org")
	other := mtlstest.NewCA(t, "other.org")
	clientSrc := staticSource(t, ca.Issue(t, "spiffe://example.org/ns/a/sa/web"), ca.Bundle())
	want := spiffeid.RequireFromString("spiffe://example.org/ns/a/sa/api")
	tests := []struct {
		name   string
		server *x509svid.SVID
		bundle *x509bundle.Bundle
		reason Reason
	}{
		{"wrong ID", ca.Issue(t, "spiffe://example.org/ns/a/sa/db"), ca.Bundle(), ReasonUnauthorized},
		{"other trust domain", other.Issue(t, want.String()), other.Bundle(), ReasonUntrusted},
		{"CA leaf", ca.Issue(t, want.String(), mtlstest.AsCA()), ca.Bundle(), ReasonCALeaf},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, cerr, serr := handshake(t, ClientConfig(clientSrc, AuthorizeID(want), alpn, ""), ServerConfig(staticSource(t, tt.server, tt.bundle, ca.Bundle()), nil, alpn))
			var ve *VerifyError
			if !errors.As(cerr, &ve) || ve.Reason != tt.reason {
				t.Fatalf("client handshake error %v, want reason %s", cerr, tt.reason)
			}
			if serr == nil {
				t.Fatal("server handshake succeeded although the client refused it")
			}
		})
	}
}

// TestRotation: a StaticSource update applies to the next handshake while
// a connection made before it keeps carrying data.
func TestRotation(t *testing.T) {
	testutil.CheckGoroutines(t)
	ca := mtlstest.NewCA(t, "example.org")
	serverSrc := staticSource(t, ca.Issue(t, "spiffe://example.org/ns/a/sa/api"), ca.Bundle())
	clientSrc := staticSource(t, ca.Issue(t, "spiffe://example.org/ns/a/sa/web"), ca.Bundle())
	ln, err := tls.Listen("tcp", "127.0.0.1:0", ServerConfig(serverSrc, nil, alpn))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	serverDone := make(chan struct{})
	go func() { // echo server
		defer close(serverDone)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 64)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					if _, err := c.Write(buf[:n]); err != nil {
						return
					}
				}
			}()
		}
	}()
	defer func() { ln.Close(); <-serverDone }()

	dial := func() *tls.Conn {
		t.Helper()
		d := tls.Dialer{NetDialer: &net.Dialer{Timeout: handshakeTimeout}, Config: ClientConfig(clientSrc, nil, alpn, "")}
		ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
		defer cancel()
		c, err := d.DialContext(ctx, "tcp", ln.Addr().String())
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		return c.(*tls.Conn)
	}
	echo := func(c *tls.Conn, msg string) {
		t.Helper()
		c.SetDeadline(time.Now().Add(handshakeTimeout))
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatalf("write: %v", err)
		}
		buf := make([]byte, len(msg))
		if _, err := c.Read(buf); err != nil || string(buf) != msg {
			t.Fatalf("echo = %q, %v", buf, err)
		}
	}
	serial := func(c *tls.Conn) string { return c.ConnectionState().PeerCertificates[0].SerialNumber.String() }

	old := dial()
	defer old.Close()
	echo(old, "before")
	oldSerial := serial(old)
	v0, changed := serverSrc.Watch()

	newSVID := ca.Issue(t, "spiffe://example.org/ns/a/sa/api")
	if err := serverSrc.UpdateSVID(newSVID); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	case <-time.After(handshakeTimeout):
		t.Fatal("Watch channel not closed by the update")
	}
	if v1, _ := serverSrc.Watch(); v1 != v0+1 {
		t.Fatalf("version %d after one update from %d", v1, v0)
	}
	echo(old, "after") // the old connection still flows
	fresh := dial()
	defer fresh.Close()
	echo(fresh, "fresh")
	if got, want := serial(fresh), newSVID.Certificates[0].SerialNumber.String(); got != want || got == oldSerial {
		t.Fatalf("new handshake saw serial %s, want the rotated %s (old %s)", got, want, oldSerial)
	}
}

// TestBundleRotation: add a new root, reissue every SVID from it, remove
// the old root; no handshake fails at any step.
func TestBundleRotation(t *testing.T) {
	testutil.CheckGoroutines(t)
	oldCA := mtlstest.NewCA(t, "example.org")
	newCA := mtlstest.NewCA(t, "example.org")
	td := oldCA.TrustDomain
	serverID, clientID := "spiffe://example.org/ns/a/sa/api", "spiffe://example.org/ns/a/sa/web"
	serverSrc := staticSource(t, oldCA.Issue(t, serverID), oldCA.Bundle())
	clientSrc := staticSource(t, oldCA.Issue(t, clientID), oldCA.Bundle())
	both := x509bundle.FromX509Authorities(td, append(oldCA.Bundle().X509Authorities(), newCA.Cert))

	check := func(step string) {
		t.Helper()
		_, _, cerr, serr := handshake(t, ClientConfig(clientSrc, nil, alpn, ""), ServerConfig(serverSrc, nil, alpn))
		if cerr != nil || serr != nil {
			t.Fatalf("%s: handshake failed: client %v, server %v", step, cerr, serr)
		}
	}
	steps := []struct {
		name string
		do   func() error
	}{
		{"start", func() error { return nil }},
		{"server trusts both roots", func() error { return serverSrc.UpdateBundles(x509bundle.NewSet(both)) }},
		{"client trusts both roots", func() error { return clientSrc.UpdateBundles(x509bundle.NewSet(both)) }},
		{"server reissued", func() error { return serverSrc.UpdateSVID(newCA.Issue(t, serverID)) }},
		{"client reissued", func() error { return clientSrc.UpdateSVID(newCA.Issue(t, clientID)) }},
		{"server drops old root", func() error { return serverSrc.UpdateBundles(x509bundle.NewSet(newCA.Bundle())) }},
		{"client drops old root", func() error { return clientSrc.UpdateBundles(x509bundle.NewSet(newCA.Bundle())) }},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		check(s.name)
	}
	// The old root is gone: an SVID it signs is now refused.
	stale := staticSource(t, oldCA.Issue(t, clientID), newCA.Bundle())
	_, _, _, serr := handshake(t, ClientConfig(stale, nil, alpn, ""), ServerConfig(serverSrc, nil, alpn))
	var ve *VerifyError
	if !errors.As(serr, &ve) || ve.Reason != ReasonUntrusted {
		t.Fatalf("SVID from the removed root: server error %v, want %s", serr, ReasonUntrusted)
	}
}

func TestStaticSourceUpdateErrors(t *testing.T) {
	ca := mtlstest.NewCA(t, "example.org")
	s := NewStaticSource()
	if _, err := s.GetX509SVID(); !errors.Is(err, ErrNoSVID) {
		t.Fatalf("GetX509SVID before update: %v, want ErrNoSVID", err)
	}
	good := ca.Issue(t, "spiffe://example.org/w")
	noKey := *good
	noKey.PrivateKey = nil
	tests := []struct {
		name    string
		svid    *x509svid.SVID
		bundles *x509bundle.Set
		want    string
	}{
		{"nil SVID", nil, x509bundle.NewSet(), "SVID is nil"},
		{"no key", &noKey, x509bundle.NewSet(), "no private key"},
		{"no certificates", &x509svid.SVID{ID: good.ID, PrivateKey: good.PrivateKey}, x509bundle.NewSet(), "no certificates"},
		{"trust domain ID", ca.Issue(t, "spiffe://example.org"), x509bundle.NewSet(), "non-empty path"},
		{"nil bundles", good, nil, "bundle set is nil"},
	}
	for _, tt := range tests {
		if err := s.Update(tt.svid, tt.bundles); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: Update error %v, want %q", tt.name, err, tt.want)
		}
	}
	if v, _ := s.Watch(); v != 0 {
		t.Fatalf("refused updates were published: version %d", v)
	}
	if _, err := s.GetX509BundleForTrustDomain(ca.TrustDomain); err == nil || !strings.Contains(err.Error(), "example.org") {
		t.Fatalf("bundle lookup on empty source: %v", err)
	}
}

func BenchmarkHandshake(b *testing.B) {
	ca := mtlstest.NewCA(b, "example.org")
	serverCfg := ServerConfig(staticSource(b, ca.Issue(b, "spiffe://example.org/ns/a/sa/api"), ca.Bundle()), nil, alpn)
	serverCfg.SessionTicketsDisabled = true
	clientCfg := ClientConfig(staticSource(b, ca.Issue(b, "spiffe://example.org/ns/a/sa/web"), ca.Bundle()), nil, alpn, "")
	b.ReportAllocs()
	for b.Loop() {
		if _, _, cerr, serr := handshake(b, clientCfg, serverCfg); cerr != nil || serr != nil {
			b.Fatalf("handshake: %v / %v", cerr, serr)
		}
	}
}
