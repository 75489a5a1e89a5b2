package mtls

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// DefaultPollInterval is how often a [FileSource] checks its files when
// FileSourceConfig.PollInterval is zero.
const DefaultPollInterval = time.Second

// FileSourceConfig names the files of a [FileSource].
type FileSourceConfig struct {
	// CertChainFile is the PEM certificate chain, leaf first. Required.
	CertChainFile string
	// KeyFile is the PEM private key (PKCS#8) of the leaf. Required.
	KeyFile string
	// BundleFile is the PEM trust bundle of the SVID's own trust domain.
	// Required.
	BundleFile string
	// FederatedBundleFiles maps other trust domains' names to their PEM
	// bundle files. Optional.
	FederatedBundleFiles map[string]string
	// PollInterval is how often the files are checked; zero means
	// DefaultPollInterval.
	PollInterval time.Duration
	// Logger receives reload and rejection messages; nil means
	// slog.Default().
	Logger *slog.Logger
}

// FileSource is a [Source] read from PEM files and reloaded when they
// change. Every PollInterval it stats the files; when a modification time
// or size moved it reads them all and, if their SHA-256 differs from the
// last load, parses and checks them (the SVID must verify against its own
// trust domain's bundle) and publishes the result in one swap. A bad or
// half-written set of files is logged with the reason and the last good
// SVID keeps serving; the next change is tried again.
type FileSource struct {
	cfg    FileSourceConfig
	files  []string               // every watched file: chain, key, bundle, then federated
	feds   []spiffeid.TrustDomain // federated trust domains, in files[3:] order
	log    *slog.Logger
	pub    publisher
	cancel context.CancelFunc
	done   chan struct{}

	// Owned by the poll goroutine after NewFileSource returns.
	stats   []fileStamp
	sum     [sha256.Size]byte
	badSum  [sha256.Size]byte
	closeMu sync.Once
}

var _ Source = (*FileSource)(nil)

type fileStamp struct {
	mod  time.Time
	size int64
}

// NewFileSource loads the files once (any error names the file and the
// reason, and no source is returned) and starts polling them until Close.
func NewFileSource(cfg FileSourceConfig) (*FileSource, error) {
	switch {
	case cfg.CertChainFile == "":
		return nil, errors.New("mtls: file source: cert chain file is required")
	case cfg.KeyFile == "":
		return nil, errors.New("mtls: file source: key file is required")
	case cfg.BundleFile == "":
		return nil, errors.New("mtls: file source: bundle file is required")
	case cfg.PollInterval < 0:
		return nil, fmt.Errorf("mtls: file source: poll interval %v is negative", cfg.PollInterval)
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = DefaultPollInterval
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	s := &FileSource{cfg: cfg, log: log, done: make(chan struct{})}
	s.files = []string{cfg.CertChainFile, cfg.KeyFile, cfg.BundleFile}
	names := make([]string, 0, len(cfg.FederatedBundleFiles))
	for name := range cfg.FederatedBundleFiles {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		td, err := ParseTrustDomain("mtls: file source: federated bundle trust domain", name)
		if err != nil {
			return nil, err
		}
		s.feds = append(s.feds, td)
		s.files = append(s.files, cfg.FederatedBundleFiles[name])
	}
	s.pub.init()
	s.stats, _ = s.stat()
	contents, sum, err := s.read()
	if err != nil {
		return nil, err
	}
	svid, bundles, err := s.parse(contents)
	if err != nil {
		return nil, err
	}
	s.sum = sum
	s.pub.publish(func(*material) (*x509svid.SVID, *x509bundle.Set) { return svid, bundles })
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go s.poll(ctx)
	return s, nil
}

// Close stops polling and waits for the poll goroutine to exit. The last
// loaded SVID stays readable.
func (s *FileSource) Close() error {
	s.closeMu.Do(s.cancel)
	<-s.done
	return nil
}

// GetX509SVID returns the last good SVID.
func (s *FileSource) GetX509SVID() (*x509svid.SVID, error) { return s.pub.GetX509SVID() }

// GetX509BundleForTrustDomain returns the last good bundle of td, or an
// error naming td when there is none.
func (s *FileSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s.pub.GetX509BundleForTrustDomain(td)
}

// Watch implements [Source]: version counts the loads (the first is 1).
func (s *FileSource) Watch() (uint64, <-chan struct{}) { return s.pub.Watch() }

func (s *FileSource) poll(ctx context.Context) {
	defer close(s.done)
	t := time.NewTicker(s.cfg.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.check()
		}
	}
}

