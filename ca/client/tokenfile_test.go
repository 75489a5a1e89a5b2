package client

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"meshd.dev/meshd/ca"
	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/mtls"
	"meshd.dev/meshd/proxy/stats"
)

// writeToken replaces path's content the way kubelet does: a new file
// renamed over the old one.
func writeToken(t *testing.T, path, tok string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestTokenFileRotatedMidRun runs the CA client with its token read from a
// file, and rewrites the file while it runs: first a token the CA refuses
// (the client retries), then a good one (the next attempt, a reconnect,
// reads it and gets an SVID), then the token of another workload (the
// next renewal carries that identity). A token read once at start would
// never get past the first step.
func TestTokenFileRotatedMidRun(t *testing.T) {
	testutil.CheckGoroutines(t)
	_, cc := startCA(t, ca.Options{})
	path := filepath.Join(t.TempDir(), "token")
	writeToken(t, path, "not-a-token-the-ca-knows")
	tf, err := NewTokenFile(path, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	sink := mtls.NewStaticSource()
	st := stats.NewStore()
	c, err := New(Options{Conn: cc, TokenSource: tf.Token, Sink: sink, TTL: 2 * time.Second, Stats: st,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run = %v", err)
		}
	}()
	waitID := func(want string) {
		t.Helper()
		deadline := time.Now().Add(testTimeout)
		for {
			if cur := c.Current(); cur != nil && cur.ID.String() == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("no SVID for %s within %v (current %v, failures %d)", want, testTimeout, c.Current(), st.Root().Scope("ca_client").Counter("failures").Value())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	deadline := time.Now().Add(testTimeout)
	for st.Root().Scope("ca_client").Counter("failures").Value() < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the refused token caused no failed attempts")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if c.Current() != nil {
		t.Fatal("an SVID was issued for a refused token")
	}
	writeToken(t, path, ca.BootstrapToken(secret, "greeter-client.demo"))
	waitID("spiffe://example.org/ns/demo/sa/greeter-client")
	writeToken(t, path, ca.BootstrapToken(secret, "greeter-server.demo"))
	waitID("spiffe://example.org/ns/demo/sa/greeter-server")
}

// jwt returns an unsigned JWT-shaped token with the exp claim.
func jwt(exp time.Time, id string) string {
	enc := base64.RawURLEncoding
	return enc.EncodeToString([]byte(`{"alg":"none"}`)) + "." +
		enc.EncodeToString(fmt.Appendf(nil, `{"exp":%d,"jti":%q}`, exp.Unix(), id)) + ".sig"
}

func TestTokenFile(t *testing.T) {
	testutil.CheckGoroutines(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "token")
	if _, err := NewTokenFile(path, 0, nil); err == nil || !strings.Contains(err.Error(), "token file") {
		t.Fatalf("missing file: err = %v", err)
	}
	writeToken(t, path, "  ")
	if _, err := NewTokenFile(path, 0, nil); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Fatalf("empty file: err = %v", err)
	}

	exp := time.Now().Add(time.Hour).Truncate(time.Second)
	first := jwt(exp, "a")
	writeToken(t, path, first)
	tf, err := NewTokenFile(path, 20*time.Millisecond, nil)
	if err != nil {
		t.Fatal(err)
	}
	if tok, e := tf.Current(); tok != first || !e.Equal(exp) {
		t.Fatalf("Current = %q, %v; want the token and its exp %v", tok, e, exp)
	}
	if got := tokenExpiry("not.a-jwt"); !got.IsZero() {
		t.Errorf("tokenExpiry of a non-JWT = %v", got)
	}

	// Run re-reads on its timer: a rotation shows in Current without a
	// call to Token.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tf.Run(ctx) }()
	second := jwt(exp.Add(time.Hour), "b")
	writeToken(t, path, second)
	deadline := time.Now().Add(testTimeout)
	for {
		if tok, _ := tf.Current(); tok == second {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Run did not re-read the rotated file")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v", err)
	}

	// A vanished file falls back to the last token while it is valid,
	// and fails once it has expired.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if tok, err := tf.Token(); err != nil || tok != second {
		t.Fatalf("unreadable file, valid token: %q, %v", tok, err)
	}
	tf.now = func() time.Time { return exp.Add(3 * time.Hour) }
	if _, err := tf.Token(); err == nil {
		t.Fatal("unreadable file, expired token: no error")
	}
}
