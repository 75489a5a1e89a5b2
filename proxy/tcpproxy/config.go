// Package tcpproxy is meshd's envoy.filters.network.tcp_proxy: a terminal
// network filter that connects each downstream connection to a host of an
// upstream cluster and copies bytes both ways until both sides have closed.
//
// Per connection it chooses a cluster (cluster, or weighted_clusters by
// weight), picks a host with the cluster's load balancer, dials it with the
// cluster's connect_timeout (retrying other hosts up to
// max_connect_attempts), then runs one goroutine per direction. A FIN read
// on one side is passed on as a half-close (CloseWrite) to the other, so
// protocols that signal "done sending" by shutting down their write side
// work through the proxy; the connection ends when both directions have,
// when either side resets, or after idle_timeout without bytes in either
// direction.
package tcpproxy

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/proto"

	"meshd.dev/meshd/proxy/accesslog"
)

// DefaultIdleTimeout is Envoy's idle_timeout when the field is unset: a
// connection with no bytes in either direction for this long is closed.
const DefaultIdleTimeout = time.Hour

// WeightedCluster is one target cluster and its share of connections.
type WeightedCluster struct {
	Name   string
	Weight uint32
}

// Config is a compiled tcp_proxy filter. It is immutable once Compile
// returns it.
type Config struct {
	// StatPrefix names the filter's stats: "tcp.<StatPrefix>.".
	StatPrefix string
	// Clusters are the targets; `cluster` compiles to one entry of weight 1.
	// Every weight is positive.
	Clusters []WeightedCluster
	// IdleTimeout closes a connection after this long without bytes in
	// either direction; 0 disables it (Envoy: idle_timeout 0s).
	IdleTimeout time.Duration
	// MaxConnectAttempts is how many upstream connects are tried (each on a
	// freshly picked host, preferring hosts not yet tried) before the
	// downstream connection is closed. At least 1.
	MaxConnectAttempts int
	// AccessLogs are written once per connection, when it ends (access_log).
	AccessLogs []*accesslog.Logger
	// FlushOnConnected also writes AccessLogs once the upstream connection
	// is established (access_log_options.flush_access_log_on_connected).
	FlushOnConnected bool
	// FlushInterval, when positive, also writes AccessLogs every interval
	// while the connection is proxied
	// (access_log_options.access_log_flush_interval).
	FlushInterval time.Duration

	totalWeight uint64
	raw         *tcpproxyv3.TcpProxy
}

// Compile checks the fields of tp that meshd implements (stat_prefix,
// cluster, weighted_clusters, idle_timeout, max_connect_attempts,
// access_log, access_log_options) and
// compiles them. Fields outside that set are rejected by the caller's
// field table (proxy/config), not here. Errors name the field.
func Compile(tp *tcpproxyv3.TcpProxy) (*Config, error) {
	c := &Config{
		StatPrefix:         tp.GetStatPrefix(),
		IdleTimeout:        DefaultIdleTimeout,
		MaxConnectAttempts: 1,
		raw:                proto.Clone(tp).(*tcpproxyv3.TcpProxy),
	}
	if c.StatPrefix == "" {
		return nil, errors.New("stat_prefix: required")
	}
	switch spec := tp.GetClusterSpecifier().(type) {
	case *tcpproxyv3.TcpProxy_Cluster:
		if spec.Cluster == "" {
			return nil, errors.New("cluster: must not be empty")
		}
		c.Clusters = []WeightedCluster{{Name: spec.Cluster, Weight: 1}}
	case *tcpproxyv3.TcpProxy_WeightedClusters:
		for i, cw := range spec.WeightedClusters.GetClusters() {
			if cw.GetName() == "" {
				return nil, fmt.Errorf("weighted_clusters.clusters[%d].name: must not be empty", i)
			}
			if cw.GetWeight() == 0 {
				return nil, fmt.Errorf("weighted_clusters.clusters[%d].weight: must be at least 1", i)
			}
			c.Clusters = append(c.Clusters, WeightedCluster{Name: cw.GetName(), Weight: cw.GetWeight()})
		}
		if len(c.Clusters) == 0 {
			return nil, errors.New("weighted_clusters.clusters: at least one cluster is required")
		}
	default:
		return nil, errors.New("cluster or weighted_clusters: one is required")
	}
	for _, wc := range c.Clusters {
		c.totalWeight += uint64(wc.Weight)
	}
	if d := tp.GetIdleTimeout(); d != nil {
		if err := d.CheckValid(); err != nil {
			return nil, fmt.Errorf("idle_timeout: %w", err)
		}
		if d.AsDuration() < 0 {
			return nil, errors.New("idle_timeout: must not be negative")
		}
		c.IdleTimeout = d.AsDuration()
	}
	if v := tp.GetMaxConnectAttempts(); v != nil {
		if v.GetValue() < 1 {
			return nil, errors.New("max_connect_attempts: must be at least 1")
		}
		c.MaxConnectAttempts = int(v.GetValue())
	}
	logs, err := accesslog.Compile(tp.GetAccessLog())
	if err != nil {
		return nil, err
	}
	if len(logs) > 0 {
		c.AccessLogs = logs
	}
	if o := tp.GetAccessLogOptions(); o != nil {
		c.FlushOnConnected = o.GetFlushAccessLogOnConnected()
		if d := o.GetAccessLogFlushInterval(); d != nil {
			if err := d.CheckValid(); err != nil {
				return nil, fmt.Errorf("access_log_options.access_log_flush_interval: %w", err)
			}
			// Envoy's validation: at least 1 ms.
			if d.AsDuration() < time.Millisecond {
				return nil, errors.New("access_log_options.access_log_flush_interval: must be at least 1ms")
			}
			c.FlushInterval = d.AsDuration()
		}
	}
	return c, nil
}

// Equal reports whether two configs come from the same tcp_proxy message.
func (c *Config) Equal(o *Config) bool { return proto.Equal(c.raw, o.raw) }

// ClusterNames returns the names of the target clusters, in config order.
func (c *Config) ClusterNames() []string {
	out := make([]string, len(c.Clusters))
	for i, wc := range c.Clusters {
		out[i] = wc.Name
	}
	return out
}

// pickCluster chooses a target cluster with probability proportional to
// its weight.
func (c *Config) pickCluster() string {
	if len(c.Clusters) == 1 {
		return c.Clusters[0].Name
	}
	n := rand.Uint64N(c.totalWeight)
	for _, wc := range c.Clusters {
		if n < uint64(wc.Weight) {
			return wc.Name
		}
		n -= uint64(wc.Weight)
	}
	return c.Clusters[len(c.Clusters)-1].Name
}