// check reloads the files if they changed since the last look.
func (s *FileSource) check() {
	stats, err := s.stat()
	if err != nil {
		if !equalStamps(stats, s.stats) {
			s.log.Warn("mtls: SVID files unreadable, keeping the last good SVID", "error", err)
		}
		s.stats = stats
		return
	}
	if equalStamps(stats, s.stats) {
		return
	}
	s.stats = stats
	contents, sum, err := s.read()
	if err != nil {
		s.log.Warn("mtls: SVID files unreadable, keeping the last good SVID", "error", err)
		return
	}
	if sum == s.sum || sum == s.badSum {
		return
	}
	svid, bundles, err := s.parse(contents)
	if err != nil {
		s.badSum = sum
		s.log.Warn("mtls: SVID files rejected, keeping the last good SVID", "error", err)
		return
	}
	s.sum = sum
	s.pub.publish(func(*material) (*x509svid.SVID, *x509bundle.Set) { return svid, bundles })
	s.log.Info("mtls: SVID reloaded from files", "spiffe_id", svid.ID.String(), "not_after", svid.Certificates[0].NotAfter)
}

func (s *FileSource) stat() ([]fileStamp, error) {
	out := make([]fileStamp, len(s.files))
	var errs []error
	for i, f := range s.files {
		fi, err := os.Stat(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out[i] = fileStamp{mod: fi.ModTime(), size: fi.Size()}
	}
	return out, errors.Join(errs...)
}

func equalStamps(a, b []fileStamp) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].mod.Equal(b[i].mod) || a[i].size != b[i].size {
			return false
		}
	}
	return true
}

// read returns every file's contents and a hash over all of them.
func (s *FileSource) read() ([][]byte, [sha256.Size]byte, error) {
	h := sha256.New()
	out := make([][]byte, len(s.files))
	for i, f := range s.files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, [sha256.Size]byte{}, fmt.Errorf("mtls: file source: %w", err)
		}
		fmt.Fprintf(h, "%d:", len(b))
		h.Write(b)
		out[i] = b
	}
	var sum [sha256.Size]byte
	copy(sum[:], h.Sum(nil))
	return out, sum, nil
}

// parse builds the SVID and bundle set from contents (in s.files order)
// and checks that the SVID verifies against its own trust domain's bundle.
func (s *FileSource) parse(contents [][]byte) (*x509svid.SVID, *x509bundle.Set, error) {
	svid, err := x509svid.Parse(contents[0], contents[1])
	if err != nil {
		return nil, nil, fmt.Errorf("mtls: file source: %s with %s: %w", s.cfg.CertChainFile, s.cfg.KeyFile, err)
	}
	if err := checkSVID(svid); err != nil {
		return nil, nil, fmt.Errorf("mtls: file source: %s: %w", s.cfg.CertChainFile, err)
	}
	own, err := x509bundle.Parse(svid.ID.TrustDomain(), contents[2])
	if err != nil {
		return nil, nil, fmt.Errorf("mtls: file source: %s: %w", s.cfg.BundleFile, err)
	}
	set := x509bundle.NewSet(own)
	for i, td := range s.feds {
		b, err := x509bundle.Parse(td, contents[3+i])
		if err != nil {
			return nil, nil, fmt.Errorf("mtls: file source: %s: %w", s.files[3+i], err)
		}
		set.Add(b)
	}
	if _, _, err := VerifySVID(svid.Certificates, set, time.Time{}); err != nil {
		return nil, nil, fmt.Errorf("mtls: file source: %s does not verify against %s: %w", s.cfg.CertChainFile, s.cfg.BundleFile, err)
	}
	return svid, set, nil
}
