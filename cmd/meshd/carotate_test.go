//go:build !meshd_sidecar

package main

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"meshd.dev/meshd/ca"
)

// TestCARotateSteps: trust, issue and retire run in order only, each
// answering the bundle and the issuing root; issue persists the new root to
// the CA directory; out-of-order steps are 409, unknown ones 400, GET 405.
func TestCARotateSteps(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("mesh.test")
	dir := t.TempDir()
	first, err := ca.LoadOrGenerate(dir, td)
	if err != nil {
		t.Fatal(err)
	}
	authority, err := ca.New(td, ca.Options{}, first)
	if err != nil {
		t.Fatal(err)
	}
	h := &caRotation{ca: authority, dir: dir, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	post := func(method, step string) (int, rotationState, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(method, CARotatePath+"?step="+step, nil))
		var st rotationState
		body := rec.Body.String()
		if rec.Code == http.StatusOK {
			if err := json.Unmarshal([]byte(body), &st); err != nil {
				t.Fatalf("step %s: %v: %s", step, err, body)
			}
		}
		return rec.Code, st, body
	}
	old := rootName(first.Root)
	tests := []struct {
		method, step string
		code         int
		roots        int
		issuingOld   bool
	}{
		{http.MethodGet, "trust", http.StatusMethodNotAllowed, 0, false},
		{http.MethodPost, "sideways", http.StatusBadRequest, 0, false},
		{http.MethodPost, "issue", http.StatusConflict, 0, false},
		{http.MethodPost, "retire", http.StatusConflict, 0, false},
		{http.MethodPost, "trust", http.StatusOK, 2, true},
		{http.MethodPost, "trust", http.StatusConflict, 0, false},
		{http.MethodPost, "retire", http.StatusConflict, 0, false},
		{http.MethodPost, "issue", http.StatusOK, 2, false},
		{http.MethodPost, "issue", http.StatusConflict, 0, false},
		{http.MethodPost, "retire", http.StatusOK, 1, false},
		{http.MethodPost, "retire", http.StatusConflict, 0, false},
	}
	for i, tc := range tests {
		code, st, body := post(tc.method, tc.step)
		if code != tc.code {
			t.Fatalf("#%d %s %s: %d, want %d: %s", i, tc.method, tc.step, code, tc.code, body)
		}
		if code != http.StatusOK {
			continue
		}
		if len(st.Roots) != tc.roots {
			t.Fatalf("#%d %s: %d roots %v, want %d", i, tc.step, len(st.Roots), st.Roots, tc.roots)
		}
		if (st.Issuing == old) != tc.issuingOld {
			t.Fatalf("#%d %s: issuing %q (old root %q), want old=%v", i, tc.step, st.Issuing, old, tc.issuingOld)
		}
	}
	if b := authority.Bundle(); len(b) != 1 || b[0].Equal(first.Root) {
		t.Fatal("after retire the bundle still holds the old root or not exactly one")
	}
	saved, err := ca.LoadOrGenerate(dir, td)
	if err != nil {
		t.Fatal(err)
	}
	if !saved.Root.Equal(authority.Bundle()[0]) {
		t.Error("the CA directory does not hold the new root after the rotation")
	}
	// A new rotation can start after a completed one.
	if code, _, body := post(http.MethodPost, "trust"); code != http.StatusOK || strings.Contains(body, "in progress") {
		t.Errorf("second rotation's trust: %d %s", code, body)
	}
}
