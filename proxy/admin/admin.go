// Package admin is meshd's admin server: Envoy's admin API (/ready, /stats,
// /stats/prometheus, /config_dump, /clusters, /listeners, /server_info, /healthcheck/fail,
// /healthcheck/ok, /drain_listeners, /quitquitquit) plus /debug/pprof/ and meshd's /debug/streams, on
// the bootstrap's admin.address.
//
// Paths, methods, status codes, body formats and JSON shapes follow Envoy's
// so that tools, dashboards and tests written against Envoy's admin work
// unchanged. Endpoints that change server state require POST and answer
// any other method with 405, as Envoy does; read-only endpoints accept any
// method, as Envoy's do. An unknown path gets 404 with the list of paths.
//
// The pprof handlers are net/http/pprof's, mounted on the admin server's own
// handler. Importing net/http/pprof also registers them on
// http.DefaultServeMux; meshd never serves the default mux.
package admin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"meshd.dev/meshd/proxy/http/h2"
	"meshd.dev/meshd/proxy/stats"
)

// Timeouts of admin connections. Reads are bounded so a stuck client cannot
// hold a connection; writes are not, because /debug/pprof/profile and
// /debug/pprof/trace stream for as long as the client asks.
const (
	readHeaderTimeout = 10 * time.Second
	idleTimeout       = 2 * time.Minute
)

// pprofPrefix is the subtree served by net/http/pprof.
const pprofPrefix = "/debug/pprof/"

const (
	contentText       = "text/plain; charset=UTF-8"
	contentJSON       = "application/json"
	contentPrometheus = "text/plain; version=0.0.4; charset=UTF-8"
)

// Server is the admin server. Create it with New, start it with Listen,
// stop it with Close. Its handler is usable on its own through ServeHTTP.
type Server struct {
	backend Backend
	store   *stats.Store
	logger  *slog.Logger
	routes  map[string]*endpoint // immutable after New
	started time.Time            // when New ran: /server_info's uptime
	paths   []string             // sorted paths that have help, for the index
	// unregister stops the server.* stats updates (serverstats.go).
	unregister func()

	quitOnce sync.Once

	mu       sync.Mutex
	draining bool          // set by /drain_listeners and /quitquitquit
	srv      *http.Server  // nil until Listen
	addr     net.Addr      // bound address, nil until Listen
	served   chan struct{} // closed when the serve goroutine returns
	closed   bool
}

// endpoint is one admin path.
type endpoint struct {
	help    string
	mutates bool // requires POST
	handle  http.HandlerFunc
}

// New returns an admin server for the backend and stats store. A nil logger
// logs to slog.Default().
func New(b Backend, store *stats.Store, logger *slog.Logger) *Server {
	if logger == nil {
		logger = slog.Default()
	}
	s := &Server{backend: b, store: store, logger: logger.With("component", "admin"), started: time.Now()}
	s.unregister = s.registerServerStats()
	s.routes = map[string]*endpoint{
		"/":                    {help: "admin home page (this list)", handle: s.handleIndex},
		"/help":                {help: "print out list of admin commands", handle: s.handleIndex},
		"/ready":               {help: "print server state, return 200 if LIVE, otherwise return 503", handle: s.handleReady},
		"/stats":               {help: "print server stats; ?filter=REGEX, ?usedonly, ?format=json|prometheus", handle: s.handleStats},
		"/stats/prometheus":    {help: "print server stats in prometheus format; ?filter=REGEX, ?usedonly", handle: s.handlePrometheus},
		"/config_dump":         {help: "dump current Envoy configs; ?resource=FIELD, ?mask=PATHS, ?name_regex=RE2, ?include_eds", handle: s.handleConfigDump},
		"/clusters":            {help: "upstream cluster status; ?format=json", handle: s.handleClusters},
		"/certs":               {help: "print certs on machine (TLS identities in use, JSON)", handle: s.handleCerts},
		"/listeners":           {help: "print listener info; ?format=json", handle: s.handleListeners},
		"/healthcheck/fail":    {help: "cause the server to fail health checks", mutates: true, handle: s.handleHealthcheck(true)},
		"/healthcheck/ok":      {help: "cause the server to pass health checks", mutates: true, handle: s.handleHealthcheck(false)},
		"/drain_listeners":     {help: "drain listeners; ?graceful, ?inboundonly", mutates: true, handle: s.handleDrain},
		"/quitquitquit":        {help: "exit the server", mutates: true, handle: s.handleQuit},
		"/reopen_logs":         {help: "reopen access logs (log rotation)", mutates: true, handle: s.handleReopenLogs},
		pprofPrefix:            {help: "Go runtime profiles (net/http/pprof)", handle: pprof.Index},
		"/debug/pprof":         {handle: http.RedirectHandler(pprofPrefix, http.StatusMovedPermanently).ServeHTTP},
		"/debug/streams":       {help: "HTTP/2 streams that are not moving and why (meshd; JSON)", handle: s.handleStreams},
		"/memory":              {help: "print current allocation and heap statistics (JSON)", handle: s.handleMemory},
		"/server_info":         {help: "print server version/status information (JSON)", handle: s.handleServerInfo},
		"/debug/gc":            {help: "run two garbage collections, return memory to the OS, print /memory (meshd)", mutates: true, handle: s.handleGC},
		"/debug/pprof/cmdline": {handle: pprof.Cmdline},
		"/debug/pprof/profile": {handle: pprof.Profile},
		"/debug/pprof/symbol":  {handle: pprof.Symbol},
		"/debug/pprof/trace":   {handle: pprof.Trace},
	}
	for p, e := range s.routes {
		if e.help != "" {
			s.paths = append(s.paths, p)
		}
	}
	sort.Strings(s.paths)
	return s
}

