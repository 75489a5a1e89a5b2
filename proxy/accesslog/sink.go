package accesslog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"meshd.dev/meshd/proxy/stats"
)

// Defaults of ManagerOptions.
const (
	// DefaultFlushInterval is Envoy's file_flush_interval default.
	DefaultFlushInterval = time.Second
	// DefaultBufferBytes bounds what one sink holds between flushes.
	DefaultBufferBytes = 1 << 20
)

// ManagerOptions configure a Manager.
type ManagerOptions struct {
	// FlushInterval is how often buffered lines are written out (default
	// DefaultFlushInterval). A sink also flushes as soon as it holds a
	// quarter of BufferBytes.
	FlushInterval time.Duration
	// BufferBytes bounds the bytes one sink holds while its writer is busy
	// (default DefaultBufferBytes); a line that does not fit is dropped and
	// counted.
	BufferBytes int
	// Stats receives access_logs.dropped and access_logs.written; nil
	// creates a private store.
	Stats  *stats.Store
	Logger *slog.Logger
	// DialCluster opens a connection to an endpoint of the named cluster,
	// for envoy.access_loggers.open_telemetry; without it such loggers
	// fail Open.
	DialCluster func(ctx context.Context, cluster string) (net.Conn, error)
}

// Manager owns the access-log sinks of a process, keyed by path, so that
// config swaps share open files (as Envoy's AccessLogManager does). Sinks
// live until Close.
type Manager struct {
	opts    ManagerOptions
	dropped *stats.Counter
	written *stats.Counter
	logger  *slog.Logger

	mu     sync.Mutex
	sinks  map[string]*Sink
	closed bool
	// byPath is a lock-free read cache of sinks (path → *Sink).
	byPath sync.Map
	// byOTLP holds the OpenTelemetry exporters (otlpKey → *otlpExporter),
	// created under mu.
	byOTLP sync.Map
}

// NewManager returns a manager with no sinks.
func NewManager(opts ManagerOptions) *Manager {
	if opts.FlushInterval <= 0 {
		opts.FlushInterval = DefaultFlushInterval
	}
	if opts.BufferBytes <= 0 {
		opts.BufferBytes = DefaultBufferBytes
	}
	if opts.Stats == nil {
		opts.Stats = stats.NewStore()
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	sc := opts.Stats.Root().Scope("access_logs")
	return &Manager{
		opts:    opts,
		dropped: sc.Counter("dropped"),
		written: sc.Counter("written"),
		logger:  opts.Logger,
		sinks:   map[string]*Sink{},
	}
}

// Dropped returns the access_logs.dropped counter.
func (m *Manager) Dropped() *stats.Counter { return m.dropped }

// Sink returns the sink writing to path, opening it (append, create) on
// first use. "/dev/stdout" and "/dev/stderr" write to the process's
// standard streams without reopening them.
func (m *Manager) Sink(path string) (*Sink, error) {
	if s, ok := m.byPath.Load(path); ok {
		return s.(*Sink), nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, errors.New("access log manager closed")
	}
	if s := m.sinks[path]; s != nil {
		return s, nil
	}
	s := &Sink{m: m, path: path, signal: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	switch path {
	case "/dev/stdout":
		s.w = os.Stdout
	case "/dev/stderr":
		s.w = os.Stderr
	default:
		f, err := openLog(path)
		if err != nil {
			return nil, err
		}
		s.w, s.file, s.isFile = f, f, true
	}
	s.buf = make([]byte, 0, 64<<10)
	s.spare = make([]byte, 0, 64<<10)
	m.sinks[path] = s
	m.byPath.Store(path, s)
	go s.run(m.opts.FlushInterval)
	return s, nil
}

func openLog(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("access log path %q: %w", path, err)
	}
	return f, nil
}

// Reopen makes every file sink close and reopen its path at its next flush,
// which it starts at once (log rotation: Envoy's SIGUSR1 and POST
// /reopen_logs).
func (m *Manager) Reopen() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, s := range m.sinks {
		if s.isFile {
			s.reopen.Store(true)
			s.kick()
		}
	}
}

// Flush writes out what every sink holds and returns once it is written.
func (m *Manager) Flush() {
	m.mu.Lock()
	sinks := make([]*Sink, 0, len(m.sinks))
	for _, s := range m.sinks {
		sinks = append(sinks, s)
	}
	m.mu.Unlock()
	for _, s := range sinks {
		s.flush()
	}
}

// Close flushes every sink, stops their writers and closes their files;
// OpenTelemetry loggers send what they hold (for up to 2 s). Lines written
// after Close are dropped.
func (m *Manager) Close() error {
	m.mu.Lock()
	m.closed = true
	sinks := m.sinks
	m.sinks = map[string]*Sink{}
	m.mu.Unlock()
	m.closeOTLP()
	var errs []error
	for path, s := range sinks {
		close(s.stop)
		<-s.done
		m.byPath.Delete(path)
		if s.file != nil {
			errs = append(errs, s.file.Close())
		}
	}
	return errors.Join(errs...)
}

