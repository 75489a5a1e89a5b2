package mtls

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/mtls/mtlstest"
)

// Timing of the FileSource tests.
const (
	filePoll        = 10 * time.Millisecond
	fileWaitTimeout = 5 * time.Second
	// fileQuiet is how long a test watches for a reload that must not
	// happen: many poll intervals.
	fileQuiet = 30 * filePoll
	// mtimeGranularity is more than the coarsest file-timestamp tick
	// (jiffies at HZ=100).
	mtimeGranularity = 20 * time.Millisecond
)

// logBuffer is an io.Writer safe for the poll goroutine and the test.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startFileSource writes svid and ca's bundle into a fresh directory and
// starts a FileSource on them polling every filePoll; it is closed at
// cleanup.
func startFileSource(t *testing.T, ca *mtlstest.CA, svid *x509svid.SVID) (*FileSource, FileSourceConfig, *logBuffer) {
	t.Helper()
	cert, key, bundle := mtlstest.WriteFiles(t, t.TempDir(), svid, ca.Bundle())
	logs := &logBuffer{}
	cfg := FileSourceConfig{
		CertChainFile: cert, KeyFile: key, BundleFile: bundle,
		PollInterval: filePoll,
		Logger:       slog.New(slog.NewTextHandler(logs, nil)),
	}
	src, err := NewFileSource(cfg)
	if err != nil {
		t.Fatalf("NewFileSource: %v", err)
	}
	t.Cleanup(func() { _ = src.Close() })
	return src, cfg, logs
}

// waitVersion waits until src has published version want and returns its
// SVID then.
func waitVersion(t *testing.T, src *FileSource, want uint64) *x509svid.SVID {
	t.Helper()
	deadline := time.After(fileWaitTimeout)
	for {
		v, changed := src.Watch()
		if v == want {
			svid, err := src.GetX509SVID()
			if err != nil {
				t.Fatalf("GetX509SVID at version %d: %v", v, err)
			}
			return svid
		}
		if v > want {
			t.Fatalf("source at version %d, want %d: a change was published more than once", v, want)
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("source still at version %d after %v, want %d", v, fileWaitTimeout, want)
		}
	}
}

// assertNoReload fails if src publishes anything within fileQuiet.
func assertNoReload(t *testing.T, src *FileSource) {
	t.Helper()
	v, changed := src.Watch()
	select {
	case <-changed:
		now, _ := src.Watch()
		t.Fatalf("source reloaded (version %d -> %d) when it must keep the last good SVID", v, now)
	case <-time.After(fileQuiet):
	}
}

func sameLeaf(a, b *x509svid.SVID) bool {
	return a.Certificates[0].Equal(b.Certificates[0])
}

// TestFileSourceRotation: every rewrite of the files is published exactly
// once (the Watch version counts loads), the new SVID and bundle are what
// the getters return afterwards, and unchanged files are not reloaded.
func TestFileSourceRotation(t *testing.T) {
	testutil.CheckGoroutines(t)
	ca := mtlstest.NewCA(t, "example.org")
	first := ca.Issue(t, "spiffe://example.org/ns/demo/sa/a")
	src, cfg, logs := startFileSource(t, ca, first)
	if got := waitVersion(t, src, 1); !sameLeaf(got, first) {
		t.Fatalf("first load serves %v, want the written SVID", got.ID)
	}
	dir := filepath.Dir(cfg.CertChainFile)
	const rotations = 3
	for i := range rotations {
		next := ca.Issue(t, "spiffe://example.org/ns/demo/sa/a")
		time.Sleep(mtimeGranularity)
		mtlstest.WriteFiles(t, dir, next, ca.Bundle())
		got := waitVersion(t, src, uint64(2+i))
		if !sameLeaf(got, next) {
			t.Fatalf("rotation %d: serving serial %v, want %v", i+1, got.Certificates[0].SerialNumber, next.Certificates[0].SerialNumber)
		}
	}
	// Rewriting identical contents moves the mtime but not the hash.
	time.Sleep(mtimeGranularity)
	now, _ := src.GetX509SVID()
	mtlstest.WriteFiles(t, dir, now, ca.Bundle())
	assertNoReload(t, src)

	// A new root in the bundle alone is a rotation too (bundle rotation).
	root2 := mtlstest.NewCA(t, "example.org")
	both := ca.Bundle()
	for _, c := range root2.Bundle().X509Authorities() {
		both.AddX509Authority(c)
	}
	time.Sleep(mtimeGranularity)
	mtlstest.WriteFileAtomic(t, cfg.BundleFile, mustMarshalBundle(t, both))
	waitVersion(t, src, rotations+2)
	b, err := src.GetX509BundleForTrustDomain(first.ID.TrustDomain())
	if err != nil {
		t.Fatal(err)
	}
	if got := len(b.X509Authorities()); got != 2 {
		t.Fatalf("bundle has %d roots after adding one, want 2", got)
	}
	// The log line follows the publish; wait for it.
	deadline := time.Now().Add(fileWaitTimeout)
	for strings.Count(logs.String(), "SVID reloaded from files") < rotations+1 && time.Now().Before(deadline) {
		time.Sleep(filePoll)
	}
	if n := strings.Count(logs.String(), "SVID reloaded from files"); n != rotations+1 {
		t.Errorf("%d reload log lines, want %d:\n%s", n, rotations+1, logs)
	}
}

func mustMarshalBundle(t *testing.T, b interface{ Marshal() ([]byte, error) }) []byte {
	t.Helper()
	pem, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return pem
}

