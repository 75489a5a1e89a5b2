package doctor

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"

	"meshd.dev/meshd/proxy/http/h2"
)

// Sample is what one look at a sidecar's admin API saw.
type Sample struct {
	// At is when the sample was taken; rules compare two samples' counters
	// over the window between their At.
	At time.Time
	// Stats are the counters and gauges of /stats?format=json.
	Stats map[string]int64
	// P99 are the histograms' cumulative 99th percentiles from the same
	// page (meshd histograms are cumulative since start).
	P99 map[string]float64
	// Clusters are /clusters?format=json.
	Clusters []ClusterSample
	// Config is what /config_dump says about each cluster, by name.
	Config map[string]*ClusterConfig
	// Streams is /debug/streams (empty when the sidecar has none).
	Streams h2.StreamsReport
	// TimeWait counts sockets in TIME_WAIT per upstream endpoint ("ip:port"),
	// from /proc/net/tcp{,6} of the host doctor runs on; nil when not read.
	TimeWait map[string]int
}

// ClusterSample is one cluster of /clusters.
type ClusterSample struct {
	// Name is the cluster's name; Hosts are its endpoints.
	Name  string
	Hosts []HostSample
}

// HostSample is one endpoint of a cluster with its /clusters stats.
type HostSample struct {
	Address string // "ip:port"
	// RqActive is the endpoint's rq_active: requests in flight to it.
	RqActive int64
}

// ClusterConfig is the part of a cluster's configuration the live rules
// quote. Zero durations and counts mean unset (Envoy's default applies).
type ClusterConfig struct {
	// Name is the cluster's name.
	Name  string
	HTTP1 bool // explicit http_protocol_options
	// ConnectTimeout is connect_timeout; IdleTimeout,
	// MaxConnectionDuration and MaxRequestsPerConnection are the upstream
	// common_http_protocol_options of those names, and IdleTimeoutSet
	// tells an explicit idle_timeout (0: never) from none;
	// KeepaliveInterval is http2_protocol_options.connection_keepalive's
	// interval.
	ConnectTimeout           time.Duration
	IdleTimeout              time.Duration
	IdleTimeoutSet           bool
	MaxConnectionDuration    time.Duration
	MaxRequestsPerConnection int64
	KeepaliveInterval        time.Duration
	// MaxConnections and MaxPendingRequests are the circuit_breakers
	// thresholds; OutlierDetection is whether outlier_detection is set.
	MaxConnections     int64
	MaxPendingRequests int64
	OutlierDetection   bool
	// RouteTimeout is the timeout of a route to this cluster; RouteTimeoutSet
	// tells an explicit 0s (none) from no route seen.
	RouteTimeout    time.Duration
	RouteTimeoutSet bool
}

// Sampler reads a sidecar's admin API.
type Sampler struct {
	// Admin is the admin address, "host:port".
	Admin string
	// Client is the HTTP client; nil uses one with a 5 s timeout.
	Client *http.Client
	// ProcNet is the directory holding tcp and tcp6 ("/proc/net" when
	// empty); "-" skips the TIME_WAIT count.
	ProcNet string
}