// Sink is one access-log destination. Write never blocks on I/O: lines are
// appended to a bounded in-memory buffer that a goroutine of the sink
// writes out.
type Sink struct {
	m      *Manager
	path   string
	isFile bool // immutable: a file (reopenable), not stdout/stderr

	mu     sync.Mutex
	buf    []byte // lines waiting for the writer
	spare  []byte // the writer's buffer, swapped with buf on flush
	closed bool

	// Owned by the writer goroutine (after Sink returned).
	w    io.Writer
	file *os.File // nil for stdout/stderr

	reopen atomic.Bool
	signal chan struct{}
	stop   chan struct{}
	done   chan struct{}
	// flushed is signalled (under mu) by the writer after a flush that
	// a Flush call waits for.
	flushReq []chan struct{}
}

// Path is the sink's path.
func (s *Sink) Path() string { return s.path }

// Write queues one line (the caller keeps line; Write copies it). A line
// that does not fit under the manager's BufferBytes is dropped and counted
// in access_logs.dropped.
func (s *Sink) Write(line []byte) {
	limit := s.m.opts.BufferBytes
	s.mu.Lock()
	if s.closed || len(s.buf)+len(line) > limit {
		s.mu.Unlock()
		s.m.dropped.Inc()
		return
	}
	s.buf = append(s.buf, line...)
	full := len(s.buf) >= limit/4
	s.mu.Unlock()
	s.m.written.Inc()
	if full {
		s.kick()
	}
}

func (s *Sink) kick() {
	select {
	case s.signal <- struct{}{}:
	default:
	}
}

// flush asks the writer to flush and waits until it did.
func (s *Sink) flush() {
	ch := make(chan struct{})
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.flushReq = append(s.flushReq, ch)
	s.mu.Unlock()
	s.kick()
	select {
	case <-ch:
	case <-s.done:
	}
}

// run is the sink's writer: every interval, when kicked, and once more on
// stop, it takes the buffered lines and writes them.
func (s *Sink) run(interval time.Duration) {
	defer close(s.done)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		stopping := false
		select {
		case <-t.C:
		case <-s.signal:
		case <-s.stop:
			stopping = true
		}
		s.mu.Lock()
		out := s.buf
		s.buf = s.spare[:0]
		waiters := s.flushReq
		s.flushReq = nil
		if stopping {
			s.closed = true
		}
		s.mu.Unlock()
		if s.reopen.Swap(false) {
			s.doReopen()
		}
		if len(out) > 0 {
			if _, err := s.w.Write(out); err != nil {
				s.m.logger.Warn("access log write failed", "path", s.path, "err", err)
			}
		}
		s.mu.Lock()
		s.spare = out[:0]
		s.mu.Unlock()
		for _, ch := range waiters {
			close(ch)
		}
		if stopping {
			return
		}
	}
}

func (s *Sink) doReopen() {
	f, err := openLog(s.path)
	if err != nil {
		s.m.logger.Error("access log reopen failed; still writing to the old file", "path", s.path, "err", err)
		return
	}
	_ = s.file.Close()
	s.file, s.w = f, f
}

// lineBuf is a reusable pair of buffers for formatting one line.
type lineBuf struct{ line, scratch []byte }

var linePool = sync.Pool{New: func() any { return &lineBuf{line: make([]byte, 0, 512), scratch: make([]byte, 0, 128)} }}

// Log formats i with every logger whose filter matches and queues each
// line on the logger's sink. It does not keep i and never blocks on I/O. A
// sink that cannot be opened drops the line (counted in
// access_logs.dropped); Open reports such paths at config time.
func (m *Manager) Log(loggers []*Logger, i *Info) {
	if len(loggers) == 0 {
		return
	}
	b := linePool.Get().(*lineBuf)
	for _, l := range loggers {
		if l.Filter != nil && !l.Filter.Match(i) {
			continue
		}
		if l.OTLP != nil {
			e, err := m.otlpExporter(l.OTLP)
			if err != nil {
				m.dropped.Inc()
				m.logger.Debug("access log record dropped", "cluster", l.OTLP.Cluster, "err", err)
				continue
			}
			e.log(l.OTLP.record(b, i))
			continue
		}
		s, err := m.Sink(l.Path)
		if err != nil {
			m.dropped.Inc()
			m.logger.Debug("access log line dropped", "path", l.Path, "err", err)
			continue
		}
		b.line, b.scratch = l.Format.Append(b.line[:0], b.scratch[:0], i)
		s.Write(b.line)
	}
	if cap(b.line) <= 64<<10 && cap(b.scratch) <= 64<<10 {
		linePool.Put(b)
	}
}

// Open opens the sinks of loggers, so that a path that cannot be written
// fails the configuration that names it, as in Envoy; OpenTelemetry
// loggers get their exporter (which connects in the background).
func (m *Manager) Open(loggers []*Logger) error {
	for _, l := range loggers {
		if l.OTLP != nil {
			if _, err := m.otlpExporter(l.OTLP); err != nil {
				return err
			}
			continue
		}
		if _, err := m.Sink(l.Path); err != nil {
			return err
		}
	}
	return nil
}
