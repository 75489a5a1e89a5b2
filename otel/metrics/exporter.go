package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/resource"

	"meshd.dev/meshd/proxy/stats"
)

// DefaultInterval is Envoy's stats_flush_interval default.
const DefaultInterval = 5 * time.Second

// ExporterConfig configures an OTLP/gRPC metrics export.
type ExporterConfig struct {
	// Endpoint is the collector's host:port (plaintext gRPC).
	Endpoint string
	// Interval is how often metrics are collected and sent (default
	// DefaultInterval); each export is bounded by it, or by 1 s if longer.
	Interval time.Duration
	// Producer supplies the metrics.
	Producer sdkmetric.Producer
	// Resource attributes: service.name and anything else (e.g. the node
	// ID as service.instance.id).
	Resource []attribute.KeyValue
	// Stats receives <StatPrefix>.export_success and .export_failure
	// counters; nil: not counted.
	Stats      *stats.Store
	StatPrefix string
	Logger     *slog.Logger
}

// Exporter sends metrics to an OTLP/gRPC collector on a periodic reader.
// Exports run on the reader's goroutine: a slow or absent collector delays
// only them, and gRPC reconnects when it returns.
type Exporter struct {
	provider *sdkmetric.MeterProvider
	reader   *sdkmetric.PeriodicReader
}

// StartExporter starts exporting. It does not wait for the collector.
func StartExporter(ctx context.Context, cfg ExporterConfig) (*Exporter, error) {
	if cfg.Endpoint == "" {
		return nil, errors.New("metrics exporter: endpoint required")
	}
	if cfg.Producer == nil {
		return nil, errors.New("metrics exporter: producer required")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	timeout := max(cfg.Interval, time.Second)
	exp, err := otlpmetricgrpc.New(ctx,
		otlpmetricgrpc.WithEndpoint(cfg.Endpoint),
		otlpmetricgrpc.WithInsecure(),
		otlpmetricgrpc.WithTimeout(timeout),
		// The next interval sends fresher cumulative values; retrying a
		// stale batch only delays it.
		otlpmetricgrpc.WithRetry(otlpmetricgrpc.RetryConfig{Enabled: false}),
	)
	if err != nil {
		return nil, fmt.Errorf("otlp metrics exporter for %s: %w", cfg.Endpoint, err)
	}
	var e sdkmetric.Exporter = exp
	if cfg.Stats != nil {
		sc := cfg.Stats.Root().Scope(cfg.StatPrefix)
		e = &countingExporter{Exporter: exp, ok: sc.Counter("export_success"), failed: sc.Counter("export_failure"),
			logger: cfg.Logger, endpoint: cfg.Endpoint}
	}
	reader := sdkmetric.NewPeriodicReader(e,
		sdkmetric.WithInterval(cfg.Interval),
		sdkmetric.WithTimeout(timeout),
		sdkmetric.WithProducer(cfg.Producer),
	)
	res := resource.NewSchemaless(cfg.Resource...)
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader), sdkmetric.WithResource(res))
	return &Exporter{provider: mp, reader: reader}, nil
}

// ForceFlush collects and exports now.
func (e *Exporter) ForceFlush(ctx context.Context) error { return e.provider.ForceFlush(ctx) }

// Shutdown exports once more, then stops the reader and closes the gRPC
// connection.
func (e *Exporter) Shutdown(ctx context.Context) error { return e.provider.Shutdown(ctx) }

// countingExporter counts export outcomes; failures are logged at debug
// level (the SDK also reports them to the OpenTelemetry error handler).
type countingExporter struct {
	sdkmetric.Exporter
	ok, failed *stats.Counter
	logger     *slog.Logger
	endpoint   string
}

func (c *countingExporter) Export(ctx context.Context, rm *metricdata.ResourceMetrics) error {
	err := c.Exporter.Export(ctx, rm)
	if err != nil {
		c.failed.Inc()
		c.logger.Debug("metrics export failed", "endpoint", c.endpoint, "err", err)
		return err
	}
	c.ok.Inc()
	return nil
}
