package tracing

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
)

// Providers holds the exporters of a process, one per Provider, created
// on first use and kept across config swaps so a new snapshot never drops
// queued spans or the collector connection. They close with Close.
type Providers struct {
	dial   func(ctx context.Context, cluster string) (net.Conn, error)
	stats  ExporterStats
	logger *slog.Logger
	// configure, when set, adjusts each exporter's config (tests shorten
	// the flush interval).
	configure func(*ExporterConfig)

	mu     sync.Mutex // serialises creation and Close
	closed bool
	m      sync.Map // Provider → *Exporter
	// last is the most recently created (or, under mu, looked up)
	// exporter, nil once closed: a mesh has one provider, and comparing
	// it is cheaper than hashing into m on every request.
	last atomic.Pointer[providerExporter]
}

type providerExporter struct {
	p Provider
	e *Exporter
}

// NewProviders returns an empty set of exporters. dial opens a connection
// to an endpoint of the named cluster; stats are shared by all exporters.
func NewProviders(dial func(ctx context.Context, cluster string) (net.Conn, error), stats ExporterStats, logger *slog.Logger) *Providers {
	if logger == nil {
		logger = slog.Default()
	}
	return &Providers{dial: dial, stats: stats, logger: logger}
}

// SetExporterDefaults makes exporters created from now on start from cfg
// for queue size, batch size, flush interval and export timeout.
func (p *Providers) SetExporterDefaults(cfg ExporterConfig) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.configure = func(c *ExporterConfig) {
		c.QueueSize, c.BatchSize, c.FlushInterval, c.ExportTimeout = cfg.QueueSize, cfg.BatchSize, cfg.FlushInterval, cfg.ExportTimeout
	}
}

// Get returns the exporter of pr, creating it on first use; nil once
// Providers is closed or when it cannot be created (logged).
func (p *Providers) Get(pr Provider) *Exporter {
	if l := p.last.Load(); l != nil && l.p == pr {
		return l.e
	}
	if e, ok := p.m.Load(pr); ok {
		return e.(*Exporter)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if e, ok := p.m.Load(pr); ok {
		if !p.closed {
			p.last.Store(&providerExporter{p: pr, e: e.(*Exporter)})
		}
		return e.(*Exporter)
	}
	if p.closed {
		return nil
	}
	cluster := pr.Cluster
	cfg := ExporterConfig{
		Target:      cluster,
		Dial:        func(ctx context.Context) (net.Conn, error) { return p.dial(ctx, cluster) },
		ServiceName: pr.ServiceName,
		Stats:       p.stats,
		Logger:      p.logger,
	}
	if p.configure != nil {
		p.configure(&cfg)
	}
	e, err := NewExporter(cfg)
	if err != nil {
		p.logger.Error("tracing: cannot create the exporter", "cluster", cluster, "err", err)
		return nil
	}
	p.m.Store(pr, e)
	p.last.Store(&providerExporter{p: pr, e: e})
	return e
}

// Close flushes and closes every exporter within ctx's deadline.
func (p *Providers) Close(ctx context.Context) error {
	p.mu.Lock()
	p.closed = true
	p.last.Store(nil)
	p.mu.Unlock()
	var errs []error
	p.m.Range(func(k, v any) bool {
		errs = append(errs, v.(*Exporter).Close(ctx))
		p.m.Delete(k)
		return true
	})
	return errors.Join(errs...)
}
