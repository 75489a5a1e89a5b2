package doctor

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// FleetNode is a sidecar connected to a control plane.
type FleetNode struct {
	// Node is the xDS node ID; Admin the admin address the sidecar reported
	// in node.metadata["meshd.admin"] ("" when it reported none).
	Node  string
	Admin string
}

// FleetNodes reads the control plane's GET /status (on its admin address,
// "host:port") and returns every connected node once, sorted by node ID,
// with the admin address it reported.
func FleetNodes(ctx context.Context, client *http.Client, controlPlane string) ([]FleetNode, error) {
	var st struct {
		Streams []struct {
			Node  string `json:"node"`
			Admin string `json:"admin"`
		} `json:"streams"`
	}
	if err := getStatus(ctx, client, controlPlane, &st); err != nil {
		return nil, err
	}
	seen := map[string]string{}
	for _, s := range st.Streams {
		if s.Node == "" {
			continue
		}
		if seen[s.Node] == "" {
			seen[s.Node] = s.Admin
		}
	}
	out := make([]FleetNode, 0, len(seen))
	for n, a := range seen {
		out = append(out, FleetNode{Node: n, Admin: a})
	}
	slices.SortFunc(out, func(a, b FleetNode) int {
		if a.Node < b.Node {
			return -1
		}
		if a.Node > b.Node {
			return 1
		}
		return 0
	})
	return out, nil
}

// Fleet runs Live on every sidecar connected to the control plane at once
// (same window) and returns one report with a NodeReport per node. A node
// that reported no admin address (a proxyless client, another proxy, a
// sidecar without admin) is listed as skipped, with the reason; a sidecar
// that cannot be sampled is an error in its NodeReport. procNet is
// Sampler.ProcNet.
func Fleet(ctx context.Context, controlPlane string, procNet string, opts LiveOptions) (*Report, error) {
	nodes, err := FleetNodes(ctx, nil, controlPlane)
	if err != nil {
		return nil, err
	}
	r := &Report{Target: controlPlane, Mode: "fleet", WindowSeconds: opts.window().Seconds(), Findings: []Finding{}}
	r.Nodes = make([]NodeReport, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		r.Nodes[i] = NodeReport{Node: n.Node, Admin: n.Admin}
		if n.Admin == "" {
			r.Nodes[i].Skipped = "no admin address reported in node.metadata meshd.admin (a proxyless client, another proxy, or a sidecar without admin)"
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			rep, err := Live(ctx, &Sampler{Admin: n.Admin, ProcNet: procNet}, opts)
			if err != nil {
				r.Nodes[i].Error = err.Error()
				return
			}
			r.Nodes[i].Report = rep
		}()
	}
	wg.Wait()
	tuned, err := FleetTuning(ctx, nil, controlPlane)
	if err != nil {
		return nil, err
	}
	r.Findings = append(r.Findings, tuned...)
	rejected, err := FleetRejected(ctx, nil, controlPlane)
	if err != nil {
		return nil, err
	}
	r.Findings = append(r.Findings, rejected...)
	xds, err := FleetXDS(ctx, nil, controlPlane)
	if err != nil {
		return nil, err
	}
	r.Findings = append(r.Findings, xds...)
	return r, nil
}

// FleetXDS reads the control plane's GET /status for nodes that do not
// apply their config and returns:
//   - rule "unknown-node" (warning): each connected proxy whose node ID the
//     mesh does not name ("unknown_nodes"): it is served an empty config
//     and serves nothing, with the control plane's reason;
//   - rule "xds-nack" (error): each node and resource type whose last push
//     was rejected and not followed by an ACK, with the node's error_detail:
//     the node keeps its last good config of that type.
//
// Findings are sorted by rule, then node, then type.
func FleetXDS(ctx context.Context, client *http.Client, controlPlane string) ([]Finding, error) {
	var st struct {
		Streams []struct {
			Node  string `json:"node"`
			Types map[string]struct {
				SentVersion  string `json:"sent_version"`
				AckedVersion string `json:"acked_version"`
				LastNACK     *struct {
					Version string    `json:"version"`
					Error   string    `json:"error"`
					At      time.Time `json:"at"`
				} `json:"last_nack"`
			} `json:"types"`
		} `json:"streams"`
		UnknownNodes []struct {
			Node    string    `json:"node"`
			Reason  string    `json:"reason"`
			Since   time.Time `json:"since"`
			Streams int       `json:"streams"`
		} `json:"unknown_nodes"`
	}
	if err := getStatus(ctx, client, controlPlane, &st); err != nil {
		return nil, err
	}
	out := []Finding{}
	for _, u := range st.UnknownNodes {
		out = append(out, Finding{Severity: Warning, Rule: "unknown-node", Subject: "node " + u.Node,
			Evidence: fmt.Sprintf("connected since %s (%d streams) and served an empty config (no listeners, no clusters): %s",
				u.Since.Format(time.RFC3339), u.Streams, u.Reason),
			Fix: "add a Workload with this node ID (<name>.<namespace>) to the mesh, fix the Pod the control plane left out, or correct the node ID in the sidecar's bootstrap"})
	}
	var nacks []Finding
	seen := map[string]bool{}
	for _, s := range st.Streams {
		for typ, ts := range s.Types {
			n := ts.LastNACK
			if n == nil || n.Version != ts.SentVersion || ts.AckedVersion == ts.SentVersion {
				continue
			}
			subject := "node " + s.Node + " " + shortTypeURL(typ)
			if seen[subject] {
				continue
			}
			seen[subject] = true
			nacks = append(nacks, Finding{Severity: Error, Rule: "xds-nack", Subject: subject,
				Evidence: fmt.Sprintf("version %s rejected at %s (applied: %q): %s", n.Version, n.At.Format(time.RFC3339), ts.AckedVersion, n.Error),
				Fix:      "correct what the error names in the mesh; the node keeps its last good config of this type until a version it accepts is published"})
		}
	}
	slices.SortFunc(nacks, func(a, b Finding) int { return strings.Compare(a.Subject, b.Subject) })
	slices.SortFunc(out, func(a, b Finding) int { return strings.Compare(a.Subject, b.Subject) })
	return append(out, nacks...), nil
}