// Listen binds addr ("ip:port", port 0 for an OS-chosen port) and serves the
// admin API on it in the background until Close. It returns the bound
// address. A server listens once.
func (s *Server) Listen(addr string) (net.Addr, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errors.New("admin: listen: server closed")
	}
	if s.srv != nil {
		return nil, fmt.Errorf("admin: listen %s: already listening on %s", addr, s.addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		// err reads "listen tcp ADDR: REASON".
		return nil, fmt.Errorf("admin.address: %w", err)
	}
	s.srv = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		ErrorLog:          slog.NewLogLogger(s.logger.Handler(), slog.LevelWarn),
	}
	s.addr = ln.Addr()
	s.served = make(chan struct{})
	go func(srv *http.Server, done chan struct{}) {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.logger.Error("admin server stopped", "address", ln.Addr().String(), "error", err)
		}
	}(s.srv, s.served)
	s.logger.Info("admin listening", "address", s.addr.String())
	return s.addr, nil
}

// Addr returns the bound address, or nil before Listen.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// WriteAddressFile writes the bound address as "ip:port" to path, as
// Envoy's --admin-address-path does. The file is replaced atomically
// (written beside it, then renamed), so a reader polling for it never sees
// a partial address.
func (s *Server) WriteAddressFile(path string) error {
	addr := s.Addr()
	if addr == nil {
		return fmt.Errorf("admin: write address file %s: server is not listening", path)
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("admin: write address file: %w", err)
	}
	_, werr := f.WriteString(addr.String())
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("admin: write address file %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("admin: write address file: %w", err)
	}
	return nil
}

// Close stops the listener, closes every admin connection (cutting
// in-flight requests such as a running CPU profile) and waits for the serve
// goroutine to return. It does not wait for a Backend.Quit started by
// /quitquitquit, which usually is what calls Close. Close is idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	srv, served := s.srv, s.served
	s.mu.Unlock()
	s.unregister()
	if srv == nil {
		return nil
	}
	err := srv.Close()
	<-served
	if err != nil {
		return fmt.Errorf("admin: close: %w", err)
	}
	return nil
}

// ServeHTTP routes an admin request: exact paths, then the /debug/pprof/
// subtree; POST is required where the endpoint changes server state.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Content-Type-Options", "nosniff")
	e := s.routes[r.URL.Path]
	if e == nil && strings.HasPrefix(r.URL.Path, pprofPrefix) {
		e = s.routes[pprofPrefix] // pprof.Index serves the named profiles
	}
	if e == nil {
		w.Header().Set("Content-Type", contentText)
		w.WriteHeader(http.StatusNotFound)
		s.writeIndex(w, "invalid path. ")
		return
	}
	if e.mutates && r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		w.Header().Set("Content-Type", contentText)
		w.WriteHeader(http.StatusMethodNotAllowed)
		fmt.Fprintf(w, "Method %s not allowed, POST required.\n", r.Method)
		return
	}
	e.handle(w, r)
}

func (s *Server) handleIndex(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", contentText)
	s.writeIndex(w, "")
}

// writeIndex writes Envoy's help text: "admin commands are:" and one
// "  /path: help" line per path.
func (s *Server) writeIndex(w http.ResponseWriter, lead string) {
	var b strings.Builder
	b.WriteString(lead)
	b.WriteString("admin commands are:\n")
	for _, p := range s.paths {
		fmt.Fprintf(&b, "  %s: %s\n", p, s.routes[p].help)
	}
	s.write(w, b.String())
}

