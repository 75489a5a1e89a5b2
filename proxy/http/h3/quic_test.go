package h3

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRetryDecider(t *testing.T) {
	for _, tc := range []struct {
		name      string
		policy    RetryPolicy
		threshold int
		attempts  int
		want      int // how many of the attempts get a Retry
	}{
		{"always", RetryAlways, 0, 5, 5},
		{"never", RetryNever, 0, 5, 0},
		{"under load below threshold", RetryUnderLoad, 10, 10, 0},
		{"under load above threshold", RetryUnderLoad, 10, 25, 15},
		{"default threshold", RetryUnderLoad, 0, DefaultRetryThreshold + 3, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			decide := NewRetryDecider(tc.policy, tc.threshold)
			got := 0
			for range tc.attempts {
				if decide() {
					got++
				}
			}
			// The attempts run well within one second's window.
			if got != tc.want {
				t.Errorf("%d of %d attempts asked for Retry, want %d", got, tc.attempts, tc.want)
			}
		})
	}
}

func TestStatelessResetKeyFromFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	a := write("a", bytes.Repeat([]byte{1}, 32))
	b := write("b", bytes.Repeat([]byte{2}, 32))
	k1, err := StatelessResetKeyFromFile(a)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := StatelessResetKeyFromFile(a)
	if err != nil {
		t.Fatal(err)
	}
	k3, err := StatelessResetKeyFromFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if *k1 != *k2 {
		t.Error("the same secret gave two keys; a restart would invalidate reset tokens")
	}
	if *k1 == *k3 {
		t.Error("different secrets gave the same key")
	}
	if bytes.Equal(k1[:], bytes.Repeat([]byte{1}, 32)) {
		t.Error("the key is the raw secret, not derived from it")
	}
	for _, tc := range []struct{ name, path, want string }{
		{"short", write("short", []byte("tiny")), "need at least 32"},
		{"missing", filepath.Join(dir, "none"), "no such file"},
	} {
		if _, err := StatelessResetKeyFromFile(tc.path); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.want)
		}
	}
}