// TestFileSourceKeepsLastGood: files that are unreadable, unparsable,
// mismatched, or that do not verify against the bundle are logged with the
// reason and not published; the last good SVID keeps serving, and the
// next good set of files is loaded.
func TestFileSourceKeepsLastGood(t *testing.T) {
	testutil.CheckGoroutines(t)
	ca := mtlstest.NewCA(t, "example.org")
	other := mtlstest.NewCA(t, "example.org")
	good := ca.Issue(t, "spiffe://example.org/ns/demo/sa/a")

	tests := []struct {
		name       string
		breakFiles func(t *testing.T, cfg FileSourceConfig)
		wantLog    string
	}{
		{"garbage chain", func(t *testing.T, cfg FileSourceConfig) {
			mtlstest.WriteFileAtomic(t, cfg.CertChainFile, []byte("not a certificate"))
		}, "rejected"},
		{"key of another certificate", func(t *testing.T, cfg FileSourceConfig) {
			_, key := mustMarshalSVID(t, other.Issue(t, "spiffe://example.org/ns/demo/sa/a"))
			mtlstest.WriteFileAtomic(t, cfg.KeyFile, key)
		}, "rejected"},
		{"chain not from the bundle", func(t *testing.T, cfg FileSourceConfig) {
			svid := other.Issue(t, "spiffe://example.org/ns/demo/sa/a")
			cert, key := mustMarshalSVID(t, svid)
			mtlstest.WriteFileAtomic(t, cfg.KeyFile, key)
			mtlstest.WriteFileAtomic(t, cfg.CertChainFile, cert)
		}, "does not verify"},
		{"bundle removed", func(t *testing.T, cfg FileSourceConfig) {
			if err := os.Remove(cfg.BundleFile); err != nil {
				t.Fatal(err)
			}
		}, "unreadable"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src, cfg, logs := startFileSource(t, ca, good)
			waitVersion(t, src, 1)
			// FileSource notices changes by mtime and size; a same-size
			// rewrite within the file system's timestamp granularity
			// (a kernel tick) of the first write would go unseen.
			time.Sleep(mtimeGranularity)
			tc.breakFiles(t, cfg)
			deadline := time.Now().Add(fileWaitTimeout)
			for !strings.Contains(logs.String(), tc.wantLog) && time.Now().Before(deadline) {
				time.Sleep(filePoll)
			}
			if !strings.Contains(logs.String(), tc.wantLog) || !strings.Contains(logs.String(), "keeping the last good SVID") {
				t.Fatalf("no log line with %q and \"keeping the last good SVID\":\n%s", tc.wantLog, logs)
			}
			assertNoReload(t, src)
			if got, err := src.GetX509SVID(); err != nil || !sameLeaf(got, good) {
				t.Fatalf("after bad files: GetX509SVID = %v, %v; want the last good SVID", got, err)
			}
			// Repair: a fresh good SVID with the original bundle is loaded.
			fixed := ca.Issue(t, "spiffe://example.org/ns/demo/sa/a")
			mtlstest.WriteFiles(t, filepath.Dir(cfg.CertChainFile), fixed, ca.Bundle())
			if got := waitVersion(t, src, 2); !sameLeaf(got, fixed) {
				t.Fatalf("repaired files not loaded: serving serial %v", got.Certificates[0].SerialNumber)
			}
		})
	}
}

func mustMarshalSVID(t *testing.T, svid *x509svid.SVID) (cert, key []byte) {
	t.Helper()
	cert, key, err := svid.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// TestNewFileSourceErrors: a missing field or a bad first load fails
// NewFileSource with an error naming the field or file.
func TestNewFileSourceErrors(t *testing.T) {
	testutil.CheckGoroutines(t)
	ca := mtlstest.NewCA(t, "example.org")
	other := mtlstest.NewCA(t, "example.org")
	dir := t.TempDir()
	cert, key, bundle := mtlstest.WriteFiles(t, dir, ca.Issue(t, "spiffe://example.org/ns/demo/sa/a"), ca.Bundle())
	otherBundle := filepath.Join(dir, "other-bundle.pem")
	mtlstest.WriteFileAtomic(t, otherBundle, other.BundlePEM())
	tests := []struct {
		name string
		cfg  FileSourceConfig
		want string
	}{
		{"no chain", FileSourceConfig{KeyFile: key, BundleFile: bundle}, "cert chain file is required"},
		{"no key", FileSourceConfig{CertChainFile: cert, BundleFile: bundle}, "key file is required"},
		{"no bundle", FileSourceConfig{CertChainFile: cert, KeyFile: key}, "bundle file is required"},
		{"negative poll", FileSourceConfig{CertChainFile: cert, KeyFile: key, BundleFile: bundle, PollInterval: -time.Second}, "negative"},
		{"absent chain", FileSourceConfig{CertChainFile: filepath.Join(dir, "absent.pem"), KeyFile: key, BundleFile: bundle}, "absent.pem"},
		{"wrong bundle", FileSourceConfig{CertChainFile: cert, KeyFile: key, BundleFile: otherBundle}, "does not verify against " + otherBundle},
		{"bad federated name", FileSourceConfig{CertChainFile: cert, KeyFile: key, BundleFile: bundle,
			FederatedBundleFiles: map[string]string{"Bad Domain": otherBundle}}, "federated bundle trust domain"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src, err := NewFileSource(tc.cfg)
			if err == nil {
				_ = src.Close()
				t.Fatalf("NewFileSource succeeded, want an error mentioning %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}
