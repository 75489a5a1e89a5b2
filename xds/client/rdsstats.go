package client

import (
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/cespare/xxhash/v2"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"meshd.dev/meshd/proxy/config"
	"meshd.dev/meshd/proxy/stats"
)

// rdsSub is one connection manager's RDS subscription: its stat_prefix
// and the route configuration it takes. Like Envoy, the stats of a route
// configuration two managers share are kept under each manager's prefix.
type rdsSub struct {
	prefix, routeConfig string
}

// rdsSubStats are Envoy's per-subscription RDS stats, under
// http.<stat_prefix>.rds.<route_config_name>. (Prometheus:
// envoy_http_rds_<stat>{envoy_http_conn_manager_prefix, envoy_rds_route_config}).
type rdsSubStats struct {
	// configReload counts accepted updates that changed the route
	// configuration; configReloadTime is the Unix time in milliseconds of
	// the last one.
	configReload     *stats.Counter
	configReloadTime *stats.Gauge
	// attempt counts the responses that carried the route configuration;
	// each ends as one success or one rejected.
	attempt, success, rejected *stats.Counter
	// updateTime is the Unix time in milliseconds of the last success,
	// changed or not.
	updateTime *stats.Gauge
	// version is the xxHash64 of the last accepted version_info, as Envoy
	// computes it, stored as the store's signed gauge (same bits).
	version *stats.Gauge
}

func newRDSSubStats(store *stats.Store, s rdsSub) *rdsSubStats {
	// Envoy replaces ':' in the route configuration's name in stat names.
	sc := store.Root().Scope("http").Tagged("envoy_http_conn_manager_prefix", s.prefix).
		Scope("rds").Tagged("envoy_rds_route_config", strings.ReplaceAll(s.routeConfig, ":", "_"))
	return &rdsSubStats{
		configReload:     sc.Counter("config_reload"),
		configReloadTime: sc.Gauge("config_reload_time_ms"),
		attempt:          sc.Counter("update_attempt"),
		success:          sc.Counter("update_success"),
		rejected:         sc.Counter("update_rejected"),
		updateTime:       sc.Gauge("update_time"),
		version:          sc.Gauge("version"),
	}
}

// rdsSubsOf returns the RDS subscriptions of every connection manager of
// l, in every filter chain (the default one included).
func rdsSubsOf(l *listenerv3.Listener) []rdsSub {
	var out []rdsSub
	chains := l.GetFilterChains()
	if d := l.GetDefaultFilterChain(); d != nil {
		chains = append(slices.Clip(chains), d)
	}
	for _, fc := range chains {
		for _, f := range fc.GetFilters() {
			var m hcmv3.HttpConnectionManager
			if f.GetTypedConfig().MessageIs(&m) && f.GetTypedConfig().UnmarshalTo(&m) == nil && m.GetRds() != nil {
				out = append(out, rdsSub{prefix: m.GetStatPrefix(), routeConfig: m.GetRds().GetRouteConfigName()})
			}
		}
	}
	return out
}

// rdsSubscribers returns, per route configuration name, the stat prefixes
// of the connection managers that take it over RDS in the accepted or the
// live listeners (those that keep serving while the accepted ones warm),
// each prefix once.
func (st *state) rdsSubscribers() map[string][]string {
	seen := map[rdsSub]bool{}
	for _, m := range []map[string]config.XDSResource{st.types[resourcev3.ListenerType].accepted, st.live[resourcev3.ListenerType]} {
		for _, name := range slices.Sorted(maps.Keys(m)) {
			for _, s := range rdsSubsOf(m[name].Resource.(*listenerv3.Listener)) {
				seen[s] = true
			}
		}
	}
	out := map[string][]string{}
	for s := range seen {
		out[s.routeConfig] = append(out[s.routeConfig], s.prefix)
	}
	for _, ps := range out {
		slices.Sort(ps)
	}
	return out
}

// rdsStatsFor returns the stats of subscription s, creating them on first
// use. Called with st.mu held.
func (st *state) rdsStatsFor(s rdsSub) *rdsSubStats {
	if ss, ok := st.rdsStats[s]; ok {
		return ss
	}
	ss := newRDSSubStats(st.c.opts.Stats, s)
	st.rdsStats[s] = ss
	return ss
}

// createRDSStats creates the stats of every connection manager's RDS
// subscription, so that, as in Envoy, they read 0 from the moment a
// listener subscribes rather than appearing with the first response.
// Called with st.mu held.
func (st *state) createRDSStats() {
	for name, prefixes := range st.rdsSubscribers() {
		for _, p := range prefixes {
			st.rdsStatsFor(rdsSub{prefix: p, routeConfig: name})
		}
	}
}

// rdsResponseNames returns the route configurations an RDS response
// carries, by the name each resource declares (decode's), each once.
// Resources that do not decode are named by their delta name, if any.
func rdsResponseNames(r *response) []string {
	seen := map[string]bool{}
	var out []string
	for _, raw := range r.resources {
		_, name, _ := decode(r.typeURL, raw)
		if name != "" && !seen[name] {
			seen[name] = true
			out = append(out, name)
		}
	}
	return out
}

// recordRDS counts one RDS response per subscription: update_attempt and
// update_success or update_rejected under every connection manager that
// takes a route configuration the response carried, and config_reload
// where an accepted update changed it (changed holds those names). A
// response is accepted or rejected whole, so every route configuration it
// carried shares its outcome. Called with st.mu held.
func (st *state) recordRDS(r *response, accepted bool, changed map[string]bool, now time.Time) {
	subs := st.rdsSubscribers()
	for _, name := range rdsResponseNames(r) {
		for _, prefix := range subs[name] {
			ss := st.rdsStatsFor(rdsSub{prefix: prefix, routeConfig: name})
			ss.attempt.Inc()
			if !accepted {
				ss.rejected.Inc()
				continue
			}
			ss.success.Inc()
			ss.updateTime.Set(now.UnixMilli())
			ss.version.Set(int64(xxhash.Sum64String(r.version)))
			if changed[name] {
				ss.configReload.Inc()
				ss.configReloadTime.Set(now.UnixMilli())
			}
		}
	}
}

// changedRoutes returns the names of the route configurations whose
// contents differ between prev and next, new ones included. Like Envoy
// (which compares the configuration's hash), a resend of the same contents
// under another version is no reload.
func changedRoutes(prev, next map[string]config.XDSResource) map[string]bool {
	out := map[string]bool{}
	for name, r := range next {
		if old, ok := prev[name]; !ok || !proto.Equal(old.Resource, r.Resource) {
			out[name] = true
		}
	}
	return out
}
