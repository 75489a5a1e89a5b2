package server

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestModuleServe(t *testing.T) {
	data := append([]byte("\x00asm\x01\x00\x00\x00"), []byte("body")...)
	sum := sha256.Sum256(data)
	m := NewModule("ratelimit", data)
	if m.SHA256 != hex.EncodeToString(sum[:]) || m.Path != "/wasm/ratelimit-"+m.SHA256+".wasm" {
		t.Fatalf("module = %s at %s", m.SHA256, m.Path)
	}
	tests := []struct {
		method, path string
		status       int
		body         string
	}{
		{http.MethodGet, m.Path, http.StatusOK, string(data)},
		{http.MethodHead, m.Path, http.StatusOK, ""},
		{http.MethodGet, "/wasm/ratelimit-" + strings.Repeat("0", 64) + ".wasm", http.StatusNotFound, "404 page not found\n"},
	}
	for _, tt := range tests {
		rec := httptest.NewRecorder()
		m.ServeHTTP(rec, httptest.NewRequest(tt.method, tt.path, nil))
		body, _ := io.ReadAll(rec.Body)
		if rec.Code != tt.status || string(body) != tt.body {
			t.Errorf("%s %s = %d %q, want %d %q", tt.method, tt.path, rec.Code, body, tt.status, tt.body)
		}
		if tt.status == http.StatusOK && (rec.Header().Get("Content-Type") != "application/wasm" || rec.Header().Get("ETag") != `"`+m.SHA256+`"`) {
			t.Errorf("%s %s: headers %v", tt.method, tt.path, rec.Header())
		}
	}
}

func TestModuleRef(t *testing.T) {
	m := NewModule("ratelimit", []byte("\x00asm\x01\x00\x00\x00"))
	tests := []struct{ addr, want string }{
		{"127.0.0.1:15014", "http://127.0.0.1:15014" + m.Path},
		{"0.0.0.0:15014", "http://127.0.0.1:15014" + m.Path},
		{"[::]:15014", "http://[::1]:15014" + m.Path},
		{"cp.mesh.svc:15014", "http://cp.mesh.svc:15014" + m.Path},
	}
	for _, tt := range tests {
		ref, err := m.Ref(tt.addr)
		if err != nil || ref.URL != tt.want || ref.SHA256 != m.SHA256 {
			t.Errorf("Ref(%q) = %+v, %v; want URL %s", tt.addr, ref, err, tt.want)
		}
	}
	if _, err := m.Ref("no-port"); err == nil || !strings.Contains(err.Error(), `admin address "no-port"`) {
		t.Errorf("Ref(no-port) error = %v", err)
	}
}

func TestReadModule(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.wasm")
	bad := filepath.Join(dir, "bad.wasm")
	if err := os.WriteFile(good, []byte("\x00asm\x01\x00\x00\x00rest"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, []byte("#!/bin/sh\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if m, err := ReadModule("ratelimit", good); err != nil || len(m.Data()) != 12 {
		t.Errorf("ReadModule(good) = %v, %v", m, err)
	}
	for path, want := range map[string]string{
		bad:                             "not a WebAssembly binary module",
		filepath.Join(dir, "none.wasm"): "no such file",
	} {
		if _, err := ReadModule("ratelimit", path); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ReadModule(%s) error = %v, want %q", filepath.Base(path), err, want)
		}
	}
}