// write writes a body, logging (at debug: the client has usually gone) a
// failure.
func (s *Server) write(w http.ResponseWriter, body string) {
	if _, err := w.Write([]byte(body)); err != nil {
		s.logger.Debug("admin response not written", "error", err)
	}
}

// state is Envoy's server state as /ready reports it.
func (s *Server) state() string {
	if !s.backend.Ready() {
		return "PRE_INITIALIZING"
	}
	s.mu.Lock()
	draining := s.draining
	s.mu.Unlock()
	if d, ok := s.backend.(Drainer); ok && d.Draining() {
		draining = true
	}
	if draining || s.backend.HealthcheckFailed() {
		return "DRAINING"
	}
	return "LIVE"
}

func (s *Server) handleReady(w http.ResponseWriter, r *http.Request) {
	st := s.state()
	w.Header().Set("Content-Type", contentText)
	if st != "LIVE" {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	s.write(w, st+"\n")
}

// statsFilter reads ?filter= and ?usedonly; an invalid regex is a 400
// already written, reported as ok false.
func (s *Server) statsFilter(w http.ResponseWriter, r *http.Request) (stats.Filter, bool) {
	q := r.URL.Query()
	f := stats.Filter{UsedOnly: q.Has("usedonly")}
	if expr := q.Get("filter"); expr != "" {
		re, err := regexp.Compile(expr)
		if err != nil {
			s.writeError(w, http.StatusBadRequest, fmt.Sprintf("Invalid re2 regex in filter=%q: %v\n", expr, err))
			return f, false
		}
		f.Regexp = re
	}
	return f, true
}

func (s *Server) handleStats(w http.ResponseWriter, r *http.Request) {
	format := r.URL.Query().Get("format")
	switch format {
	case "", "text", "json", "prometheus":
	default:
		s.writeError(w, http.StatusBadRequest, fmt.Sprintf("invalid format=%q: want text, json or prometheus\n", format))
		return
	}
	f, ok := s.statsFilter(w, r)
	if !ok {
		return
	}
	var err error
	switch format {
	case "json":
		w.Header().Set("Content-Type", contentJSON)
		err = s.store.WriteJSON(w, f)
	case "prometheus":
		w.Header().Set("Content-Type", contentPrometheus)
		err = s.store.WritePrometheus(w, f)
	default:
		w.Header().Set("Content-Type", contentText)
		err = s.store.WriteText(w, f)
	}
	if err != nil {
		s.logger.Debug("admin stats response not written", "format", format, "error", err)
	}
}

func (s *Server) handlePrometheus(w http.ResponseWriter, r *http.Request) {
	f, ok := s.statsFilter(w, r)
	if !ok {
		return
	}
	w.Header().Set("Content-Type", contentPrometheus)
	if err := s.store.WritePrometheus(w, f); err != nil {
		s.logger.Debug("admin prometheus response not written", "error", err)
	}
}

// handleConfigDump serves Envoy's /config_dump with its ?resource=,
// ?mask=, ?name_regex= and ?include_eds (see filterConfigDump), as protojson
// with proto field names. A bad parameter is 400 and an unknown resource
// 404, each with a text body naming the parameter.
func (s *Server) handleConfigDump(w http.ResponseWriter, r *http.Request) {
	q, err := parseConfigDumpQuery(r.URL.Query())
	if err != nil {
		s.writeError(w, http.StatusBadRequest, fmt.Sprintf("config_dump: %v\n", err))
		return
	}
	dump, err := s.backend.ConfigDump()
	if err == nil {
		dump, err = filterConfigDump(dump, q)
	}
	var body []byte
	if err == nil {
		body, err = marshalConfigDump(dump)
	}
	if err != nil {
		code := http.StatusInternalServerError
		if de := (*dumpError)(nil); errors.As(err, &de) {
			code = de.Code
		}
		if code == http.StatusInternalServerError {
			s.logger.Error("config_dump failed", "error", err)
		}
		s.writeError(w, code, fmt.Sprintf("config_dump: %v\n", err))
		return
	}
	w.Header().Set("Content-Type", contentJSON)
	s.write(w, string(body))
}

// marshalConfigDump is cd as protojson with proto field names; a dump
// without configs reads {"configs":[]}, as Envoy's does.
func marshalConfigDump(cd *adminv3.ConfigDump) ([]byte, error) {
	if len(cd.GetConfigs()) == 0 {
		return []byte(`{"configs":[]}`), nil
	}
	return protojson.MarshalOptions{UseProtoNames: true}.Marshal(cd)
}

// wantJSON reports whether ?format=json was asked for; any other format
// than text is a 400 already written, reported as ok false.
func (s *Server) wantJSON(w http.ResponseWriter, r *http.Request) (asJSON, ok bool) {
	switch f := r.URL.Query().Get("format"); f {
	case "", "text":
		return false, true
	case "json":
		return true, true
	default:
		s.writeError(w, http.StatusBadRequest, fmt.Sprintf("invalid format=%q: want text or json\n", f))
		return false, false
	}
}

// handleStreams serves meshd's /debug/streams: the HTTP/2 codec's live
// connections in this process's stats store and every stream waiting on
// something (h2.StreamsReport), as JSON.
func (s *Server) handleStreams(w http.ResponseWriter, _ *http.Request) {
	s.writeJSON(w, "debug streams", h2.TableOf(s.store).Snapshot())
}

// writeError answers with status code and the plain-text body.
func (s *Server) writeError(w http.ResponseWriter, code int, body string) {
	w.Header().Set("Content-Type", contentText)
	w.WriteHeader(code)
	s.write(w, body)
}

// writeJSON answers with v as indented JSON, or with a 500 naming what
// (the endpoint) and the encoding error.
func (s *Server) writeJSON(w http.ResponseWriter, what string, v any) {
	body, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		s.writeError(w, http.StatusInternalServerError, fmt.Sprintf("%s: %v\n", what, err))
		return
	}
	w.Header().Set("Content-Type", contentJSON)
	s.write(w, string(body)+"\n")
}

