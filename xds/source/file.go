// Package source feeds the control plane: it reads the mesh file, parses
// and translates it, and publishes the result, again on every change.
package source

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"syscall"
	"time"

	"meshd.dev/meshd/xds/model"
	"meshd.dev/meshd/xds/translate"
)

// DefaultPollInterval is how often a FileWatcher looks at the file.
const DefaultPollInterval = 500 * time.Millisecond

// Sink receives translations. xds/server.Server implements it.
type Sink interface {
	// Publish serves res; it returns an error, and keeps serving what it
	// had, when res cannot be served.
	Publish(res *translate.Result, warnings []model.Warning) error
	// RecordError reports a mesh file that could not be read, parsed or
	// translated; the sink keeps serving what it had.
	RecordError(err error)
}

// FileOptions configure a FileWatcher. The zero value is usable.
type FileOptions struct {
	// PollInterval is the time between two looks at the file;
	// DefaultPollInterval when zero.
	PollInterval time.Duration
	// Logger receives the watcher's logs; nil discards them.
	Logger *slog.Logger
	// Adjust, when set, is applied to every parsed mesh before it is
	// translated (`meshd up` moves busy loopback ports with it). An error
	// rejects that version of the file like a parse error would.
	Adjust func(*model.Mesh) error
	// Translate holds the translation's inputs from outside the file
	// (the rate-limit module of engine wasm).
	Translate translate.Options
}

// FileWatcher publishes a mesh file and republishes it when it changes.
//
// It polls: every PollInterval it stats the path (following renames, so an
// editor that writes a new file and renames it over the old one is seen)
// and, when the modification time, size or inode changed and then held
// still for a tenth of the interval, reads the file and
// compares its SHA-256 with the last one seen. A changed file is parsed with
// model.Parse, translated with translate.TranslateWith and published; an error
// at any step is logged and passed to Sink.RecordError, and the sink keeps
// serving the last good translation. Polling needs no platform notification
// API and cannot miss an event; its cost is one stat per interval.
type FileWatcher struct {
	path     string
	sink     Sink
	interval time.Duration
	log      *slog.Logger
	adjust   func(*model.Mesh) error
	topts    translate.Options

	// Owned by the goroutine calling Load and Run.
	stat fileStat
	sum  [sha256.Size]byte
	seen bool // sum holds the digest of content that was processed
}

type fileStat struct {
	mod   time.Time
	size  int64
	inode uint64
}

// NewFileWatcher returns a watcher of path publishing to sink.
func NewFileWatcher(path string, sink Sink, opts FileOptions) *FileWatcher {
	w := &FileWatcher{path: path, sink: sink, interval: opts.PollInterval, log: opts.Logger, adjust: opts.Adjust, topts: opts.Translate}
	if w.interval <= 0 {
		w.interval = DefaultPollInterval
	}
	if w.log == nil {
		w.log = slog.New(slog.DiscardHandler)
	}
	return w
}

// Load reads, translates and publishes the file once, whether or not it
// changed, and returns the error (also recorded in the sink) if any step
// failed. The control plane calls it before serving, so a bad file fails
// start-up.
func (w *FileWatcher) Load() error {
	st, err := statFile(w.path)
	if err != nil {
		return w.fail(err)
	}
	return w.load(st, true)
}

// Run polls the file until ctx ends. It does not publish the file as it is
// when Run starts if Load already did.
func (w *FileWatcher) Run(ctx context.Context) {
	t := time.NewTicker(w.interval)
	defer t.Stop()
	var lastStatErr string
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		st, err := statFile(w.path)
		if err != nil {
			// Report a missing file once, not every tick.
			if err.Error() != lastStatErr {
				lastStatErr = err.Error()
				_ = w.fail(err)
			}
			continue
		}
		lastStatErr = ""
		if st == w.stat && w.seen {
			continue
		}
		// A file being written in place (truncate, then write) changes
		// more than once: load it only once its stat holds still for a
		// moment, so a half-written file is not parsed.
		if !w.settled(ctx, st) {
			continue
		}
		_ = w.load(st, false)
	}
}

// settled reports whether the file's stat is still st after a short pause
// (a tenth of the poll interval, at least 10ms).
func (w *FileWatcher) settled(ctx context.Context, st fileStat) bool {
	t := time.NewTimer(max(w.interval/10, 10*time.Millisecond))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
	}
	again, err := statFile(w.path)
	return err == nil && again == st
}

// load reads the file and, when its content changed (or force), publishes
// it.
func (w *FileWatcher) load(st fileStat, force bool) error {
	data, err := os.ReadFile(w.path)
	if err != nil {
		return w.fail(fmt.Errorf("reading mesh file: %w", err))
	}
	w.stat = st
	sum := sha256.Sum256(data)
	if !force && w.seen && bytes.Equal(sum[:], w.sum[:]) {
		return nil
	}
	w.sum, w.seen = sum, true
	m, err := model.Parse(data, w.path)
	if err != nil {
		return w.fail(err)
	}
	if w.adjust != nil {
		if err := w.adjust(m); err != nil {
			return w.fail(fmt.Errorf("%s: %w", w.path, err))
		}
	}
	res, err := translate.TranslateWith(m, w.topts)
	if err != nil {
		return w.fail(fmt.Errorf("%s: translating: %w", w.path, err))
	}
	warnings := m.Warnings()
	for _, wn := range warnings {
		w.log.Warn("risky mesh setting", "file", wn.Source, "document", wn.Document, "field", wn.Field, "warning", wn.Message)
	}
	if err := w.sink.Publish(res, warnings); err != nil {
		w.log.Error("mesh not published; serving the last good config", "file", w.path, "err", err)
		return err
	}
	w.log.Info("mesh file loaded", "file", w.path, "version", res.Version)
	return nil
}

func (w *FileWatcher) fail(err error) error {
	w.log.Error("mesh file rejected; serving the last good config", "file", w.path, "err", err)
	w.sink.RecordError(err)
	return err
}

func statFile(path string) (fileStat, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStat{}, fmt.Errorf("mesh file: %w", err)
	}
	if fi.IsDir() {
		return fileStat{}, errors.New("mesh file " + path + ": is a directory")
	}
	st := fileStat{mod: fi.ModTime(), size: fi.Size()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.inode = uint64(sys.Ino)
	}
	return st, nil
}
