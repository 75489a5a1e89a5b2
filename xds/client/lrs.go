package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	lrsv3 "github.com/envoyproxy/go-control-plane/envoy/service/load_stats/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"
)

// MinLoadReportInterval bounds how often the load reporter sends, whatever
// the server asks: a control plane cannot make its sidecars flood it.
const MinLoadReportInterval = 100 * time.Millisecond

// LoadReporter streams load reports to the server that the bootstrap's
// cluster_manager.load_stats_config names, per Envoy's load reporting
// service (envoy.service.load_stats.v3): the first request carries the
// node; the server answers with the clusters it wants and the interval;
// every interval the reporter sends the stats Collect returns for them.
type LoadReporter struct {
	target  string
	node    *corev3.Node
	collect func(clusters []string, all bool) []*endpointv3.ClusterStats
	log     *slog.Logger
}

// NewLoadReporter returns a reporter for b's cluster_manager.load_stats_config
// (which config.ValidateBootstrap checked), or nil and no error when b has
// none. collect returns the stats of the named clusters (every cluster when
// all is set); it is called from the reporter's goroutine only.
func NewLoadReporter(b *bootstrapv3.Bootstrap, collect func(clusters []string, all bool) []*endpointv3.ClusterStats, logger *slog.Logger) (*LoadReporter, error) {
	lsc := b.GetClusterManager().GetLoadStatsConfig()
	if lsc == nil {
		return nil, nil
	}
	gs := lsc.GetGrpcServices()
	if len(gs) != 1 || gs[0].GetEnvoyGrpc() == nil {
		return nil, errors.New("cluster_manager.load_stats_config.grpc_services: exactly one envoy_grpc service is required")
	}
	target, err := staticClusterAddress(b, gs[0].GetEnvoyGrpc().GetClusterName(), "cluster_manager.load_stats_config.grpc_services[0].envoy_grpc.cluster_name")
	if err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.Default()
	}
	return &LoadReporter{target: target, node: b.GetNode(), collect: collect, log: logger.With("lrs", target)}, nil
}

// Run reports until ctx is done, re-opening a broken stream with backoff
// (100 ms doubling to 10 s), and returns ctx's error.
func (r *LoadReporter) Run(ctx context.Context) error {
	cc, err := grpc.NewClient("passthrough:///"+r.target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.DefaultConfig, MinConnectTimeout: time.Second}),
	)
	if err != nil {
		return fmt.Errorf("load reporter: %s: %w", r.target, err)
	}
	defer cc.Close()
	delay := 100 * time.Millisecond
	for {
		sent, err := r.stream(ctx, lrsv3.NewLoadReportingServiceClient(cc))
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if sent {
			delay = 100 * time.Millisecond
		}
		r.log.Debug("load report stream ended; reconnecting", "err", err, "in", delay)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, 10*time.Second)
	}
}

// lrsPlan is what the server asked for in its last response.
type lrsPlan struct {
	clusters []string
	all      bool
	interval time.Duration
}

// stream runs one LRS stream; sent reports whether a report went out.
func (r *LoadReporter) stream(ctx context.Context, c lrsv3.LoadReportingServiceClient) (sent bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := c.StreamLoadStats(ctx)
	if err != nil {
		return false, err
	}
	if err := s.Send(&lrsv3.LoadStatsRequest{Node: r.node}); err != nil {
		return false, err
	}
	plans := make(chan lrsPlan, 1)
	recvErr := make(chan error, 1)
	go func() {
		for {
			resp, err := s.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			p := lrsPlan{clusters: resp.GetClusters(), all: resp.GetSendAllClusters(),
				interval: max(resp.GetLoadReportingInterval().AsDuration(), MinLoadReportInterval)}
			select {
			case <-plans: // replace an unread plan
			default:
			}
			plans <- p
		}
	}()
	var plan lrsPlan
	var tick *time.Ticker
	var tickC <-chan time.Time
	defer func() {
		if tick != nil {
			tick.Stop()
		}
	}()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return sent, ctx.Err()
		case err := <-recvErr:
			return sent, err
		case p := <-plans:
			if tick == nil {
				tick = time.NewTicker(p.interval)
				tickC = tick.C
				last = time.Now()
				r.collect(p.clusters, p.all) // start the first interval now
			} else if p.interval != plan.interval {
				tick.Reset(p.interval)
			}
			plan = p
		case now := <-tickC:
			stats := r.collect(plan.clusters, plan.all)
			iv := durationpb.New(now.Sub(last))
			last = now
			for _, cs := range stats {
				cs.LoadReportInterval = iv
			}
			if err := s.Send(&lrsv3.LoadStatsRequest{ClusterStats: stats}); err != nil {
				return sent, err
			}
			sent = true
		}
	}
}