// handleClusters prints Envoy's /clusters: in text, one
// "cluster::host::stat::value" line per host stat, then the host's
// health_flags and weight; in JSON, envoy.admin.v3.Clusters.
func (s *Server) handleClusters(w http.ResponseWriter, r *http.Request) {
	asJSON, ok := s.wantJSON(w, r)
	if !ok {
		return
	}
	clusters := s.backend.Clusters()
	if asJSON {
		msg := &adminv3.Clusters{}
		for _, c := range clusters {
			cs := &adminv3.ClusterStatus{Name: c.Name, ObservabilityName: c.Name}
			for _, h := range c.Hosts {
				hs := &adminv3.HostStatus{
					Address:      hostAddress(h.Address),
					HealthStatus: &adminv3.HostHealthStatus{EdsHealthStatus: corev3.HealthStatus_HEALTHY},
					Weight:       h.Weight,
				}
				if !h.Healthy {
					hs.HealthStatus.EdsHealthStatus = corev3.HealthStatus_UNHEALTHY
				}
				for _, st := range h.Stats {
					m := &adminv3.SimpleMetric{Name: st.Name, Value: st.Value}
					if st.Gauge {
						m.Type = adminv3.SimpleMetric_GAUGE
					}
					hs.Stats = append(hs.Stats, m)
				}
				cs.HostStatuses = append(cs.HostStatuses, hs)
			}
			msg.ClusterStatuses = append(msg.ClusterStatuses, cs)
		}
		s.writeProto(w, msg)
		return
	}
	var b strings.Builder
	for _, c := range clusters {
		fmt.Fprintf(&b, "%s::observability_name::%s\n", c.Name, c.Name)
		for _, h := range c.Hosts {
			for _, st := range h.Stats {
				fmt.Fprintf(&b, "%s::%s::%s::%d\n", c.Name, h.Address, st.Name, st.Value)
			}
			flags := "healthy"
			if !h.Healthy {
				flags = "/failed_eds_health"
			}
			fmt.Fprintf(&b, "%s::%s::health_flags::%s\n", c.Name, h.Address, flags)
			fmt.Fprintf(&b, "%s::%s::weight::%d\n", c.Name, h.Address, h.Weight)
		}
	}
	w.Header().Set("Content-Type", contentText)
	s.write(w, b.String())
}

// handleListeners prints Envoy's /listeners: "name::address" lines, or
// envoy.admin.v3.Listeners in JSON with the bound local_address.
func (s *Server) handleListeners(w http.ResponseWriter, r *http.Request) {
	asJSON, ok := s.wantJSON(w, r)
	if !ok {
		return
	}
	listeners := s.backend.Listeners()
	if asJSON {
		msg := &adminv3.Listeners{}
		for _, l := range listeners {
			msg.ListenerStatuses = append(msg.ListenerStatuses, &adminv3.ListenerStatus{
				Name:         l.Name,
				LocalAddress: envoyAddress(l.Address),
			})
		}
		s.writeProto(w, msg)
		return
	}
	var b strings.Builder
	for _, l := range listeners {
		addr := ""
		if l.Address != nil {
			addr = l.Address.String()
		}
		fmt.Fprintf(&b, "%s::%s\n", l.Name, addr)
	}
	w.Header().Set("Content-Type", contentText)
	s.write(w, b.String())
}

