package admin

import (
	"net"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
)

// Backend is what the admin server asks of the process it administers. The
// sidecar runtime implements it. Every method may be called concurrently from
// admin requests and must not block for long: the admin server calls them on
// the request's goroutine.
type Backend interface {
	// Ready reports whether the process is LIVE in Envoy's sense: listeners
	// are bound and the initial configuration is applied.
	Ready() bool
	// ConfigDump returns the current configuration as Envoy's
	// admin.v3.ConfigDump: one config per kind (bootstrap, listeners,
	// clusters, routes, endpoints, secrets), each with its resources. The
	// admin server filters it (?resource=, ?mask=, ?name_regex=,
	// ?include_eds), redacts every field Envoy marks sensitive and renders
	// it; it does not modify the message. An error is served as 500 with
	// its text.
	ConfigDump() (*adminv3.ConfigDump, error)
	// Clusters returns a snapshot of every cluster and its hosts.
	Clusters() []ClusterStatus
	// Listeners returns every listener with its bound address.
	Listeners() []ListenerStatus
	// SetHealthcheckFailed sets the health-check-failed flag that
	// /healthcheck/fail and /healthcheck/ok toggle; while set, health
	// checks served by the data plane fail and /ready reports DRAINING.
	SetHealthcheckFailed(failed bool)
	// HealthcheckFailed reports the flag set by SetHealthcheckFailed.
	HealthcheckFailed() bool
	// DrainListeners drains the listeners as Envoy's /drain_listeners does:
	// graceful first lets connections finish over the drain period before
	// the listeners close; inboundOnly limits it to inbound listeners. It
	// must return promptly and do the draining in the background.
	DrainListeners(graceful, inboundOnly bool)
	// Quit starts the process's graceful shutdown. The admin server calls it
	// on its own goroutine after /quitquitquit has been answered.
	Quit()
}

// Drainer is optionally implemented by a Backend that drains for reasons of
// its own (SIGTERM, /quitquitquit). While Draining reports true, /ready
// answers 503 DRAINING.
type Drainer interface {
	Draining() bool
}

// ClusterStatus is one cluster as /clusters shows it.
type ClusterStatus struct {
	Name  string
	Hosts []HostStatus
}

// HostStatus is one host (endpoint) of a cluster.
type HostStatus struct {
	// Address is the host's "ip:port".
	Address string
	// Stats are the host's stats in the order /clusters prints them, named
	// as Envoy names per-host stats: "cx_active", "cx_total", "rq_total"...
	Stats []HostStat
	// Healthy is false when health checking or outlier detection has
	// excluded the host.
	Healthy bool
	// Weight is the host's load-balancing weight.
	Weight uint32
}

// HostStat is one per-host stat.
type HostStat struct {
	Name  string
	Value uint64
	// Gauge marks a gauge (cx_active, rq_active); otherwise it is a counter.
	Gauge bool
}

// ListenerStatus is one listener as /listeners shows it.
type ListenerStatus struct {
	Name string
	// Address is the bound address (the OS-chosen port for port 0). A
	// *net.TCPAddr or *net.UDPAddr is shown as a socket_address, a
	// *net.UnixAddr as a pipe.
	Address net.Addr
}
