package main

import (
	"context"
	"log/slog"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"go.opentelemetry.io/otel/attribute"

	"meshd.dev/meshd/otel/metrics"
	"meshd.dev/meshd/proxy/config"
	"meshd.dev/meshd/proxy/stats"
)

// startStatsSink starts the OTLP/gRPC metrics export the bootstrap's
// envoy.stat_sinks.open_telemetry configures: the Envoy-named stats of
// store and the duration histograms, every stats_flush_interval. The
// returned function exports once more and stops it.
func startStatsSink(sink *config.StatsSinkConfig, b *bootstrapv3.Bootstrap, store *stats.Store, durations *metrics.HTTPDurations, logger *slog.Logger) (func(), error) {
	service := b.GetNode().GetCluster()
	if service == "" {
		service = "meshd-sidecar"
	}
	exp, err := metrics.StartExporter(context.Background(), metrics.ExporterConfig{
		Endpoint: sink.Endpoint,
		Interval: sink.Interval,
		Producer: metrics.NewProducer(store, durations, metrics.ProducerOptions{
			UseTagExtractedName:  sink.UseTagExtractedName,
			EmitTagsAsAttributes: sink.EmitTagsAsAttributes,
			Prefix:               sink.Prefix,
		}),
		Resource: []attribute.KeyValue{
			attribute.String("service.name", service),
			attribute.String("service.instance.id", b.GetNode().GetId()),
		},
		Stats:      store,
		StatPrefix: "stats_sinks.open_telemetry",
		Logger:     logger,
	})
	if err != nil {
		return nil, err
	}
	logger.Info("exporting metrics over OTLP", "cluster", sink.Cluster, "endpoint", sink.Endpoint, "interval", sink.Interval)
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := exp.Shutdown(ctx); err != nil {
			logger.Warn("final metrics export", "err", err)
		}
	}, nil
}
