package server

import (
	"encoding/json"
	"net/http"
	"time"

	"meshd.dev/meshd/proxy/stats"
	"meshd.dev/meshd/xds/model"
)

// NodeAdminKey is the node.metadata key under which a meshd sidecar reports
// its bound admin address ("ip:port") to the control plane.
const NodeAdminKey = "meshd.admin"

// Status is the body of GET /status.
type Status struct {
	// Version is the published snapshot version ("" before the first).
	Version     string     `json:"version"`
	PublishedAt *time.Time `json:"published_at,omitempty"`
	// Sidecars are the node IDs with their own snapshot.
	Sidecars []string `json:"sidecars"`
	// LastError is the last rejected mesh file or publish, cleared by the
	// next successful publish.
	LastError *ErrorRecord `json:"last_error,omitempty"`
	// Streams are the connected xDS streams with, per resource type, the
	// version sent, the version ACKed and the last NACK.
	Streams []StreamStatus `json:"streams"`
	// AutoTune lists the automatic changes closed-loop tuning made, oldest
	// first (absent when the control plane runs without it).
	AutoTune []TuningChange `json:"autotune,omitempty"`
	// Rejected lists the objects whose contribution the source cut out of
	// the mesh because they do not validate (the Kubernetes source: an
	// ignored Pod or Service annotation, or a Pod left out), while the
	// rest of the mesh is published; absent when there are none.
	Rejected []RejectedObject `json:"rejected,omitempty"`
	// UnknownNodes lists the connected proxies whose node ID the published
	// mesh does not name, each served an empty config, with why; absent
	// when there are none.
	UnknownNodes []UnknownNode `json:"unknown_nodes,omitempty"`
}

// RejectedObject is one object of the source that does not validate and
// whose contribution the source left out, so that the rest of the mesh
// keeps being configured.
type RejectedObject struct {
	// Kind, Namespace and Name name the object ("Pod", "demo", "client-1").
	Kind      string `json:"kind"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Annotation is the annotation that was ignored; empty when the whole
	// object was left out.
	Annotation string `json:"annotation,omitempty"`
	// Reason says what is wrong, naming the value or the field.
	Reason string `json:"reason"`
	// Effect says what the mesh does instead.
	Effect string `json:"effect"`
	// Since is when the source first saw this reason.
	Since time.Time `json:"since"`
}

// TuningChange is one value the control plane changed on its own
// (xds/autotune): which Service and field, from what to what, and why.
type TuningChange struct {
	At time.Time `json:"at"`
	// Service is "<namespace>/<name>".
	Service string `json:"service"`
	// Field is the mesh-file field the learned value replaces, e.g.
	// "http2.keepalive.interval".
	Field string `json:"field"`
	From  string `json:"from"`
	To    string `json:"to"`
	// Reason says which observation led to the change, with the numbers.
	Reason string `json:"reason"`
	// Values are the numbers behind Reason, by name, for machines.
	Values map[string]float64 `json:"values,omitempty"`
}

// Status returns what /status shows.
func (s *Server) Status() Status {
	st := Status{Streams: s.tracker.snapshot(), Sidecars: []string{}}
	if s.tuning != nil {
		st.AutoTune = s.tuning()
	}
	if s.rejected != nil {
		st.Rejected = s.rejected()
	}
	if u := s.tracker.unknownNodes(); len(u) > 0 {
		st.UnknownNodes = u
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := s.published; p != nil {
		at := p.at
		st.Version, st.PublishedAt = p.version, &at
		st.Sidecars = append(st.Sidecars, p.nodes...)
	}
	if s.lastError != nil {
		e := *s.lastError
		st.LastError = &e
	}
	return st
}

// Warnings returns the tuning warnings of the published mesh.
func (s *Server) Warnings() []model.Warning {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.published == nil {
		return nil
	}
	return append([]model.Warning(nil), s.published.warnings...)
}

// AdminHandler returns the control plane's HTTP API:
//
//	GET /status    Status as JSON
//	GET /warnings  the published mesh's tuning warnings as a JSON array
//	GET /metrics   the server's counters in Prometheus text format
//	GET /healthz   200 while Serve runs, 503 otherwise
//	GET /readyz    200 once serving with a published snapshot, 503 otherwise
func (s *Server) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, s.Status())
	})
	mux.HandleFunc("GET /warnings", func(w http.ResponseWriter, _ *http.Request) {
		ws := s.Warnings()
		if ws == nil {
			ws = []model.Warning{}
		}
		writeJSON(w, ws)
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		_ = s.store.WritePrometheus(w, stats.Filter{})
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if !s.Serving() {
			http.Error(w, "not serving xDS", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		switch {
		case !s.Serving():
			http.Error(w, "not serving xDS", http.StatusServiceUnavailable)
		case s.Version() == "":
			http.Error(w, "no mesh published yet", http.StatusServiceUnavailable)
		default:
			_, _ = w.Write([]byte("ok\n"))
		}
	})
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