func (s *Sampler) get(ctx context.Context, path string) ([]byte, error) {
	c := s.Client
	if c == nil {
		c = &http.Client{Timeout: 5 * time.Second}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.Admin+path, nil)
	if err != nil {
		return nil, fmt.Errorf("admin %s: %w", s.Admin, err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("admin %s%s: %w", s.Admin, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("admin %s%s: reading body: %w", s.Admin, path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("admin %s%s: %s", s.Admin, path, resp.Status)
	}
	return body, nil
}

// Sample reads /stats, /clusters, /config_dump and /debug/streams, and
// counts TIME_WAIT sockets to the clusters' endpoints. A sidecar without
// /debug/streams (not meshd) gives an empty Streams.
func (s *Sampler) Sample(ctx context.Context) (*Sample, error) {
	out := &Sample{At: time.Now()}
	body, err := s.get(ctx, "/stats?format=json")
	if err != nil {
		return nil, err
	}
	if out.Stats, out.P99, err = parseStatsJSON(body); err != nil {
		return nil, fmt.Errorf("admin %s/stats: %w", s.Admin, err)
	}
	if body, err = s.get(ctx, "/clusters?format=json"); err != nil {
		return nil, err
	}
	if out.Clusters, err = parseClustersJSON(body); err != nil {
		return nil, fmt.Errorf("admin %s/clusters: %w", s.Admin, err)
	}
	if body, err = s.get(ctx, "/config_dump"); err != nil {
		return nil, err
	}
	if out.Config, err = parseConfigDump(body); err != nil {
		return nil, fmt.Errorf("admin %s/config_dump: %w", s.Admin, err)
	}
	if body, err = s.get(ctx, "/debug/streams"); err == nil {
		if err := json.Unmarshal(body, &out.Streams); err != nil {
			return nil, fmt.Errorf("admin %s/debug/streams: %w", s.Admin, err)
		}
	}
	if s.ProcNet != "-" {
		dir := s.ProcNet
		if dir == "" {
			dir = "/proc/net"
		}
		var eps []string
		for _, c := range out.Clusters {
			for _, h := range c.Hosts {
				eps = append(eps, h.Address)
			}
		}
		if tw, err := CountTimeWait(dir, eps); err == nil {
			out.TimeWait = tw
		}
	}
	return out, nil
}

// parseStatsJSON reads Envoy's /stats?format=json.
func parseStatsJSON(body []byte) (map[string]int64, map[string]float64, error) {
	var doc struct {
		Stats []json.RawMessage `json:"stats"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, nil, err
	}
	vals, p99 := map[string]int64{}, map[string]float64{}
	for _, raw := range doc.Stats {
		var e struct {
			Name       string          `json:"name"`
			Value      json.RawMessage `json:"value"`
			Histograms *struct {
				Supported []float64 `json:"supported_quantiles"`
				Computed  []struct {
					Name   string `json:"name"`
					Values []struct {
						Cumulative *float64 `json:"cumulative"`
					} `json:"values"`
				} `json:"computed_quantiles"`
			} `json:"histograms"`
		}
		if err := json.Unmarshal(raw, &e); err != nil {
			return nil, nil, err
		}
		if e.Histograms != nil {
			q := -1
			for i, v := range e.Histograms.Supported {
				if v == 99 {
					q = i
				}
			}
			for _, h := range e.Histograms.Computed {
				if q >= 0 && q < len(h.Values) && h.Values[q].Cumulative != nil {
					p99[h.Name] = *h.Values[q].Cumulative
				}
			}
			continue
		}
		if f, err := strconv.ParseFloat(string(e.Value), 64); err == nil {
			vals[e.Name] = int64(f)
		}
	}
	return vals, p99, nil
}

// parseClustersJSON reads envoy.admin.v3.Clusters as protojson prints it.
func parseClustersJSON(body []byte) ([]ClusterSample, error) {
	var doc struct {
		ClusterStatuses []struct {
			Name         string `json:"name"`
			HostStatuses []struct {
				Address struct {
					SocketAddress struct {
						Address   string `json:"address"`
						PortValue int    `json:"port_value"`
					} `json:"socket_address"`
				} `json:"address"`
				Stats []struct {
					Name  string          `json:"name"`
					Value json.RawMessage `json:"value"`
				} `json:"stats"`
			} `json:"host_statuses"`
		} `json:"cluster_statuses"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, err
	}
	var out []ClusterSample
	for _, c := range doc.ClusterStatuses {
		cs := ClusterSample{Name: c.Name}
		for _, h := range c.HostStatuses {
			hs := HostSample{Address: net.JoinHostPort(h.Address.SocketAddress.Address, strconv.Itoa(h.Address.SocketAddress.PortValue))}
			for _, st := range h.Stats {
				v, _ := strconv.ParseInt(strings.Trim(string(st.Value), `"`), 10, 64)
				if st.Name == "rq_active" {
					hs.RqActive = v
				}
			}
			cs.Hosts = append(cs.Hosts, hs)
		}
		out = append(out, cs)
	}
	return out, nil
}

// httpProtocolOptionsKey is where a cluster's HttpProtocolOptions live.
const httpProtocolOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

// parseConfigDump walks Envoy's /config_dump JSON for clusters (any object
// under a "cluster" key with a "name") and routes (any object with a
// "cluster" name and a "timeout"), so static and dynamic resources, inline
// and RDS routes are all seen.
func parseConfigDump(body []byte) (map[string]*ClusterConfig, error) {
	var doc any
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, err
	}
	out := map[string]*ClusterConfig{}
	get := func(name string) *ClusterConfig {
		if out[name] == nil {
			out[name] = &ClusterConfig{Name: name}
		}
		return out[name]
	}
	type routeTimeout struct {
		cluster string
		timeout time.Duration
	}
	var routes []routeTimeout
	var walk func(v any, key string)
	walk = func(v any, key string) {
		switch v := v.(type) {
		case map[string]any:
			if name, ok := v["name"].(string); ok && (key == "cluster" || key == "clusters") {
				readCluster(get(name), v)
			}
			if cl, ok := v["cluster"].(string); ok {
				if t, ok := v["timeout"].(string); ok {
					routes = append(routes, routeTimeout{cl, parseProtoDuration(t)})
				}
			}
			for k, c := range v {
				walk(c, k)
			}
		case []any:
			for _, c := range v {
				walk(c, key)
			}
		}
	}
	walk(doc, "")
	for _, r := range routes {
		c := get(r.cluster)
		c.RouteTimeout, c.RouteTimeoutSet = r.timeout, true
	}
	return out, nil
}

func readCluster(c *ClusterConfig, v map[string]any) {
	c.ConnectTimeout = parseProtoDuration(str(v["connect_timeout"]))
	if _, ok := v["outlier_detection"]; ok {
		c.OutlierDetection = true
	}
	if th, ok := path(v, "circuit_breakers", "thresholds").([]any); ok && len(th) > 0 {
		if t, ok := th[0].(map[string]any); ok {
			c.MaxConnections = num(t["max_connections"])
			c.MaxPendingRequests = num(t["max_pending_requests"])
		}
	}
	opts, _ := path(v, "typed_extension_protocol_options", httpProtocolOptionsKey).(map[string]any)
	if opts == nil {
		return
	}
	if path(opts, "explicit_http_config", "http_protocol_options") != nil {
		c.HTTP1 = true
	}
	c.KeepaliveInterval = parseProtoDuration(str(path(opts, "explicit_http_config", "http2_protocol_options", "connection_keepalive", "interval")))
	if common, ok := opts["common_http_protocol_options"].(map[string]any); ok {
		if s, ok := common["idle_timeout"].(string); ok {
			c.IdleTimeout, c.IdleTimeoutSet = parseProtoDuration(s), true
		}
		c.MaxConnectionDuration = parseProtoDuration(str(common["max_connection_duration"]))
		c.MaxRequestsPerConnection = num(common["max_requests_per_connection"])
	}
}

func path(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

func str(v any) string { s, _ := v.(string); return s }

func num(v any) int64 {
	switch v := v.(type) {
	case float64:
		return int64(v)
	case string:
		n, _ := strconv.ParseInt(v, 10, 64)
		return n
	}
	return 0
}

// parseProtoDuration reads protobuf's JSON Duration ("1.5s", at most nine
// fractional digits, within ±315576000000s) as protojson does; anything
// else is 0.
func parseProtoDuration(s string) time.Duration {
	var d durationpb.Duration
	if err := protojson.Unmarshal(strconv.AppendQuote(nil, s), &d); err != nil {
		return 0
	}
	return d.AsDuration()
}