// writeProto writes msg as Envoy's admin does: proto field names, unset
// fields left out. protojson's output is compacted so it is byte-stable.
func (s *Server) writeProto(w http.ResponseWriter, msg proto.Message) {
	out, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(msg)
	var compact bytes.Buffer
	if err == nil {
		err = json.Compact(&compact, out)
	}
	if err != nil {
		s.logger.Error("admin JSON encoding failed", "message", string(proto.MessageName(msg)), "error", err)
		s.writeError(w, http.StatusInternalServerError, fmt.Sprintf("encoding %s: %v\n", proto.MessageName(msg), err))
		return
	}
	compact.WriteByte('\n')
	w.Header().Set("Content-Type", contentJSON)
	s.write(w, compact.String())
}

// envoyAddress converts a bound address to Envoy's Address: TCP and UDP as
// socket_address (UDP with protocol UDP), Unix sockets as pipe; nil stays
// nil.
func envoyAddress(a net.Addr) *corev3.Address {
	switch a := a.(type) {
	case nil:
		return nil
	case *net.TCPAddr:
		return socketAddress(a.IP.String(), a.Port, corev3.SocketAddress_TCP)
	case *net.UDPAddr:
		return socketAddress(a.IP.String(), a.Port, corev3.SocketAddress_UDP)
	case *net.UnixAddr:
		return &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: a.Name}}}
	default:
		proto := corev3.SocketAddress_TCP
		if strings.HasPrefix(a.Network(), "udp") {
			proto = corev3.SocketAddress_UDP
		}
		return hostAddressProto(a.String(), proto)
	}
}

// hostAddress converts a host's "ip:port" to Envoy's Address.
func hostAddress(hostport string) *corev3.Address {
	return hostAddressProto(hostport, corev3.SocketAddress_TCP)
}

// hostAddressProto splits "host:port"; without a usable port the whole
// string is the address and the port is left out.
func hostAddressProto(hostport string, p corev3.SocketAddress_Protocol) *corev3.Address {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return socketAddress(hostport, -1, p)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return socketAddress(hostport, -1, p)
	}
	return socketAddress(host, int(n), p)
}

func socketAddress(host string, port int, p corev3.SocketAddress_Protocol) *corev3.Address {
	sa := &corev3.SocketAddress{Address: host, Protocol: p}
	if port >= 0 {
		sa.PortSpecifier = &corev3.SocketAddress_PortValue{PortValue: uint32(port)}
	}
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: sa}}
}

func (s *Server) handleHealthcheck(failed bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s.backend.SetHealthcheckFailed(failed)
		s.logger.Info("admin: health check state set", "failed", failed, "remote", r.RemoteAddr)
		w.Header().Set("Content-Type", contentText)
		s.write(w, "OK\n")
	}
}

// handleDrain drains listeners as Envoy's /drain_listeners: ?graceful lets
// connections finish over the drain period first, ?inboundonly spares
// outbound listeners. Listeners do not come back, so /ready reports
// DRAINING from then on.
func (s *Server) handleDrain(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	graceful, inboundOnly := q.Has("graceful"), q.Has("inboundonly")
	s.mu.Lock()
	s.draining = true
	s.mu.Unlock()
	s.logger.Info("admin: draining listeners", "graceful", graceful, "inbound_only", inboundOnly, "remote", r.RemoteAddr)
	s.backend.DrainListeners(graceful, inboundOnly)
	w.Header().Set("Content-Type", contentText)
	s.write(w, "OK\n")
}

// handleQuit answers "OK" and flushes it, then runs Backend.Quit on its own
// goroutine, once however often /quitquitquit is posted.
func (s *Server) handleQuit(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.draining = true
	s.mu.Unlock()
	w.Header().Set("Content-Type", contentText)
	w.Header().Set("Connection", "close")
	// A complete, length-delimited response is on the wire after the flush,
	// so the process may exit right after it without truncating the answer.
	w.Header().Set("Content-Length", "3")
	s.write(w, "OK\n")
	if err := http.NewResponseController(w).Flush(); err != nil {
		s.logger.Debug("admin quitquitquit response not flushed", "error", err)
	}
	s.quitOnce.Do(func() {
		s.logger.Info("admin: quitquitquit", "remote", r.RemoteAddr)
		go s.backend.Quit()
	})
}

var _ http.Handler = (*Server)(nil)
