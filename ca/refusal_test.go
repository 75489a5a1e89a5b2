package ca

import (
	"context"
	"crypto/x509"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	cav1 "meshd.dev/meshd/ca/proto/meshd/ca/v1"
	"meshd.dev/meshd/internal/testutil"
)

// refuseAll is an Authenticator that knows no token.
type refuseAll struct{}

func (refuseAll) Authenticate(context.Context, string) (spiffeid.ID, error) {
	return spiffeid.ID{}, ErrUnauthenticated
}

// TestRefusalLoggedOncePerCaller: a caller retrying a refused CSR is
// logged at Warn once per refusalLogEvery (naming its IP and the identity
// its CSR claims), its retries at Debug; another caller, another claimed
// identity or another reason gets its own Warn; every refusal is counted.
func TestRefusalLoggedOncePerCaller(t *testing.T) {
	logs := &testutil.SyncBuffer{}
	s := NewService(nil, refuseAll{}, ServiceOptions{Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	s.refusals = newRefusalLog(func() time.Time { return now })
	csr := func(id string) []byte {
		u, err := url.Parse(id)
		if err != nil {
			t.Fatal(err)
		}
		return csrFor(t, newKey(t), &x509.CertificateRequest{URIs: []*url.URL{u}})
	}
	ghost, other := csr("spiffe://mesh.test/ns/demo/sa/ghost"), csr("spiffe://mesh.test/ns/demo/sa/other")
	call := func(ip string, csrDER []byte, auth string) {
		ctx := peer.NewContext(context.Background(), &peer.Peer{Addr: &net.TCPAddr{IP: net.ParseIP(ip), Port: 40000}})
		if auth != "" {
			ctx = metadata.NewIncomingContext(ctx, metadata.Pairs(AuthorizationMetadata, auth))
		}
		if _, err := s.Sign(ctx, &cav1.SignRequest{CsrDer: csrDER}); err == nil {
			t.Fatal("Sign succeeded for a refused caller")
		}
	}
	steps := []struct {
		name      string
		ip        string
		csr       []byte
		auth      string
		advance   time.Duration
		wantWarns int // total Warn lines so far
	}{
		{"first refusal", "10.0.0.1", ghost, "Bearer t", 0, 1},
		{"retry", "10.0.0.1", ghost, "Bearer t", 30 * time.Second, 1},
		{"retry again", "10.0.0.1", ghost, "Bearer t", 30 * time.Second, 1},
		{"another caller", "10.0.0.2", ghost, "Bearer t", 0, 2},
		{"another claimed identity", "10.0.0.1", other, "Bearer t", 0, 3},
		{"another reason", "10.0.0.1", ghost, "", 0, 4},
		{"the same refusal after refusalLogEvery", "10.0.0.1", ghost, "Bearer t", refusalLogEvery, 5},
	}
	for i, st := range steps {
		now = now.Add(st.advance)
		call(st.ip, st.csr, st.auth)
		if got := strings.Count(logs.String(), "level=WARN"); got != st.wantWarns {
			t.Fatalf("step %q: %d Warn lines, want %d:\n%s", st.name, got, st.wantWarns, logs)
		}
		if got := strings.Count(logs.String(), "CA: refused a CSR"); got != i+1 {
			t.Fatalf("step %q: %d refusal lines at any level, want %d", st.name, got, i+1)
		}
	}
	if got := s.denied.Value(); got != uint64(len(steps)) {
		t.Errorf("control_plane.ca.unauthenticated = %d, want %d", got, len(steps))
	}
	first := strings.SplitN(logs.String(), "\n", 2)[0]
	for _, want := range []string{"peer=10.0.0.1", "claimed_spiffe_id=spiffe://mesh.test/ns/demo/sa/ghost", "reason=unauthenticated"} {
		if !strings.Contains(first, want) {
			t.Errorf("first refusal line lacks %q: %s", want, first)
		}
	}
}

// TestRefusalLogBounded: past maxRefusalKeys remembered refusals a new one
// is still logged at Warn, and stale entries make room.
func TestRefusalLogBounded(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	r := newRefusalLog(func() time.Time { return now })
	for i := range maxRefusalKeys {
		if !r.first(refusalKey{reason: "fill", claimed: strconv.Itoa(i)}) {
			t.Fatalf("refusal %d: not logged the first time", i)
		}
	}
	k := refusalKey{reason: "new"}
	for i := range 2 {
		if !r.first(k) {
			t.Fatalf("call %d: a refusal past the bound is not logged every time (it cannot be remembered)", i)
		}
	}
	if len(r.last) != maxRefusalKeys {
		t.Fatalf("%d refusals remembered, want the bound %d", len(r.last), maxRefusalKeys)
	}
	now = now.Add(refusalLogEvery)
	if !r.first(k) {
		t.Fatal("a new refusal is not logged once stale entries are dropped")
	}
	if r.first(k) {
		t.Fatal("once stale entries are dropped, a new refusal is not remembered: its repeat is logged at Warn")
	}
}