// shortTypeURL turns "type.googleapis.com/envoy.config.listener.v3.Listener"
// into "Listener".
func shortTypeURL(typeURL string) string {
	if i := strings.LastIndexByte(typeURL, '.'); i >= 0 {
		return typeURL[i+1:]
	}
	return typeURL
}

// FleetRejected reads the objects the control plane's source cut out of
// the mesh (GET /status, "rejected": on Kubernetes, a Pod or Service whose
// meshd.dev annotation is ignored, or a Pod left out) and returns each as
// a warning finding: rule "object-rejected", the object as subject, the
// annotation, reason and effect as evidence, and what to fix.
func FleetRejected(ctx context.Context, client *http.Client, controlPlane string) ([]Finding, error) {
	var st struct {
		Rejected []struct {
			Kind       string    `json:"kind"`
			Namespace  string    `json:"namespace"`
			Name       string    `json:"name"`
			Annotation string    `json:"annotation"`
			Reason     string    `json:"reason"`
			Effect     string    `json:"effect"`
			Since      time.Time `json:"since"`
		} `json:"rejected"`
	}
	if err := getStatus(ctx, client, controlPlane, &st); err != nil {
		return nil, err
	}
	out := make([]Finding, 0, len(st.Rejected))
	for _, o := range st.Rejected {
		subject := o.Kind + " " + o.Namespace + "/" + o.Name
		f := Finding{Severity: Warning, Rule: "object-rejected", Subject: subject}
		if o.Annotation != "" {
			f.Evidence = fmt.Sprintf("annotation %s rejected since %s: %s; %s", o.Annotation, o.Since.Format(time.RFC3339), o.Reason, o.Effect)
			f.Fix = fmt.Sprintf("correct the annotation %s of %s", o.Annotation, subject)
		} else {
			f.Evidence = fmt.Sprintf("rejected since %s: %s; %s", o.Since.Format(time.RFC3339), o.Reason, o.Effect)
			f.Fix = "correct " + subject + " (its Warning Events say why)"
		}
		out = append(out, f)
	}
	return out, nil
}

// FleetTuning reads the automatic changes the control plane's closed-loop
// tuning made (GET /status, "autotune") and returns each as an info
// finding: rule "autotune", the Service as subject, the field, the values
// and the reason as evidence, and the numbers behind it in Values.
func FleetTuning(ctx context.Context, client *http.Client, controlPlane string) ([]Finding, error) {
	var st struct {
		AutoTune []struct {
			At      time.Time          `json:"at"`
			Service string             `json:"service"`
			Field   string             `json:"field"`
			From    string             `json:"from"`
			To      string             `json:"to"`
			Reason  string             `json:"reason"`
			Values  map[string]float64 `json:"values"`
		} `json:"autotune"`
	}
	if err := getStatus(ctx, client, controlPlane, &st); err != nil {
		return nil, err
	}
	out := make([]Finding, 0, len(st.AutoTune))
	for _, c := range st.AutoTune {
		out = append(out, Finding{
			Severity: Info,
			Rule:     "autotune",
			Subject:  "Service " + c.Service,
			Evidence: fmt.Sprintf("%s: control plane set %s (was %s) at %s: %s", c.Field, c.To, c.From, c.At.Format(time.RFC3339), c.Reason),
			Values:   c.Values,
		})
	}
	return out, nil
}

// getStatus decodes the control plane's GET /status into v.
func getStatus(ctx context.Context, client *http.Client, controlPlane string, v any) error {
	if client == nil {
		client = &http.Client{Timeout: 5 * time.Second}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+controlPlane+"/status", nil)
	if err != nil {
		return fmt.Errorf("control plane %s: %w", controlPlane, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("control plane %s/status: %w", controlPlane, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("control plane %s/status: %s", controlPlane, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("control plane %s/status: %w", controlPlane, err)
	}
	return nil
}
