package source

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"meshd.dev/meshd/examples"
	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/xds/model"
	"meshd.dev/meshd/xds/translate"
)

// testTimeout bounds every wait of these tests.
const testTimeout = 5 * time.Second

// fakeSink records what the watcher hands it.
type fakeSink struct {
	mu        sync.Mutex
	versions  []string
	errs      []error
	published chan string
	failed    chan error
	reject    error // returned by Publish when set
}

func newFakeSink() *fakeSink {
	return &fakeSink{published: make(chan string, 16), failed: make(chan error, 16)}
}

func (f *fakeSink) Publish(res *translate.Result, _ []model.Warning) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.reject != nil {
		return f.reject
	}
	f.versions = append(f.versions, res.Version)
	f.published <- res.Version
	return nil
}

func (f *fakeSink) RecordError(err error) {
	f.mu.Lock()
	f.errs = append(f.errs, err)
	f.mu.Unlock()
	f.failed <- err
}

// replaceFile writes data to path the way editors that save atomically do:
// a new file renamed over the old one.
func replaceFile(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".swp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestFileWatcher(t *testing.T) {
	testutil.CheckGoroutines(t)
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	if err := os.WriteFile(path, examples.Mesh, 0o600); err != nil {
		t.Fatal(err)
	}
	sink := newFakeSink()
	w := NewFileWatcher(path, sink, FileOptions{PollInterval: 20 * time.Millisecond})
	if err := w.Load(); err != nil {
		t.Fatalf("Load of the example mesh: %v", err)
	}
	first := <-sink.published

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Run(ctx)
	}()
	defer func() {
		cancel()
		<-done
	}()

	expectPublish := func(what string) string {
		t.Helper()
		select {
		case v := <-sink.published:
			return v
		case err := <-sink.failed:
			t.Fatalf("%s: error instead of a publish: %v", what, err)
		case <-time.After(testTimeout):
			t.Fatalf("%s: not published within %v", what, testTimeout)
		}
		return ""
	}
	expectQuiet := func(what string) {
		t.Helper()
		select {
		case v := <-sink.published:
			t.Fatalf("%s: published %q", what, v)
		case err := <-sink.failed:
			t.Fatalf("%s: error %v", what, err)
		case <-time.After(200 * time.Millisecond):
		}
	}

	// Same content written again: nothing to publish.
	replaceFile(t, path, examples.Mesh)
	expectQuiet("identical rewrite")

	// A real change, saved by rename: published with a new version.
	changed := bytes.Replace(examples.Mesh, []byte("interval: 30s"), []byte("interval: 45s"), 1)
	if bytes.Equal(changed, examples.Mesh) {
		t.Fatal("the example mesh has no keepalive interval of 30s to change")
	}
	replaceFile(t, path, changed)
	second := expectPublish("keepalive change")
	if second == first {
		t.Errorf("version %q unchanged after a change", second)
	}

	// A bad edit in place: recorded with file, document and field; nothing
	// published.
	bad := bytes.Replace(changed, []byte("trustDomain:"), []byte("trustDomian:"), 1)
	if err := os.WriteFile(path, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-sink.failed:
		for _, want := range []string{path, "document 1", "trustDomian"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not name %q", err, want)
			}
		}
	case v := <-sink.published:
		t.Fatalf("bad edit published %q (first %q, second %q)", v, first, second)
	case <-time.After(testTimeout):
		t.Fatalf("bad edit not reported within %v", testTimeout)
	}
	expectQuiet("bad edit, no further change")

	// Removed, then restored: one error, then the content is published.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-sink.failed:
		if !errors.Is(err, os.ErrNotExist) {
			t.Errorf("missing file error = %v, want ErrNotExist", err)
		}
	case <-time.After(testTimeout):
		t.Fatalf("missing file not reported within %v", testTimeout)
	}
	replaceFile(t, path, examples.Mesh)
	if v := expectPublish("restored file"); v != first {
		t.Errorf("restored file version %q, want the first version %q (translation is deterministic)", v, first)
	}
}

// TestFileWatcherLoadErrors: the first load fails on a missing, invalid or
// unpublishable file, and the sink learns why.
func TestFileWatcherLoadErrors(t *testing.T) {
	dir := t.TempDir()
	valid := filepath.Join(dir, "valid.yaml")
	invalid := filepath.Join(dir, "invalid.yaml")
	if err := os.WriteFile(valid, examples.Mesh, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(invalid, []byte("apiVersion: meshd.dev/v1alpha1\nkind: Nope\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		path   string
		reject error
		want   string
	}{
		{"missing", filepath.Join(dir, "absent.yaml"), nil, "no such file"},
		{"directory", dir, nil, "is a directory"},
		{"invalid", invalid, nil, "Nope"},
		{"sink refuses", valid, errors.New("publish: inconsistent"), "publish: inconsistent"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sink := newFakeSink()
			sink.reject = tc.reject
			err := NewFileWatcher(tc.path, sink, FileOptions{}).Load()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Load: %v, want an error containing %q", err, tc.want)
			}
			if tc.reject == nil && len(sink.errs) != 1 {
				t.Errorf("sink got %d errors, want 1", len(sink.errs))
			}
		})
	}
}

// TestFileWatcherAdjust checks that FileOptions.Adjust sees every parsed
// mesh before translation (its change reaches the published version) and
// that its error rejects the file like a parse error.
func TestFileWatcherAdjust(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	if err := os.WriteFile(path, examples.Mesh, 0o600); err != nil {
		t.Fatal(err)
	}
	plain := newFakeSink()
	if err := NewFileWatcher(path, plain, FileOptions{}).Load(); err != nil {
		t.Fatalf("Load without Adjust: %v", err)
	}
	plainVersion := <-plain.published

	tests := []struct {
		name    string
		adjust  func(*model.Mesh) error
		wantErr string
	}{
		{
			name: "moves a port",
			adjust: func(m *model.Mesh) error {
				for _, w := range m.Workloads {
					if w.Spec.Inbound != nil {
						w.Spec.Inbound.Port = 1
					}
				}
				return nil
			},
		},
		{
			name:    "rejects",
			adjust:  func(*model.Mesh) error { return errors.New("no free port") },
			wantErr: "no free port",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sink := newFakeSink()
			err := NewFileWatcher(path, sink, FileOptions{Adjust: tc.adjust}).Load()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), path) {
					t.Fatalf("Load = %v, want an error naming %s and %q", err, path, tc.wantErr)
				}
				if len(sink.versions) != 0 {
					t.Fatalf("published %v after a rejected Adjust", sink.versions)
				}
				return
			}
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if got := <-sink.published; got == plainVersion {
				t.Fatalf("version %s equals the unadjusted one: Adjust did not reach the translation", got)
			}
		})
	}
}
